"""Benchmark: SFT training throughput and padding for the default model on the embedded corpus.

For `balance: none` and `balance: sampler` it trains the default model (params.yaml) for `--steps` optimizer
steps and reports training tokens/s (all tokens and response tokens) and the share of padding tokens per batch
(mean and worst batch over one epoch of the default batching). Writes JSON.

    python benchmarks/sft_throughput.py [--steps 120] [--out benchmarks/results/sft_throughput.json]

Target: padding share under 25% with the default batching.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT, default_project, write_result

from polyalign.stages import sft
from polyalign.training.data import SFTDataModule


def padding_per_batch(data: SFTDataModule) -> np.ndarray:
    sampler = data.train_sampler()
    lengths = np.array([len(x) for x in data.train["input_ids"]])
    return np.array([1 - lengths[b].sum() / (len(b) * lengths[b].max()) for b in sampler])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sft_throughput.json")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = default_project(root, [f"sft.optim.max_steps={args.steps}"])
        for variant in ("global", "bucket"):
            v = params.sft.variants[variant]
            data = SFTDataModule(root / params.paths.buckets, root / "models/base", params.prompt, params.sft, v,
                                 params.seed)
            data.setup()
            padding = padding_per_batch(data)
            report = sft.run(params, variant, root=root)
            results[f"balance_{v.balance}"] = {
                "variant": variant,
                "steps": report["steps"],
                "batch_size": params.sft.batch_size,
                "tokens_per_s": report["tokens_per_s"],
                "response_tokens_per_s": report["response_tokens_per_s"],
                "padding_share_trained": report["padding_share"],
                "padding_share_mean_per_batch": round(float(padding.mean()), 4),
                "padding_share_worst_batch": round(float(padding.max()), 4),
            }
    results["target_padding_share"] = 0.25
    results["model"] = {k: getattr(params.model, k) for k in ("hidden_size", "num_layers", "vocab_size")}
    write_result(args.out, results)


if __name__ == "__main__":
    main()
