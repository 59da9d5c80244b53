"""Sigmoid DPO (Rafailov et al. 2023, eq. 7): -log sigma(h), h = beta * (chosen log-ratio - rejected log-ratio).

TRL 1.16: `DPOTrainer`, `loss_type="sigmoid"` (-logsigmoid(beta * delta_score) with the reverse-KL scores)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyalign.training.objectives.batch import BaseTerms, PairBatch

REFERENCE_FREE = False
NEEDS_UNPAIRED = False


def loss(batch: PairBatch, beta: float, offset: torch.Tensor) -> BaseTerms:
    chosen, rejected = beta * batch.chosen_ratio(), beta * batch.rejected_ratio()
    return BaseTerms(-F.logsigmoid(chosen - rejected - offset), chosen, rejected)
