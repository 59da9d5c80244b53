"""Stage `bucketize`: assign every prepared record to its bucket, compute bilingual response features, build the
human reference distributions from the train split only, and write

- `data/buckets/{train,val,test}.parquet`: the records plus `bucket_id`, `reference_bucket` (after backoff),
  `bucket_weight`, `support_distance` and one `f_<feature>` column per feature;
- `data/buckets/references.json`: per reference bucket, count and per-feature statistics;
- `reports/buckets.json` (flat numbers for `dvc metrics`), `reports/buckets.md` (bucket table),
  `reports/plots/buckets.csv` and `reports/plots/buckets.png` (records per bucket and split).

Reads params: paths, buckets, data.length_bins.names (the order of the length bins), logging. An empty split
is refused (exit 2); the outputs replace the previous ones all together or not at all.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyalign.buckets.features import FEATURE_NAMES, compute_features
from polyalign.buckets.references import BalanceBuckets, References
from polyalign.errors import UserError, shown
from polyalign.io import atomic_outputs, write_json, write_text
from polyalign.log import console, progress_bar
from polyalign.params import Params

SPLITS = ("train", "val", "test")
FEATURE_PREFIX = "f_"


def read_prepared(prepared: Path) -> dict[str, pa.Table]:
    tables = {}
    for split in SPLITS:
        path = prepared / f"{split}.parquet"
        if not path.is_file():
            raise UserError(f"bucketize: {path} not found (run `polyalign prepare` first)")
        tables[split] = pq.read_table(path)
        if not tables[split].num_rows:
            raise UserError(f"bucketize: the {split} split is empty ({path} holds no records); every split is "
                            "needed (sft validates on val, evaluate tests on test): rerun `polyalign prepare`")
    return tables


def bucket_ids_of(table: pa.Table) -> list[str]:
    cols = [table[c].to_pylist() for c in ("language", "track", "family", "length_bin")]
    return ["|".join(parts) for parts in zip(*cols)]


def run(params: Params, root: Path = Path(".")) -> dict:
    cfg = params.buckets
    tables = read_prepared(root / params.paths.prepared)
    ids = {split: bucket_ids_of(t) for split, t in tables.items()}

    total = sum(t.num_rows for t in tables.values())
    with progress_bar(params.logging.progress) as progress:
        task = progress.add_task("response features", total=total)
        features = {split: compute_features(t["human_answer"].to_pylist(),
                                            progress=lambda k: progress.advance(task, k))
                    for split, t in tables.items()}

    refs = References.build(features["train"], ids["train"], FEATURE_NAMES, min_bucket_size=cfg.min_bucket_size,
                            support_low=cfg.support_low, support_high=cfg.support_high, epsilon=cfg.epsilon)
    balance = BalanceBuckets(ids["train"], cfg.min_bucket_size, params.data.length_bins.names)

    out_tables = {}
    for split, table in tables.items():
        columns = {
            "bucket_id": pa.array(ids[split], pa.string()),
            "reference_bucket": pa.array(refs.resolve_many(ids[split]), pa.string()),
            "balance_bucket": pa.array([balance.resolve(b) for b in ids[split]], pa.string()),
            "bucket_weight": pa.array([balance.weight(b) for b in ids[split]], pa.float64()),
            "support_distance": pa.array(refs.distance(features[split], ids[split]), pa.float64()),
        }
        columns.update({FEATURE_PREFIX + name: pa.array(features[split][:, j], pa.float32())
                        for j, name in enumerate(FEATURE_NAMES)})
        for name, col in columns.items():
            table = table.append_column(name, col)
        out_tables[split] = table

    rows = bucket_table(out_tables, refs, balance)
    report = build_report(out_tables, rows, refs, balance)
    write_outputs(params, root, out_tables, refs, report, rows, balance.merges())
    console.print(f"bucketize: {report['buckets_train']} buckets in train, {report['reference_buckets']} reference "
                  f"buckets, {report['backed_off_buckets']} backed off; mean support distance val "
                  f"{report['support_distance_val']:.3f} → {shown(root / params.paths.buckets)}", highlight=False)
    return report


def bucket_table(tables: dict[str, pa.Table], refs: References, balance: BalanceBuckets) -> list[dict]:
    counts = {split: Counter(t["bucket_id"].to_pylist()) for split, t in tables.items()}
    train = tables["train"]
    train_ids = np.asarray(train["bucket_id"].to_pylist(), dtype=object)
    tokens = train["n_tokens"].to_numpy()
    rows = []
    for bid in sorted(set().union(*counts.values())):
        in_train = tokens[train_ids == bid]
        rows.append({
            "bucket": bid, **{split: counts[split][bid] for split in SPLITS}, "reference": refs.resolve(bid),
            "balance": balance.resolve(bid), "weight": balance.weight(bid),
            "median_tokens": float(np.median(in_train)) if len(in_train) else float("nan"),
        })
    return rows


def build_report(tables: dict[str, pa.Table], rows: list[dict], refs: References, balance: BalanceBuckets) -> dict:
    train_sizes = [r["train"] for r in rows if r["train"]]
    report = {f"records_{s}": tables[s].num_rows for s in SPLITS}
    report.update({
        "buckets_train": len(train_sizes),
        "buckets_all": len(rows),
        "reference_buckets": len(refs.buckets),
        "backed_off_buckets": sum(r["reference"] != r["bucket"] for r in rows),
        "balance_buckets": len(balance.counts),
        "merged_buckets": len(balance.merges()),  # training buckets that share a balance group with others
        "smallest_balance_group": min(balance.counts.values()),
        "largest_balance_group": max(balance.counts.values()),
        "smallest_train_bucket": min(train_sizes),
        "largest_train_bucket": max(train_sizes),
        "weight_min": min(balance.weights.values()),
        "weight_max": max(balance.weights.values()),
    })
    for split in SPLITS:
        d = tables[split]["support_distance"].to_numpy()
        report[f"support_distance_{split}"] = float(d.mean()) if len(d) else 0.0
        report[f"inside_band_{split}"] = float((d == 0).mean()) if len(d) else 0.0
    for lang in ("en", "zh"):
        report[f"records_{lang}"] = sum(t["language"].to_pylist().count(lang) for t in tables.values())
    return report


def render_markdown(rows: list[dict], report: dict, merges: list[dict]) -> str:
    lines = [
        "# Buckets",
        "",
        f"{report['records_train']} train / {report['records_val']} val / {report['records_test']} test records; "
        f"{report['buckets_train']} buckets in train, {report['reference_buckets']} reference buckets "
        "(buckets and parents with enough training records).",
        "",
        "`reference` is the bucket whose human distribution a record is compared with: the bucket itself, or the "
        "parent it backs off to (`*` = dropped part) when training holds fewer than `min_bucket_size` records. "
        "`balance` is the group of buckets that balancing counts in (a bucket with fewer than `min_bucket_size` "
        "training records is merged into its nearest group: same language, track and family first, then the "
        "adjacent length bin; `+` joins the merged parts) and `weight` its weight N / (K n_g) over the train split.",
        "",
        "| bucket | train | val | test | reference | balance | weight | median tokens (train) |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for r in rows:
        ref, bal = (f"`{r[k]}`" if r[k] == r["bucket"] else f"**`{r[k]}`**" for k in ("reference", "balance"))
        lines.append(f"| `{r['bucket']}` | {r['train']} | {r['val']} | {r['test']} | {ref} | {bal} | "
                     f"{r['weight']:.3f} | {r['median_tokens']:g} |")
    lines += ["", "## Merged balance groups", "",
              (f"{report['balance_buckets']} balance groups of {report['smallest_balance_group']} to "
               f"{report['largest_balance_group']} training records; {report['merged_buckets']} training buckets "
               "share theirs with other buckets.")]
    if merges:
        lines += ["", "| bucket | train | balance group | group train |", "| --- | ---: | --- | ---: |"]
        lines += [f"| `{m['bucket']}` | {m['train']} | `{m['balance']}` | {m['group_train']} |" for m in merges]
    return "\n".join(lines) + "\n"


def plot_buckets(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["bucket"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.5))
    height = 0.27
    for i, split in enumerate(SPLITS):
        ax.barh(y + (i - 1) * height, [r[split] for r in rows], height=height, label=split)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("symlog")
    ax.set_xlabel("records (symlog scale)")
    ax.set_title("Records per bucket and split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_outputs(params: Params, root: Path, tables: dict[str, pa.Table], refs: References, report: dict,
                  rows: list[dict], merges: list[dict]) -> None:
    reports = root / params.paths.reports
    csv = "bucket,train,val,test\n" + "".join(f"{r['bucket']},{r['train']},{r['val']},{r['test']}\n" for r in rows)
    with atomic_outputs() as out:
        buckets = out.directory(root / params.paths.buckets)
        for split, table in tables.items():
            pq.write_table(table, buckets / f"{split}.parquet")
        write_json(buckets / "references.json", refs.to_json())
        write_json(out.file(reports / "buckets.json"), report)
        write_text(out.file(reports / "buckets.md"), render_markdown(rows, report, merges))
        write_text(out.file(reports / "plots" / "buckets.csv"), csv)
        plot_buckets(rows, out.file(reports / "plots" / "buckets.png"))
