"""Which weights a training stage exports (`sft.select`, `hdpo.select`): the last step's, or those of the
validation with the lowest val loss or val macro BNG. The best weights so far are kept in memory and in
checkpoints, so a resumed run selects among all of its validations. Also the naturalness probe's call, which
must not disturb the training run's random state."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

PROBED = ("bng_macro", "length_w1_macro", "response_length")  # what a validation's probe measures (NaN without one)


class Selection:
    def __init__(self, select: str):
        self.select = select
        self.best: dict[str, Any] | None = None  # {"step", "score", "state"} of the best validation so far

    def consider(self, step: int, scores: Mapping[str, float], model: torch.nn.Module) -> None:
        """Keep a copy of `model`'s weights and of `scores` when this validation (`scores`: its loss, probed
        values and whatever else the stage reports) is the best so far; a NaN score (no probe, or no finite
        bucket) never wins."""
        if self.select == "last":
            return
        score = scores["loss"] if self.select == "val_loss" else scores["bng_macro"]
        if math.isfinite(score) and (self.best is None or score < self.best["score"]):
            self.best = {"step": step, "score": float(score), "scores": dict(scores),
                         "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}

    def apply(self, model: torch.nn.Module, last_step: int) -> dict[str, Any]:
        """Load the selected weights into `model` (select: last, or no finite score: keep the last ones) and
        say which they are, for the stage's report."""
        if self.select == "last" or self.best is None:
            return {"select": self.select, "selected_step": last_step}
        model.load_state_dict(self.best["state"])
        return {"select": self.select, "selected_step": self.best["step"], "selected_score": self.best["score"]}

    def scores(self, last: Mapping[str, Any]) -> Mapping[str, Any]:
        """The validation results of the weights exported: the selected validation's, else `last`."""
        return last if self.select == "last" or self.best is None else self.best["scores"]


class CheckpointedHistory:
    """For a LightningModule with a `history` ({"train": rows, "val": rows}) and a `selection`: both travel in its
    checkpoints, so a resumed run reports its whole curve and keeps the best weights selected before the stop.
    So does torch's random state: dropout draws from it, and a resumed run must draw what the uninterrupted one
    drew from the next step on (Lightning's checkpoints do not keep it)."""

    def on_save_checkpoint(self, checkpoint):
        checkpoint["polyalign_history"] = {k: [list(row) for row in v] for k, v in self.history.items()}
        if self.selection.best is not None:
            checkpoint["polyalign_best"] = self.selection.best
        checkpoint["polyalign_rng"] = {"cpu": torch.get_rng_state(),
                                       "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint):
        saved = checkpoint.get("polyalign_history", {})
        self.history = {k: [tuple(row) for row in saved.get(k, [])] for k in ("train", "val")}
        self.selection.best = checkpoint.get("polyalign_best")
        rng = checkpoint.get("polyalign_rng")
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])


def probe_naturalness(model: torch.nn.Module, probe: Callable[[Any], dict[str, float]] | None) -> dict[str, float]:
    """Run the validation probe (sampled val responses, `evaluation.validation.naturalness_probe`) in eval mode.
    Sampling seeds torch's generator; forking it keeps the training run's own random stream (data order,
    dropout) the same with and without a probe. NaNs without a probe."""
    probed = dict.fromkeys(PROBED, math.nan)
    if probe is None:
        return probed
    was_training = model.training
    model.eval()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        probed.update(probe(model))
    model.train(was_training)
    return probed


def probe_and_select(module, step: int) -> dict[str, float]:
    """What SFT and HDPO do after each validation: run `module.probe`, log its numbers and add them to
    `module.last_val`, then let `module.selection` consider that validation. Returns the probed numbers."""
    probed = probe_naturalness(module.model, module.probe)
    if module.probe is not None:
        module.log_dict({f"val/{k}": v for k, v in probed.items()})
    module.last_val.update(probed)
    module.selection.consider(step, module.last_val, module.model)
    return probed
