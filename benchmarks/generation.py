"""Benchmark: batched generation (`polyalign.generation.generate`) against a one-prompt-at-a-time `generate`
loop on the default model, greedy, on the same prompts (so both produce the same tokens).

    python benchmarks/generation.py [--prompts 64] [--batch-size 32] [--out benchmarks/results/generation.json]

Target: >= 5x the tokens/s of the one-at-a-time loop at batch 32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from common import ROOT, default_project, write_result

from polyalign.generation import generate
from polyalign.modeling.model import load_model_dir
from polyalign.modeling.prompts import PromptRenderer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/generation.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = default_project(root)
        model, tokenizer = load_model_dir(root / "models/base")
        renderer = PromptRenderer(tokenizer, params.prompt.conditioning, params.prompt.max_prompt_tokens,
                                  params.prompt.max_tokens)
        records = pq.read_table(root / "data/buckets/val.parquet").to_pylist()[: args.prompts]
        prompts = [renderer.prompt_ids(r) for r in records]
    common = {"stop_ids": renderer.eot_ids, "max_new_tokens": args.max_new_tokens, "temperature": 0,
              "progress": False}
    start = time.perf_counter()
    batched = generate(model, tokenizer, prompts, batch_size=args.batch_size, **common)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    single = [generate(model, tokenizer, [p], batch_size=1, **common)[0] for p in prompts]
    single_s = time.perf_counter() - start
    tokens = sum(len(s[0].ids) for s in batched)
    write_result(args.out, {
        "prompts": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "generated_tokens": tokens, "same_tokens": batched == single,
        "batched_tokens_per_s": round(tokens / batched_s, 1), "one_at_a_time_tokens_per_s": round(tokens / single_s, 1),
        "speedup": round(single_s / batched_s, 2), "target_speedup": 5.0,
    })


if __name__ == "__main__":
    main()
