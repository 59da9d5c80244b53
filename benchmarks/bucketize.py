"""Benchmark: `prepare` + `bucketize` on a synthetic bilingual corpus (default 200,000 records).

Answers are built from English and Chinese utterances of the chatterbot corpus, one to many sentences, so that
lengths span every bin; a quarter of the records are multi-turn with a short history. Writes records/second
for each stage and for bucketize's core (features + references) to a JSON file.

    python benchmarks/bucketize.py [--records 200000] [--out benchmarks/results/bucketize.json]

Target on a 2-core machine: >= 20,000 records/s for bucketize.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import yaml
from common import write_result

from polyalign.buckets.features import FEATURE_NAMES, compute_features
from polyalign.buckets.references import References
from polyalign.data.sources.chatterbot import corpus_dir
from polyalign.params import load_params
from polyalign.stages import bucketize, prepare


def utterances(lang_dir: str) -> list[str]:
    out = []
    for path in sorted((corpus_dir() / lang_dir).glob("*.yml")):
        for conv in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            if isinstance(conv, list):
                out.extend(str(u) for u in conv if str(u).strip())
    return out


def synthetic_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    pools = {"en": utterances("english"), "zh": utterances("chinese")}
    joiner = {"en": " ", "zh": ""}
    records = []
    for i in range(n):
        lang = "en" if rng.random() < 0.5 else "zh"
        pool = pools[lang]
        k = 1
        while rng.random() < 0.55 and k < 40:  # geometric: mostly short, a tail of long answers
            k += 1
        multi = rng.random() < 0.25
        history = [{"role": r, "text": rng.choice(pool)} for r in ("user", "assistant") * rng.randint(1, 3)] \
            if multi else []
        records.append({
            "id": f"syn-{i}", "dataset": "synthetic", "language": lang,
            "track": "multi" if multi else "single", "family": rng.choice(["assistant", "qa", "dialogue"]),
            "question": rng.choice(pool), "context": "", "dialogue_history": history,
            "human_answer": joiner[lang].join(rng.choice(pool) for _ in range(k)),
            "group_id": str(i // 4),
        })
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bucketize.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records = synthetic_records(args.records, args.seed)
        source = root / "synthetic.jsonl"
        source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        params = load_params(None, [f"data.sources=[{{kind: polyalign, path: {source}}}]", "logging.progress=false"])

        t0 = time.perf_counter()
        prep = prepare.run(params, root)
        t1 = time.perf_counter()
        buck = bucketize.run(params, root)
        t2 = time.perf_counter()

        # bucketize's core on the same records: features of every split + references from train
        import pyarrow.parquet as pq

        tables = {s: pq.read_table(root / f"data/prepared/{s}.parquet") for s in prepare.SPLITS}
        texts = [t for s in prepare.SPLITS for t in tables[s]["human_answer"].to_pylist()]
        t3 = time.perf_counter()
        X = compute_features(texts)
        n_train = tables["train"].num_rows
        References.build(X[:n_train], bucketize.bucket_ids_of(tables["train"]), FEATURE_NAMES,
                         min_bucket_size=params.buckets.min_bucket_size)
        t4 = time.perf_counter()

    n = prep["records"]
    chars = sum(len(t) for t in texts)
    result = {
        "records_generated": args.records,
        "records_after_prepare": n,
        "mean_answer_chars": round(chars / len(texts), 1),
        "prepare_seconds": round(t1 - t0, 2),
        "prepare_records_per_s": round(args.records / (t1 - t0)),
        "bucketize_seconds": round(t2 - t1, 2),
        "bucketize_records_per_s": round(n / (t2 - t1)),
        "features_and_references_seconds": round(t4 - t3, 2),
        "features_and_references_records_per_s": round(n / (t4 - t3)),
        "buckets_train": buck["buckets_train"],
        "target_bucketize_records_per_s": 20_000,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
