"""A tiny bilingual project (a few chatterbot categories, a ~50k-parameter model) for training tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

TINY = {
    "data": {"sources": [{"kind": "chatterbot", "languages": ["english", "chinese"],
                          "categories": ["greetings", "ai", "emotion", "food"]}]},
    "buckets": {"min_bucket_size": 5},
    "model": {"vocab_size": 600, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
              "num_kv_heads": 1, "max_position_embeddings": 128, "pretrain_epochs": 2, "pretrain_block_size": 64},
    "prompt": {"max_prompt_tokens": 64, "max_tokens": 96},
    "trainer": {"accelerator": "cpu", "log_every_n_steps": 1},
    "sft": {"epochs": 1, "batch_size": 8, "lr": 0.005, "checkpoint_every_n_steps": 4},
    "critic": {"epochs": 3},
    "logging": {"progress": False, "wandb": {"mode": "disabled", "project": "polyalign", "entity": None}},
}


def write_tiny_params(folder: Path, **extra) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for section, values in {**TINY, **extra}.items():
        if isinstance(values, dict) and isinstance(params.get(section), dict):
            params[section] = {**params[section], **values}
        else:
            params[section] = values
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return path


def cli(args: list[str], cwd: Path, check: bool = True, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "disabled", **env}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None removes a variable
    result = subprocess.run([sys.executable, "-m", "polyalign", *args], cwd=cwd, env=full_env, capture_output=True,
                            text=True, timeout=900, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"polyalign {args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    return dst


def initialised_project(root: Path, **extra):
    """A tiny project through prepare, bucketize and init (what sft starts from), and its params."""
    from polyalign.params import load_params
    from polyalign.stages import bucketize, prepare
    from polyalign.stages import init as init_stage

    write_tiny_params(root, **extra)
    params = load_params(root / "params.yaml")
    prepare.run(params, root)
    bucketize.run(params, root)
    init_stage.run(params, root)
    return params


def bucket_aware_project(root: Path, **extra):
    """A tiny project through prepare, bucketize, init, sft@bucket and fit-critic (what pairs and evaluate
    start from), and its params."""
    from polyalign.params import load_params
    from polyalign.stages import bucketize, fit_critic, prepare, sft
    from polyalign.stages import init as init_stage

    write_tiny_params(root, **extra)
    params = load_params(root / "params.yaml")
    prepare.run(params, root)
    bucketize.run(params, root)
    init_stage.run(params, root)
    sft.run(params, "bucket", root=root)
    fit_critic.run(params, root)
    return params


# the human answer as the chosen side and the last weights: what most hdpo tests assert about (the on-policy default
# and selection by val BNG have their own tests)
PAIRED = {"critic": {"epochs": 3}, "generation": {"max_new_tokens": 16, "batch_size": 16},
          "pairs": {"max_prompts": 64, "chosen": "human"},
          "hdpo": {"epochs": 2, "batch_size": 8, "lr": 0.002, "select": "last"}}


def paired_project(root: Path) -> Path:
    """A tiny project through `pairs` (what hdpo starts from)."""
    from polyalign.stages import pairs

    pairs.run(bucket_aware_project(root, **PAIRED), root)
    return root


def read_curve(path: Path) -> list[tuple[float, ...]]:
    """The rows of a CSV curve (reports/.../*.csv) as tuples of floats, without the header."""
    return [tuple(map(float, line.split(","))) for line in path.read_text().splitlines()[1:]]
