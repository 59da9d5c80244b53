"""A tiny bilingual project (a few chatterbot categories, a ~50k-parameter model) for training tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
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
    "sft": {"optim": {"epochs": 1, "lr": 0.005, "checkpoint_every_n_steps": 4}, "batch_size": 8},
    "critic": {"optim": {"epochs": 3}},
    "logging": {"progress": False, "wandb": {"mode": "disabled", "project": "polyalign", "entity": None}},
}


def write_tiny_params(folder: Path, **extra) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for section, values in {**TINY, **extra}.items():
        if isinstance(values, dict) and isinstance(params.get(section), dict):
            # a section's keys replace the default ones, except `optim`, whose own keys do
            optim = {**params[section].get("optim", {}), **values.get("optim", {})}
            params[section] = {**params[section], **values, **({"optim": optim} if optim else {})}
        else:
            params[section] = values
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return path


def cli(args: list[str], cwd: Path, check: bool = True, *, subprocess_only: bool = False,
        **env) -> subprocess.CompletedProcess:
    """`polyalign ARGS` run in `cwd` with `env` over the environment (None removes a variable), W&B off unless
    `env` says otherwise. It runs in this process, through Typer's test runner: a new Python process spends about
    6 s importing torch, transformers and Lightning, which most of these tests would pay many times. A separate
    process is kept where only one does the real thing: `subprocess_only`, several devices (DDP starts its
    processes from the command line), and W&B runs that are not disabled (its service outlives the command)."""
    env = {"WANDB_MODE": "disabled", **env}
    separate = (subprocess_only or any("strategy=ddp" in a or "devices=2" in a for a in args)
                or env["WANDB_MODE"] != "disabled" or any("wandb.mode=" in a and "disabled" not in a for a in args))
    if separate:
        full_env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
        result = subprocess.run([sys.executable, "-m", "polyalign", *args], cwd=cwd, env=full_env,
                                capture_output=True, text=True, timeout=900, check=False)
    else:
        result = _in_process(args, cwd, env)
    if check and result.returncode != 0:
        raise AssertionError(f"polyalign {args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _in_process(args: list[str], cwd: Path, env: dict[str, str | None]) -> subprocess.CompletedProcess:
    """The CLI in this process, leaving the working directory and torch's threads as they were."""
    import torch
    from typer.testing import CliRunner

    from polyalign.cli import app

    before, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(cwd)
    try:
        outcome = CliRunner().invoke(app, args, env=env)
    finally:
        os.chdir(before)
        torch.set_num_threads(threads)
    stderr = outcome.stderr
    if outcome.exception is not None and not isinstance(outcome.exception, SystemExit):
        stderr += "".join(traceback.format_exception(outcome.exception))
    return subprocess.CompletedProcess(["polyalign", *args], outcome.exit_code, outcome.stdout, stderr)


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
PAIRED = {"critic": {"optim": {"epochs": 3}}, "generation": {"max_new_tokens": 16, "batch_size": 16},
          "pairs": {"max_prompts": 64, "chosen": "human"},
          "hdpo": {"optim": {"epochs": 2, "lr": 0.002}, "batch_size": 8, "select": "last"}}


def paired_project(root: Path) -> Path:
    """A tiny project through `pairs` (what hdpo starts from)."""
    from polyalign.stages import pairs

    pairs.run(bucket_aware_project(root, **PAIRED), root)
    return root


def read_curve(path: Path) -> list[tuple[float, ...]]:
    """The rows of a CSV curve (reports/.../*.csv) as tuples of floats, without the header."""
    return [tuple(map(float, line.split(","))) for line in path.read_text().splitlines()[1:]]
