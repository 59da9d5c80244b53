"""The `evaluate` stage and `polyalign report` on a tiny bilingual project: same test ids for every method,
no answer leakage into prompts, the oracle label, the generation cache, and a report rebuilt from JSON alone."""

import json

import matplotlib.image
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from polyalign.buckets.features import FEATURE_NAMES
from polyalign.modeling.prompts import PromptRenderer
from polyalign.params import load_params
from polyalign.stages import evaluate
from sft_project import cli, copy_project, write_tiny_params

EVALUATE = {"methods": ["base", "sft@bucket"], "compare": [["sft@bucket", "base"]], "bootstrap_resamples": 50,
            "c2st_min_n": 6, "mauve": "off", "generation": {"max_new_tokens": 12, "batch_size": 16}}


@pytest.fixture(scope="module")
def project(paired_tiny, tmp_path_factory):
    root = copy_project(paired_tiny, tmp_path_factory.mktemp("evaluate") / "p")
    write_tiny_params(root, evaluate=EVALUATE)
    evaluate.run(load_params(root / "params.yaml"), root)
    return root


def results(root):
    return {m: json.loads((root / "reports/eval" / f"{m}.json").read_text()) for m in EVALUATE["methods"]}


def test_every_method_is_scored_on_the_same_full_test_split(project):
    test_ids = sorted(pq.read_table(project / "data/buckets/test.parquet").column("id").to_pylist())
    human = json.loads((project / "reports/eval/human.json").read_text())
    assert human["test_ids"] == test_ids
    for result in results(project).values():
        assert result["test_ids"] == test_ids and result["n"] == len(test_ids)
        assert [e["id"] for e in result["examples"]] == test_ids
        assert result["decoding"] == results(project)["base"]["decoding"]
        assert sum(b["n"] for b in result["buckets"].values()) == len(test_ids)
        assert set(result["groups"]["overall"]["hcr_per_feature"]) == set(FEATURE_NAMES)
        assert "c2st" in result["intervals"]["macro"]
        held = [(result["groups"][g][m], bounds) for g, ms in result["intervals"].items() for m, bounds in ms.items()]
        held += [(v[m], bounds) for v in result["buckets"].values() for m, bounds in v["intervals"].items()]
        assert all(low <= x <= high for x, (low, high) in held if x is not None)  # every interval holds its estimate
        # per-bucket budgets (at most the configured cap) and the truncated flag of every response
        assert all(1 <= e["budget"] <= 12 for e in result["examples"])
        assert result["truncated_responses"] == sum(e["truncated"] for e in result["examples"])
        assert all(e["n_tokens"] > 0 for e in result["examples"] if e["truncated"])
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert set(metrics) == {"split", "rows_sha256", "base", "sft@bucket", "compare"} and metrics["split"] == "test"
    assert {"f1", "rouge_l", "nll", "bng_macro", "hcr_joint_gap_macro", "c2st", "tdm", "nuf_score"} <= set(
        metrics["sft@bucket"])
    assert "sft@bucket - base" in metrics["compare"]
    assert metrics["sft@bucket"]["nll"] < metrics["base"]["nll"]  # SFT learnt the human answers


def test_val_split_scores_exactly_the_val_ids_and_names_the_split_everywhere(project, tmp_path):
    root = copy_project(project, tmp_path / "val")
    params = load_params(root / "params.yaml", ["evaluate.split=val"])
    evaluate.run(params, root)
    val_ids = sorted(pq.read_table(root / "data/buckets/val.parquet").column("id").to_pylist())
    test_ids = set(pq.read_table(root / "data/buckets/test.parquet").column("id").to_pylist())
    human = json.loads((root / "reports/eval/human.json").read_text())
    assert human["split"] == "val" and human["test_ids"] == val_ids and not test_ids & set(val_ids)
    for result in results(root).values():
        assert result["split"] == "val" and [e["id"] for e in result["examples"]] == val_ids
    assert json.loads((root / "reports/metrics.json").read_text())["split"] == "val"
    report = (root / "reports/eval/report.md").read_text()
    assert report.startswith("# PolyAlign evaluation report — val split") and f"{len(val_ids)} val prompts" in report
    # a method scored on test next to a human reference of val is refused
    (root / "reports/eval/base.json").write_text((project / "reports/eval/base.json").read_text())
    result = cli(["report"], root, check=False)
    assert result.returncode == 2 and "test split and the human reference on the val split" in result.stderr


def test_prompts_never_contain_the_answer_or_its_length_bin(project):
    tokenizer = AutoTokenizer.from_pretrained(project / "models/sft/bucket")
    records = pq.read_table(project / "data/buckets/test.parquet").to_pylist()
    marker = {**records[0], "human_answer": "ZQXJ unique answer", "length_bin": "xlong"}
    for conditioning in ("none", "observable"):
        renderer = PromptRenderer(tokenizer, conditioning, 64, 96)
        shown = evaluate.prompt_record(marker, conditioning)
        assert "human_answer" not in shown and "length_bin" not in shown
        text = renderer.prompt_text(shown)
        assert "ZQXJ" not in text and "xlong" not in text and "length=" not in text
        for record in records:
            assert "length=" not in renderer.prompt_text(evaluate.prompt_record(record, conditioning))
    oracle = PromptRenderer(tokenizer, "oracle_length", 64, 96)
    text = oracle.prompt_text(evaluate.prompt_record(marker, "oracle_length"))
    assert "length=xlong" in text and "oracle" in text and "ZQXJ" not in text


def test_metric_changes_reuse_the_cached_generations_and_decoding_changes_regenerate(project, tmp_path):
    root = copy_project(project, tmp_path / "p")
    before = results(root)
    assert {r["cache"] for r in before.values()} == {"miss"}
    cli(["evaluate", "--set", "evaluate.bng_cap=1.5", "--set", "evaluate.bootstrap_resamples=20"], root)
    again = results(root)
    assert {r["cache"] for r in again.values()} == {"hit"}
    for method in EVALUATE["methods"]:
        assert [e["response"] for e in again[method]["examples"]] == [e["response"] for e in before[method]["examples"]]
    cli(["evaluate", "--set", "evaluate.generation.top_p=0.5"], root)
    assert {r["cache"] for r in results(root).values()} == {"miss"}


def test_oracle_conditioning_is_labelled_in_the_report(project, tmp_path):
    root = copy_project(project, tmp_path / "p")
    cli(["evaluate", "--set", "prompt.conditioning=oracle_length"], root)
    report = (root / "reports/eval/report.md").read_text()
    assert "ORACLE RUN" in report and "sft@bucket (oracle)" in report
    assert all(r["oracle"] and r["conditioning"] == "oracle_length" for r in results(root).values())
    plain = (project / "reports/eval/report.md").read_text()
    assert "ORACLE" not in plain and "(oracle)" not in plain


def test_report_is_rebuilt_from_the_json_files_alone(project, tmp_path):
    root = copy_project(project, tmp_path / "p")
    original = (root / "reports/eval/report.md").read_text()
    metrics = (root / "reports/metrics.json").read_text()
    for name in ("report.md", "lengths.png", "per_bucket.png", "frontier.png"):
        (root / "reports/eval" / name).unlink()
    (root / "reports/metrics.json").unlink()
    for path in (root / "models").rglob("*.safetensors"):  # no model is needed
        path.unlink()
    cli(["report"], root)
    assert (root / "reports/eval/report.md").read_text() == original
    assert (root / "reports/metrics.json").read_text() == metrics
    for name in ("lengths.png", "per_bucket.png", "frontier.png"):
        image = matplotlib.image.imread(root / "reports/eval" / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    for metric in ("bng", "hcr_joint_gap", "f1"):
        lines = (root / f"reports/plots/eval_{metric}.csv").read_text().splitlines()
        assert lines[0] == "label,bucket,method,n,value" and len(lines) > 2


def test_report_refuses_methods_scored_on_other_test_rows(project, tmp_path):
    root = copy_project(project, tmp_path / "p")
    path = root / "reports/eval/base.json"
    data = json.loads(path.read_text())
    data["test_ids"] = data["test_ids"][1:]
    path.write_text(json.dumps(data))
    result = cli(["report"], root, check=False)
    assert result.returncode == 2 and "other test rows" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_model_or_unknown_method_exits_2_with_the_reason(project, tmp_path):
    result = cli(["evaluate", "--set", "evaluate.methods=[sft@global]", "--set", "evaluate.compare=[]"], project,
                 check=False)
    assert result.returncode == 2 and "no model for sft@global" in result.stderr
    result = cli(["evaluate", "--set", "evaluate.methods=[hdpo@nope]", "--set", "evaluate.compare=[]"], project,
                 check=False)
    assert result.returncode == 2 and "hdpo@nope" in result.stderr and "Traceback" not in result.stderr


def wandb_log(run_dir, wait_s: float = 30.0) -> bytes:
    """An offline W&B run's transaction log. W&B's service process writes it and may finish a moment after the
    command that logged has exited, so wait for it to appear and stop growing."""
    import time

    deadline, size = time.monotonic() + wait_s, -1
    while time.monotonic() < deadline:
        logs = list(run_dir.glob("run-*.wandb"))
        if logs and logs[0].stat().st_size == size:
            return logs[0].read_bytes()
        size = logs[0].stat().st_size if logs else -1
        time.sleep(0.5)
    raise AssertionError(f"no complete W&B log in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}")


def test_the_report_gains_a_human_evaluation_section_from_human_eval_json(project, tmp_path):
    import sqlite3

    root = copy_project(project, tmp_path / "p")
    before = (root / "reports/eval/report.md").read_text()
    assert "## Human evaluation" not in before
    cli(["annotate", "build", "--items-per-bucket", "2", "--spot-per-bucket", "1", "--raters", "2", "--overlap", "2"],
        root)
    db = sqlite3.connect(root / "human_eval/ratings.sqlite")
    with db:  # both raters always prefer sft@bucket's response, and tell the human answer from base's
        for rater, item, task, a, b in db.execute("SELECT a.rater, i.id, i.task, i.a_method, i.b_method FROM "
                                                  "assignments a JOIN items i ON i.id = a.item").fetchall():
            choice = "a" if a in ("sft@bucket", "human") else "b" if b in ("sft@bucket", "human") else "tie"
            db.execute("INSERT INTO ratings (rater, item, choice) VALUES (?, ?, ?)", (rater, item, choice))
    cli(["annotate", "export", "--set", "logging.wandb.mode=offline"], root, WANDB_MODE=None)
    (run,) = (root / "logs/wandb").glob("offline-run-*")  # the human evaluation's W&B run, with its tables
    assert all(key in wandb_log(run) for key in (b"human/win_rates", b"human/bradley_terry", b"human_eval"))
    cli(["evaluate", "--set", "logging.wandb.mode=offline"], root, WANDB_MODE=None)  # its run gets them too
    (evaluated,) = set((root / "logs/wandb").glob("offline-run-*")) - {run}
    assert b"human/win_rates" in wandb_log(evaluated)
    cli(["report"], root)
    report = (root / "reports/eval/report.md").read_text()
    assert "## Human evaluation" in report and "| base | sft@bucket |" in report
    assert "| sft@bucket | +" in report  # the stronger Bradley-Terry strength comes first
    assert "cohen kappa: 1.00" in report and "Spearman's rho" in report
    # the section comes before the diagnostics, and the sections above it are as they were
    assert report[:report.index("## Human evaluation")] == before[:before.index("## Diagnostics")]
