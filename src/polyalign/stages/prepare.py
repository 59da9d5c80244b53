"""Stage `prepare`: read every source in `params.data.sources` (or the corpora of `data.preset`), clean and split
the records (records without an official split: a seeded split stratified by slice, language x track, at the
conversation level; see `data.clean.stratified_split`), drop exact duplicates, write
`data/prepared/{train,val,test}.parquet` and `reports/prepare.json` (with records per slice and split and the
slices a split lacks).

Reads params: paths, data (`data.split_seed` seeds the split, not the top-level seed). Every record that does not reach a split is counted by reason in the
report and listed in `reports/prepare_dropped.jsonl` (origins relative to the project root). A split left
empty is refused (exit 2): `bucketize` builds references from train, `sft` validates on val and `evaluate`
tests on test. The outputs replace the previous ones all together or not at all.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from polyalign.data.clean import deduplicate, slice_of, stratified_split, to_record
from polyalign.data.record import RECORD_SCHEMA, Problem
from polyalign.data.sources import read_source
from polyalign.errors import UserError, shown
from polyalign.io import atomic_outputs, portable, write_json, write_text
from polyalign.log import console, progress_bar
from polyalign.params import Params

SPLITS = ("train", "val", "test")


def source_label(cfg) -> str:
    if cfg.kind == "hf":
        return cfg.name or cfg.dataset
    return getattr(cfg, "name", None) or (Path(cfg.path).stem if getattr(cfg, "path", None) else cfg.kind)


def run(params: Params, root: Path = Path("."), *, require_every_split: bool = True) -> dict:
    """`require_every_split=False` lets tests and notebooks read a file that has one official split only;
    the CLI (and so `dvc repro`) always requires all three."""
    data = params.data
    records: list[dict] = []
    pools: list[tuple[str, ...] | None] = []  # per record: the splits a hashed split may choose, None if official
    dropped: list[dict] = []
    per_source: dict[str, dict] = {}

    with progress_bar(params.logging.progress) as progress:
        for cfg in data.effective_sources():
            label = source_label(cfg)
            task = progress.add_task(f"reading {cfg.kind}:{label}", total=None)
            stats = per_source.setdefault(label, {"kind": cfg.kind, "read": 0, "kept": 0, "dropped": Counter()})
            for item in read_source(cfg, root):
                stats["read"] += 1
                progress.advance(task)
                if isinstance(item, Problem):
                    if data.on_invalid == "error" and not item.always_skip:
                        raise UserError(item.describe() + "\n(set data.on_invalid: skip, or --on-invalid skip, "
                                        "to skip such rows and count them in reports/prepare.json)")
                    reason, entry = item.reason, {"origin": portable(item.origin, root), "field": item.field,
                                                  "message": item.message}
                else:
                    record = to_record(item, data)
                    if isinstance(record, dict):
                        record["_source"] = label
                        records.append(record)
                        pools.append(None if item.split else (item.split_pool or SPLITS))
                        continue
                    reason, entry = record, {"origin": portable(item.origin, root), "id": item.id}
                stats["dropped"][reason] += 1
                dropped.append({"source": label, "reason": reason, **entry})

    stratified_split(records, pools, data.split_seed, data.split_ratios)
    hashed_groups = len({r["group_id"] for r, pool in zip(records, pools) if pool is not None})
    records, duplicates = deduplicate(records)
    for rec in duplicates:
        per_source[rec["_source"]]["dropped"]["duplicate"] += 1
        dropped.append({"source": rec["_source"], "reason": "duplicate", "id": rec["id"], "split": rec["split"]})
    for rec in records:
        per_source[rec.pop("_source")]["kept"] += 1
    if not records:
        raise UserError("prepare: no record survived reading and cleaning; see the reasons above in "
                        f"{params.paths.reports}/prepare.json" if dropped else "prepare: the sources hold no records")

    report = build_report(records, dropped, per_source)
    if require_every_split:
        check_every_split(report["splits"], data.split_ratios, hashed_groups)
    write_outputs(params, root, records, dropped, report)
    console.print(f"prepare: {report['records']} records "
                  f"(train {report['splits']['train']}, val {report['splits']['val']}, "
                  f"test {report['splits']['test']}), {report['dropped_total']} dropped "
                  f"{dict(report['dropped'])}" + uncovered_note(report["uncovered_slices"]) + f" → {shown(root / params.paths.prepared)}",
                  highlight=False)
    return report


def check_every_split(counts: dict[str, int], ratios, hashed_groups: int) -> None:
    """Refuse an empty split here rather than let `sft` (val) or `evaluate` (test) fail on it stages later."""
    empty = [s for s in SPLITS if not counts[s]]
    if not empty:
        return
    zero = [s for s in empty if getattr(ratios, s) == 0]
    if zero:
        cause = f"data.split_ratios gives {' and '.join(zero)} 0"
    elif hashed_groups:
        cause = (f"only {hashed_groups} conversations/documents have no official split, and a slice (language x "
                 "track) needs 3 to reach every split")
    else:
        cause = "every record comes with an official split (a source's `split:` or the dataset's own)"
    split_word = "split is" if len(empty) == 1 else "splits are"
    raise UserError(
        f"prepare: the {' and '.join(empty)} {split_word} empty (records: "
        + ", ".join(f"{s} {counts[s]}" for s in SPLITS)
        + "; data.split_ratios: " + ", ".join(f"{s} {getattr(ratios, s):g}" for s in SPLITS)
        + f"): {cause}. bucketize needs train, sft validates on val and evaluate tests on test; add records, "
        f"change data.split_ratios, or add a source with `split: {empty[0]}`. Nothing was written.")


def uncovered_note(uncovered: dict[str, list[str]]) -> str:
    if not uncovered:
        return ""
    return "; uncovered slices: " + ", ".join(f"{s} (no {'/'.join(v)})" for s, v in uncovered.items())


def slice_tables(records: list[dict]) -> tuple[dict, dict, dict]:
    """Records and groups per slice and split, and the slices missing from a split that holds records."""
    counts, groups = Counter(), defaultdict(set)
    for rec in records:
        counts[(slice_of(rec), rec["split"])] += 1
        groups[(slice_of(rec), rec["split"])].add(rec["group_id"])
    slices = sorted({s for s, _ in counts})
    filled = [split for split in SPLITS if any(r["split"] == split for r in records)]
    per_records = {s: {split: counts[(s, split)] for split in SPLITS} for s in slices}
    per_groups = {s: {split: len(groups[(s, split)]) for split in SPLITS} for s in slices}
    uncovered = {s: missing for s in slices if (missing := [x for x in filled if not counts[(s, x)]])}
    return per_records, per_groups, uncovered


def build_report(records: list[dict], dropped: list[dict], per_source: dict[str, dict]) -> dict:
    by = defaultdict(Counter)
    for rec in records:
        for key in ("split", "language", "track", "family"):
            by[key][rec[key]] += 1
        by["split_language"][f"{rec['split']}/{rec['language']}"] += 1
    slices, slice_groups, uncovered = slice_tables(records)
    return {
        "records": len(records),
        "splits": {s: by["split"][s] for s in SPLITS},
        "languages": dict(sorted(by["language"].items())),
        "tracks": dict(sorted(by["track"].items())),
        "families": dict(sorted(by["family"].items())),
        "split_language": dict(sorted(by["split_language"].items())),
        "slices": slices,  # records per slice (language/track) and split
        "slice_groups": slice_groups,  # conversations/documents per slice and split
        "uncovered_slices": uncovered,  # slice -> the splits (of those holding records) without it
        "dropped_total": len(dropped),
        "dropped": dict(sorted(Counter(d["reason"] for d in dropped).items())),
        "sources": {name: {**s, "dropped": dict(sorted(s["dropped"].items()))} for name, s in per_source.items()},
    }


def write_outputs(params: Params, root: Path, records: list[dict], dropped: list[dict], report: dict) -> None:
    reports = root / params.paths.reports
    with atomic_outputs() as out:
        prepared = out.directory(root / params.paths.prepared)
        for split in SPLITS:
            rows = [r for r in records if r["split"] == split]
            pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), prepared / f"{split}.parquet")
        write_text(out.file(reports / "prepare_dropped.jsonl"),
                   "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dropped))
        write_json(out.file(reports / "prepare.json"), report)
