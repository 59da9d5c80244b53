"""The trainer factory shared by every training stage: seeding, loggers (CSV always, W&B offline by default),
checkpoints (last + best, for --resume, each recording the settings of its run), an optional moving average of
the weights, progress bar, the scale-out settings passed to Lightning as they are, and what a signal does to a
stage (SIGTERM: exit 143, outputs as they were)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, WeightAveraging
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.optim.swa_utils import get_ema_multi_avg_fn

from polyalign.errors import Terminated, UserError, sigterm_stops, terminated  # noqa: F401 - re-exported
from polyalign.io import atomic_path
from polyalign.log import announce_wandb_run, progress_bar, wandb_settings
from polyalign.params import Params, flat_keys

RUN_KEY = "polyalign_run"  # in every checkpoint: the settings and inputs of the run that wrote it


class StageTrainer(L.Trainer):
    """Lightning's Trainer, but a signal never ends a stage as a success: Lightning turns SIGTERM into an
    exit with status 0 and Ctrl-C into status 1; here they become `Terminated` (143) and KeyboardInterrupt
    (130, "interrupted") for the CLI."""

    label = "training"

    @contextmanager
    def _signals_as_errors(self) -> Iterator[None]:
        try:
            yield
        except SIGTERMException:
            raise terminated(self.label) from None
        except SystemExit as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            raise

    def fit(self, *args, **kwargs) -> None:
        with self._signals_as_errors():
            super().fit(*args, **kwargs)

    def validate(self, *args, **kwargs):
        with self._signals_as_errors():
            return super().validate(*args, **kwargs)


class TrainingProgress(Callback):
    """One progress bar for a whole training run, in optimizer steps, with the epoch and the last training loss
    (Lightning's own bar draws one bar per epoch and another per validation)."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.bar = progress_bar()
            self.bar.start()
            self.task = self.bar.add_task(f"{self.label}: training", total=None, completed=trainer.global_step)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.bar is not None:
            per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
            total = per_epoch * trainer.max_epochs
            self.bar.update(self.task, total=min(total, trainer.max_steps) if trainer.max_steps > 0 else total)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is not None:
            loss = trainer.callback_metrics.get("train/loss")
            shown = f", loss {float(loss):.3f}" if loss is not None else ""
            self.bar.update(self.task, completed=trainer.global_step, description=(
                f"{self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}{shown}"))

    def _stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()


def check_devices(trainer_params) -> None:
    """A clear error when more devices are asked for than this machine has."""
    devices = trainer_params.devices
    if not isinstance(devices, int):
        return
    accelerator = trainer_params.accelerator
    uses_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    available = torch.cuda.device_count() if uses_gpu else (os.cpu_count() or 1)
    kind = "GPU(s)" if uses_gpu else "CPU core(s)"
    if devices > available:
        raise UserError(f"trainer.devices={devices}, but this machine has only {available} {kind} "
                        f"(trainer.accelerator={accelerator!r})")
    if devices < 1:
        raise UserError(f"trainer.devices={devices}: must be at least 1 (or 'auto')")


def wandb_logger(params: Params, stage: str, variant: str, save_dir: Path) -> WandbLogger | None:
    cfg = params.logging.wandb
    if cfg.mode == "disabled":
        return None
    save_dir.mkdir(parents=True, exist_ok=True)
    # offline: a local run folder under logs/wandb, no account and no network; never wandb.login()
    # W&B's convention for seeds: one group per configuration, the seeds' runs inside it, the stage as job type
    logger = WandbLogger(project=cfg.project, entity=cfg.entity, group=params.configuration_id(), job_type=stage,
                         name=f"{stage}-{variant}-seed{params.seed}", save_dir=str(save_dir), mode=cfg.mode,
                         config=params.model_dump(mode="json"), tags=[stage, variant, f"seed{params.seed}"],
                         settings=wandb_settings(params.logging.level))
    # Lightning 2.6 always passes `anonymous` (None), which W&B 0.31 deprecated: it then warns on every run
    logger._wandb_init.pop("anonymous", None)
    return logger


def weight_average(decay: float, strategy: str, setting: str) -> WeightAveraging:
    """Lightning's weight averaging with an exponential moving average, updated after every optimizer step: it
    validates, checkpoints (the training weights travel beside it, so --resume continues both) and ends training
    with the averaged weights. On the default corpus it lowered SFT's val bits per character in all four runs
    measured and kept more answers in the prompt's language (README: The default model). It keeps a second copy
    of the module, and Lightning cannot average sharded models. The final checkpoint is written after training
    has put the average in place, so it holds the average as both weights (a mid-run one holds both apart)."""
    if any(name in str(strategy).lower() for name in ("fsdp", "deepspeed")):
        raise UserError(f"{setting}={decay}: weight averaging does not work with the {strategy!r} strategy (it "
                        "needs the whole model in one process); set it to 0")
    return WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(decay))


def build_trainer(params: Params, root: Path, stage: str, variant: str, *, optim,
                  val_every_n_steps: int) -> StageTrainer:
    """The Lightning trainer of one training run: `optim` (an `OptimParams`) gives its length, accumulation,
    gradient clipping and checkpoint cadence, `params.trainer` the hardware, and the loggers and checkpoints go
    under `paths`."""
    tp = params.trainer
    check_devices(tp)
    L.seed_everything(params.seed, workers=True, verbose=False)
    logs = root / params.paths.logs
    loggers = [CSVLogger(save_dir=str(logs), name=f"{stage}/{variant}", version=0)]
    wandb = wandb_logger(params, stage, variant, logs)
    if wandb is not None:
        loggers.append(wandb)
    ckpt_dir = root / params.paths.checkpoints / stage / variant
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", auto_insert_metric_name=False, save_top_k=0,
                        save_last=True, every_n_train_steps=optim.checkpoint_every_n_steps),
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                        auto_insert_metric_name=False),
        LearningRateMonitor(logging_interval="step"),
    ]
    if optim.ema_decay:
        callbacks.append(weight_average(optim.ema_decay, tp.strategy, f"{stage}.optim.ema_decay"))
    if params.logging.progress:
        callbacks.append(TrainingProgress(stage if variant == "default" else f"{stage}@{variant}"))
    try:
        trainer = StageTrainer(
            accelerator=tp.accelerator, devices=tp.devices, strategy=tp.strategy, num_nodes=tp.num_nodes,
            precision=tp.precision, logger=loggers, callbacks=callbacks, max_epochs=optim.epochs,
            max_steps=optim.max_steps, accumulate_grad_batches=optim.accumulate_grad_batches,
            gradient_clip_val=optim.gradient_clip_val or None,
            val_check_interval=val_every_n_steps or None, log_every_n_steps=tp.log_every_n_steps,
            deterministic="warn", use_distributed_sampler=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(logs),
        )
    except (ValueError, TypeError, RuntimeError) as exc:  # Lightning's MisconfigurationException is a ValueError
        raise UserError(f"trainer settings rejected by Lightning: {exc}") from None
    trainer.label = stage if variant == "default" else f"{stage}@{variant}"
    return trainer


def total_optimizer_steps(batches_per_epoch: int, optim) -> int:
    """Length of the LR schedule, from the dataloader we built (see `make_optimizer` for why not Lightning's)."""
    total = optim.epochs * math.ceil(batches_per_epoch / optim.accumulate_grad_batches)
    return min(total, optim.max_steps) if optim.max_steps > 0 else total


def finish_loggers(trainer: L.Trainer) -> None:
    """Close W&B runs so that their config and summary are written (offline runs stay in logs/wandb)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            run = logger.experiment
            run.finish()
            announce_wandb_run(run, run.settings.mode)


def validate_at_end(trainer: L.Trainer, module: L.LightningModule, **data) -> None:
    """Validate the final weights unless the last validation was at the last step: with a max_steps inside an
    epoch (or a val_every_n_steps that does not divide the run) Lightning never validates them, and the stage
    would report no validation at all. `module.history["val"]` rows start with their step."""
    done = module.history["val"]
    if not done or done[-1][0] != trainer.global_step:
        trainer.validate(module, verbose=False, **data)



def fit_and_export(trainer: L.Trainer, module: L.LightningModule, out: Path, tokenizer, *, ckpt: Path,
                   resume_from: str | None, lr_key: str, train=None, val=None, datamodule=None) -> dict | None:
    """What every training stage does with its module: train (from `resume_from` when resuming), keep the final
    state as `ckpt` for --resume, validate the last step if no validation did, refuse a diverged run (`lr_key`
    names the setting to lower), load the weights `module.selection` kept and write them to `out` atomically
    (`module.export`). Returns which weights were kept, or None in a DDP child process (rank 0 exports)."""
    trainer.fit(module, train, val, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    trainer.save_checkpoint(ckpt, weights_only=False)  # the step checkpoints fire every n steps only
    validate_at_end(trainer, module, **({"datamodule": datamodule} if datamodule is not None else {"dataloaders": val}))
    if not trainer.is_global_zero:
        return None
    check_finite(trainer.label, module.history, module.last_val, lr_key)
    selected = module.selection.apply(module.model, trainer.global_step)
    with atomic_path(out, directory=True) as tmp:
        module.export(tmp, tokenizer)
    return selected


def figure(value: float | None, digits: int = 3) -> str:
    """A result for the console: "n/a" where there is none (never "nan")."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def check_finite(label: str, history: dict[str, list], last_val: dict[str, Any], lr_key: str) -> None:
    """A loss that is NaN or infinite means the training diverged: refuse to save such a model or report NaN
    as its result (the checkpoints stay for inspection)."""
    figures = [("train loss", *history["train"][-1][:2])] if history["train"] else []
    figures.append(("val loss", history["val"][-1][0] if history["val"] else 0, last_val["loss"]))
    for name, step, value in figures:
        if not math.isfinite(value):
            raise UserError(f"{label}: training diverged: the {name} is {value} at step {step}; no output was "
                            f"written (lower {lr_key}, or clip gradients harder)")


# --- what defines a run, recorded in its checkpoints and compared by --resume

RUN_INDEPENDENT = {"variants", "val_every_n_steps"}  # validation cadence, or other variants


def _content_sha256(path: Path) -> str:
    from polyalign.modeling.model import folder_digest

    if path.is_dir():
        return folder_digest(path)
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def run_identity(params: Params, section: str, variant: str, world_size: int, root: Path,
                 inputs: list[Path]) -> dict[str, Any]:
    """The settings that define a training run's result, as dotted keys: the seed, the prompt format, the
    stage's section with its variant (not the other variants, the checkpoint or validation cadence, nor LoRA
    merging on save), the precision, the number of processes, and the content of every input."""
    stage = {k: v for k, v in getattr(params, section).model_dump(mode="json").items() if k not in RUN_INDEPENDENT}
    stage["optim"].pop("checkpoint_every_n_steps", None)  # checkpoint cadence
    stage["optim"]["lora"].pop("merge", None)
    stage["variants"] = {variant: getattr(params, section).variants[variant].model_dump(mode="json")}
    identity = {"seed": params.seed, **flat_keys(params.prompt.model_dump(mode="json"), "prompt"),
                **flat_keys(stage, section), "trainer.precision": params.trainer.precision, "world_size": world_size}
    for path in inputs:
        name = path.relative_to(root) if path.is_relative_to(root) else path
        identity[f"input {name.as_posix()}"] = _content_sha256(path)
    return identity


def identity_sha256(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class RecordRun(Callback):
    """Puts the run's identity (and its hash) into every checkpoint, for `--resume` to compare."""

    def __init__(self, identity: dict[str, Any]):
        self.record = {"sha256": identity_sha256(identity), "values": identity}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint[RUN_KEY] = self.record


def identity_changes(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """What differs between the run that wrote a checkpoint and this one, key by key (empty: the same run)."""
    if not saved:
        return ["the checkpoint records no settings (an older version wrote it)"]
    if saved.get("sha256") == identity_sha256(current):
        return []
    old = saved.get("values", {})
    changes = []
    for key in sorted(set(old) | set(current)):
        was, now = old.get(key, "(unset)"), current.get(key, "(unset)")
        if was != now:
            changes.append(f"{key} changed" if key.startswith("input ") else f"{key}: {was!r} -> {now!r}")
    return changes


def read_run_record(ckpt: Path, command: str) -> dict[str, Any] | None:
    try:  # mmap: the weights stay on disk, only the record is read
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read it means the same thing to the user
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{command} --resume: cannot read the checkpoint {ckpt} ({reason}); run without --resume "
                        "to start over") from None
    return checkpoint.get(RUN_KEY) if isinstance(checkpoint, dict) else None


def last_checkpoint(root: Path, params: Params, stage: str, variant: str, resume: bool) -> Path:
    """checkpoints/<stage>/<variant>/last.ckpt, which `--resume` needs (checked before any work)."""
    ckpt = root / params.paths.checkpoints / stage / variant / "last.ckpt"
    if resume and not ckpt.is_file():
        raise UserError(f"{stage} --resume: no checkpoint {ckpt} to resume from")
    return ckpt


def prepare_checkpoints(trainer: L.Trainer, ckpt: Path, logs: Path, identity: dict[str, Any], *, resume: bool,
                        resume_anyway: bool, command: str) -> str | None:
    """Call once every input is checked. A fresh run removes the previous run's checkpoints and logs (they
    would mix with its own); `--resume` refuses a checkpoint written with other settings or inputs, naming
    them, unless `--resume-anyway`. Either way this run's checkpoints record its identity. Returns the
    checkpoint to resume from, if any."""
    if resume:
        changes = identity_changes(read_run_record(ckpt, command), identity)
        if changes and not resume_anyway:
            raise UserError(f"{command} --resume: {ckpt} was written by a run with other settings or inputs: "
                            f"{'; '.join(changes)}. Run without --resume to start over, or add --resume-anyway to "
                            "continue with the new ones")
    elif "LOCAL_RANK" not in os.environ:  # DDP child processes keep what rank 0 set up
        shutil.rmtree(ckpt.parent, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)
    trainer.callbacks.append(RecordRun(identity))
    return str(ckpt) if resume else None
