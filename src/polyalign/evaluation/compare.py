"""`polyalign compare`: methods over seeds. One evaluation is one draw of the training noise (initialisation, data
order, samples), and its bootstrap intervals see the test rows' noise only: a claim about a method needs its mean
over seeds. Runs (DVC experiments) that differ only by `seed` form a configuration; per configuration this gives
each headline metric's mean, its standard deviation over seeds and a 95% interval over seeds, and for each pair
of `evaluate.compare` the differences paired by seed, their interval and how many seeds agree in sign.

Intervals over seeds: Student's t with n - 1 degrees of freedom for fewer than BOOTSTRAP_MIN_SEEDS seeds, else the
percentile bootstrap of the mean over seeds. One seed gives a mean and no interval."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pydantic import ValidationError
from scipy import stats

from polyalign.errors import UserError
from polyalign.evaluation.experiments import Run
from polyalign.evaluation.report import fmt_number, markdown_table, ranked
from polyalign.io import atomic_path, write_json, write_text
from polyalign.params import NOT_CONFIGURATION, Params, flat_keys, settings_hash

BOOTSTRAP_MIN_SEEDS = 5
BOOTSTRAP_RESAMPLES = 9999
LABEL_KEYS = 3  # a configuration's label names at most this many of the params that set it apart


def compared() -> list[tuple[str, str, str]]:
    """The metrics compared across seeds: the report's ranked headline metrics, macro over buckets (from the
    metric registry, so a metric registered later is compared too)."""
    return [(f"{m}_macro", label, better) for m, label, better in ranked()]


def over_seeds(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """n, mean, standard deviation (n - 1) and the interval of the mean over seeds; NaN values are left out."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    out = {"n": int(x.size), "mean": float(x.mean()) if x.size else math.nan, "std": math.nan,
           "low": math.nan, "high": math.nan, "interval": "none"}
    if x.size < 2:
        return out
    out["std"] = float(x.std(ddof=1))
    if out["std"] == 0:  # every seed gave the same number
        out.update(low=out["mean"], high=out["mean"], interval="none (no spread)")
    elif x.size >= BOOTSTRAP_MIN_SEEDS:
        ci = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                             method="percentile", rng=np.random.default_rng(0)).confidence_interval
        out.update(low=float(ci.low), high=float(ci.high), interval="bootstrap over seeds")
    else:
        low, high = stats.t.interval(confidence, x.size - 1, loc=out["mean"], scale=out["std"] / math.sqrt(x.size))
        out.update(low=float(low), high=float(high), interval="t over seeds")
    return out


def paired(a: Sequence[float], b: Sequence[float], better: str, confidence: float = 0.95) -> dict[str, Any]:
    """a - b seed by seed (seeds where either is missing are left out), summarised over seeds, and in how many
    seeds a is better, worse or tied by the metric's direction (`better`: higher or lower)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x)
             and math.isfinite(y)]
    diffs = [x - y for x, y in pairs]
    sign = 1 if better == "higher" else -1
    return {**over_seeds(diffs, confidence), "differences": diffs,
            "a_better": sum(sign * d > 0 for d in diffs), "a_worse": sum(sign * d < 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs)}


def configuration(params: dict) -> tuple[str, dict[str, Any]]:
    """A run's configuration id (what W&B groups its runs by) and its flat params, both without the seed and
    logging. Params this version cannot validate (an older experiment) are hashed as they are."""
    try:
        model = Params.model_validate(params)
    except ValidationError:
        raw = {k: v for k, v in params.items() if k not in NOT_CONFIGURATION}
        return "raw-" + settings_hash(raw), flat_keys(raw)
    return model.configuration_id(), flat_keys(model.model_dump(mode="json", exclude=set(NOT_CONFIGURATION)))


def _labels(flats: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each configuration named by what sets it apart: among the params whose values differ between the
    configurations, those where it departs from the value most configurations share (all of them where no value
    is shared by a strict majority of the others). The one configuration at every shared value is named so."""
    keys = sorted({k for f in flats.values() for k in f})
    values = {k: [json.dumps(f.get(k), sort_keys=True) for f in flats.values()] for k in keys}
    differing = [k for k in keys if len(set(values[k])) > 1]
    common = {}
    for k in differing:
        (top, n), *rest = Counter(values[k]).most_common()
        if not rest or n > rest[0][1]:
            common[k] = top
    labels = {}
    for cid, f in flats.items():
        named = [f"{k}={json.dumps(f.get(k), ensure_ascii=False)}" for k in differing
                 if json.dumps(f.get(k), sort_keys=True) != common.get(k)]
        label = ", ".join(named[:LABEL_KEYS]) + (f" (+{len(named) - LABEL_KEYS} more)" if len(named) > LABEL_KEYS
                                                 else "")
        labels[cid] = label or ("the shared settings" if differing else "all runs")
    return labels


def _check_rows(chosen: list[Run], split: str | None) -> tuple[list[Run], str, Counter]:
    """The runs evaluated on one split and one set of rows; a mix is refused rather than averaged."""
    left_out: Counter = Counter()
    unknown = [r for r in chosen if "rows_sha256" not in r.metrics or "split" not in r.metrics]
    if unknown:
        left_out["evaluated before rows were recorded (rerun evaluate)"] += len(unknown)
        chosen = [r for r in chosen if r not in unknown]
    splits = sorted({r.metrics["split"] for r in chosen})
    if split is not None:
        if other := sum(r.metrics["split"] != split for r in chosen):
            left_out[f"other split than {split}"] += other
        chosen = [r for r in chosen if r.metrics["split"] == split]
    elif len(splits) > 1:
        names = "; ".join(f"{s}: {', '.join(r.name for r in chosen if r.metrics['split'] == s)}" for s in splits)
        raise UserError(f"compare: the runs were evaluated on different splits ({names}); pass --split val or "
                        "--split test (tune on val, report test)")
    if not chosen:
        raise UserError("compare: no finished, evaluated run to compare"
                        + (f" ({', '.join(f'{n} {why}' for why, n in left_out.items())})" if left_out else ""))
    rows = sorted({r.metrics["rows_sha256"] for r in chosen})
    if len(rows) > 1:
        names = "; ".join(f"{', '.join(r.name for r in chosen if r.metrics['rows_sha256'] == h)}" for h in rows)
        raise UserError(f"compare: the runs were scored on different {chosen[0].metrics['split']} rows (groups: "
                        f"{names}): a change of data, split or evaluate.max_prompts; compare runs of one data set")
    return chosen, chosen[0].metrics["split"], left_out


def compare(found: list[Run], split: str | None = None, confidence: float = 0.95,
            skipped: Counter | None = None) -> dict[str, Any]:
    """Group the runs by configuration and summarise each over its seeds (see the module docstring). `skipped`
    counts what reading the experiments already left out, by reason."""
    chosen, split, left_out = _check_rows(found, split)
    left_out.update(skipped or {})
    by_config: dict[str, dict[int, Run]] = {}
    flats: dict[str, dict[str, Any]] = {}
    for run in sorted(chosen, key=lambda r: r.timestamp, reverse=True):  # the newest run of a seed counts
        cid, flat = configuration(run.params)
        flats[cid] = flat
        seeds = by_config.setdefault(cid, {})
        if run.seed in seeds:
            left_out["a seed run again (the newest counts)"] += 1
        else:
            seeds[run.seed] = run
    labels = _labels(flats)
    groups = []
    for cid in sorted(by_config, key=lambda c: labels[c]):
        seeds = sorted(by_config[cid])
        runs = [by_config[cid][s] for s in seeds]
        methods = list(runs[0].params.get("evaluate", {}).get("methods") or [])
        methods = [m for m in methods if all(isinstance(r.metrics.get(m), dict) for r in runs)]
        values = {m: {metric: [_value(r, m, metric) for r in runs] for metric, _, _ in compared()} for m in methods}
        summary = {m: {metric: over_seeds(v, confidence) for metric, v in per.items()} for m, per in values.items()}
        comparisons = []
        for a, b in runs[0].params.get("evaluate", {}).get("compare") or []:
            if a in values and b in values:
                comparisons.append({"a": a, "b": b, "metrics": {
                    metric: paired(values[a][metric], values[b][metric], better, confidence)
                    for metric, _, better in compared()}})
        groups.append({"id": cid, "label": labels[cid], "seeds": seeds,
                       "runs": [{"name": r.name, "rev": r.rev, "seed": r.seed} for r in runs],
                       "methods": {m: {"values": values[m], "summary": summary[m]} for m in methods},
                       "comparisons": comparisons})
    return {"split": split, "rows_sha256": chosen[0].metrics["rows_sha256"], "confidence": confidence,
            "interval": f"t over seeds below {BOOTSTRAP_MIN_SEEDS} seeds, else the percentile bootstrap over seeds",
            "metrics": [{"name": m, "label": label, "better": b} for m, label, b in compared()],
            "left_out": dict(left_out), "groups": groups}


def _value(run: Run, method: str, metric: str) -> float:
    x = run.metrics[method].get(metric)
    return math.nan if x is None else float(x)


ARROW = {"higher": "↑", "lower": "↓"}


def _cell(s: dict[str, Any]) -> str:
    if s["n"] == 0:
        return "—"
    text = fmt_number(s["mean"]) + ("" if math.isnan(s["std"]) else f" ± {fmt_number(s['std'])}")
    return text + ("" if math.isnan(s["low"]) else f" [{fmt_number(s['low'])}, {fmt_number(s['high'])}]")


def _signs(d: dict[str, Any]) -> str:
    n = len(d["differences"])
    if n == 0:
        return "—"
    for key, word in (("a_better", "better"), ("a_worse", "worse"), ("ties", "tied")):
        if d[key] == n:
            return f"{word} in {n}/{n}"
    return f"better in {d['a_better']}, worse in {d['a_worse']}" + (f", tied in {d['ties']}" if d["ties"] else "") + \
        f" of {n}"


def markdown(result: dict[str, Any]) -> str:
    n_runs = sum(len(g["runs"]) for g in result["groups"])
    intro = (f"{n_runs} runs in {len(result['groups'])} configuration(s), all scored on the same "
             f"{result['split']} rows (sha256 {result['rows_sha256'][:12]}). Each cell: mean ± standard deviation "
             f"over seeds [{result['confidence']:.0%} interval of the mean: {result['interval']}]. Metrics are "
             "macro averages over buckets; ↓ lower is better, ↑ higher.")
    lines = [f"# Methods over seeds — {result['split']} split", "", intro, ""]
    if result["left_out"]:
        lines += ["Left out: " + "; ".join(f"{n} {why}" for why, n in sorted(result["left_out"].items())) + ".", ""]
    lines.append(markdown_table(["configuration", "W&B group", "seeds", "runs"], [
        [g["label"], g["id"], ", ".join(map(str, g["seeds"])), ", ".join(r["name"] for r in g["runs"])]
        for g in result["groups"]]).rstrip())
    header = ["method", *[f"{label} ({ARROW[b]})" for _, label, b in compared()]]
    for g in result["groups"]:
        lines += ["", f"## {g['label']} ({len(g['seeds'])} seeds)", ""]
        lines.append(markdown_table(header, [[m, *[_cell(per["summary"][metric]) for metric, _, _ in compared()]]
                                     for m, per in g["methods"].items()]).rstrip())
        for c in g["comparisons"]:
            lines += ["", f"### {c['a']} − {c['b']}, paired by seed", ""]
            rows = [[f"{label} ({ARROW[b]})", _cell(c["metrics"][metric]), _signs(c["metrics"][metric]),
                     ", ".join(fmt_number(d) for d in c["metrics"][metric]["differences"])]
                    for metric, label, b in compared()]
            lines.append(markdown_table(["metric", f"{c['a']} − {c['b']}", f"{c['a']} is", "per seed"], rows).rstrip())
    return "\n".join(lines) + "\n"


def table_csv(result: dict[str, Any]) -> str:
    """One row per configuration and method (for `dvc plots`): each metric's mean and interval over seeds."""
    names = [m for m, _, _ in compared()]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # labels hold commas and quotes (e.g. data.preset="paper-en")
    writer.writerow(["label", "configuration", "method", "seeds",
                     *[f"{m}{suffix}" for m in names for suffix in ("", "_low", "_high")]])
    several = len(result["groups"]) > 1
    for g in result["groups"]:
        for method, per in g["methods"].items():
            cells = [f"{per['summary'][m][k]:.6f}" if math.isfinite(per["summary"][m][k]) else ""
                     for m in names for k in ("mean", "low", "high")]
            writer.writerow([f"{g['label']} · {method}" if several else method, g["id"], method, len(g["seeds"]),
                             *cells])
    return out.getvalue()


def plot(result: dict[str, Any], path) -> None:
    """One panel per headline metric: each configuration's methods as rows, their seeds as points, the mean as a
    diamond with its interval over seeds."""
    rows = [(f"{g['label']} · {m}" if len(result["groups"]) > 1 else m, per)
            for g in result["groups"] for m, per in g["methods"].items()]
    cols = 3
    grid = math.ceil(len(compared()) / cols)
    fig, axes = plt.subplots(grid, cols, figsize=(4.2 * cols, 0.35 * len(rows) * grid + 1.2 * grid),
                             squeeze=False, sharey=True, layout="constrained")  # room for the suptitle
    for ax, (metric, label, better) in zip(axes.flat, compared()):
        for y, (_, per) in enumerate(rows):
            seeds = [v for v in per["values"][metric] if math.isfinite(v)]
            ax.scatter(seeds, [y] * len(seeds), s=14, color="tab:blue", alpha=0.6, zorder=2)
            s = per["summary"][metric]
            if s["n"]:
                low, high = (s["low"], s["high"]) if math.isfinite(s["low"]) else (s["mean"], s["mean"])
                ax.errorbar([s["mean"]], [y], xerr=[[s["mean"] - low], [high - s["mean"]]], fmt="D",
                            color="black", markersize=5, capsize=3, zorder=3)
        ax.set_title(f"{label} ({ARROW[better]})", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.flat[len(compared()):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    axes[0, 0].set_ylim(len(rows) - 0.5, -0.5)  # the first row at the top (the y axis is shared)
    fig.suptitle(f"Methods over seeds ({result['split']} split): seeds as points, mean with its interval",
                 fontsize=11)
    fig.savefig(path, dpi=110, format="png")  # the path may be a temporary name without the suffix
    plt.close(fig)


def write(result: dict[str, Any], reports: Path) -> dict[str, Path]:
    """compare.md, compare.json, compare.csv and compare.png under `reports`, each replaced whole."""
    paths = {kind: reports / f"compare.{kind}" for kind in ("md", "json", "csv", "png")}
    write_text(paths["md"], markdown(result))
    write_json(paths["json"], result)
    write_text(paths["csv"], table_csv(result))
    with atomic_path(paths["png"]) as tmp:
        plot(result, tmp)
    return paths
