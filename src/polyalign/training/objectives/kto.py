"""KTO (Ethayarajh et al. 2024, eq. 7): unpaired. Each side is scored on its own against a reference point z0,
the policy's KL from the reference, estimated on mismatched prompt-response pairs and not differentiated:
    desirable:    1 - sigma(beta * (ratio_c - z0)),     undesirable:  1 - sigma(beta * (z0 - ratio_r)),
    z0 = max(0, mean(log pi_theta(y'|x) - log pi_ref(y'|x)))  over the batch's mismatched pairs (x, y').
The chosen side is desirable, the rejected undesirable, each weighted (`desirable_weight`,
`undesirable_weight`), and the loss is the mean over both sides: per pair, the mean of the two. The critic
offset m is split between the sides, each having to clear z0 by m / 2 more.

TRL 1.16: `KTOTrainer`, `loss_type="kto"` (its KL pairs cycle the batch's completions by one; ours pair each
prompt with the rejected response of another pair, fixed per dataset by a seeded derangement)."""

from __future__ import annotations

import torch

from polyalign.training.objectives.batch import BaseTerms, PairBatch

REFERENCE_FREE = False
NEEDS_UNPAIRED = True


def loss(batch: PairBatch, beta: float, offset: torch.Tensor, desirable_weight: float = 1.0,
         undesirable_weight: float = 1.0) -> BaseTerms:
    z0 = (batch.kl_policy - batch.kl_ref).mean().detach().clamp(min=0)
    ratio_c, ratio_r = batch.chosen_ratio(), batch.rejected_ratio()
    chosen_losses = 1 - torch.sigmoid(beta * (ratio_c - z0) - offset / 2)
    rejected_losses = 1 - torch.sigmoid(beta * (z0 - ratio_r) - offset / 2)
    losses = (desirable_weight * chosen_losses + undesirable_weight * rejected_losses) / 2
    return BaseTerms(losses, beta * ratio_c, beta * ratio_r, {"kto/kl": z0})
