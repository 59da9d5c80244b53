"""Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): each label is taken as flipped with
probability eps, so the loss is the expected sigmoid loss over the two labels,
    -(1 - eps) log sigma(h) - eps log sigma(-h),
which is smallest at h* = log((1 - eps) / eps) instead of pushing h up forever. eps = 0 is sigmoid DPO.

TRL 1.16 dropped this form from `DPOTrainer` (its sigmoid loss ignores `label_smoothing`); it remains in TRL
1.16's `CPOTrainer` sigmoid loss and in TRL 0.x's `DPOTrainer` sigmoid loss, which apply it to the same h."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyalign.training.objectives.batch import BaseTerms, PairBatch

REFERENCE_FREE = False
NEEDS_UNPAIRED = False


def loss(batch: PairBatch, beta: float, offset: torch.Tensor, eps: float = 0.1) -> BaseTerms:
    chosen, rejected = beta * batch.chosen_ratio(), beta * batch.rejected_ratio()
    z = chosen - rejected - offset
    return BaseTerms(-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z), chosen, rejected)
