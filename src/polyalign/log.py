"""Console output and progress bars (rich), on stderr so stdout stays clean for `polyalign params`.

A stage prints its name, one progress bar per long step, warnings about the user's data or params, and one
summary line. `quiet_libraries` silences what the libraries underneath print on their own (Lightning's tips and
device lines, transformers' and datasets' per-file bars, one known deprecation inside Lightning); each is turned
off where it comes from, and `--verbose` (or `logging.level: debug`) leaves all of it on.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from polyalign.errors import shown

console = Console(stderr=True, soft_wrap=True)  # long lines (paths, summaries) are not hard-wrapped in logs

# loggers whose INFO lines describe the library, not the user's run ("GPU available: False", "💡 Tip: ...")
CHATTY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning",
                  "faiss")


def progress_bar(enabled: bool = True) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not enabled, transient=False)


def quiet_libraries(verbose: bool) -> None:
    """Silence third-party notices at their source, unless `verbose`."""
    if verbose:
        return
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning 2.6 builds torch's deprecated LeafSpec on every logged dict; nothing a user can act on
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # the moving average of the weights (`sft.optim.ema_decay`) warns of sharded layers, which we refuse with it
    warnings.filterwarnings("ignore", message="You're using the WeightAveraging callback with a model that overrides")
    # a run that `--max-steps` ends between validations: best.ckpt (the lowest val loss) has no val loss to compare
    warnings.filterwarnings("ignore", message=r"`ModelCheckpoint\(monitor='val/loss'\)` could not find the monitored key")
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()  # tokenising a split takes a second


@contextmanager
def native_output_silenced() -> Iterator[None]:
    """Silence what C/C++ code writes straight to file descriptor 2 during a call (faiss's k-means, under MAUVE,
    warns about small clusters on every call), unless logging is at debug level."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def wandb_settings(level: str):
    """W&B's own console output (banner, sparkline summary) only at logging.level: debug."""
    import wandb

    return wandb.Settings(silent=level != "debug")


def announce_wandb_run(run, mode: str) -> None:
    """The one line a stage prints about W&B: where its run is, and how to upload an offline one."""
    if mode == "offline":
        folder = shown(Path(run.dir).parent)
        console.print(f"W&B offline run in {folder} (upload with `wandb sync {folder}`)", highlight=False)
    elif mode == "online":
        console.print(f"W&B run: {run.url}", highlight=False)
