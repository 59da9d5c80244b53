"""SimPO (Meng et al. 2024, eq. 6): reference-free, on length-normalised log-probs, with a target margin gamma:
    -log sigma(beta * (lbar(y_c) - lbar(y_r)) - gamma),   lbar = log pi(y) / |y|.
The implicit reward of a side is beta * lbar. The paper's beta is 2 to 10 and gamma / beta about 0.5.

TRL 1.16: `trl.experimental.cpo.CPOTrainer`, `loss_type="simpo"`, `simpo_gamma` = gamma, `cpo_alpha=0`
(its logits are the average log-prob gap minus simpo_gamma / beta, times beta)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyalign.training.objectives.batch import BaseTerms, PairBatch

REFERENCE_FREE = True
NEEDS_UNPAIRED = False


def loss(batch: PairBatch, beta: float, offset: torch.Tensor, gamma: float = 0.5) -> BaseTerms:
    chosen, rejected = beta * batch.mean_chosen(), beta * batch.mean_rejected()
    return BaseTerms(-F.logsigmoid(chosen - rejected - gamma - offset), chosen, rejected)
