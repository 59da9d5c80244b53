"""docs/extending.md's walkthroughs, done as a user would: a loss in a new module, registered, trained by the stage
and shown in its report."""

import csv
import json

import pytest

from polyalign.training.objectives import BASE_LOSSES
from sft_project import cli, copy_project

TOY_LOSS = '''
"""SLiC-HF's hinge loss, as docs/extending.md writes it."""
import torch

from polyalign.training.objectives.batch import BaseTerms

REFERENCE_FREE = False
NEEDS_UNPAIRED = False


def loss(batch, beta, offset, margin=1.0):
    chosen, rejected = beta * batch.chosen_ratio(), beta * batch.rejected_ratio()
    losses = torch.relu(margin - (chosen - rejected - offset))
    return BaseTerms(losses, chosen, rejected, {"toy_hinge/active": (losses > 0).float().mean()})
'''


def test_a_loss_in_a_new_module_trains_through_the_stage_and_shows_in_its_report(paired_tiny, tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "toy_hinge.py").write_text(TOY_LOSS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setitem(BASE_LOSSES, "toy_hinge", "toy_hinge")  # the registry line, for a module outside the package
    project = copy_project(paired_tiny, tmp_path / "p")
    cli(["hdpo", "--variant", "hdpo", "--set", "hdpo.variants.hdpo.loss=toy_hinge", "--set", "hdpo.max_steps=3"],
        project)
    report = json.loads((project / "reports/hdpo/hdpo.json").read_text(encoding="utf-8"))
    assert report["loss"] == "toy_hinge" and report["steps"] == 3
    assert report["hdpo_gamma"] == 1.0 and report["alpha"] == 1.0  # HDPO's extras on top of it, as set
    assert 0 <= report["val_reward_accuracy"] <= 1
    rows = list(csv.DictReader((project / "reports/hdpo/hdpo/train.csv").open(encoding="utf-8")))
    assert len(rows) == 3
    logged = next(project.glob("logs/hdpo/hdpo/**/metrics.csv"))
    assert "toy_hinge/active" in logged.read_text(encoding="utf-8").splitlines()[0]  # its own logs reach the CSV


def test_an_unregistered_loss_is_refused_before_any_work(paired_tiny, tmp_path):
    project = copy_project(paired_tiny, tmp_path / "p")
    result = cli(["hdpo", "--set", "hdpo.variants.hdpo.loss=toy_hinge"], project, check=False)
    assert result.returncode == 2 and "not a registered preference loss" in result.stderr
    assert not (project / "models/hdpo").exists()


@pytest.fixture(autouse=True)
def _registry_untouched():
    before = dict(BASE_LOSSES)
    yield
    assert BASE_LOSSES == before
