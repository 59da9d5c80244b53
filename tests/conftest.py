"""Shared test helpers. Tests run offline: no hub, no DVC analytics, W&B off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N`: the cores are shared out between the workers, in each worker and in the CLI processes its
    # tests start (torch would otherwise give every one of them all the cores, and each would run many times slower)
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _threads
    import torch

    torch.set_num_threads(int(_threads))

# The modules that take longest, first in the order tests are handed out. Under `make test` (two workers, a module
# per worker, in collection order: --dist loadscope --no-loadscope-reorder) the DVC pipeline module alone takes
# about as long as all the others together, so it must start at once, not after a worker's first few modules; the
# other long ones go next so that what is left at the end is short.
LONGEST_FIRST = ("test_pipeline.py", "test_critic.py", "test_sft.py", "test_hdpo_resume.py", "test_console.py",
                 "test_evaluate.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order


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


@pytest.fixture(scope="session")
def paired_tiny(tmp_path_factory) -> Path:
    """The tiny project through `pairs` (sft_project.PAIRED), built once per session (once per xdist worker).
    It is shared: a test module copies it (`copy_project`) before it writes anything."""
    from sft_project import paired_project

    return paired_project(tmp_path_factory.mktemp("paired_tiny"))
