"""The HDPO loss (DESIGN §8) as a pure function of summed response log-probs.

For pair i with weight w_i (normalised over the whole dataset, mean 1), summed log-probs log pi and lengths |y|:

    h_i = beta * [(log pi_theta(y_c) - log pi_ref(y_c)) - (log pi_theta(y_r) - log pi_ref(y_r))]
    m_i = gamma * clip(d_r,i - d_c,i, 0, m_max)                     critic offset (ODPO-style)
    L   = mean_i w_i * [-log sigma(h_i - m_i)]                      preference term
        + lam * mean_i [p_i * d_c,i + (1 - p_i) * d_r,i]            distribution regulariser
        + alpha * mean_i [-log pi_theta(y_h) / |y_h|]                NLL anchor on the human answer y_h
                                                                    (the chosen side, unless it is a sample)
    p_i = sigma(beta * (lbar_theta(y_c) - lbar_ref(y_c) - lbar_theta(y_r) + lbar_ref(y_r))),  lbar = log pi / |y|

With gamma = lam = alpha = 0 and w = 1 this is standard sigmoid DPO (TRL 1.16's `loss_type="sigmoid"`). The
regulariser uses reference-adjusted, length-normalised log-ratios, so p does not saturate on long answers (the
paper's raw summed log-prob gap did, which froze its regulariser).

`label_smoothing` = eps gives conservative DPO (cDPO: the label is taken as flipped with probability eps):
    -(1 - eps) log sigma(h - m) - eps log sigma(-(h - m)).
TRL 1.16 has no equivalent: its sigmoid loss ignores `label_smoothing` (only its robust, exo_pair, aot and
aot_unpaired losses read it), so ours equals TRL's sigmoid DPO only at eps = 0. IPO ignores it here, as in TRL.

`loss_type: ipo` is TRL 1.16's IPO, which regresses the *length-averaged* log-ratio gap onto 1 / (2 beta):
    delta_i = (log pi_theta(y_c) - log pi_ref(y_c)) / |y_c| - (log pi_theta(y_r) - log pi_ref(y_r)) / |y_r|
    L_ipo   = mean_i w_i * (delta_i - (1 + 2 m_i) / (2 beta))^2
Why the offset enters so: the sigmoid loss acts on the implicit reward margin h = beta * (log-ratio gap) and m is
subtracted from it, so m is in reward units (beta x nats). IPO's loss is (beta * delta - 1/2)^2 / beta^2: it pulls
the reward margin beta * delta to 1/2. Subtracting m from that margin as in the sigmoid loss gives
((beta * delta - m) - 1/2)^2 / beta^2 = (delta - (1/2 + m) / beta)^2: the pair must then win by m more reward
units in both losses (m = 0 is exactly TRL's IPO). |y| counts the tokens whose log-probs are summed (TRL: the
completion mask). IPO's reward margin is per token and its target is 1/2, the sigmoid's is per sequence, so the
same gamma weighs far more in IPO: tune it per loss type.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_ratio_gap(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, len_chosen: torch.Tensor,
                   len_rejected: torch.Tensor) -> torch.Tensor:
    """The length-averaged log-ratio gap (IPO's delta, as in TRL 1.16 and the IPO authors' code; also the
    regulariser's): per token, so it does not grow with the answers' lengths."""
    return chosen_ratio / len_chosen.clamp(min=1) - rejected_ratio / len_rejected.clamp(min=1)


def hdpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor, len_chosen: torch.Tensor, len_rejected: torch.Tensor, d_chosen: torch.Tensor,
    d_rejected: torch.Tensor, weights: torch.Tensor | None = None, *, beta: float, gamma: float = 0.0,
    lam: float = 0.0, alpha: float = 0.0, m_max: float = 2.0, label_smoothing: float = 0.0,
    loss_type: str = "sigmoid", anchor: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss (a scalar) and its parts (detached scalars for logging). `anchor` is the human answers' summed
    log-probs and lengths for the NLL anchor when the chosen sides are model samples (None: the chosen side is
    the human answer)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    logits = chosen_ratio - rejected_ratio
    h = beta * logits
    mean_gap = mean_ratio_gap(chosen_ratio, rejected_ratio, len_chosen, len_rejected)
    offset = gamma * torch.clamp(d_rejected - d_chosen, min=0.0, max=m_max)
    if loss_type == "sigmoid":
        preference = (-(1 - label_smoothing) * F.logsigmoid(h - offset)
                      - label_smoothing * F.logsigmoid(-(h - offset)))
    elif loss_type == "ipo":
        preference = (mean_gap - (0.5 + offset) / beta) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    w = torch.ones_like(preference) if weights is None else weights
    preference_term = (w * preference).mean()

    p = torch.sigmoid(beta * mean_gap)
    regulariser = (p * d_chosen + (1 - p) * d_rejected).mean()
    anchor_logps, anchor_lengths = anchor if anchor is not None else (policy_chosen, len_chosen)
    nll = (-anchor_logps / anchor_lengths.clamp(min=1)).mean()
    loss = preference_term + lam * regulariser + alpha * nll

    parts = {
        "preference": preference_term, "hdpo/offset": offset.mean(), "hdpo/reg": regulariser, "hdpo/nll": nll,
        "hdpo/dist_gap": (d_rejected - d_chosen).mean(), "rewards/chosen": (beta * chosen_ratio).mean(),
        "rewards/rejected": (beta * rejected_ratio).mean(), "rewards/accuracies": (h > 0).float().mean(),
        "rewards/margins": h.mean(), "logps/chosen": policy_chosen.mean(), "logps/rejected": policy_rejected.mean(),
    }
    return loss, {k: v.detach() for k, v in parts.items()}
