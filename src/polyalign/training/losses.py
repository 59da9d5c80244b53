"""Pure loss functions (tested against hand-computed values)."""

from __future__ import annotations

import torch

from polyalign.modeling.scoring import response_token_nll


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token cross-entropy over each example's response tokens, and how many there are ([B], [B])."""
    nll, mask = response_token_nll(logits, labels)
    n = mask.sum(dim=1)
    return nll.sum(dim=1) / n.clamp(min=1), n


def sft_loss(losses: torch.Tensor, weights: torch.Tensor | None = None, normaliser: float | None = None) -> torch.Tensor:
    """Batch loss from per-example losses.

    Without weights: the batch mean. With weights (balance: loss_weight): sum_i w_i * l_i / normaliser, where the
    weights are normalised over the whole training set (mean 1) and `normaliser` is a constant (the nominal
    per-device batch size). Dividing by the batch's own weight sum instead would renormalise per micro-batch and
    cancel the weights (with batch size 1 entirely), which is the flaw of the paper's code."""
    if weights is None:
        return losses.mean()
    if normaliser is None:
        raise ValueError("weighted SFT loss needs a constant normaliser")
    return (losses * weights).sum() / normaliser
