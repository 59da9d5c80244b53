"""Batched sampling shared by pair sampling and evaluation: prompts from the one renderer, left-padded batches of
similar length, Hugging Face `generate` with its KV cache, the decoding settings from params, a stop at the
end-of-turn token, a progress bar, and a seed per batch so results do not depend on what else was generated."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from polyalign.log import progress_bar


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[Sequence[int]], *, stop_ids: Sequence[int], max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
             num_samples: int = 1, batch_size: int = 32, seed: int = 0, progress: bool = True,
             description: str = "generating") -> list[list[list[int]]]:
    """For each prompt (token ids), `num_samples` responses as token ids, without the end-of-turn token.

    temperature 0 decodes greedily. Prompts are sorted by length so that batches waste little padding; the
    output keeps the input order."""
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[list[int]]] = [[] for _ in prompts]
    sampling = temperature > 0
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(prompts))
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):  # left padding: every prompt ends where generation starts
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            torch.manual_seed(seed + start)
            result = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=sampling, temperature=temperature if sampling else None,
                top_p=top_p if sampling else None, top_k=(top_k or None) if sampling else None,
                repetition_penalty=repetition_penalty, num_return_sequences=num_samples,
                eos_token_id=list(stop_ids), pad_token_id=pad_id, use_cache=True,
            )
            new = result[:, width:].tolist()
            for row, i in enumerate(chunk):
                for sample in new[row * num_samples: (row + 1) * num_samples]:
                    cut = next((k for k, t in enumerate(sample) if t in stop_ids), len(sample))
                    out[i].append(sample[:cut])
            bar.advance(task, len(chunk))
    return out
