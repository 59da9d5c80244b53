"""What every preference loss reads (`PairBatch`) and what a base loss returns (`BaseTerms`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PairBatch:
    """One batch of n pairs, all tensors of shape [n].

    `policy_*` are the summed log-probs of the response tokens under the model being trained, `ref_*` under the
    reference (None for a reference-free loss), `len_*` how many tokens were summed, `d_*` the critic distances
    to the bucket's human support and `weight` the pair weights (normalised over the whole dataset, mean 1).
    `anchor_*` score the human answers when the chosen sides are model samples (None: the chosen side is the
    human answer). `kl_*` score mismatched prompt-response pairs for an unpaired loss's reference point (KTO)."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    len_chosen: torch.Tensor
    len_rejected: torch.Tensor
    d_chosen: torch.Tensor
    d_rejected: torch.Tensor
    weight: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    anchor_logps: torch.Tensor | None = None
    anchor_lengths: torch.Tensor | None = None
    kl_policy: torch.Tensor | None = None
    kl_ref: torch.Tensor | None = None

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None

    def chosen_ratio(self) -> torch.Tensor:
        """log pi_theta(y_c) - log pi_ref(y_c); the policy's own log-prob without a reference."""
        return self.policy_chosen - self.ref_chosen if self.has_reference else self.policy_chosen

    def rejected_ratio(self) -> torch.Tensor:
        return self.policy_rejected - self.ref_rejected if self.has_reference else self.policy_rejected

    def mean_chosen(self) -> torch.Tensor:
        """Per-token mean log-prob of the chosen side (SimPO's and ORPO's length-normalised score)."""
        return self.policy_chosen / self.len_chosen.clamp(min=1)

    def mean_rejected(self) -> torch.Tensor:
        return self.policy_rejected / self.len_rejected.clamp(min=1)

    def mean_ratio_gap(self) -> torch.Tensor:
        """The length-averaged log-ratio gap (IPO's delta, as in TRL 1.16 and the IPO authors' code; also the
        distribution regulariser's): per token, so it does not grow with the answers' lengths."""
        return (self.chosen_ratio() / self.len_chosen.clamp(min=1)
                - self.rejected_ratio() / self.len_rejected.clamp(min=1))


@dataclass
class BaseTerms:
    """A base loss's result: the per-pair loss [n] (weighted and averaged by the caller), the implicit rewards
    of each side [n] (validation accuracy is `chosen_rewards > rejected_rewards`), and extra scalars to log."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
