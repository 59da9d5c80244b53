"""Shared test helpers. Tests run offline: no hub, no DVC analytics, W&B off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file of ../shared/data; the test is skipped (with the reason) on a clone without it."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"needs {path} (real data from ../shared/data, absent on this checkout)")
    return path


def write_params(folder: Path, **sections) -> Path:
    """params.yaml in `folder`: the project defaults with `sections` merged over them (one level deep)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(params.get(name), dict):
            params[name].update(value)
        else:
            params[name] = value
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder, as a user would run `polyalign` in their project."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
