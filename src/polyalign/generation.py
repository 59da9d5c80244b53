"""Batched sampling shared by pair sampling and evaluation: prompts from the one renderer, left-padded batches of
similar length, Hugging Face `generate` with its KV cache, the decoding settings from params, a stop at the
end-of-turn token, a progress bar, and a seed per batch so results do not depend on what else was generated.

Every sample keeps its token ids and whether it was cut by its token budget (`truncated`): a truncated sample did
not end, so training must not teach the model that it ended there (pairs) and evaluation counts it per bucket.
Budgets are per prompt: `bucket_budgets` derives one per bucket from the training answers' lengths, so a bucket
of long human answers is not measured against an arbitrary global cap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from polyalign.buckets.references import backoff_chain
from polyalign.log import progress_bar

MIN_BUDGET_RECORDS = 10  # a bucket with fewer training answers takes its budget from its backoff parent


@dataclass(frozen=True)
class Sample:
    """One generated response: its token ids (without the end-of-turn token) and whether the budget cut it."""

    ids: list[int]
    truncated: bool


def bucket_budgets(answer_lengths: Sequence[int], bucket_ids: Sequence[str], factor: float, quantile: float = 0.9,
                   minimum: int = 8) -> dict[str, int]:
    """A generation budget (new tokens) for every bucket and parent bucket of the training answers:
    ceil(factor * q90 of the answers' model-token lengths), at least `minimum`. Look one up with `budget_of`."""
    by_key: dict[str, list[int]] = {}
    for n, bid in zip(answer_lengths, bucket_ids):
        for key in backoff_chain(bid):
            by_key.setdefault(key, []).append(int(n))
    return {key: max(minimum, math.ceil(factor * float(np.quantile(v, quantile))))
            for key, v in by_key.items() if len(v) >= MIN_BUDGET_RECORDS or key.count("*") == 4}


def budget_of(budgets: Mapping[str, int], bucket_id: str, default: int) -> int:
    """The budget of the most specific bucket on `bucket_id`'s backoff chain that has one."""
    return next((budgets[k] for k in backoff_chain(bucket_id) if k in budgets), default)


def read_train_answers(path) -> tuple[list[str], list[str]]:
    """The training answers and their bucket ids: what `prompt_budgets` derives the bucket budgets from."""
    table = pq.read_table(path, columns=["human_answer", "bucket_id"])
    return table.column("human_answer").to_pylist(), table.column("bucket_id").to_pylist()


def prompt_budgets(g, tokenizer, train_answers: Sequence[str], train_buckets: Sequence[str],
                   bucket_ids: Sequence[str], prompt_lengths: Sequence[int], context: int | None) -> list[int]:
    """Each prompt's budget of new tokens under the generation settings `g` (params `generation` or
    `evaluate.generation`): `fixed` gives max_new_tokens; `bucket` gives the bucket budget (`bucket_budgets` of
    the training answers, tokenised by the model's tokenizer), at most max_new_tokens when that is set. Either way
    the prompt plus its budget must fit the model's context, when that is known."""
    if g.budget == "fixed":
        budgets = [g.max_new_tokens] * len(bucket_ids)
    else:
        lengths = [len(ids) for ids in tokenizer(list(train_answers), add_special_tokens=False)["input_ids"]]
        table = bucket_budgets(lengths, train_buckets, g.budget_factor)
        budgets = [budget_of(table, b, table["*|*|*|*"]) for b in bucket_ids]
        if g.max_new_tokens:
            budgets = [min(b, g.max_new_tokens) for b in budgets]
    if context:
        budgets = [max(1, min(b, context - n)) for b, n in zip(budgets, prompt_lengths)]
    return budgets


class SamplingFilter:
    """Temperature, then top-k, then top-p (nucleus) on the next-token scores: Hugging Face's
    `TemperatureLogitsWarper`, `TopKLogitsWarper` and `TopPLogitsWarper` (one token kept at least), in that order,
    as one logits processor for `generate`.

    Why not Hugging Face's own: its top-p sorts the whole vocabulary at every step with `torch.sort`, which on CPU
    was a quarter of pair sampling. `nucleus` does the same computation from the sorted values alone, with numpy's
    sort on CPU (about eight times faster there than torch's full sort); on an accelerator it uses torch's."""

    def __init__(self, temperature: float, top_k: int, top_p: float):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k:
            kth = scores.topk(min(self.top_k, scores.shape[-1])).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -math.inf)
        return nucleus(scores, self.top_p) if self.top_p < 1.0 else scores


def nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """`scores` with the tokens outside the nucleus set to -inf, as `TopPLogitsWarper` computes it: sorted in
    ascending order, a token goes when the cumulative probability up to it is at most 1 - top_p; the most likely
    token always stays. Only the sorted values are needed (the kept tokens are those at or above the smallest kept
    score), and on CPU numpy sorts values about five times faster than it sorts indices. Of several scores equal
    to that edge, as many stay as the sort kept, the first ones in vocabulary order."""
    if scores.device.type == "cpu":
        ascending = torch.from_numpy(np.sort(scores.float().numpy(), axis=-1)).to(scores.dtype)
    else:
        ascending = torch.sort(scores, dim=-1).values
    removed = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)  # a prefix: the cumulative sum only grows
    removed[..., -1] = False
    n_removed = removed.sum(dim=-1, keepdim=True)
    edge = ascending.gather(-1, n_removed)
    keep = scores > edge
    tied = scores == edge
    n_tied_kept = scores.shape[-1] - n_removed - keep.sum(dim=-1, keepdim=True)
    keep |= tied & (tied.cumsum(dim=-1) <= n_tied_kept)
    return scores.masked_fill(~keep, -math.inf)


def batch_plan(prompts: Sequence[Sequence[int]], budgets: Sequence[int], batch_size: int) -> list[list[int]]:
    """The batches `generate` forms: prompt indices sorted by budget and length, so that batches waste little
    padding and few steps, cut into runs of `batch_size`. Batch j is sampled with seed + j * batch_size."""
    order = sorted(range(len(prompts)), key=lambda i: (budgets[i], len(prompts[i])))
    return [order[start: start + batch_size] for start in range(0, len(order), batch_size)]


def per_prompt(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != n:
        raise ValueError("max_new_tokens must be one int or one budget per prompt")
    return budgets


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[Sequence[int]], *, stop_ids: Sequence[int],
             max_new_tokens: int | Sequence[int], temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             repetition_penalty: float = 1.0, num_samples: int = 1, batch_size: int = 32, seed: int = 0,
             progress: bool = True, description: str = "generating",
             batches: Sequence[int] | None = None) -> list[list[Sample]]:
    """For each prompt (token ids), `num_samples` samples (ids without the end-of-turn token, truncated flag).

    `max_new_tokens` is one budget for all prompts or one per prompt. temperature 0 decodes greedily. Prompts
    are batched by `batch_plan`; the output keeps the input order. A batch runs to its largest budget and each
    row is then cut to its own: sampling is autoregressive, so the tokens before a row's cut do not depend on
    how far the batch ran. `batches` (numbers in the plan) samples only those, leaving the other prompts' lists
    empty: a process's share when several generate together (`sharded_generate`)."""
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    budgets = per_prompt(max_new_tokens, len(prompts))
    plan = batch_plan(prompts, budgets, batch_size)
    todo = range(len(plan)) if batches is None else batches
    out: list[list[Sample]] = [[] for _ in prompts]
    sampling = temperature > 0
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=sum(len(plan[j]) for j in todo))
        for j in todo:
            chunk = plan[j]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):  # left padding: every prompt ends where generation starts
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            torch.manual_seed(seed + j * batch_size)
            result = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                max_new_tokens=max(budgets[i] for i in chunk), do_sample=sampling,
                # sampling: temperature, top-k and top-p in one processor of ours (see SamplingFilter), after the
                # repetition penalty as Hugging Face orders them; its own warpers are switched off
                temperature=1.0 if sampling else None, top_p=1.0 if sampling else None, top_k=0 if sampling else None,
                logits_processor=[SamplingFilter(temperature, top_k, top_p)] if sampling else None,
                repetition_penalty=repetition_penalty, num_return_sequences=num_samples,
                eos_token_id=list(stop_ids), pad_token_id=pad_id, use_cache=True,
            )
            new = result[:, width:].tolist()
            for row, i in enumerate(chunk):
                for sample in new[row * num_samples: (row + 1) * num_samples]:
                    out[i].append(cut_at_stop(sample[:budgets[i]], stop_ids))
            bar.advance(task, len(chunk))
    return out


def cut_at_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> Sample:
    """A sample ends at its first end-of-turn token (left out); without one it was cut by its budget."""
    stop = next((k for k, t in enumerate(tokens) if t in stop_ids), None)
    return Sample(list(tokens) if stop is None else list(tokens[:stop]), truncated=stop is None)
