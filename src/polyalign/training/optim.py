"""The optimiser every training stage uses: AdamW without weight decay on biases and norms, a linear warm-up and a
cosine decay, set by an `OptimParams` block (`sft.optim`, `hdpo.optim`, `critic.optim`)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(total_steps: int, warmup_ratio: float, min_ratio: float):
    """The LR factor at each optimizer step: linear warm-up over `warmup_ratio` of the steps, then a cosine decay
    to `min_ratio` (1: constant)."""
    warmup = max(1, int(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(module: torch.nn.Module, optim, total_steps: int) -> dict:
    """Lightning's `configure_optimizers` result for `optim` (an `OptimParams`) over `total_steps` optimizer
    steps. (Lightning's `estimated_stepping_batches` is not used: it loads the train dataloader before a
    checkpoint's state is restored, which would break mid-epoch resume.)"""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=optim.lr,
                                  fused=fused_on_cpu(module, decay + no_decay) or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(max(1, total_steps), optim.warmup_ratio,
                                                                           optim.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fused_on_cpu(module: torch.nn.Module, parameters: list[torch.nn.Parameter]) -> bool:
    """Whether AdamW runs torch's fused kernel: on CPU it takes a step of the default model in 0.7 ms against 3.6 ms
    one tensor at a time. Not under Lightning's mixed precision (`bf16-mixed`, `16-mixed`), which refuses gradient
    clipping with an optimizer that unscales its own gradients; elsewhere torch's default stays."""
    trainer = getattr(module, "trainer", None)  # a LightningModule's, at configure_optimizers
    mixed = trainer is not None and "mixed" in str(trainer.precision)
    return not mixed and all(p.device.type == "cpu" for p in parameters)
