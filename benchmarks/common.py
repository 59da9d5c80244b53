"""Shared by the benchmarks: the default project built in a temporary folder, and JSON results that describe
the machine that measured them."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from polyalign.params import Params, load_params
from polyalign.stages import bucketize, prepare
from polyalign.stages import init as init_stage

ROOT = Path(__file__).resolve().parents[1]


def default_project(root: Path, overrides: list[str] = (), with_model: bool = True) -> Params:
    """The project's params.yaml (quiet, W&B off) run through prepare, bucketize and, optionally, init."""
    params = load_params(ROOT / "params.yaml", ["logging.progress=false", "logging.wandb.mode=disabled",
                                                *overrides])
    prepare.run(params, root)
    bucketize.run(params, root)
    if with_model:
        init_stage.run(params, root)
    return params


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo): figures from different CPUs do not compare."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_result(path: Path, result: dict) -> None:
    result = {**result, "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(), "python": sys.version.split()[0],
                                    "platform": platform.platform()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
