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


@pytest.fixture
def served(evaluated):
    """The rating app on a built database (3 raters, 2 per item), through Starlette's test client."""
    from starlette.testclient import TestClient

    from polyalign.annotate.serve import create_app

    cli(["annotate", "build", "--items-per-bucket", "3", "--spot-per-bucket", "1", "--raters", "3", "--overlap", "2"],
        evaluated)
    db = evaluated / "human_eval/ratings.sqlite"
    tokens = dict(sqlite3.connect(db).execute("SELECT id, token FROM raters").fetchall())
    return TestClient(create_app(db)), tokens, db


def current_item(page: str) -> str:
    return page.split('name="item" value="')[1].split('"')[0]


def test_a_rater_rates_undoes_and_resumes_through_the_page(served):
    client, tokens, db = served
    token = tokens["r01"]
    page = client.get(f"/r/{token}")
    assert page.status_code == 200 and "0 of" in page.text and "(1)" in page.text
    first = current_item(page.text)
    after = client.post(f"/r/{token}/rate", data={"item": first, "choice": "a", "score_a": "4"})
    assert after.status_code == 200 and "1 of" in after.text and current_item(after.text) != first
    second = current_item(after.text)
    client.post(f"/r/{token}/rate", data={"item": second, "choice": "skip"})
    undone = client.post(f"/r/{token}/undo")
    assert current_item(undone.text) == second  # the last rating is gone, its item comes back
    rows = sqlite3.connect(db).execute("SELECT item, choice, score_a FROM ratings WHERE rater = 'r01'").fetchall()
    assert rows == [(first, "a", 4)]


def test_tokens_double_submits_and_other_raters_items_are_refused(served):
    client, tokens, db = served
    assert client.get("/r/not-a-token").status_code == 404
    assert client.post("/r/not-a-token/rate", data={"item": "p00000", "choice": "a"}).status_code == 404
    con = sqlite3.connect(db)
    mine = current_item(client.get(f"/r/{tokens['r01']}").text)
    others = {i for (i,) in con.execute("SELECT item FROM assignments WHERE rater = 'r02'")}
    foreign = sorted(others - {i for (i,) in con.execute("SELECT item FROM assignments WHERE rater = 'r01'")})[0]
    assert client.post(f"/r/{tokens['r01']}/rate", data={"item": foreign, "choice": "a"}).status_code == 404
    assert client.post(f"/r/{tokens['r01']}/rate", data={"item": mine, "choice": "maybe"}).status_code == 400
    assert client.post(f"/r/{tokens['r01']}/rate", data={"item": mine, "choice": "b"}).status_code == 200
    assert client.post(f"/r/{tokens['r01']}/rate", data={"item": mine, "choice": "a"},
                       follow_redirects=False).status_code == 409
    assert con.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 1


def test_a_responses_markup_is_shown_as_text(served):
    client, tokens, db = served
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE items SET a_text = '<script>alert(1)</script>', b_text = '<img src=x onerror=alert(1)>'")
    page = client.get(f"/r/{tokens['r01']}").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
