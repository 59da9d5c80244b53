"""Benchmark: how reliably the models answer in the prompt's language, from k samples per prompt.

    python benchmarks/language_share.py [--project .] [--split test] [--k 8] [--methods sft@global sft@bucket]
                                        [--out benchmarks/results/language_share.json]

The report's language shares (README: The default model) come from one sampled response per prompt, about a
hundred prompts per language, so one draw moves them by about 0.03. This samples `k` responses per prompt of the
split with the evaluation's decoding (temperature, top-p, bucket budgets, seed) and gives, per language:
- `share`: the share of responses in the prompt's language (to zh prompts a CJK share of letters of at least
  0.5, to en prompts at most 0.1; a response without letters counts as a miss, as in the README's table);
- `se`: its standard error with the prompts as clusters (the k samples of one prompt are not independent);
- `p_single_draw_meets_target`: how often one response per prompt, drawn from the k, has a share of at least
  `target` (0.9) — the chance that a report like the default one shows the target met.
Run it on a project whose models exist (after `make demo`). Tune on val; the test split is for reporting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT, write_result

from polyalign.evaluation.naturalness import EN_MAX_CJK_SHARE, ZH_MIN_CJK_SHARE, cjk_letter_share
from polyalign.generation import read_train_answers
from polyalign.modeling.model import Loading, inference_device, load_model_dir
from polyalign.modeling.tokenizer import decode_response
from polyalign.params import load_params
from polyalign.sampling import sample_responses
from polyalign.stages import evaluate

TARGET = 0.9
DRAWS = 10_000  # single-draw resamples for p_single_draw_meets_target


def in_language(text: str, language: str) -> bool:
    share = cjk_letter_share(text)  # NaN without letters: a miss either way
    return share >= ZH_MIN_CJK_SHARE if language == "zh" else share <= EN_MAX_CJK_SHARE


def summary(hits: np.ndarray, seed: int) -> dict:
    """`hits` [prompts, k] of one language: the share, its prompt-clustered standard error, and how often one
    sample per prompt reaches the target."""
    per_prompt = hits.mean(axis=1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, hits.shape[1], size=(DRAWS, hits.shape[0]))
    single = hits[np.arange(hits.shape[0]), picks].mean(axis=1)
    return {"prompts": int(hits.shape[0]), "share": round(float(per_prompt.mean()), 4),
            "se": round(float(per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))), 4),
            "p_single_draw_meets_target": round(float((single >= TARGET).mean()), 3),
            "prompts_never_in_language": int((per_prompt == 0).sum())}


def measure(method: str, records: list[dict], train: dict[str, list[str]], params, project: Path, k: int) -> dict:
    folder = evaluate.model_dir(method, params, project)
    model, tokenizer = load_model_dir(folder, f"the model of {method}", Loading.from_params(params))
    model.to(inference_device(params.trainer.accelerator))  # where `evaluate` generates
    renderer, _, prompts, budgets = evaluate.method_prompts(folder, tokenizer, records, train, params)
    start = time.perf_counter()
    samples = sample_responses(params.evaluate.generation, params, folder, model, tokenizer, prompts,
                               stop_ids=renderer.eot_ids, budgets=budgets, num_samples=k, seed=params.seed,
                               description=f"sampling ({method})")
    seconds = time.perf_counter() - start
    hits = np.array([[in_language(decode_response(tokenizer, s.ids, s.truncated), r["language"]) for s in outs]
                     for r, outs in zip(records, samples)])
    languages = np.array([r["language"] for r in records])
    result = {lang: summary(hits[languages == lang], params.seed) for lang in ("zh", "en") if (languages == lang).any()}
    return {**result, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=ROOT)
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--k", type=int, default=8, help="samples per prompt")
    parser.add_argument("--methods", nargs="+", default=["sft@global", "sft@bucket"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/language_share.json")
    args = parser.parse_args()
    project = args.project.resolve()
    params = load_params(project / "params.yaml", ["logging.progress=false", "logging.wandb.mode=disabled",
                                                   f"evaluate.split={args.split}"])
    missing = [m for m in args.methods if not (evaluate.model_dir(m, params, project) / "config.json").is_file()]
    if missing:
        sys.exit(f"no model for {missing} in {project}: run `make demo` (dvc repro) there first")
    records = evaluate.read_split(params, project)
    answers, buckets = read_train_answers(project / params.paths.buckets / "train.parquet")
    train = {"answers": answers, "buckets": buckets}
    results = {m: measure(m, records, train, params, project, args.k) for m in args.methods}
    write_result(args.out, {"benchmark": "language_share", "split": args.split, "k": args.k, "target": TARGET,
                            "decoding": params.evaluate.generation.model_dump(), "methods": results})


if __name__ == "__main__":
    main()
