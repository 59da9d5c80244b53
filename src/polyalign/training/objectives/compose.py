"""HDPO (DESIGN §8) as extras on top of any base loss, as a pure function of a `PairBatch`.

For pair i with weight w_i, a base loss l_i (its preference logit shifted by the critic offset m_i):

    m_i = hdpo_gamma * clip(d_r,i - d_c,i, 0, hdpo_m_max)          critic offset (ODPO-style, in reward units)
    L   = mean_i w_i * l_i(m_i)                                      preference term
        + hdpo_lam * mean_i [p_i * d_c,i + (1 - p_i) * d_r,i]        distribution regulariser
        + alpha * mean_i [-log pi_theta(y_h) / |y_h|]                NLL anchor on the human answer y_h
                                                                     (the chosen side, unless it is a sample)
    p_i = sigma(beta * (lbar_theta(y_c) - lbar_ref(y_c) - lbar_theta(y_r) + lbar_ref(y_r))),  lbar = log pi / |y|
          (without a reference: sigma(beta * (lbar_theta(y_c) - lbar_theta(y_r))))

With every extra at 0 and w = 1 this is the base loss exactly: `sigmoid` is then TRL 1.16's sigmoid DPO. The
regulariser uses length-normalised log-ratios, so p does not saturate on long answers (the paper's raw summed
log-prob gap did, which froze its regulariser). How each base loss takes the offset is in its module.
"""

from __future__ import annotations

import torch

from polyalign.training.objectives import base_loss
from polyalign.training.objectives.batch import BaseTerms, PairBatch


def preference_loss(batch: PairBatch, loss: str, beta: float, knobs: dict[str, float] | None = None, *,
                    hdpo_gamma: float = 0.0, hdpo_m_max: float = 2.0, hdpo_lam: float = 0.0,
                    alpha: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor], BaseTerms]:
    """The loss (a scalar), its parts (detached scalars, to log) and the base loss's per-pair terms (whose
    rewards give the validation accuracy). `knobs` are the base loss's own settings (`simpo_gamma` -> gamma)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    offset = hdpo_gamma * torch.clamp(batch.d_rejected - batch.d_chosen, min=0.0, max=hdpo_m_max)
    terms = base_loss(loss).loss(batch, beta, offset, **(knobs or {}))
    preference = (batch.weight * terms.losses).mean()
    total = preference

    p = torch.sigmoid(beta * batch.mean_ratio_gap())
    regulariser = (p * batch.d_chosen + (1 - p) * batch.d_rejected).mean()
    if hdpo_lam:
        total = total + hdpo_lam * regulariser
    if batch.anchor_logps is not None:
        nll = (-batch.anchor_logps / batch.anchor_lengths.clamp(min=1)).mean()
    else:
        nll = (-batch.policy_chosen / batch.len_chosen.clamp(min=1)).mean()
    if alpha:
        total = total + alpha * nll

    margins = terms.chosen_rewards - terms.rejected_rewards
    parts = {
        "preference": preference, "hdpo/offset": offset.mean(), "hdpo/reg": regulariser, "hdpo/nll": nll,
        "hdpo/dist_gap": (batch.d_rejected - batch.d_chosen).mean(), "rewards/chosen": terms.chosen_rewards.mean(),
        "rewards/rejected": terms.rejected_rewards.mean(), "rewards/accuracies": (margins > 0).float().mean(),
        "rewards/margins": margins.mean(), "logps/chosen": batch.policy_chosen.mean(),
        "logps/rejected": batch.policy_rejected.mean(), **terms.logs,
    }
    return total, {k: v.detach() for k, v in parts.items()}, terms
