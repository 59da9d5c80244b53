"""The ablation report, rebuilt from the evaluation JSON files alone (`polyalign report`): `reports/metrics.json`
for `dvc metrics show` / `dvc exp show`, per-bucket CSVs for `dvc plots`, `reports/eval/report.md` with the tables
and PNG plots, and the same tables in a W&B run."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from polyalign.errors import UserError
from polyalign.evaluation import human_report
from polyalign.evaluation import metrics as registry
from polyalign.evaluation.summary import GROUPS, SLICES, interval, naturalness_score, pareto_front, slice_of
from polyalign.io import atomic_path, json_safe, write_json, write_text
from polyalign.log import announce_wandb_run, wandb_settings

# Which metrics go where (the main tables, metrics.json, the plots, the diversity table) is in the metric
# registry (`evaluation/metrics.py`); these read it each time, so a metric registered later shows up too.
ARROWS = {"higher": "↑", "lower": "↓", "0.5": "best at 0.5"}


def headline() -> list[tuple[str, str, str]]:
    """(metric, column label, which way is better: higher, lower, or 0.5 = the closer to 0.5 the better)."""
    return [(m.name, m.label, m.better) for m in registry.headline()]


def ranked() -> list[tuple[str, str, str]]:
    """What differences and rankings use: C2ST by its distance from 0.5 (0.3 is as far from chance as 0.7)."""
    return [(m.name, m.label, m.better) for m in registry.ranked()]


def json_metrics() -> list[str]:
    return [m.name for m in registry.METRICS if m.in_json]


def plot_metrics() -> list[str]:
    return [m.name for m in registry.METRICS if m.plot]


def diversity_metrics() -> list[tuple[str, str]]:
    return [(m.name, m.label) for m in registry.METRICS if m.kind == "diversity"]


# A method whose responses are told apart from human ones this easily, or that decodes to broken bytes this
# often, is not producing text yet: its naturalness metrics compare non-text with text.
NOT_TEXT_C2ST = 0.8
NOT_TEXT_REPLACEMENT_SHARE = 0.05


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def load(folder: Path) -> tuple[dict, list[dict]]:
    """human.json and the method files in their evaluation order; all must cover the same test ids."""
    human_path = folder / "human.json"
    if not human_path.is_file():
        raise UserError(f"report: {human_path} not found (run `polyalign evaluate` first)")
    human = json.loads(human_path.read_text(encoding="utf-8"))
    results = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))
               if p.name != "human.json"]
    if not results:
        raise UserError(f"report: no method results in {folder} (run `polyalign evaluate` first)")
    results.sort(key=lambda r: r["order"])
    split = human.get("split", "test")
    for r in results:
        if r.get("split", "test") != split:
            raise UserError(f"report: {r['method']} was evaluated on the {r.get('split', 'test')} split and the "
                            f"human reference on the {split} split; rerun `polyalign evaluate`")
        if r["test_ids"] != human["test_ids"]:
            raise UserError(f"report: {r['method']} was scored on other {split} rows than the human reference "
                            f"({r['n']} vs {human['n']}); rerun `polyalign evaluate`")
    return human, results


def value(result: dict, group: str, metric: str) -> float:
    return _num(result["groups"][group].get(metric))


def replicates(result: dict, group: str, metric: str) -> np.ndarray | None:
    series = result["bootstrap"]["replicates"].get(group, {}).get(metric)
    return np.array([_num(x) for x in series]) if series else None


def difference(a: dict, b: dict, group: str, metric: str) -> tuple[float, float, float]:
    """a - b with the interval of the paired differences of their replicates (the same half-samples for every
    method; none when the two files were resampled differently)."""
    diff = value(a, group, metric) - value(b, group, metric)
    ra, rb = replicates(a, group, metric), replicates(b, group, metric)
    same = all(a["bootstrap"].get(k) == b["bootstrap"].get(k) for k in ("seed", "resamples", "scheme"))
    if ra is None or rb is None or not same:
        return diff, float("nan"), float("nan")
    low, high = interval(ra - rb, a["bootstrap"]["level"], diff)
    return diff, low, high


def metrics_json(results: Sequence[dict], compare: Sequence[Sequence[str]]) -> dict:
    """The evaluated split, and flat headline numbers per method: `<metric>` over all rows (n-weighted over
    buckets) and `<metric>_macro` (every bucket counts once), plus the compared differences."""
    # which rows these numbers are on: `polyalign compare` never mixes splits or row sets
    ids = json.dumps(results[0]["test_ids"], ensure_ascii=False)
    out: dict = {"split": results[0].get("split", "test"), "rows_sha256": hashlib.sha256(ids.encode()).hexdigest()}
    for r in results:
        flat = {}
        for metric in json_metrics():
            flat[metric] = value(r, "overall", metric)
            flat[f"{metric}_macro"] = value(r, "macro", metric)
        if "mauve_unconditional" in r["groups"]["overall"]:
            flat["mauve_unconditional"] = _num(r["groups"]["overall"]["mauve_unconditional"])
        out[r["method"]] = flat
    by_name = {r["method"]: r for r in results}
    pairs = [(a, b) for a, b in compare if a in by_name and b in by_name]
    if pairs:
        out["compare"] = {f"{a} - {b}": {f"{m}_macro": difference(by_name[a], by_name[b], "macro", m)[0]
                                         for m, _, _ in ranked()} for a, b in pairs}
    return out


def fmt_number(x: float, digits: int = 3) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _cell(result: dict, group: str, metric: str) -> str:
    return _with_interval(value(result, group, metric), result.get("intervals", {}).get(group, {}).get(metric))


def _bucket_cell(values: dict, metric: str) -> str:
    return _with_interval(_num(values.get(metric)), values.get("intervals", {}).get(metric))


def _count(values: dict, share_metric: str) -> str:
    """A per-bucket share as a count of responses ("—" when it was not measured)."""
    share = _num(values.get(share_metric))
    return "—" if math.isnan(share) else str(round(share * values["n"]))


def _with_interval(v: float, bounds) -> str:
    low, high = bounds or [None, None]
    if math.isnan(v):
        return "—"
    if low is None or math.isnan(_num(low)):
        return fmt_number(v)
    return f"{fmt_number(v)} [{fmt_number(low)}, {fmt_number(high)}]"


def _label(result: dict) -> str:
    return f"{result['method']} (oracle)" if result.get("oracle") else result["method"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; a "|" inside a cell (bucket ids) is escaped so that it does not split the cell."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(row) for row in rows]) + "\n"


def _overlap(a: dict, b: dict, group: str, metric: str) -> str:
    ia = a.get("intervals", {}).get(group, {}).get(metric)
    ib = b.get("intervals", {}).get(group, {}).get(metric)
    if not ia or not ib or any(x is None or math.isnan(_num(x)) for x in (*ia, *ib)):
        return "—"
    return "yes" if ia[0] <= ib[1] and ib[0] <= ia[1] else "no"


def _winners(results: Sequence[dict], group: str) -> list[list[str]]:
    rows = []
    for metric, label, better in ranked():
        scored = [(value(r, group, metric), r) for r in results if not math.isnan(value(r, group, metric))]
        if len(scored) < 2:
            continue
        scored.sort(key=lambda s: s[0], reverse=better == "higher")
        best, second = scored[0][1], scored[1][1]
        diff, low, high = difference(best, second, group, metric)
        verdict = "—" if math.isnan(low) else ("yes" if low <= 0 <= high else "no")
        rows.append([label, f"{better} is better", _cell(best, group, metric), _label(best),
                     _cell(second, group, metric), _label(second), _overlap(best, second, group, metric),
                     f"{fmt_number(diff)} [{fmt_number(low)}, {fmt_number(high)}]", verdict])
    return rows


def not_text_reasons(result: dict) -> list[str]:
    """Why one method's responses are clearly not human-like text: C2ST >= NOT_TEXT_C2ST in most of the buckets
    that were tested, or a share of responses with U+FFFD replacement characters above
    NOT_TEXT_REPLACEMENT_SHARE."""
    tested = [_num(v.get("c2st")) for v in result["buckets"].values()]
    tested = [x for x in tested if not math.isnan(x)]
    high = sum(x >= NOT_TEXT_C2ST for x in tested)
    reasons = []
    if tested and high > len(tested) / 2:
        reasons.append(f"C2ST ≥ {NOT_TEXT_C2ST} in {high} of {len(tested)} tested buckets")
    share = value(result, "overall", "replacement_char_share")
    if not math.isnan(share) and share >= NOT_TEXT_REPLACEMENT_SHARE:
        reasons.append(f"{share:.0%} of responses contain U+FFFD replacement characters (broken bytes)")
    return reasons


def not_text_warning(results: Sequence[dict]) -> str | None:
    flagged = [(r, not_text_reasons(r)) for r in results]
    flagged = [f"{_label(r)}: {'; '.join(reasons)}" for r, reasons in flagged if reasons]
    if not flagged:
        return None
    return ("> **WARNING — generated text is not human-like.** " + " — ".join(flagged) + ". For these methods "
            "the naturalness metrics (BNG, HCR, Len W1, C2ST, TDM, MAUVE) compare non-text with human text: read "
            "them as \"not text yet\", not as a ranking of naturalness.\n")


def budget_text(decoding: dict, results: Sequence[dict]) -> str:
    """How many new tokens each prompt could generate, and how many responses hit that budget."""
    cut = ", ".join(f"{r['method']} {r.get('truncated_responses', 0)}" for r in results)
    if decoding.get("budget", "fixed") == "fixed":
        return f"at most {decoding['max_new_tokens']} new tokens (responses cut there: {cut})"
    cap = f", at most {decoding['max_new_tokens']}" if decoding.get("max_new_tokens") else ""
    return (f"a budget per bucket of {decoding['budget_factor']} x the q90 length of its training answers "
            f"(model tokens{cap}; responses cut by their budget: {cut})")


def markdown(human: dict, results: Sequence[dict], compare: Sequence[Sequence[str]],
             ratings: dict | None = None) -> str:
    """The report: one function per section, in this order (`ratings`: reports/human_eval.json, when there is
    one, gives the human-evaluation section)."""
    split = results[0].get("split", "test")
    sections = [
        _intro(results), _group_tables(results), _differences(results, compare), _best_per_metric(results),
        _diversity(human, results, split), _coverage(human, results, split), _mauve(results), _frontier(results),
        _per_bucket(human, results), human_report.section(ratings, results) if ratings else "",
        _diagnostics(results), METRIC_NOTES + _metric_list(),
    ]
    return "\n".join(section for section in sections if section)


def _intro(results: Sequence[dict]) -> str:
    """Title, warnings (val split, not text yet, oracle) and how every method was decoded and resampled."""
    first = results[0]
    d = first["decoding"]
    split = first.get("split", "test")
    out = [f"# PolyAlign evaluation report — {split} split\n"]
    if split == "val":
        out.append("> Evaluated on the **val** split, for tuning. Report final numbers once, on test "
                   "(`evaluate.split: test`).\n")
    warning = not_text_warning(results)
    if warning:
        out.append(warning)
    if any(r.get("oracle") for r in results):
        out.append("> **ORACLE RUN** — `prompt.conditioning: oracle_length`: every prompt carried the human answer's "
                   "length bin, which a deployed model cannot know. Do not compare these numbers with a "
                   "non-oracle run.\n")
    out.append(f"Every method answered the same **{first['n']} {split} prompts** (the ids are identical in every "
               f"`<method>.json`), rendered by one prompt renderer (conditioning `{first['conditioning']}`) and "
               f"decoded with the same settings: temperature {d['temperature']}, top-p {d['top_p']}, top-k "
               f"{d['top_k']}, repetition penalty {d['repetition_penalty']}, {budget_text(d, results)}, "
               f"seed {first['seed']}. Intervals are {int(first['bootstrap']['level'] * 100)}% intervals over "
               f"{first['bootstrap']['resamples']} half-samples (half of each bucket's rows, drawn without "
               "replacement and rescaled to the bucket's size), the same half-samples for every method, centred on "
               "the estimate: each interval contains its estimate. C2ST: 0.5 = indistinguishable from the human "
               "answers, so the best is the closest to 0.5; rankings and differences use |C2ST − 0.5|.\n")
    return "\n".join(out)


def _group_tables(results: Sequence[dict]) -> str:
    """The headline metrics of every method, one table per group (all rows, macro, each slice)."""
    first = results[0]
    split = first.get("split", "test")
    columns = headline()
    header = ["method", *[f"{label} ({ARROWS[b]})" for _, label, b in columns]]
    titles = {"overall": f"All {split} rows (buckets weighted by size)", "macro": "Macro over buckets (each counts once)"}
    out = []
    for group in GROUPS:
        n = first["groups"][group]["n"]
        out.append(f"## {titles.get(group, 'Slice ' + group)} — n = {n}, {first['groups'][group]['buckets']} buckets\n")
        if n == 0:
            out.append(f"No {split} rows in this slice.\n")
            continue
        out.append(markdown_table(header, [[_label(r), *[_cell(r, group, m) for m, _, _ in columns]] for r in results]))
    return "\n".join(out)


def _differences(results: Sequence[dict], compare: Sequence[Sequence[str]]) -> str:
    """`evaluate.compare`'s pairs: a − b with paired intervals."""
    by_name = {r["method"]: r for r in results}
    rows = []
    for a, b in compare:
        if a in by_name and b in by_name:
            for group in ("overall", "macro"):
                for metric, label, better in ranked():
                    diff, low, high = difference(by_name[a], by_name[b], group, metric)
                    if math.isnan(diff):
                        continue
                    excludes = "—" if math.isnan(low) else ("no" if low <= 0 <= high else "yes")
                    rows.append([f"{a} − {b}", group, f"{label} ({better} is better)",
                                 f"{fmt_number(diff)} [{fmt_number(low)}, {fmt_number(high)}]", excludes])
    if not rows:
        return ""
    return ("## Differences (paired: the same half-samples for both methods)\n\n"
            + markdown_table(["comparison", "group", "metric", "a − b [interval]", "interval excludes 0"], rows))


def _best_per_metric(results: Sequence[dict]) -> str:
    out = []
    for group in ("overall", "macro"):
        rows = _winners(results, group)
        if rows:
            out.append(f"## Best method per metric ({group})\n")
            out.append(markdown_table(["metric", "direction", "best [interval]", "method", "runner-up [interval]",
                                       "method", "intervals overlap", "best − runner-up, paired [interval]",
                                       "contains 0"], rows))
    return "\n".join(out)


def _diversity(human: dict, results: Sequence[dict], split: str) -> str:
    columns = diversity_metrics()
    rows = [["human", *[fmt_number(_num(human["groups"]["overall"].get(m))) for m, _ in columns]]]
    rows += [[_label(r), *[fmt_number(value(r, "overall", m)) for m, _ in columns]] for r in results]
    return (f"## Diversity (all {split} rows; human answers first)\n\n"
            + markdown_table(["responses", *[label for _, label in columns]], rows))


def _coverage(human: dict, results: Sequence[dict], split: str) -> str:
    coverage = [human["groups"]["overall"].get("hcr_per_feature", {})] + [
        r["groups"]["overall"].get("hcr_per_feature", {}) for r in results]
    return (f"## Human-support coverage per feature (all {split} rows)\n\n"
            "Share of responses inside the bucket's human support band [q10, q90] of the training answers; the "
            "human test answers' own share is the target.\n\n"
            + markdown_table(["feature", "human", *[_label(r) for r in results]],
                             [[f, *[fmt_number(_num(c.get(f)), 2) for c in coverage]] for f in coverage[0]]))


def _mauve(results: Sequence[dict]) -> str:
    first = results[0]
    if first.get("mauve") != "computed":
        return f"## MAUVE\n\nMAUVE {first.get('mauve')}.\n"
    return "## MAUVE\n\n" + markdown_table(
        ["method", "conditional (per bucket, n-weighted)", "unconditional"],
        [[_label(r), fmt_number(value(r, "overall", "mauve")),
          fmt_number(_num(r["groups"]["overall"].get("mauve_unconditional")))] for r in results])


def _frontier(results: Sequence[dict]) -> str:
    points = frontier_points(results)
    front = pareto_front(points)
    return ("## Naturalness–utility frontier\n\nMacro over buckets, so every interaction context counts once.\n\n"
            + markdown_table(["method", "naturalness exp(−BNG)", "utility (ROUGE-L)", "NUF score", "on the frontier"],
                             [[_label(r), fmt_number(p[0]), fmt_number(p[1]), _cell(r, "macro", "nuf_score"),
                               "yes" if f else "no"] for r, p, f in zip(results, points, front)])
            + "![frontier](frontier.png)\n")


def _per_bucket(human: dict, results: Sequence[dict]) -> str:
    rows = []
    for b in sorted(human["buckets"]):
        h = human["buckets"][b]
        for r in results:
            v = r["buckets"][b]
            rows.append([b, str(v["n"]), _label(r), fmt_number(_num(v.get("bng"))), fmt_number(_num(v.get("hcr_joint"))),
                         fmt_number(_num(h.get("hcr_joint"))), fmt_number(_num(v.get("length_mean")), 1),
                         fmt_number(_num(h.get("length_mean")), 1), fmt_number(_num(v.get("f1"))), _bucket_cell(v, "c2st"),
                         _count(v, "truncated_share"), _count(v, "replacement_char_share")])
    return ("## Per bucket\n\nTruncated: responses that hit the generation budget without ending their turn; U+FFFD: "
            "responses with replacement characters (broken bytes).\n\n"
            + markdown_table(["bucket", "n", "method", "BNG", "HCR joint", "HCR joint (human)", "length",
                              "length (human)", "F1", "C2ST [interval]", "truncated", "U+FFFD"], rows)
            + "![lengths per slice](lengths.png)\n\n![per-bucket metrics](per_bucket.png)\n")


def _diagnostics(results: Sequence[dict]) -> str:
    return ("## Diagnostics\n\nThe critic's distance is shown for completeness only: HDPO optimised it, so it cannot "
            "judge HDPO.\n\n"
            + markdown_table(["method", "critic distance", "wrong language", "U+FFFD", "empty predictions",
                              "generated tokens", "cache", "generation s", "NLL s", "metrics s"],
                             [[_label(r), fmt_number(value(r, "overall", "critic_distance")),
                               fmt_number(value(r, "overall", "wrong_language_share")),
                               fmt_number(value(r, "overall", "replacement_char_share")),
                               str(r["counts"]["empty_predictions"]), str(r["generated_tokens"]), r["cache"],
                               *[fmt_number(r["timing_s"][k], 1) for k in ("generation", "nll", "metrics")]]
                              for r in results]))


def _metric_list() -> str:
    """Every registered metric with its direction and unit, from the registry."""
    rows = [[m.name, m.label, {None: "—", **ARROWS}[m.better], m.unit or "—",
             "yes" if m.bootstrap else "no", m.kind] for m in registry.METRICS]
    return "\n### Registered metrics\n\n" + markdown_table(
        ["name", "label", "better", "unit", "interval", "shown in"], rows)


METRIC_NOTES = """## What the metrics mean

- **F1 / ROUGE-L / EM**: overlap with the human answer in words (English) or characters (Chinese); a row whose
  human answer is empty is not scored (an empty prediction there is an abstention, counted apart).
- **NLL**: the model's per-token negative log-likelihood of the human answers.
- **Wrong language**: share of responses not in the prompt's language (to a zh prompt: under half of the letters
  CJK; to an en prompt: over a tenth). **U+FFFD**: share of responses with replacement characters (broken bytes).
- **BNG**: per bucket, the mean over non-constant features of W1(generated, human) / human std, each gap capped.
- **HCR gap**: |share of generated responses inside the bucket's human support band on all core features − the
  same share for the human answers|.
- **Len W1**: Wasserstein-1 distance of response lengths (language-neutral tokens) from the human ones.
- **C2ST**: held-out accuracy of a classifier telling human from generated responses on hashed word/character
  n-grams — not the critic's features. 0.5 = indistinguishable, 1 = always told apart; the best is the closest to
  0.5, so rankings and differences use |C2ST − 0.5|. Its interval resamples the prompts' held-out correctness
  (the classifiers are fitted once per bucket). Buckets with too few rows are not tested.
- **TDM**: multi-turn buckets only; similarity (1 = identical) of how responses couple to the user turn (length
  ratio, lexical overlap, latent cosine).
- **NUF**: harmonic mean of exp(−BNG) and ROUGE-L.
- **Intervals**: half of each bucket's rows without replacement (a resample with replacement repeats rows, which
  inflates distances), rescaled to the bucket's size and centred on the estimate. BNG, Len W1, HCR gap and TDM
  are plug-in estimates: when the generated and human distributions nearly coincide, they read larger (TDM
  smaller) than the population value on buckets this small, and their intervals do not reach 0 (TDM 1).
"""


def frontier_points(results: Sequence[dict]) -> list[tuple[float, float]]:
    """(naturalness, utility) of each method, macro over buckets: the axes of the NUF."""
    return [(naturalness_score(value(r, "macro", "bng")), value(r, "macro", "rouge_l")) for r in results]


def _plot_lengths(human: dict, results: Sequence[dict], path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey=True)
    def lengths(examples: list[dict], slice_name: str) -> np.ndarray:
        return np.sort([e["n_tokens"] for e in examples if slice_of(e["bucket_id"]) == slice_name])

    for ax, slice_name in zip(axes.flat, SLICES):
        human_lengths = lengths(human["examples"], slice_name)
        ax.set_title(f"{slice_name} (n = {len(human_lengths)})")
        if len(human_lengths) == 0:
            ax.text(0.5, 0.5, "no test rows", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.step(human_lengths, np.arange(1, len(human_lengths) + 1) / len(human_lengths), where="post",
                color="black", linewidth=2.5, label="human")
        for r in results:
            x = lengths(r["examples"], slice_name)
            ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=_label(r))
        ax.set_xlabel("response length (language-neutral tokens)")
        ax.set_ylabel("share of responses ≤ length")
        ax.legend(fontsize=8)
    fig.suptitle("Response length distributions per slice: human answers vs each method")
    fig.tight_layout()
    _save(fig, path)


def _plot_per_bucket(results: Sequence[dict], path: Path) -> None:
    buckets = sorted(results[0]["buckets"])
    panels = plot_metrics()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 1 + 0.45 * len(buckets) *
                                                      max(1, len(results)) / 2), sharey=True)
    height = 0.8 / len(results)
    y = np.arange(len(buckets))
    for ax, metric in zip(np.atleast_1d(axes), panels):
        for k, r in enumerate(results):
            values = [_num(r["buckets"][b].get(metric)) for b in buckets]
            ax.barh(y + k * height, np.nan_to_num(values), height=height, label=_label(r))
        ax.set_title(metric)
        ax.set_yticks(y + 0.4 - height / 2, [f"{b} (n={results[0]['buckets'][b]['n']})" for b in buckets], fontsize=8)
        ax.invert_yaxis()
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _frontier_errors(result: dict) -> tuple[list[float], list[float]]:
    """Interval half-widths (below, above) of one method's frontier point: exp(−BNG) turns BNG's interval
    around, ROUGE-L's is used as it is; zero where there is no interval."""
    intervals = result.get("intervals", {}).get("macro", {})
    x, y = naturalness_score(value(result, "macro", "bng")), value(result, "macro", "rouge_l")
    bng_low, bng_high = (_num(v) for v in intervals.get("bng") or [float("nan")] * 2)
    r_low, r_high = (_num(v) for v in intervals.get("rouge_l") or [float("nan")] * 2)
    xerr = [x - naturalness_score(bng_high), naturalness_score(bng_low) - x]
    yerr = [y - r_low, r_high - y]
    return [0.0 if math.isnan(e) else e for e in xerr], [0.0 if math.isnan(e) else e for e in yerr]


def frontier_figure(results: Sequence[dict]):
    """The frontier on axes from 0 to 1 (both scores live there), each point with its intervals, so that
    differences at noise level look as small as they are."""
    points = frontier_points(results)
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(6, 5))
    for r, (x, yv), on in zip(results, points, front):
        xerr, yerr = _frontier_errors(r)
        ax.errorbar([x], [yv], xerr=[[xerr[0]], [xerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt="o" if on else "x",
                    markersize=7, capsize=3, label=_label(r))
        ax.annotate(_label(r), (x, yv), textcoords="offset points", xytext=(5, 5), fontsize=8)
    line = sorted(p for p, on in zip(points, front) if on)
    if len(line) > 1:
        ax.plot(*zip(*line), linestyle="--", color="grey")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("naturalness exp(−BNG), macro over buckets")
    ax.set_ylabel("utility (ROUGE-L), macro over buckets")
    ax.set_title("Naturalness–utility frontier (o: on the frontier)\nbars: the intervals; axes from 0",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _plot_frontier(results: Sequence[dict], path: Path) -> None:
    _save(frontier_figure(results), path)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def per_bucket_csv(results: Sequence[dict], metric: str) -> str:
    lines = ["label,bucket,method,n,value"]
    for b in sorted(results[0]["buckets"]):
        for r in results:
            v = r["buckets"][b]
            x = _num(v.get(metric))
            lines.append(f"{b} · {r['method']},{b},{r['method']},{v['n']},{'' if math.isnan(x) else f'{x:.6f}'}")
    return "\n".join(lines) + "\n"


def build(folder: Path, reports: Path, compare: Sequence[Sequence[str]]) -> dict:
    """Write report.md and the PNGs into `folder` (where the JSON files are), `metrics.json` and the per-bucket
    CSVs under `reports`."""
    human, results = load(folder)
    metrics = metrics_json(results, compare)
    write_json(reports / "metrics.json", json_safe(metrics))
    for metric in plot_metrics():
        write_text(reports / "plots" / f"eval_{metric}.csv", per_bucket_csv(results, metric))
    _plot_lengths(human, results, folder / "lengths.png")
    _plot_per_bucket(results, folder / "per_bucket.png")
    _plot_frontier(results, folder / "frontier.png")
    ratings_path = reports / "human_eval.json"
    ratings = json.loads(ratings_path.read_text(encoding="utf-8")) if ratings_path.is_file() else None
    write_text(folder / "report.md", markdown(human, results, compare, ratings))
    return {"metrics": metrics, "human": human, "results": results, "ratings": ratings}


def log_to_wandb(params, root: Path, built: dict) -> None:
    """The ablation and per-bucket tables and the headline numbers as one W&B run (offline by default)."""
    cfg = params.logging.wandb
    if cfg.mode == "disabled":
        return
    import wandb

    logs = root / params.paths.logs
    logs.mkdir(parents=True, exist_ok=True)
    split = built["metrics"]["split"]
    run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(logs), job_type="evaluate",
                     group=params.configuration_id(), name=f"evaluate-{split}-seed{params.seed}",
                     config=params.model_dump(mode="json"), tags=["evaluate", split, f"seed{params.seed}"],
                     settings=wandb_settings(params.logging.level))
    results = built["results"]
    names = [m for m, _, _ in headline()]
    columns = ["method", "group", *names]
    ablation = [[r["method"], g, *[value(r, g, m) for m in names]] for r in results for g in GROUPS]
    buckets = [[r["method"], b, v["n"], *[_num(v.get(m)) for m in names]]
               for r in results for b, v in sorted(r["buckets"].items())]
    run.log({"eval/ablation": wandb.Table(columns=columns, data=ablation),
             "eval/per_bucket": wandb.Table(columns=["method", "bucket", "n", *columns[2:]], data=buckets)})
    run.summary.update({f"{method}/{k}": v for method, flat in built["metrics"].items() if isinstance(flat, dict)
                        and method != "compare" for k, v in flat.items() if not math.isnan(v)})
    run.summary.update({"split": split, "rows_sha256": built["metrics"]["rows_sha256"]})
    if built.get("ratings"):  # the human evaluation's tables beside the automatic ones
        run.log(human_report.wandb_tables(built["ratings"]))
    run.finish()
    announce_wandb_run(run, cfg.mode)
