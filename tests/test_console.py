"""What a stage prints with default console settings: its progress bar, warnings about the user's data, one W&B
line and one summary line; nothing the libraries underneath print on their own. `--verbose` brings it back."""

import re

from sft_project import cli, copy_project

ARGS = ["sft", "--variant", "global", "--max-steps", "6", "--set", "logging.progress=true",
        "--set", "logging.wandb.mode=offline", "--set", "sft.optim.ema_decay=0.995"]  # the default's moving average
LIBRARY_NOISE = ("Tip:", "litlogger", "DeprecationWarning", "FutureWarning", "deprecated", "Loading weights",
                 "Writing model shards", "GPU available", "TPU available", "wandb:", "WeightAveraging")


def test_a_training_stage_prints_its_bar_one_wandb_line_and_its_summary_only(paired_tiny, tmp_path):
    root = copy_project(paired_tiny, tmp_path / "p")
    result = cli(ARGS, root, subprocess_only=True, WANDB_MODE=None)  # W&B as params.yaml says: offline, the default
    output = result.stdout + result.stderr
    assert not [word for word in LIBRARY_NOISE if word in output], output
    assert not re.search(r"\.py:\d+: ", output), output  # no Python warning from any library
    assert re.search(r"sft@global: 6 steps, val loss \d+\.\d+ .* bits/char, .*→ models/sft/global", output), output
    assert "sft@global: epoch 1/1" in output  # the one training bar
    wandb_lines = [line for line in output.splitlines() if "W&B" in line or "wandb" in line.lower()]
    assert len(wandb_lines) <= 2 and "wandb sync logs/wandb/offline-run-" in " ".join(wandb_lines), wandb_lines
    assert len(output.splitlines()) <= 8, output


def test_verbose_brings_the_libraries_output_back(paired_tiny, tmp_path):
    root = copy_project(paired_tiny, tmp_path / "p")
    result = cli(["--verbose", *ARGS], root, subprocess_only=True, WANDB_MODE=None)
    output = result.stdout + result.stderr
    assert "GPU available" in output and "wandb:" in output, output
