"""The real-model path as far as a CPU can check it: the recipes validate and lay over params.yaml, they turn into
`dvc exp run` flags, and the GPU check skips without a GPU and runs its code on a tiny model with --smoke."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from polyalign.params import load_params, set_flags
from sft_project import cli

RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_recipes_are_there():
    assert {p.name for p in RECIPES} >= {"qwen2.5-0.5b.yaml", "qwen2.5-7b-fsdp.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_a_recipe_lays_over_params_yaml_and_validates(recipe):
    params = load_params([ROOT / "params.yaml", recipe])
    assert params.model.source == "pretrained" and params.model.name_or_path.startswith("Qwen/")
    assert params.generation.backend == params.evaluate.generation.backend == "vllm"
    assert params.trainer.precision == "bf16-mixed"
    assert params.data == load_params(ROOT / "params.yaml").data  # the data stay params.yaml's
    assert params.sft.variants == load_params(ROOT / "params.yaml").sft.variants  # sections merge key by key


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_a_recipes_dvc_flags_set_the_same_params(recipe):
    flags = set_flags(recipe)
    assert flags[::2] == ["-S"] * (len(flags) // 2) and all(" " not in f for f in flags)
    via_flags = load_params(ROOT / "params.yaml", flags[1::2])  # what `dvc exp run -S ...` writes
    assert via_flags == load_params([ROOT / "params.yaml", recipe])


def test_several_params_files_on_the_command_line(in_tmp):
    (in_tmp / "base.yaml").write_text("seed: 7\nsft:\n  batch_size: 4\n", encoding="utf-8")
    (in_tmp / "over.yaml").write_text("sft:\n  optim:\n    lr: 0.01\n", encoding="utf-8")
    out = cli(["params", "--params", "base.yaml", "--params", "over.yaml"], in_tmp).stdout
    assert "seed: 7" in out and "batch_size: 4" in out and "lr: 0.01" in out
    missing = cli(["params", "--params", "base.yaml", "--params", "nope.yaml"], in_tmp, check=False)
    assert missing.returncode == 2 and "params file not found: nope.yaml" in missing.stderr
    flags = cli(["params", "--dvc-flags", "over.yaml"], in_tmp).stdout.split()
    assert flags == ["-S", "sft.optim.lr=0.01"]


def _gpu_check(*args, out=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args,
                           *(["--out", str(out)] if out else [])],
                          capture_output=True, text=True, env=env, timeout=600, check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run for real")
def test_the_gpu_check_skips_without_a_gpu(tmp_path):
    result = _gpu_check(out=tmp_path / "gpu.json")
    assert result.returncode == 0 and "no GPU: skipped" in result.stdout
    assert not (tmp_path / "gpu.json").exists()


def test_the_gpu_checks_code_runs_on_a_tiny_model(tmp_path):
    result = _gpu_check("--smoke", out=tmp_path / "gpu.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["smoke"] and report["sft"]["tokens_per_s"] > 0 and report["sampling"]["hf"]["tokens_per_s"] > 0
    assert report["preference_frozen"]["step_s"] > 0 and report["preference_precomputed"]["step_s"] > 0
