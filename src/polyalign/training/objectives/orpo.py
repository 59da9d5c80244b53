"""ORPO (Hong et al. 2024, eqs. 4-7): reference-free; the chosen response's NLL plus beta times an odds-ratio
loss on length-normalised probabilities,
    NLL(y_c) - beta * log sigma(log odds(y_c) - log odds(y_r)),   odds(y) = P(y) / (1 - P(y)),  P(y) = exp(lbar(y)).
beta is the paper's lambda (0.1 there). The NLL is pooled over the batch's chosen response tokens
(sum of -log pi / sum of lengths), as a token-level cross-entropy; here it is written per pair as
-log pi(y_c) * n / sum|y_c| so that pair weights apply to it too (with weights 1 the mean is the pooled NLL).
The critic offset m is subtracted from the log odds ratio. The implicit reward of a side is beta * lbar.

TRL 1.16: `trl.experimental.orpo.ORPOTrainer` (`odds_ratio_loss`; loss = NLL - mean(beta * logsigmoid(log
odds))). One difference: TRL's NLL also counts the prompt tokens; ours, like the paper's L_SFT, the response's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyalign.training.objectives.batch import BaseTerms, PairBatch

REFERENCE_FREE = True
NEEDS_UNPAIRED = False


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def loss(batch: PairBatch, beta: float, offset: torch.Tensor) -> BaseTerms:
    mean_c, mean_r = batch.mean_chosen(), batch.mean_rejected()
    log_odds = (mean_c - mean_r) - (log1mexp(mean_c) - log1mexp(mean_r))
    ratio = F.logsigmoid(log_odds - offset)
    nll = -batch.policy_chosen * len(mean_c) / batch.len_chosen.clamp(min=1).sum()
    return BaseTerms(nll - beta * ratio, beta * mean_c, beta * mean_r,
                     {"orpo/log_odds": log_odds.mean(), "orpo/nll": nll.mean()})
