"""The trainer factory shared by every training stage: seeding, loggers (CSV always, W&B offline by default),
checkpoints (last + best, for --resume), progress bar and the scale-out settings passed to Lightning as they are."""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from polyalign.errors import UserError
from polyalign.params import Params


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
    return WandbLogger(project=cfg.project, entity=cfg.entity, group=stage, job_type=stage,
                       name=f"{stage}-{variant}", save_dir=str(save_dir), mode=cfg.mode,
                       config=params.model_dump(mode="json"), tags=[stage, variant])


def build_trainer(params: Params, root: Path, stage: str, variant: str, *, max_epochs: int, max_steps: int,
                  accumulate: int, clip: float, val_every_n_steps: int, checkpoint_every: int) -> L.Trainer:
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
                        save_last=True, every_n_train_steps=checkpoint_every),
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                        auto_insert_metric_name=False),
        LearningRateMonitor(logging_interval="step"),
    ]
    if params.logging.progress:
        callbacks.append(RichProgressBar())
    try:
        return L.Trainer(
            accelerator=tp.accelerator, devices=tp.devices, strategy=tp.strategy, num_nodes=tp.num_nodes,
            precision=tp.precision, logger=loggers, callbacks=callbacks, max_epochs=max_epochs,
            max_steps=max_steps, accumulate_grad_batches=accumulate, gradient_clip_val=clip or None,
            val_check_interval=val_every_n_steps or None, log_every_n_steps=tp.log_every_n_steps,
            deterministic="warn", use_distributed_sampler=False, enable_progress_bar=params.logging.progress,
            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(logs),
        )
    except (ValueError, TypeError, RuntimeError) as exc:  # Lightning's MisconfigurationException is a ValueError
        raise UserError(f"trainer settings rejected by Lightning: {exc}") from None


def total_optimizer_steps(batches_per_epoch: int, epochs: int, accumulate: int, max_steps: int) -> int:
    """Length of the LR schedule, from the dataloader we built (see `make_optimizer` for why not Lightning's)."""
    total = epochs * math.ceil(batches_per_epoch / accumulate)
    return min(total, max_steps) if max_steps > 0 else total


def finish_loggers(trainer: L.Trainer) -> None:
    """Close W&B runs so that their config and summary are written (offline runs stay in logs/wandb)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()
