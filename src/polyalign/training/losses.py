"""Pure loss functions (tested against hand-computed values)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyalign.modeling.prompts import IGNORE_INDEX


def response_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of the next token, zero where labels are IGNORE_INDEX, and the mask.

    logits [B, T, V], labels [B, T] -> (nll [B, T-1], mask [B, T-1])."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels.clamp(min=0), reduction="none")
    return nll * mask, mask


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


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each example's response tokens, and how many there are ([B], [B])."""
    nll, mask = response_token_nll(logits, labels)
    return -nll.sum(dim=1), mask.sum(dim=1)
