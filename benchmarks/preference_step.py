"""Benchmark: training-step time of our preference training against TRL's `DPOTrainer` (`bench` extra, trl 1.16).

Same tiny model (the default scratch model from `init`), same pairs (chosen = a human answer, rejected = another
human answer of the same language), same batch size and length limit, measured in one run. Reported: median
seconds per optimizer step after warm-up for
  ours-hdpo-precomputed   HDPO with reference log-probs from the pairs (no reference forward pass)
  ours-dpo-precomputed    DPO, same
  ours-dpo-frozen         DPO with a frozen reference model scored on the fly (what TRL does by default)
  trl-dpo                 TRL DPOTrainer, reference model on the fly
  trl-dpo-precomputed     TRL DPOTrainer with precompute_ref_log_probs=True
and the ratios ours / TRL.

    python benchmarks/preference_step.py [--steps 30] [--batch-size 8] [--out benchmarks/results/preference_step.json]

Target: ours no slower than TRL's, and faster with precomputed reference log-probs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import torch
from common import ROOT, default_project, write_result

from polyalign.buckets.features import compute_features
from polyalign.buckets.references import References
from polyalign.modeling.model import load_model_dir
from polyalign.modeling.prompts import PromptRenderer, chat_messages
from polyalign.training.preference import (
    PairCollator,
    PreferenceModule,
    encode_pair,
    pair_dataloader,
    score_examples,
)


class StepTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, *args):
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self._start)


def make_pairs(root: Path, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = pq.read_table(root / "data/buckets/train.parquet").to_pylist()
    rows = [rows[i] for i in rng.permutation(len(rows))[:n]]
    by_lang: dict[str, list[str]] = {}
    for r in rows:
        by_lang.setdefault(r["language"], []).append(r["human_answer"])
    refs = References.load(root / "data/buckets/references.json")
    pairs = []
    for r in rows:
        pool = [a for a in by_lang[r["language"]] if a != r["human_answer"]]
        pairs.append({**r, "chosen": r["human_answer"], "rejected": pool[int(rng.integers(len(pool)))],
                      "weight": 1.0})
    buckets = [p["bucket_id"] for p in pairs]
    d_c = refs.distance(compute_features([p["chosen"] for p in pairs]), buckets)
    d_r = refs.distance(compute_features([p["rejected"] for p in pairs]), buckets)
    for p, c, rj in zip(pairs, d_c, d_r):
        p.update(d_chosen=float(c), d_rejected=float(rj))
    return pairs


def ours(params, model_dir: Path, pairs: list[dict], variant: str, reference: str, steps: int, batch: int) -> float:
    h = params.hdpo.model_copy(update={"reference": reference, "batch_size": batch, "max_steps": steps})
    v = params.hdpo.variants[variant]
    _, tokenizer = load_model_dir(model_dir)
    collate = PairCollator(tokenizer.pad_token_id, {b: i for i, b in enumerate(sorted({p["bucket_id"] for p in pairs}))},
                           uniform=v.weighting == "uniform")
    module = PreferenceModule(str(model_dir), h, v, sorted(collate.bucket_index), steps)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        use_distributed_sampler=False, limit_val_batches=0)
    trainer.fit(module, pair_dataloader(pairs, collate, batch, train=True, seed=0, trainer=trainer))
    return statistics.median(timer.times[5:])


def trl_dpo(model_dir: Path, pairs: list[dict], renderer: PromptRenderer, conditioning: str, steps: int, batch: int,
            precompute: bool, max_length: int) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = load_model_dir(model_dir)
    data = Dataset.from_list([{
        "prompt": chat_messages(p, conditioning),
        "chosen": [{"role": "assistant", "content": p["chosen"]}],
        "rejected": [{"role": "assistant", "content": p["rejected"]}],
    } for p in pairs])

    class Timer(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, *args, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            Timer.times.append(time.perf_counter() - self._start)

    Timer.times = []
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, use_cpu=True, bf16=False,
                         report_to=[], logging_steps=10**6, save_strategy="no", max_length=max_length, beta=0.1,
                         learning_rate=5e-4, precompute_ref_log_probs=precompute, dataloader_num_workers=0,
                         disable_tqdm=True, seed=0)
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             callbacks=[Timer()])
        trainer.train()
    return statistics.median(Timer.times[5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/preference_step.json")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = default_project(root)
        model_dir = root / "models/base"
        model, tokenizer = load_model_dir(model_dir)
        renderer = PromptRenderer(tokenizer, params.prompt.conditioning, params.prompt.max_prompt_tokens,
                                  params.prompt.max_tokens)
        pairs = make_pairs(root, args.pairs, params.seed)
        for p in pairs:
            p.update(encode_pair(renderer, p))
        chosen = [{"input_ids": p["chosen_ids"], "labels": p["chosen_labels"]} for p in pairs]
        rejected = [{"input_ids": p["rejected_ids"], "labels": p["rejected_labels"]} for p in pairs]
        for p, c, r in zip(pairs, score_examples(model, chosen, tokenizer.pad_token_id),
                           score_examples(model, rejected, tokenizer.pad_token_id)):
            p.update(ref_chosen_logp=float(c), ref_rejected_logp=float(r))
        steps, batch = args.steps, args.batch_size
        seconds = {
            "ours-hdpo-precomputed": ours(params, model_dir, pairs, "hdpo", "precomputed", steps, batch),
            "ours-dpo-precomputed": ours(params, model_dir, pairs, "dpo", "precomputed", steps, batch),
            "ours-dpo-frozen": ours(params, model_dir, pairs, "dpo", "frozen", steps, batch),
            "trl-dpo": trl_dpo(model_dir, pairs, renderer, params.prompt.conditioning, steps, batch, False,
                               params.prompt.max_tokens),
            "trl-dpo-precomputed": trl_dpo(model_dir, pairs, renderer, params.prompt.conditioning, steps, batch,
                                           True, params.prompt.max_tokens),
        }
    write_result(args.out, {
        "steps": steps, "batch_size": batch, "median_seconds_per_step": {k: round(v, 4) for k, v in seconds.items()},
        "ratio_ours_dpo_frozen_vs_trl_dpo": round(seconds["ours-dpo-frozen"] / seconds["trl-dpo"], 3),
        "ratio_ours_dpo_precomputed_vs_trl_dpo": round(seconds["ours-dpo-precomputed"] / seconds["trl-dpo"], 3),
        "ratio_ours_hdpo_precomputed_vs_trl_dpo": round(seconds["ours-hdpo-precomputed"] / seconds["trl-dpo"], 3),
        "ratio_ours_dpo_precomputed_vs_trl_dpo_precomputed": round(
            seconds["ours-dpo-precomputed"] / seconds["trl-dpo-precomputed"], 3),
        "target": "ratios <= 1 (ours no slower), and precomputed faster than TRL's on-the-fly reference",
    })


if __name__ == "__main__":
    main()
