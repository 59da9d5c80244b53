"""`polyalign annotate build` and `export` on a small evaluated project written by hand (real files, the real
CLI), with ratings inserted as the rating server stores them."""

import json
import os
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_project import cli

METHODS = ("sft@bucket", "hdpo@hdpo", "hdpo@dpo")


@pytest.fixture
def evaluated(in_tmp):
    """Two buckets of six test prompts each and three methods' reports on them."""
    return write_evaluated(in_tmp, 6)


def write_evaluated(root, per_bucket: int):
    in_tmp = root
    # W&B off: with the built-in default (offline) `annotate export` would start W&B's service inside the test
    # process, and later commands started from it would inherit that service
    (in_tmp / "params.yaml").write_text("logging:\n  progress: false\n  wandb:\n    mode: disabled\n")
    records = []
    for b, (language, track) in enumerate([("en", "single"), ("zh", "multi")]):
        for k in range(per_bucket):
            records.append({
                "id": f"q{b}{k}", "language": language, "track": track, "bucket_id": f"{language}|{track}|qa|short",
                "question": f"question {b}{k}?" if language == "en" else f"问题{b}{k}？",
                "context": "", "dialogue_history": [{"role": "user", "text": "hi"}, {"role": "assistant",
                                                                                      "text": "hello"}],
                "human_answer": "I think so. It is fine." if language == "en" else "我觉得可以。没问题。"})
    (in_tmp / "data/buckets").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), in_tmp / "data/buckets/test.parquet")
    (in_tmp / "reports/eval").mkdir(parents=True, exist_ok=True)
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
    assert page.status_code == 200 and "0 of" in page.text and "(1)" in page.text and 'name="score_a"' in page.text
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
    foreign = min(others - {i for (i,) in con.execute("SELECT item FROM assignments WHERE rater = 'r01'")})
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


def start_server(project, port: int):
    """`polyalign annotate serve` as its own process (the real uvicorn server), once it answers."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    process = subprocess.Popen([sys.executable, "-m", "polyalign", "annotate", "serve", "--port", str(port)],
                               cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/r/none", timeout=1)
        except urllib.error.HTTPError:
            return process  # 404 for an unknown token: it serves
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the server did not start: {process.stderr.read().decode()}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_four_raters_rating_at_once_lose_nothing_and_duplicate_nothing(evaluated):
    import threading

    import httpx

    write_evaluated(evaluated, 30)  # 60 pairwise items, each rated by all 4 raters
    cli(["annotate", "build", "--items-per-bucket", "30", "--spot-per-bucket", "0", "--raters", "4", "--overlap", "4",
         "--attention-share", "0"], evaluated)
    db = evaluated / "human_eval/ratings.sqlite"
    con = sqlite3.connect(db)
    tokens = dict(con.execute("SELECT id, token FROM raters").fetchall())
    items = {r: [i for (i,) in con.execute("SELECT item FROM assignments WHERE rater = ? ORDER BY position", (r,))]
             for r in tokens}
    assert all(len(v) == 60 for v in items.values())
    port = free_port()
    server = start_server(evaluated, port)
    failures = []

    def rater(name: str) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for item in items[name][:50]:
                status = client.post(f"/r/{tokens[name]}/rate", data={"item": item, "choice": "tie"}).status_code
                if status != 303:
                    failures.append((name, item, status))

    try:
        threads = [threading.Thread(target=rater, args=(name,)) for name in tokens]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert failures == []
    assert con.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 200
    assert con.execute("SELECT COUNT(*) FROM (SELECT DISTINCT rater, item FROM ratings)").fetchone()[0] == 200


def test_a_killed_server_loses_no_rating_and_resumes_at_the_next_item(evaluated):
    import signal

    import httpx

    cli(["annotate", "build", "--items-per-bucket", "3", "--raters", "1", "--overlap", "1"], evaluated)
    db = evaluated / "human_eval/ratings.sqlite"
    token = sqlite3.connect(db).execute("SELECT token FROM raters").fetchone()[0]
    port = free_port()
    server = start_server(evaluated, port)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True) as client:
        rated = []
        for _ in range(3):
            item = current_item(client.get(f"/r/{token}").text)
            client.post(f"/r/{token}/rate", data={"item": item, "choice": "a"})
            rated.append(item)
        upcoming = current_item(client.get(f"/r/{token}").text)
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=30)
    server = start_server(evaluated, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            page = client.get(f"/r/{token}").text
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert current_item(page) == upcoming and "3 of" in page
    assert [i for (i,) in sqlite3.connect(db).execute("SELECT item FROM ratings ORDER BY created_at")] == rated


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# .ci/run sets this: there the browser test must run, so a green CI means it ran rather than skipped.
BROWSER_REQUIRED = os.environ.get("POLYALIGN_REQUIRE_BROWSER") == "1"


def test_a_rater_in_a_real_browser_rates_with_keys_and_mouse_undoes_and_reloads(evaluated, tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        missing = ("headless Chromium is not installed (Debian: apt-get install chromium chromium-driver; "
                   ".ci/run installs them)")
        if BROWSER_REQUIRED:
            pytest.fail(missing)
        pytest.skip(missing)
    if BROWSER_REQUIRED:
        import selenium  # noqa: F401  # fails loudly in CI
    else:
        pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cli(["annotate", "build", "--items-per-bucket", "6", "--spot-per-bucket", "2", "--raters", "1", "--overlap", "1"],
        evaluated)
    db = evaluated / "human_eval/ratings.sqlite"
    token = sqlite3.connect(db).execute("SELECT token FROM raters").fetchone()[0]
    port = free_port()
    server = start_server(evaluated, port)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=420,900"):
        options.add_argument(flag)  # a phone-sized window
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/r/{token}")

        def rated(n: int) -> None:
            def shows(d) -> bool:
                # one script call reads the element and its text together: finding it and then reading it can
                # race the next page's load (Chrome then raises a plain WebDriverException, not a stale element)
                text = d.execute_script("const e = document.querySelector('.progress'); return e && e.textContent;")
                return bool(text) and text.strip().startswith(f"{n} of")
            WebDriverWait(driver, 20).until(shows)

        for n, key in enumerate("123s12", start=1):  # six ratings with the keyboard
            driver.find_element(By.TAG_NAME, "body").send_keys(key)
            rated(n)
        driver.find_element(By.ID, "choose-a").click()  # two with the mouse
        rated(7)
        shown_zh = "问题" in driver.find_element(By.ID, "question").text
        driver.find_element(By.ID, "choose-tie").click()
        rated(8)
        driver.find_element(By.ID, "undo-last").click()
        rated(7)
        driver.refresh()
        rated(7)
        choices = [c for (c,) in sqlite3.connect(db).execute("SELECT choice FROM ratings ORDER BY created_at")]
        assert choices == ["a", "b", "tie", "skip", "a", "b", "a"]  # exactly the 7 kept
        for n in range(8, 18):  # a screenshot of a Chinese item
            if "问题" in driver.find_element(By.ID, "question").text:
                break
            driver.find_element(By.ID, "choose-skip").click()
            rated(n)
        driver.save_screenshot(str(tmp_path / "rating-page.png"))
        assert (tmp_path / "rating-page.png").stat().st_size > 10_000
        assert shown_zh or "问题" in driver.find_element(By.ID, "question").text
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def stub_endpoint():
    """A local OpenAI-compatible chat endpoint that answers deterministically: the response that mentions
    hdpo@hdpo wins, a tie when neither does."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = body["messages"][-1]["content"]
            seen.append(body)
            a, b = text.split("Response A:")[1].split("Response B:")
            answer = "A" if "hdpo@hdpo" in a else "B" if "hdpo@hdpo" in b.split("Which response")[0] else "tie"
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"{answer}."}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload.encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()


def test_an_automatic_rater_answers_on_the_same_protocol_and_gets_its_agreement_with_the_humans(
        evaluated, stub_endpoint):
    url, seen = stub_endpoint
    cli(["annotate", "build", "--items-per-bucket", "6", "--spot-per-bucket", "0", "--raters", "2", "--overlap", "2",
         "--attention-share", "0"], evaluated)
    db = evaluated / "human_eval/ratings.sqlite"
    con = sqlite3.connect(db)
    with con:  # both humans prefer hdpo@hdpo too
        for rater, item, a, b in con.execute(
                "SELECT s.rater, i.id, i.a_method, i.b_method FROM assignments s JOIN items i ON i.id = s.item "
                "ORDER BY s.rater, i.id").fetchall():
            choice = "a" if a == "hdpo@hdpo" else "b" if b == "hdpo@hdpo" else "tie"
            con.execute("INSERT INTO ratings (rater, item, choice) VALUES (?, ?, ?)", (rater, item, choice))
    out = cli(["annotate", "judge", "--endpoint", url, "--model", "stub"], evaluated)
    assert "12 items judged by judge:stub" in out.stderr and "unreadable answers 0" in out.stderr
    assert len(seen) == 12 and all(body["temperature"] == 0 and body["model"] == "stub" for body in seen)
    assert con.execute("SELECT kind FROM raters WHERE id = 'judge:stub'").fetchone() == ("model",)
    again = cli(["annotate", "judge", "--endpoint", url, "--model", "stub"], evaluated)  # nothing left to judge
    assert "0 items judged" in again.stderr and len(seen) == 12
    cli(["annotate", "export"], evaluated)
    report = json.loads((evaluated / "reports/human_eval.json").read_text())
    assert report["judges"]["judge:stub"] == {"items": 12, "agreement": 1.0, "cohen_kappa": 1.0}
    assert report["summary"]["agreement"]["raters"] == 2  # the human figures leave the model rater out
    refused = cli(["annotate", "judge", "--endpoint", "http://127.0.0.1:9/v1", "--model", "stub", "--rater", "x"],
                  evaluated, check=False)
    assert refused.returncode == 2 and "did not answer" in refused.stderr
