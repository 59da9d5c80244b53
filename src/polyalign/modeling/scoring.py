"""Scoring responses with a causal LM: padded batches, the logits of the positions that predict a response, and
summed response log-probs. Shared by training (SFT, preference pairs) and by the stages that only score
(`pairs`' reference log-probs, `evaluate`'s NLL of the human answers), so that those need no training code."""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator
from typing import Any

import numpy as np
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


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each example's response tokens, and how many there are ([B], [B])."""
    nll, mask = response_token_nll(logits, labels)
    return -nll.sum(dim=1), mask.sum(dim=1)


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def padded_batch(input_ids: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `labels` (IGNORE_INDEX on the padding) and `attention_mask` of examples."""
    return {"input_ids": pad(input_ids, pad_id), "labels": pad(labels, IGNORE_INDEX),
            "attention_mask": pad([[1] * len(ids) for ids in input_ids], 0)}


def _takes_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper passes it on
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def response_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits from the first position that predicts a response token on, and the labels cut to match
    (the pair `response_token_nll` expects). Prompt positions carry no loss, and on a small model the output layer
    and the softmax over the vocabulary are most of the cost of a long prompt's positions."""
    predicted = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero()
    first = int(predicted[0]) if len(predicted) else labels.shape[1] - 1
    if first == 0 or not _takes_logits_to_keep(model):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits, labels
    keep = labels.shape[1] - first
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    return logits, labels[:, first:]


@torch.no_grad()
def response_logps(model, examples: list[dict[str, Any]], pad_id: int,
                   batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Summed response log-probs of examples (input_ids + labels) under `model` and their response token counts,
    in the examples' order. Batches are formed in order of length, so that little of them is padding."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    sums, counts = np.zeros(len(examples)), np.zeros(len(examples), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        batch = {k: v.to(device) for k, v in padded_batch([examples[i]["input_ids"] for i in chunk],
                                                           [examples[i]["labels"] for i in chunk], pad_id).items()}
        logps, n = sequence_logps(*response_logits(model, batch["input_ids"], batch["attention_mask"],
                                                   batch["labels"]))
        sums[chunk] = logps.double().cpu().numpy()
        counts[chunk] = n.cpu().numpy()
    return sums, counts


def score_examples(model, examples: list[dict[str, Any]], pad_id: int, batch_size: int = 16) -> np.ndarray:
    """Summed response log-probs of examples (input_ids + labels) under `model`, batched."""
    return response_logps(model, examples, pad_id, batch_size)[0]


HALF_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


def _half(precision: str) -> torch.dtype | None:
    return HALF_DTYPES.get(str(precision).split("-")[0])


def compute_dtype(precision: str, loaded: str) -> str:
    """The dtype training's matrix products run in under Lightning's `precision` (bf16-mixed, bf16-true: bfloat16;
    16-mixed, 16-true: float16), for a model loaded in `loaded` (32-true: that dtype)."""
    half = _half(precision)
    return str(half).removeprefix("torch.") if half is not None else loaded


@contextlib.contextmanager
def training_precision(model, precision: str) -> Iterator[Any]:
    """`model` as training under Lightning's `precision` computes with it: autocast for *-mixed, a half-precision
    copy for *-true, the model itself otherwise. Reference log-probs scored in it match the policy's at step 0,
    where float32 ones would differ by the rounding of half precision alone."""
    half = _half(precision)
    if half is None:
        yield model
    elif str(precision).endswith("-true"):
        yield copy.deepcopy(model).to(half)
    else:
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=half):
            yield model
