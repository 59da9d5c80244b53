"""Robust DPO (Chowdhury et al. 2024, "Provably robust DPO", eq. 8): an unbiased estimate of the clean-label loss
when each label is flipped with a known probability eps,
    [-(1 - eps) log sigma(h) + eps log sigma(-h)] / (1 - 2 eps).
Unlike cDPO it keeps pushing h up; eps = 0 is sigmoid DPO.

TRL 1.16: `DPOTrainer`, `loss_type="robust"` with `label_smoothing` = eps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyalign.training.objectives.batch import BaseTerms, PairBatch

REFERENCE_FREE = False
NEEDS_UNPAIRED = False


def loss(batch: PairBatch, beta: float, offset: torch.Tensor, eps: float = 0.1) -> BaseTerms:
    chosen, rejected = beta * batch.chosen_ratio(), beta * batch.rejected_ratio()
    z = chosen - rejected - offset
    return BaseTerms((-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps), chosen, rejected)
