"""Benchmark: the `evaluate` stage on a project whose models exist (by default this checkout after
`make demo` / `dvc repro`), once with an empty generation cache and once with it warm (a metric change).

    python benchmarks/evaluate.py [--project .] [--out benchmarks/results/evaluate.json]

Reports and the cache go to a temporary folder, so the project's own outputs are left alone.
Target: the CPU default (4 methods, the full test split) within 180 s, generation dominating.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_result

from polyalign.params import load_params
from polyalign.stages import evaluate

TARGET_S = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=ROOT)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/evaluate.json")
    args = parser.parse_args()
    project = args.project.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        params = load_params(project / "params.yaml", [
            "logging.progress=false", "logging.wandb.mode=disabled", f"paths.cache={tmp}/cache",
            f"paths.reports={tmp}/reports"])
        missing = [m for m in params.evaluate.methods if not (evaluate.model_dir(m, params, project) /
                                                              "config.json").is_file()]
        if missing:
            sys.exit(f"no model for {missing} in {project}: run `make demo` (dvc repro) there first")
        runs = {}
        for label in ("cold", "warm"):
            start = time.perf_counter()
            built = evaluate.run(params, project)
            runs[label] = {"wall_s": round(time.perf_counter() - start, 2),
                           "per_method_s": {r["method"]: {k: round(v, 2) for k, v in r["timing_s"].items()}
                                            for r in built["results"]}}
        cold = runs["cold"]["per_method_s"].values()
        write_result(args.out, {
            "benchmark": "evaluate", "methods": params.evaluate.methods, "test_prompts": built["human"]["n"],
            "bootstrap_resamples": params.evaluate.bootstrap_resamples, **runs,
            "cold_breakdown_s": {k: round(sum(m[k] for m in cold), 2) for k in ("generation", "nll", "metrics")},
            "target_s": TARGET_S, "meets_target": runs["cold"]["wall_s"] <= TARGET_S,
        })


if __name__ == "__main__":
    main()
