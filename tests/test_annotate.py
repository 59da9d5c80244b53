"""`polyalign annotate build` and `export` on a small evaluated project written by hand (real files, the real
CLI), with ratings inserted as the rating server stores them."""

import json
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_project import cli

METHODS = ("sft@bucket", "hdpo@hdpo", "hdpo@dpo")


@pytest.fixture
def evaluated(in_tmp):
    """Two buckets of six test prompts each and three methods' reports on them."""
    records = []
    for b, (language, track) in enumerate([("en", "single"), ("zh", "multi")]):
        for k in range(6):
            records.append({
                "id": f"q{b}{k}", "language": language, "track": track, "bucket_id": f"{language}|{track}|qa|short",
                "question": f"question {b}{k}?" if language == "en" else f"问题{b}{k}？",
                "context": "", "dialogue_history": [{"role": "user", "text": "hi"}, {"role": "assistant",
                                                                                      "text": "hello"}],
                "human_answer": "I think so. It is fine." if language == "en" else "我觉得可以。没问题。"})
    (in_tmp / "data/buckets").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records), in_tmp / "data/buckets/test.parquet")
    (in_tmp / "reports/eval").mkdir(parents=True)
    for method in METHODS:
        examples = [{"id": r["id"], "bucket_id": r["bucket_id"], "response": f"<b>{method}</b> on {r['id']}"}
                    for r in records]
        (in_tmp / f"reports/eval/{method}.json").write_text(json.dumps({"split": "test", "examples": examples}))
    return in_tmp


def test_build_draws_a_stratified_blind_set_with_overlap_and_attention_checks(evaluated):
    out = cli(["annotate", "build", "--items-per-bucket", "3", "--spot-per-bucket", "2", "--raters", "3",
               "--overlap", "2", "--attention-share", "0.1"], evaluated)
    assert "annotate build: 11 items (6 pairwise, 4 spot the human, 1 attention checks)" in out.stderr
    db = sqlite3.connect(evaluated / "human_eval/ratings.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    items = db.execute("SELECT id, task, bucket, a_method, b_method FROM items").fetchall()
    assert {b for _, t, b, *_ in items if t == "pairwise"} == {"en|single|qa|short", "zh|multi|qa|short"}
    pairs = {tuple(sorted((a, b))) for _, t, _, a, b in items if t == "pairwise"}
    assert len(pairs) == 3  # every pair of methods is compared
    assert all("human" in (a, b) for _, t, _, a, b in items if t in ("spot", "attention"))
    # each item has exactly `overlap` raters, and the load is even
    per_item = db.execute("SELECT item, COUNT(*) FROM assignments GROUP BY item").fetchall()
    assert {n for _, n in per_item} == {2} and len(per_item) == 11
    per_rater = [n for _, n in db.execute("SELECT rater, COUNT(*) FROM assignments GROUP BY rater")]
    assert max(per_rater) - min(per_rater) <= 1
    tokens = [t for (t,) in db.execute("SELECT token FROM raters")]
    assert len(set(tokens)) == 3 and all(len(t) >= 20 for t in tokens)


def test_build_refuses_to_overwrite_ratings_and_names_missing_reports(evaluated):
    cli(["annotate", "build"], evaluated)
    db = sqlite3.connect(evaluated / "human_eval/ratings.sqlite")
    rater, item = db.execute("SELECT rater, item FROM assignments LIMIT 1").fetchone()
    with db:
        db.execute("INSERT INTO ratings (rater, item, choice) VALUES (?, ?, 'a')", (rater, item))
    again = cli(["annotate", "build"], evaluated, check=False)
    assert again.returncode == 2 and "already holds ratings" in again.stderr
    missing = cli(["annotate", "build", "--force", "--methods", "sft@bucket", "--methods", "sft@rs"], evaluated,
                  check=False)
    assert missing.returncode == 2 and "no evaluation report for sft@rs" in missing.stderr


def test_export_computes_the_figures_without_the_raters_who_fail_attention_checks(evaluated):
    cli(["annotate", "build", "--items-per-bucket", "6", "--spot-per-bucket", "0", "--raters", "3", "--overlap", "3",
         "--attention-share", "0.1"], evaluated)
    db = sqlite3.connect(evaluated / "human_eval/ratings.sqlite")
    items = db.execute("SELECT id, task, a_method, b_method FROM items").fetchall()
    with db:
        for rater in ("r01", "r02", "r03"):
            for item, task, a, b in items:
                if task == "attention":  # r03 picks the corrupted copy
                    human_side = "a" if a == "human" else "b"
                    choice = human_side if rater != "r03" else ("b" if human_side == "a" else "a")
                else:  # r01 and r02 always prefer hdpo@hdpo; r03 always says tie
                    choice = "tie" if rater == "r03" else ("a" if a == "hdpo@hdpo" else "b" if b == "hdpo@hdpo"
                                                           else "tie")
                db.execute("INSERT INTO ratings (rater, item, choice) VALUES (?, ?, ?)", (rater, item, choice))
    out = cli(["annotate", "export", "--attention-threshold", "0.5"], evaluated)
    assert "(1 left out by the attention checks)" in out.stderr
    report = json.loads((evaluated / "reports/human_eval.json").read_text())
    assert report["raters"]["r03"]["excluded"] and not report["raters"]["r01"]["excluded"]
    overall = {(w["a"], w["b"]): w for w in report["summary"]["win_rates"]["overall"]["all"]}
    assert overall[("hdpo@dpo", "hdpo@hdpo")]["win_rate"] == 0.0
    assert overall[("hdpo@hdpo", "sft@bucket")]["win_rate"] == 1.0
    assert overall[("hdpo@dpo", "sft@bucket")]["win_rate"] == 0.5  # ties only
    bt = report["summary"]["bradley_terry"]
    assert bt["hdpo@hdpo"] > bt["hdpo@dpo"] and bt["hdpo@hdpo"] > bt["sft@bucket"]
    assert report["summary"]["agreement"] == {"measure": "cohen_kappa", "value": 1.0, "raters": 2,
                                              "items": len([i for i in items if i[1] == "pairwise"])}
    assert set(report["summary"]["win_rates"]["slice"]) == {"en/single", "zh/multi"}
