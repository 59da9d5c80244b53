"""docs/extending.md's walkthroughs, done as a user would: a loss in a new module, registered, trained by the stage
and shown in its report; a metric in a new module, registered, scored by `evaluate` and shown in the report,
metrics.json and the human reference."""

import csv
import importlib
import json

import pytest

from polyalign.evaluation import metrics as metric_registry
from polyalign.training.objectives import BASE_LOSSES
from sft_project import cli, copy_project, write_tiny_params

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
    cli(["hdpo", "--variant", "hdpo", "--set", "hdpo.variants.hdpo.loss=toy_hinge", "--set", "hdpo.optim.max_steps=3"],
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


TOY_METRIC = '''
"""The share of responses that ask a question back, as docs/extending.md writes it."""
import numpy as np

from polyalign.evaluation.metrics import Metric, register


def question_share(rows):
    return float(np.mean(["?" in text or "？" in text for text in rows.texts]))


register(Metric("question_share", "Questions", "lower", question_share, bootstrap=True, bounds=(0.0, 1.0),
                human_target=True, kind="headline", in_json=True, plot=True))
'''


def test_a_metric_in_a_new_module_is_scored_and_shows_everywhere(paired_tiny, tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "toy_metric.py").write_text(TOY_METRIC, encoding="utf-8")
    monkeypatch.syspath_prepend(str(plugins))
    importlib.import_module("toy_metric")  # registers it
    project = copy_project(paired_tiny, tmp_path / "p")
    write_tiny_params(project, evaluate={"methods": ["base", "sft@bucket"], "compare": [["sft@bucket", "base"]],
                                         "bootstrap_resamples": 20, "c2st_min_n": 6, "mauve": "off",
                                         "generation": {"max_new_tokens": 12, "batch_size": 16}})
    cli(["evaluate"], project)
    report = (project / "reports/eval/report.md").read_text(encoding="utf-8")
    assert "| Questions (↓) |" in report  # a column of the main tables
    assert "Questions (lower is better)" in report  # in the paired differences and the best-per-metric tables
    flat = json.loads((project / "reports/metrics.json").read_text(encoding="utf-8"))
    assert 0 <= flat["base"]["question_share"] <= 1 and "question_share_macro" in flat["sft@bucket"]
    assert "question_share_macro" in flat["compare"]["sft@bucket - base"]
    result = json.loads((project / "reports/eval/sft@bucket.json").read_text(encoding="utf-8"))
    assert len(result["intervals"]["overall"]["question_share"]) == 2  # resampled: it has an interval
    human = json.loads((project / "reports/eval/human.json").read_text(encoding="utf-8"))
    assert 0 <= human["groups"]["overall"]["question_share"] <= 1  # the human answers' own value, the target
    assert (project / "reports/plots/eval_question_share.csv").is_file()


@pytest.fixture(autouse=True)
def _registries_untouched():
    losses, metrics = dict(BASE_LOSSES), list(metric_registry.METRICS)
    yield
    assert BASE_LOSSES == losses
    metric_registry.METRICS[:] = metrics  # a test's registered metric goes with it
    sys_modules_clean()


def sys_modules_clean():
    import sys

    sys.modules.pop("toy_metric", None)
    sys.modules.pop("toy_hinge", None)
