"""`polyalign annotate build`: a blind rating set drawn from the evaluation reports into the rating database.

Per bucket of the evaluated split (so every slice gets items), seeded: pairwise items (one prompt, two methods'
responses, which is more natural for this context) cycling through every pair of methods, and spot-the-human
items (the human answer and one method's response). About `attention_share` of the items are attention checks:
the human answer against a copy with its sentences or words shuffled. A and B are in random order and carry no
labels. Each item goes to `overlap` raters (for agreement), spread evenly; each rater's items are shuffled.
"""

from __future__ import annotations

import itertools
import json
import secrets
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from polyalign.annotate import store
from polyalign.critic.corruptions import repeat, shuffle
from polyalign.errors import UserError, shown

DEFAULT_DB = Path("human_eval") / "ratings.sqlite"


def read_reports(reports: Path, methods: list[str] | None) -> tuple[str, dict[str, dict[str, str]]]:
    """The evaluated split and, per method, its response to each prompt id (from reports/eval/<method>.json)."""
    folder = reports / "eval"
    available = sorted(p.stem for p in folder.glob("*@*.json")) + (["base"] if (folder / "base.json").is_file()
                                                                     else [])
    chosen = methods or available
    missing = [m for m in chosen if not (folder / f"{m}.json").is_file()]
    if missing:
        raise UserError(f"annotate build: no evaluation report for {', '.join(missing)} in {shown(folder)} (run "
                        f"`polyalign evaluate` with them in evaluate.methods; reports there: "
                        f"{', '.join(available) or 'none'})")
    if len(chosen) < 2:
        raise UserError(f"annotate build: pairwise items need at least 2 methods, got {chosen}")
    splits, responses = set(), {}
    for method in chosen:
        report = json.loads((folder / f"{method}.json").read_text(encoding="utf-8"))
        splits.add(report["split"])
        responses[method] = {e["id"]: e["response"] for e in report["examples"]}
    if len(splits) > 1:
        raise UserError(f"annotate build: the reports were evaluated on different splits ({sorted(splits)}); "
                        "rerun `polyalign evaluate` so that they share one")
    return splits.pop(), responses


def corrupted(text: str, language: str, rng: np.random.Generator) -> str | None:
    return shuffle(text, language, rng) or repeat(text, language, rng)


def build(reports: Path, buckets: Path, out: Path, *, methods: list[str] | None = None, items_per_bucket: int = 6,
          spot_per_bucket: int = 3, raters: int = 3, overlap: int = 2, attention_share: float = 0.05,
          seed: int = 0, force: bool = False) -> dict:
    if not 1 <= overlap <= raters:
        raise UserError(f"annotate build: --overlap must be between 1 and --raters ({raters}), got {overlap}")
    if store.count_ratings(out) and not force:
        raise UserError(f"annotate build: {shown(out)} already holds ratings; export them first, or pass --force "
                        "to replace the database (its ratings are then lost)")
    split, responses = read_reports(reports, methods)
    if not (buckets / f"{split}.parquet").is_file():
        raise UserError(f"annotate build: {shown(buckets / f'{split}.parquet')} not found (run `polyalign bucketize`)")
    chosen = list(responses)
    shared = set.intersection(*(set(r) for r in responses.values()))
    records = {r["id"]: r for r in pq.read_table(buckets / f"{split}.parquet").to_pylist() if r["id"] in shared}
    rng = np.random.default_rng(seed)
    pairs = list(itertools.combinations(chosen, 2))
    items = []

    def add(task: str, record: dict, a: tuple[str, str], b: tuple[str, str]) -> None:
        if rng.random() < 0.5:
            a, b = b, a
        # the id is in the page's form: it must not tell an attention check from a real item
        items.append({"id": f"i{len(items):05d}", "task": task, "prompt_id": record["id"],
                      "bucket": record["bucket_id"], "slice": f"{record['language']}/{record['track']}",
                      "language": record["language"],
                      "context": json.dumps({"history": record.get("dialogue_history") or [],
                                             "context": record.get("context") or "",
                                             "question": record["question"]}, ensure_ascii=False),
                      "a_method": a[0], "a_text": a[1], "b_method": b[0], "b_text": b[1]})

    by_bucket: dict[str, list[str]] = {}
    for rid in sorted(records):
        by_bucket.setdefault(records[rid]["bucket_id"], []).append(rid)
    for b, (bucket, ids) in enumerate(sorted(by_bucket.items())):
        for k, rid in enumerate(rng.permutation(ids)[:items_per_bucket]):
            first, second = pairs[(b + k) % len(pairs)]
            add("pairwise", records[rid], (first, responses[first][rid]), (second, responses[second][rid]))
        for k, rid in enumerate(rng.permutation(ids)[:spot_per_bucket]):
            method = chosen[(b + k) % len(chosen)]
            add("spot", records[rid], ("human", records[rid]["human_answer"]), (method, responses[method][rid]))
    checks = max(1, round(attention_share * len(items))) if attention_share > 0 else 0
    for rid in rng.permutation(sorted(records)):
        if checks == 0:
            break
        human = records[rid]["human_answer"]
        bad = corrupted(human, records[rid]["language"], rng)
        if bad and bad != human:
            add("attention", records[rid], ("human", human), ("corrupted", bad))
            checks -= 1
    if not items:
        raise UserError(f"annotate build: no item could be drawn from {split} (no prompt shared by {chosen})")

    rater_ids = [f"r{i + 1:02d}" for i in range(raters)]
    order = rng.permutation(len(items))
    assigned: dict[str, list[str]] = {r: [] for r in rater_ids}
    for j, i in enumerate(order):
        for t in range(overlap):
            assigned[rater_ids[(j * overlap + t) % raters]].append(items[i]["id"])
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    connection = store.create(tmp)
    tokens = {r: secrets.token_urlsafe(18) for r in rater_ids}
    with connection:
        connection.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("split", split), ("methods", json.dumps(chosen)), ("seed", str(seed)), ("overlap", str(overlap))])
        connection.executemany("INSERT INTO raters (id, token) VALUES (?, ?)", tokens.items())
        connection.executemany(
            "INSERT INTO items VALUES (:id, :task, :prompt_id, :bucket, :slice, :language, :context, :a_method, "
            ":a_text, :b_method, :b_text)", items)
        for rater, ids in assigned.items():
            shuffled = [ids[k] for k in rng.permutation(len(ids))]
            connection.executemany("INSERT INTO assignments VALUES (?, ?, ?)",
                                   [(rater, item, pos) for pos, item in enumerate(shuffled)])
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    for suffix in ("-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
        Path(str(out) + suffix).unlink(missing_ok=True)
    shutil.move(tmp, out)
    tasks = {t: sum(i["task"] == t for i in items) for t in ("pairwise", "spot", "attention")}
    return {"database": str(out), "split": split, "methods": chosen, "items": len(items), **tasks,
            "buckets": len(by_bucket), "raters": tokens, "per_rater": {r: len(v) for r, v in assigned.items()}}
