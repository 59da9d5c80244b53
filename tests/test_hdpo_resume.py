"""`hdpo` under faults: resume after a kill, settings checked on --resume, SIGTERM, runs shorter than an epoch."""

import json
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from sft_project import cli, copy_project, read_curve
from test_sft import signal_at_step, snapshot

ARGS = ["hdpo", "--variant", "dpo", "--set", "hdpo.checkpoint_every_n_steps=3"]


@pytest.fixture(scope="module")
def paired_project(paired_tiny):
    return paired_tiny  # shared by the session: every test that writes copies it first


def test_resume_after_a_kill_reproduces_the_uninterrupted_losses(paired_project, tmp_path):
    straight = copy_project(paired_project, tmp_path / "straight")
    cli(ARGS, straight)
    expected = read_curve(straight / "reports/hdpo/dpo/train.csv")

    killed = copy_project(paired_project, tmp_path / "killed")
    step, _ = signal_at_step(ARGS, killed, killed / "checkpoints/hdpo/dpo/last.ckpt", 6, signal.SIGKILL)
    assert 6 <= step < len(expected), "the run should be killed mid-training"
    assert not (killed / "models/hdpo/dpo").exists()  # a killed stage leaves no half-written model
    cli([*ARGS, "--resume"], killed)
    resumed = read_curve(killed / "reports/hdpo/dpo/train.csv")
    assert [row[0] for row in resumed] == [row[0] for row in expected]  # the whole curve, no step twice
    np.testing.assert_allclose(np.array(resumed)[:, 1:], np.array(expected)[:, 1:], rtol=1e-5, atol=1e-6)
    a = AutoModelForCausalLM.from_pretrained(straight / "models/hdpo/dpo").state_dict()
    b = AutoModelForCausalLM.from_pretrained(killed / "models/hdpo/dpo").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    report, full = (json.loads((p / "reports/hdpo/dpo.json").read_text()) for p in (killed, straight))
    assert report["val_loss"] == pytest.approx(full["val_loss"], rel=1e-5)
    assert report["val_reward_accuracy_per_bucket"] == full["val_reward_accuracy_per_bucket"]


def test_resume_refuses_other_settings_or_pairs_and_sigterm_exits_143(paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    result = cli([*ARGS, "--resume"], project, check=False)
    assert result.returncode == 2 and "hdpo --resume: no checkpoint" in result.stderr
    cli([*ARGS, "--set", "hdpo.max_steps=3"], project)
    before = snapshot(project)
    result = cli([*ARGS, "--set", "hdpo.max_steps=3", "--resume", "--beta", "0.2"], project, check=False)
    assert result.returncode == 2 and "hdpo.beta: 0.1 -> 0.2" in result.stderr and "Traceback" not in result.stderr
    train = project / "data/pairs/train.parquet"
    pq.write_table(pq.read_table(train).slice(1), train)  # one pair fewer
    result = cli([*ARGS, "--set", "hdpo.max_steps=3", "--resume"], project, check=False)
    assert result.returncode == 2 and "input data/pairs/train.parquet changed" in result.stderr, result.stderr
    train.write_bytes(before[train.relative_to(project)])
    assert snapshot(project) == before
    # SIGTERM during a fresh run: exit 143, the previous model and reports as they were
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        step, status = signal_at_step(ARGS, project, project / "checkpoints/hdpo/dpo/last.ckpt", 6, signal.SIGTERM,
                                      stderr)
    assert step >= 6 and status == 143, log.read_text()
    assert "hdpo@dpo: stopped by SIGTERM" in log.read_text()
    for folder in ("models/hdpo", "reports/hdpo"):
        assert snapshot(project / folder) == {p.relative_to(folder): data for p, data in before.items()
                                              if p.is_relative_to(folder)}


def test_a_run_shorter_than_an_epoch_validates_its_final_weights(paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    result = cli(["hdpo", "--variant", "dpo", "--set", "hdpo.max_steps=2"], project)
    report = json.loads((project / "reports/hdpo/dpo.json").read_text())
    assert report["steps"] == 2 and report["val_reward_accuracy_per_bucket"]
    assert 0 <= report["val_reward_accuracy"] <= 1 and 0 < report["val_loss"] < 5
    assert "nan" not in result.stderr.split("hdpo@dpo:")[1]
