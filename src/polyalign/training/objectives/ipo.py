"""IPO (Azar et al. 2023, eq. 17) as TRL 1.16 and the IPO authors' code compute it: the *length-averaged*
log-ratio gap delta is regressed onto 1 / (2 beta):
    (delta - 1 / (2 beta))^2,   delta = ratio_c / |y_c| - ratio_r / |y_r|.

The critic offset m (reward units, as in the sigmoid losses) raises the target reward margin beta * delta from
1/2 to 1/2 + m: (delta - (1/2 + m) / beta)^2. IPO's margin is per token and its target 1/2, the sigmoid's is per
sequence, so the same hdpo_gamma weighs far more here: tune it per loss.

TRL 1.16: `DPOTrainer`, `loss_type="ipo"`."""

from __future__ import annotations

import torch

from polyalign.training.objectives.batch import BaseTerms, PairBatch

REFERENCE_FREE = False
NEEDS_UNPAIRED = False


def loss(batch: PairBatch, beta: float, offset: torch.Tensor) -> BaseTerms:
    losses = (batch.mean_ratio_gap() - (0.5 + offset) / beta) ** 2
    return BaseTerms(losses, beta * batch.chosen_ratio(), beta * batch.rejected_ratio())
