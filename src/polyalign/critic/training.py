"""Critic training data and objectives.

Every example is a *pair* (lo, hi) of scored rows (response, bucket) where `lo` must score closer to human
support than `hi`:
- `corruption`: a human response vs a corrupted version of it, both under its own bucket;
- `conditional`: a human response under its own bucket vs under a mismatched bucket;
- `model`: a human response vs a model sample of the same bucket (when `critic.model_samples` is given);
- `prompt`: a human response under its own prompt vs under another prompt of its language (only for a critic
  with `critic.use_prompt`: without these pairs nothing would teach it what the prompt says about a response).
Every row's prompt is `critic_prompt(record)`, the text the later stages pass when they score.
Each row also regresses to its support-band distance d(x, b) against the train references, over the critic's
visible features (the held-out ones are kept for validation).

loss = w_reg * mean (log1p s - log1p d)^2 + sum_t w_t * share_t * mean_t max(0, margin - (s_hi - s_lo))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from polyalign.critic.corruptions import corrupt
from polyalign.critic.model import critic_prompt
from polyalign.training.optim import make_optimizer

PAIR_TYPES = ("corruption", "conditional", "model", "prompt")


@dataclass
class Rows:
    """Scored rows: texts with the bucket they are scored under, and the kind of each row."""

    texts: list[str] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # human | mismatched | <corruption> | model | other_prompt
    language: list[str] = field(default_factory=list)

    def add(self, text: str, bucket: str, prompt: str, kind: str, language: str) -> int:
        self.texts.append(text)
        self.buckets.append(bucket)
        self.prompts.append(prompt)
        self.kinds.append(kind)
        self.language.append(language)
        return len(self.texts) - 1


@dataclass
class Pairs:
    rows: Rows
    lo: list[int] = field(default_factory=list)
    hi: list[int] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def build_pairs(records: list[dict], corruptions: list[str], rng: np.random.Generator, pools: dict[str, list[str]],
                edges: list[int], mismatch_pool: list[str], model_samples: list[dict] | None = None,
                prompt_pairs: bool = False) -> Pairs:
    pairs = Pairs(Rows())
    rows = pairs.rows
    human_by_bucket: dict[str, list[int]] = {}
    prompts = [critic_prompt(r) for r in records]  # the one place training reads a record's prompt
    prompts_by_language: dict[str, list[str]] = {}
    for r, prompt in zip(records, prompts):
        prompts_by_language.setdefault(r["language"], []).append(prompt)
    for r, prompt in zip(records, prompts):
        text, bucket, lang = r["human_answer"], r["bucket_id"], r["language"]
        h = rows.add(text, bucket, prompt, "human", lang)
        human_by_bucket.setdefault(bucket, []).append(h)
        for kind in corruptions:
            bad = corrupt(kind, text, lang, rng, pools, edges)
            if bad is None or bad == text:
                pairs.skipped[kind] = pairs.skipped.get(kind, 0) + 1
                continue
            pairs.lo.append(h)
            pairs.hi.append(rows.add(bad, bucket, prompt, kind, lang))
            pairs.types.append(0)
        others = [b for b in mismatch_pool if b != bucket]
        if others:
            other = others[int(rng.integers(len(others)))]
            pairs.lo.append(h)
            pairs.hi.append(rows.add(text, other, prompt, "mismatched", lang))
            pairs.types.append(1)
        if prompt_pairs:
            _add_prompt_pair(pairs, h, prompts_by_language[lang], rng)
    for sample in model_samples or []:
        humans = human_by_bucket.get(sample["bucket_id"])
        if not humans:
            pairs.skipped["model_sample_without_human"] = pairs.skipped.get("model_sample_without_human", 0) + 1
            continue
        h = humans[int(rng.integers(len(humans)))]
        # a sample that names its prompt is scored with it, else with the prompt of the human it is paired with
        prompt = critic_prompt(sample) if sample.get("question") else rows.prompts[h]
        pairs.lo.append(h)
        pairs.hi.append(rows.add(sample["response"], sample["bucket_id"], prompt, "model", rows.language[h]))
        pairs.types.append(2)
    return pairs


def _add_prompt_pair(pairs: Pairs, h: int, prompts: list[str], rng: np.random.Generator) -> None:
    """Human row `h` (lo) against the same response and bucket under another prompt of its language (hi)."""
    rows = pairs.rows
    other = prompts[int(rng.integers(len(prompts)))]
    if other == rows.prompts[h]:
        pairs.skipped["prompt_without_other"] = pairs.skipped.get("prompt_without_other", 0) + 1
        return
    pairs.lo.append(h)
    pairs.hi.append(rows.add(rows.texts[h], rows.buckets[h], other, "other_prompt", rows.language[h]))
    pairs.types.append(3)


def pair_loader(x: np.ndarray, buckets: np.ndarray, targets: np.ndarray, pairs: Pairs, batch_size: int,
                shuffle: bool, seed: int) -> DataLoader:
    lo, hi = np.asarray(pairs.lo), np.asarray(pairs.hi)
    tensors = [torch.from_numpy(a) for a in (x[lo], buckets[lo], targets[lo].astype(np.float32),
                                             x[hi], buckets[hi], targets[hi].astype(np.float32),
                                             np.asarray(pairs.types))]
    data, generator = TensorDataset(*tensors), torch.Generator().manual_seed(seed)
    order = RandomSampler(data, generator=generator) if shuffle else SequentialSampler(data)
    # the batches of DataLoader(batch_size=..., shuffle=..., generator=...), each read with one index per tensor
    # instead of row by row and stacked: that was a third of the critic's training time
    return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                      generator=generator)


def critic_loss(s_lo, s_hi, d_lo, d_hi, types, margin: float, weights: dict[str, float]):
    """The loss and its parts (see the module docstring)."""
    reg = ((torch.log1p(s_lo) - torch.log1p(d_lo)) ** 2 + (torch.log1p(s_hi) - torch.log1p(d_hi)) ** 2).mean() / 2
    hinge = torch.relu(margin - (s_hi - s_lo))
    parts = {"regression": reg}
    total = weights["regression"] * reg
    for t, name in enumerate(PAIR_TYPES):
        mask = types == t
        if mask.any():
            parts[name] = hinge[mask].mean()
            total = total + weights[name] * parts[name] * mask.float().mean()
    return total, parts


class CriticModule(L.LightningModule):
    """The critic's training: its losses on a batch of ordered pairs, optimised by `critic.optim` over
    `total_steps` optimizer steps."""

    def __init__(self, net, cfg, total_steps: int):
        super().__init__()
        self.net, self.cfg, self.total_steps = net, cfg, total_steps
        self.weights = {"regression": cfg.weight_regression, "conditional": cfg.weight_conditional,
                        "corruption": cfg.weight_corruption, "model": cfg.weight_model_samples,
                        "prompt": cfg.weight_prompt}

    def _step(self, batch, stage: str):
        x_lo, b_lo, d_lo, x_hi, b_hi, d_hi, types = batch
        loss, parts = critic_loss(self.net(x_lo, b_lo), self.net(x_hi, b_hi), d_lo, d_hi, types, self.cfg.margin,
                                  self.weights)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(types))
        for name, value in parts.items():
            self.log(f"{stage}/{name}", value, batch_size=len(types))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        return make_optimizer(self, self.cfg.optim, self.total_steps)
