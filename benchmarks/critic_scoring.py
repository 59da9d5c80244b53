"""Benchmark: responses scored per second by `Critic.distance` with the `ngram` encoder.

Trains the default critic on the embedded corpus (params.yaml), then scores 50,000 bilingual responses made
from chatterbot utterances (one to many sentences, English and Chinese, under their own buckets). Writes JSON.

    python benchmarks/critic_scoring.py [--responses 50000] [--out benchmarks/results/critic_scoring.json]

Target on a 2-core machine: >= 5,000 responses/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bucketize import synthetic_records
from common import ROOT, default_project, write_result

from polyalign.critic.model import Critic
from polyalign.stages import fit_critic
from polyalign.text import count_tokens, length_bin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/critic_scoring.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = default_project(root, with_model=False)
        fit_critic.run(params, root)
        critic = Critic.load(root / "models/critic")
        bins = params.data.length_bins
        records = synthetic_records(args.responses, seed=1)
        texts = [r["human_answer"] for r in records]
        buckets = [f"{r['language']}|{r['track']}|{r['family']}|"
                   f"{length_bin(count_tokens(r['human_answer']), bins.edges, bins.names)}" for r in records]
        start = time.perf_counter()
        scores = critic.distance(texts, buckets, progress=False)
        seconds = time.perf_counter() - start
    result = {
        "responses": len(texts),
        "encoder": params.critic.encoder,
        "seconds": round(seconds, 2),
        "responses_per_s": round(len(texts) / seconds),
        "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
        "score_mean": round(float(scores.mean()), 4),
        "target_responses_per_s": 5000,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
