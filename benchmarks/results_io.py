"""Shared by the benchmarks: write a result as JSON with a description of the machine that measured it."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def write_result(path: Path, result: dict) -> None:
    result = {**result, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                    "platform": platform.platform()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
