"""The CLI and the DVC pipeline end to end in a temporary git repository: real `dvc repro`, `dvc exp run -S`,
`dvc metrics show`, `dvc plots show`."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest

from conftest import ROOT
from polyalign.threads import cores
from sft_project import write_tiny_params

PROJECT_FILES = ["params.yaml", "dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore",
                 "data/raw/README.md", "src"]


def sh(args, cwd, check=True, env=None):
    """Run a command in the project; `env` replaces the inherited environment (the PATH and a git identity are
    added to either)."""
    base = os.environ if env is None else env
    env = {**base, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def pipeline_plot_errors(plots: dict) -> list[dict]:
    """`dvc plots show --json` errors, but for the files of `polyalign compare`, which no stage writes."""
    return [e for e in plots.get("errors", []) if not e["source"].startswith("reports/compare.")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh clone-like copy of the project after `dvc repro`, committed."""
    path = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        src, dst = ROOT / name, path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    # the real params.yaml with a tiny model and short training, so the whole pipeline runs in about a minute
    write_tiny_params(path, data={"sources": [{"kind": "chatterbot", "languages": ["english", "chinese"],
                                               "categories": ["greetings", "ai", "emotion", "food", "trivia"]}]},
                      logging={"progress": False, "wandb": {"mode": "offline", "project": "polyalign",
                                                            "entity": None}},
                      generation={"max_new_tokens": 16, "batch_size": 32}, pairs={"max_prompts": 48},
                      hdpo={"optim": {"epochs": 1}},
                      evaluate={"generation": {"max_new_tokens": 16, "batch_size": 32}, "bootstrap_resamples": 100})
    sh(["git", "init", "-q", "-b", "main"], path)
    sh(["git", "add", "-A"], path)
    sh(["git", "commit", "-qm", "project"], path)
    first = sh(["dvc", "repro"], path)
    for stage in ("prepare", "bucketize", "init", "sft@global", "sft@bucket", "fit-critic", "pairs", "hdpo@dpo",
                  "hdpo@hdpo", "hdpo@dpo_global", "hdpo@hdpo_simpo", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout, stage
    sh(["git", "add", "-A"], path)
    sh(["git", "commit", "-qm", "repro"], path)
    return path


def test_repro_writes_bucketed_bilingual_data_models_and_reports(repo):
    refs = json.loads((repo / "data/buckets/references.json").read_text())
    assert {k.split("|")[0] for k in refs["buckets"]} >= {"en", "zh"}
    for name in ("data/prepared/train.parquet", "data/buckets/test.parquet", "reports/buckets.md",
                 "reports/prepare.json", "reports/plots/buckets.png", "models/base/model.safetensors",
                 "models/sft/global/model.safetensors", "models/sft/bucket/config.json", "reports/sft/bucket.json",
                 "reports/sft/global/train_loss.csv", "models/critic/model.safetensors", "reports/critic.json",
                 "data/pairs/train.parquet", "reports/pairs.json", "models/hdpo/dpo/model.safetensors",
                 "reports/hdpo/hdpo.json"):
        assert (repo / name).is_file(), name
    tracked = sh(["git", "ls-files"], repo).stdout.split()
    assert not [t for t in tracked if t.startswith(("data/prepared", "data/buckets", "reports/", "models/",
                                                     "checkpoints/", "logs/")) and not t.endswith(".gitignore")]
    # one W&B offline run per training stage and variant
    runs = [next(run.glob("*.wandb")).read_bytes() for run in (repo / "logs/wandb").glob("offline-run-*")]
    for name in (b"sft-global-seed42", b"sft-bucket-seed42", b"critic-default-seed42", b"hdpo-dpo-seed42",
                 b"hdpo-hdpo-seed42", b"hdpo-dpo_global-seed42"):
        assert sum(name in run for run in runs) == 1, name


def test_second_repro_does_nothing(repo):
    again = sh(["dvc", "repro"], repo)
    assert "Running stage" not in again.stdout
    assert sh(["dvc", "status"], repo).stdout.strip().startswith("Data and pipelines are up to date")


def test_metrics_and_plots_show(repo):
    metrics = json.loads(sh(["dvc", "metrics", "show", "--json"], repo).stdout)
    flat = json.dumps(metrics)
    assert "buckets_train" in flat and "support_distance_val" in flat and "dropped_total" in flat
    assert "val_loss_macro" in flat and "tokens_per_s" in flat and "auroc_human_vs_corrupted" in flat
    plots = json.loads(sh(["dvc", "plots", "show", "--json"], repo).stdout)
    assert not pipeline_plot_errors(plots)
    assert any("buckets.csv" in key for key in plots["data"]) and any("buckets.png" in key for key in plots["data"])
    assert any("sft/bucket/train_loss.csv" in key for key in plots["data"])


def test_exp_run_of_one_variant_reruns_only_that_variant_and_what_starts_from_it(repo):
    run = sh(["dvc", "exp", "run", "-S", "sft.variants.global.balance=loss_weight", "-n", "global_lw"], repo)
    for stage in ("sft@global", "hdpo@dpo_global", "evaluate"):  # dpo_global starts from sft@global
        assert f"Running stage '{stage}'" in run.stdout, stage
    for stage in ("prepare", "bucketize", "init", "sft@bucket", "sft@rs", "fit-critic", "pairs", "hdpo@dpo",
                  "hdpo@hdpo", "hdpo@hdpo_simpo"):
        assert f"Running stage '{stage}'" not in run.stdout, stage
    assert "global_lw" in sh(["dvc", "exp", "show", "--csv"], repo).stdout


def test_evaluation_scores_every_method_into_metrics_report_plots_and_wandb(repo):
    methods = {"sft@global", "sft@bucket", "sft@rs", "hdpo@dpo", "hdpo@hdpo", "hdpo@dpo_global", "hdpo@hdpo_simpo"}
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], repo).stdout)
    headline = next(v["data"]["reports/metrics.json"]["data"] for v in shown.values()
                    if "reports/metrics.json" in v.get("data", {}))
    assert methods <= set(headline)
    assert all({"f1", "rouge_l", "nll", "bng_macro", "hcr_joint_gap_macro", "nuf_score"} <= set(headline[m])
               for m in methods)
    report = (repo / "reports/eval/report.md").read_text()
    for slice_name in ("en/single", "en/multi", "zh/single", "zh/multi"):
        assert f"Slice {slice_name}" in report
    for a, b in (("sft@bucket", "sft@global"), ("hdpo@hdpo", "hdpo@dpo"), ("hdpo@hdpo", "sft@bucket"),
                 ("hdpo@dpo_global", "sft@global"), ("hdpo@hdpo", "hdpo@dpo_global"), ("hdpo@hdpo", "sft@rs"),
                 ("hdpo@hdpo_simpo", "sft@bucket")):
        assert f"{a} − {b}" in report
    ids = {json.dumps(json.loads((repo / f"reports/eval/{m}.json").read_text())["test_ids"]) for m in methods}
    assert len(ids) == 1
    for name in ("lengths.png", "per_bucket.png", "frontier.png"):
        assert matplotlib.image.imread(repo / "reports/eval" / name).ndim == 3
    plots = json.loads(sh(["dvc", "plots", "show", "--json"], repo).stdout)
    assert not pipeline_plot_errors(plots) and any("eval_bng.csv" in key for key in plots["data"])
    runs = [next(run.glob("*.wandb")).read_bytes() for run in (repo / "logs/wandb").glob("offline-run-*")]
    assert any(b"eval/ablation" in run and b"eval/per_bucket" in run and b"evaluate-test-seed42" in run for run in runs)


def test_exp_run_hdpo_gamma_changes_only_the_hdpo_headline_metrics(repo):
    before = json.loads((repo / "reports/metrics.json").read_text())
    run = sh(["dvc", "exp", "run", "-S", "hdpo.variants.hdpo.hdpo_gamma=2", "-n", "gamma2"], repo)
    assert "Running stage 'hdpo@hdpo'" in run.stdout and "Running stage 'evaluate'" in run.stdout
    for stage in ("prepare", "bucketize", "init", "sft@global", "sft@bucket", "fit-critic", "pairs", "hdpo@dpo",
                  "hdpo@dpo_global", "hdpo@hdpo_simpo"):  # a shared hdpo key (hdpo.optim, ...) would rerun them all
        assert f"Running stage '{stage}'" not in run.stdout, stage
    after = json.loads((repo / "reports/metrics.json").read_text())
    assert after["hdpo@dpo"] == before["hdpo@dpo"]  # same model, cached generations: the same numbers
    # another model: its likelihood of the human answers changes (its tiny samples may well not)
    assert after["hdpo@hdpo"]["nll_macro"] != before["hdpo@hdpo"]["nll_macro"]
    shown = sh(["dvc", "exp", "show", "--csv"], repo).stdout
    assert "gamma2" in shown and "hdpo@hdpo.bng_macro" in shown.splitlines()[0] and "val_reward_accuracy" in shown


def test_exp_run_with_a_param_reruns_only_what_depends_on_it(repo):
    # a metric setting of `evaluate`: only evaluate reruns (and reuses its cached generations)
    run = sh(["dvc", "exp", "run", "-S", "evaluate.bootstrap_resamples=50", "-n", "boot50"], repo)
    assert "Running stage 'evaluate'" in run.stdout
    for stage in ("prepare", "bucketize", "init", "sft@global", "sft@bucket", "fit-critic", "pairs", "hdpo@dpo",
                  "hdpo@hdpo", "hdpo@dpo_global"):
        assert f"Running stage '{stage}'" not in run.stdout, stage
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert "boot50" in text and '"bootstrap_resamples": 50' in text
    table = sh(["dvc", "exp", "show", "--csv"], repo).stdout
    assert "boot50" in table


def test_stage_by_hand_equals_stage_by_dvc(repo, tmp_path):
    before = (repo / "data/buckets/references.json").read_text()
    sh([sys.executable, "-m", "polyalign", "bucketize"], repo)
    assert (repo / "data/buckets/references.json").read_text() == before
    assert sh(["dvc", "status"], repo).stdout.strip().startswith("Data and pipelines are up to date")


def test_cli_help_explains_every_command():
    result = sh([sys.executable, "-m", "polyalign", "--help"], ROOT)
    for command in ("prepare", "bucketize", "init", "sft", "fit-critic", "pairs", "hdpo", "params", "compare"):
        assert command in result.stdout
    for command in ("prepare", "bucketize", "init", "sft", "fit-critic", "pairs", "hdpo"):
        assert "params" in sh([sys.executable, "-m", "polyalign", command, "--help"], ROOT).stdout


def test_a_queue_of_two_seeds_shares_the_cores_and_compare_summarises_them(repo):
    # DVC's own grid syntax. Seed 42 is the seed the workspace already ran: DVC restores it from its run cache, so
    # only seed 1 trains (the test stays short), but both are queued experiments that run side by side
    sh(["dvc", "exp", "run", "--queue", "-S", "seed=1,42"], repo)
    # torch's default (all cores) in each experiment, as for a user: the stages must take their share themselves
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    sh(["dvc", "queue", "start", "-j", "2"], repo, env=env)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = sh(["dvc", "queue", "status"], repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(3)
    sh(["dvc", "queue", "stop"], repo, check=False)
    assert status.count("Success") >= 2 and "Failed" not in status, status
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    (trained,) = [e["revs"][0]["data"] for commit in shown for e in commit.get("experiments") or []
                  if e["revs"][0]["data"]["params"]["params.yaml"]["data"]["seed"] == 1]
    # it pretrained while the other worker was running: a share of the cores, so 2 x threads <= cores
    threads = trained["metrics"]["reports/init.json"]["data"]["pretrain_threads"]
    assert threads * 2 <= max(2, cores()), threads
    run = sh([sys.executable, "-m", "polyalign", "compare", "--split", "test"], repo)
    assert "compare:" in run.stderr
    result = json.loads((repo / "reports/compare.json").read_text())
    default = next(g for g in result["groups"] if 1 in g["seeds"])
    assert default["seeds"] == [1, 42]  # the queued seed 42 repeats the run it was queued from: counted once
    assert result["left_out"]["a seed run again (the newest counts)"] >= 1
    assert {(c["a"], c["b"]) for c in default["comparisons"]} >= {("sft@bucket", "sft@global"),
                                                                    ("hdpo@hdpo", "sft@bucket")}
    for c in default["comparisons"]:
        d = c["metrics"]["bng_macro"]
        assert len(d["differences"]) == 2 and d["a_better"] + d["a_worse"] + d["ties"] == 2
        assert d["interval"] in ("t over seeds", "none (no spread)")
    assert (repo / "reports/compare.md").is_file()
    plots = json.loads(sh(["dvc", "plots", "show", "--json"], repo).stdout)
    assert not plots.get("errors") and {"reports/compare.csv", "reports/compare.png"} <= set(plots["data"])
