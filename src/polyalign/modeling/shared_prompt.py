"""Scoring several responses to one prompt with a single pass over the prompt.

A preference batch holds, for each prompt, its chosen and rejected responses, with the NLL anchor also the human
answer, and for KTO another pair's rejected response. Scored as whole sequences, each prompt runs through the model
once per response. On the default corpus prompts are most of those tokens (about 50 prompt tokens against 14 response
tokens a side). So here each prompt runs once, its keys and values are kept, and each group of responses runs
against copies of them. The log-probs and gradients are the same up to float rounding (tested). The prompt's own
pass and the cache copies have a cost of their own, so `examples_batch` shares only where that is cheaper (on the
default model: HDPO's steps with the NLL anchor, about 12% faster; not DPO's).

Batch layout (`shared_prompt_batch`):
- `prompt_input_ids` and `prompt_attention_mask` are left-padded, so every prompt ends in the last column, whose
  logits predict each response's first token.
- Each group has `<group>_input_ids`, `<group>_labels` and `<group>_attention_mask`, right-padded. Row j of a group
  continues prompt row j mod n.
Positions are passed explicitly, so padding never shifts them. The cache is used only when it is a plain dynamic one.
A model with sliding-window layers or a recurrent state, or one that trains with gradient checkpointing (which turns
the cache off), gets each response scored after its prompt as one whole sequence, in the same layout.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from weakref import WeakKeyDictionary

import numpy as np
import torch
import torch.nn.functional as F

from polyalign.modeling.prompts import IGNORE_INDEX
from polyalign.modeling.scoring import padded_batch, response_logits, sequence_logps


def split_example(input_ids: Sequence[int], labels: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """An example's prompt (every token before the first labelled one), response ids and response labels."""
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return list(input_ids[:first]), list(input_ids[first:]), list(labels[first:])


def shared_prompt_batch(prompts: Sequence[Sequence[int]],
                        groups: Mapping[str, Sequence[tuple[Sequence[int], Sequence[int]]]],
                        pad_id: int) -> dict[str, torch.Tensor]:
    """The layout above from n prompts and, per group name, (response ids, response labels) rows: row j of a group
    continues prompt j mod n (chosen then rejected: 2n rows)."""
    n, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    batch = {"prompt_input_ids": ids, "prompt_attention_mask": mask}
    for name, responses in groups.items():
        if len(responses) % n:
            raise ValueError(f"group {name!r} has {len(responses)} responses for {n} prompts")
        batch.update({f"{name}_{key}": value for key, value in padded_batch(
            [list(r[0]) for r in responses], [list(r[1]) for r in responses], pad_id).items()})
    return batch


def group_logps(model, batch: Mapping[str, torch.Tensor],
                groups: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per group: the summed log-probs of its responses and how many tokens each scores ([rows], [rows]). A batch
    without `prompt_*` keys holds whole sequences (see `examples_batch`)."""
    if "prompt_input_ids" not in batch:
        return {name: sequence_logps(*response_logits(model, batch[f"{name}_input_ids"],
                                                      batch[f"{name}_attention_mask"], batch[f"{name}_labels"]))
                for name in groups}
    prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    kept = _prompt_cache(model, prompt_ids, prompt_mask) if _may_share(model) else None
    out = {}
    for name in groups:
        ids, labels, mask = (batch[f"{name}_{key}"] for key in ("input_ids", "labels", "attention_mask"))
        rows = torch.arange(len(ids), device=ids.device) % len(prompt_ids)
        if ids.shape[1] == 0:  # no response tokens at all (every response cut away)
            zero = torch.zeros(len(ids), device=ids.device)
            out[name] = (zero, zero.long())
            continue
        if kept is None:
            last, logits = _whole(model, prompt_ids[rows], prompt_mask[rows], ids, mask)
        else:
            last, logits = _continued(model, kept, rows, prompt_mask, ids, mask)
        # the prompt's last position predicts the first response token, each response position the next one
        first = labels[:, 0]
        first_logps = -F.cross_entropy(last.float(), first.clamp(min=0), reduction="none") * (first != IGNORE_INDEX)
        logps, lengths = sequence_logps(logits, labels)
        out[name] = (first_logps + logps, lengths + (first != IGNORE_INDEX).long())
    return out


_UNSHARED: WeakKeyDictionary = WeakKeyDictionary()  # models whose cache turned out not to be plain dynamic


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper passes kwargs on


def _parameters(model) -> Mapping[str, inspect.Parameter]:
    return _forward_parameters(type(_base(model)))


@functools.cache
def _forward_parameters(cls) -> Mapping[str, inspect.Parameter]:
    """A model class's forward parameters, read once per class rather than at every step."""
    return inspect.signature(cls.forward).parameters


def _cache_keyword(model) -> str | None:
    names = _parameters(model)
    return next((k for k in ("cache", "past_key_values") if k in names), None)


def _may_share(model) -> bool:
    base = _base(model)
    checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5.x; older: the next
    checkpointing = getattr(base, "is_gradient_checkpointing", False) if checkpointing is None else checkpointing
    return base not in _UNSHARED and _cache_keyword(model) is not None and not (checkpointing and base.training)


def _keep(model, n: int) -> dict[str, int]:
    return {"logits_to_keep": n} if "logits_to_keep" in _parameters(model) else {}


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position in its sequence without the padding (left padding does not shift positions)."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def _prompt_cache(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """The prompts' keys and values per layer and their last position's logits, or None when the model's cache is
    not a plain dynamic one (the caller then scores whole sequences)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=_positions(prompt_mask),
                use_cache=True, **_keep(model, 1))
    cache = getattr(out, "cache", None)
    cache = getattr(out, "past_key_values", None) if cache is None else cache
    if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        _UNSHARED[_base(model)] = True
        return None
    return [(layer.keys, layer.values) for layer in cache.layers], out.logits[:, -1:]


def _continued(model, kept, rows: torch.Tensor, prompt_mask: torch.Tensor, ids: torch.Tensor,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of the prompt's last position [rows, vocab] and of each response position [rows, length, vocab]."""
    from transformers.cache_utils import DynamicCache

    layers, last = kept
    cache = DynamicCache(ddp_cache_data=[(keys[rows], values[rows]) for keys, values in layers])
    positions = prompt_mask.sum(dim=1)[rows, None] + torch.arange(ids.shape[1], device=ids.device)
    logits = model(input_ids=ids, attention_mask=torch.cat([prompt_mask[rows], mask], dim=1), position_ids=positions,
                   use_cache=True, **{_cache_keyword(model): cache}).logits
    return last[rows, -1], logits


def _whole(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, ids: torch.Tensor,
           mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same logits as `_continued`, from each prompt and response joined into one sequence."""
    joined_mask = torch.cat([prompt_mask, mask], dim=1)
    keep = ids.shape[1] + 1
    logits = model(input_ids=torch.cat([prompt_ids, ids], dim=1), attention_mask=joined_mask,
                   position_ids=_positions(joined_mask), **_keep(model, keep)).logits
    return logits[:, -keep], logits[:, -keep + 1:]


CALL_TOKENS = 256  # what one more pass of the model costs beyond its tokens, in tokens (default model, CPU)


def examples_batch(n: int, groups: Mapping[str, Sequence[Mapping[str, Sequence[int]]]], pad_id: int,
                   call_tokens: float = CALL_TOKENS) -> dict[str, torch.Tensor]:
    """A batch of whole examples (`input_ids` with the prompt, `labels`) by group, example j of a group continuing
    prompt j mod n (the first group's first n examples give the prompts; another prompt is the caller's bug:
    ValueError). Laid out as `shared_prompt_batch` when that is cheaper, else as whole right-padded sequences per
    group (no `prompt_*` keys). The cost of a layout is its padded tokens plus `call_tokens` per pass of the model
    (one a group, and the prompts' own pass when shared). Measured on the default model, a pass cost about as much
    as 256 tokens: DPO's batches there (a prompt pass more, 22% fewer tokens) were no faster shared, HDPO's with
    the NLL anchor's human answers (three passes against two, a third fewer tokens) about 12% faster. Long prompts
    share in any case."""
    split = {name: [split_example(e["input_ids"], e["labels"]) for e in examples] for name, examples in groups.items()}
    prompts = [prompt for prompt, _, _ in next(iter(split.values()))[:n]]
    for name, parts in split.items():
        if any(prompt != prompts[j % n] for j, (prompt, _, _) in enumerate(parts)):
            raise ValueError(f"group {name!r} holds an example that does not continue its row's prompt")
    shared = n * max(map(len, prompts)) + sum(len(parts) * max(len(ids) for _, ids, _ in parts)
                                             for parts in split.values()) + call_tokens * (len(groups) + 1)
    whole = sum(len(examples) * max(len(e["input_ids"]) for e in examples)
                for examples in groups.values()) + call_tokens * len(groups)
    if shared >= whole:
        return {f"{name}_{key}": value for name, examples in groups.items() for key, value in padded_batch(
            [list(e["input_ids"]) for e in examples], [list(e["labels"]) for e in examples], pad_id).items()}
    return shared_prompt_batch(prompts, {name: [(ids, labels) for _, ids, labels in parts]
                                         for name, parts in split.items()}, pad_id)


@torch.no_grad()
def pair_logps(model, pairs: Sequence[tuple[Mapping, Mapping]], pad_id: int,
               batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Summed response log-probs of the chosen and of the rejected example of each pair under `model`, batched by
    length (`batch_size` pairs, laid out by `examples_batch`)."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: max(len(e["input_ids"]) for e in pairs[i]))
    chosen, rejected = np.zeros(len(pairs)), np.zeros(len(pairs))
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        batch = examples_batch(len(chunk), {"pair": [pairs[i][0] for i in chunk] + [pairs[i][1] for i in chunk]},
                               pad_id)
        logps = group_logps(model, {k: v.to(device) for k, v in batch.items()}, ("pair",))["pair"][0]
        logps = logps.double().cpu().numpy()
        chosen[chunk], rejected[chunk] = logps[: len(chunk)], logps[len(chunk):]
    return chosen, rejected
