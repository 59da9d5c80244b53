"""`polyalign annotate export`: the ratings of the database, with the figures computed from them
(`evaluation.human`), into `reports/human_eval.json`, which the report's human-evaluation section reads alone.
The figures are the human raters'; automatic raters (`annotate judge`) get their agreement with the humans.

Raters whose attention-check pass rate is below the threshold are left out of every figure and counted; their
ratings stay in the file, marked.
"""

from __future__ import annotations

import json
from pathlib import Path

from polyalign.annotate import store
from polyalign.errors import UserError, shown
from polyalign.evaluation import human
from polyalign.io import write_json


def read_ratings(database: Path) -> tuple[dict[str, str], dict[str, str], list[dict]]:
    """The database's meta values, each rater's kind, and every rating with its item's methods and slices."""
    if not database.is_file():
        raise UserError(f"annotate export: no rating database at {shown(database)} (run `polyalign annotate "
                        "build` first)")
    connection = store.connect(database)
    try:
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        kinds = dict(connection.execute("SELECT id, kind FROM raters").fetchall())
        rows = connection.execute(
            "SELECT r.item, r.rater, i.task, i.a_method AS a, i.b_method AS b, r.choice, r.score_a, r.score_b, "
            "i.bucket, i.slice, i.prompt_id, r.created_at FROM ratings r JOIN items i ON i.id = r.item "
            "ORDER BY r.created_at, r.rater, r.item").fetchall()
    finally:
        connection.close()
    return meta, kinds, [dict(r) for r in rows]


def summary(ratings: list[dict], resamples: int, seed: int) -> dict:
    by = {"overall": {"all": ratings}}
    for key in ("slice", "bucket"):
        groups: dict[str, list[dict]] = {}
        for r in ratings:
            groups.setdefault(r[key], []).append(r)
        by[key] = dict(sorted(groups.items()))
    return {
        "win_rates": {level: {name: human.win_rates(rows, resamples, seed=seed) for name, rows in groups.items()}
                      for level, groups in by.items()},
        "bradley_terry": human.bradley_terry(ratings),
        "spot_the_human": human.spot_accuracy(ratings),
        "agreement": human.agreement(ratings),
    }


def export(database: Path, out: Path, *, attention_threshold: float = 0.8, resamples: int = 1000,
           seed: int = 0) -> dict:
    meta, kinds, ratings = read_ratings(database)
    kept, excluded = human.kept_raters(ratings, attention_threshold)
    passes = human.attention_pass_rates(ratings)
    for r in ratings:
        r["rater_kind"] = kinds.get(r["rater"], "human")
        r["excluded"] = r["rater"] not in kept
    counted = [r for r in ratings if human.in_human_figures(r)]
    result = {
        "database": str(database), "split": meta.get("split"), "methods": json.loads(meta.get("methods", "[]")),
        "attention_threshold": attention_threshold,
        "raters": {rater: {"kind": kind, "ratings": sum(r["rater"] == rater for r in ratings),
                           "attention_passed": passes.get(rater, (0, 0))[0],
                           "attention_checks": passes.get(rater, (0, 0))[1], "excluded": rater in excluded}
                   for rater, kind in sorted(kinds.items())},
        "excluded_raters": len(excluded),
        "summary": summary(counted, resamples, seed),
        # automatic raters (`annotate judge`), against the kept human raters' majority
        "judges": {rater: human.agreement_with_humans(counted + [r for r in ratings if r["rater"] == rater], rater)
                   for rater, kind in sorted(kinds.items()) if kind != "human"},
        "ratings": ratings,
    }
    write_json(out, result)
    return result
