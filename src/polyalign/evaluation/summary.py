"""From per-bucket values to the numbers a reader compares: groups (n-weighted overall, macro over buckets, one
per slice en/zh x single/multi), half-sample replicates and intervals, and the naturalness-utility frontier."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

SLICES = ("en/single", "en/multi", "zh/single", "zh/multi")
GROUPS = ("overall", "macro", *SLICES)


def slice_of(bucket_id: str) -> str:
    language, track = bucket_id.split("|")[:2]
    return f"{language}/{track}"


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """Mean of the values that are not NaN, weighted; NaN when none is left."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    keep = ~np.isnan(v) & (w > 0)
    return float(np.average(v[keep], weights=w[keep])) if keep.any() else float("nan")


def members(buckets) -> dict[str, list[str]]:
    """The buckets of every group."""
    buckets = sorted(buckets)
    return {"overall": buckets, "macro": buckets, **{s: [b for b in buckets if slice_of(b) == s] for s in SLICES}}


def aggregate(per_bucket: Mapping[str, Mapping[str, float]], counts: Mapping[str, int],
              metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Every group's value of every metric: `overall` and each slice weight their buckets by size, `macro`
    counts every bucket once. A bucket where a metric is undefined (NaN) is left out of that metric's mean."""
    out: dict[str, dict[str, float]] = {}
    for group, keys in members(per_bucket).items():
        weights = [1.0 if group == "macro" else float(counts[b]) for b in keys]
        out[group] = {m: weighted_mean([per_bucket[b].get(m, float("nan")) for b in keys], weights) for m in metrics}
        out[group]["n"] = int(sum(counts[b] for b in keys))
        out[group]["buckets"] = len(keys)
    return out


def aggregate_replicates(replicates: Mapping[str, Mapping[str, np.ndarray]], counts: Mapping[str, int],
                         metrics: Sequence[str], resamples: int) -> dict[str, dict[str, np.ndarray]]:
    """`aggregate` of every resample at once, from each bucket's replicates (arrays of `resamples` values) to
    each group's: one vectorised weighted mean instead of a Python loop per resample."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for group, keys in members(replicates).items():
        weights = np.array([1.0 if group == "macro" else float(counts[b]) for b in keys])[:, None]
        out[group] = {}
        for metric in metrics:
            values = np.array([replicates[b][metric] for b in keys], dtype=np.float64).reshape(len(keys), resamples)
            keep = ~np.isnan(values) & (weights > 0)
            total = (np.where(keep, values, 0.0) * weights).sum(axis=0)
            mass = (keep * weights).sum(axis=0)
            out[group][metric] = np.divide(total, mass, out=np.full(resamples, np.nan), where=mass > 0)
    return out


def subsample_size(n: int) -> int:
    """Rows in one resample of a bucket of n rows: half of them (n // 2), drawn without replacement."""
    return n // 2 if n >= 2 else n


def subsample_scale(n: int) -> float:
    """Factor that turns the spread of a statistic over half-samples of n rows into its spread over the full n
    rows: sqrt(b / (n - b)) with b = n // 2 (1 for even n; the finite-population correction of subsampling).
    0 for a bucket of one row, which carries no information about its own spread."""
    b = subsample_size(n)
    return math.sqrt(b / (n - b)) if n >= 2 else 0.0


def subsample_indices(rows_by_bucket: Mapping[str, np.ndarray], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Row indices of the resamples per bucket (resamples x `subsample_size`): half-samples without replacement,
    so no row is repeated. Resampling with replacement repeats rows, which inflates distribution distances such
    as Wasserstein-1 (a repeated row is a point mass the other side cannot match). The indices depend only on the
    seed and the buckets' rows: every method evaluated on the same test rows gets the same resamples, so
    differences between methods are paired."""
    rng = np.random.default_rng(seed)
    out = {}
    for bucket in sorted(rows_by_bucket):
        rows = np.asarray(rows_by_bucket[bucket])
        order = np.argsort(rng.random((resamples, len(rows))), axis=1)
        out[bucket] = rows[order[:, :subsample_size(len(rows))]]
    return out


def rescale(value: float, estimate: float, scale: float) -> float:
    """A half-sample's value moved towards the full-sample estimate by `subsample_scale`, so that the replicates
    spread around the estimate as much as the estimate varies between test sets of the bucket's size."""
    return estimate + scale * (value - estimate)


def interval(replicates: Sequence[float], level: float = 0.95, estimate: float | None = None,
             bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """Percentile interval of the replicates (NaN replicates ignored).

    With the point estimate given, the replicates are first shifted so that their median is the estimate: a
    distance measured on fewer rows is larger (Wasserstein-1 of two samples of b rows shrinks like 1/sqrt(b) when
    the distributions overlap), and that shift is an artefact of the resample size, not uncertainty. The interval
    then always contains the estimate; `bounds` (the metric's range, e.g. 0 for a distance) clip it."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[~np.isnan(r)]
    if len(r) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.quantile(r, [tail, 1 - tail])
    if estimate is not None and not math.isnan(estimate):
        shift = estimate - float(np.median(r))
        low, high = low + shift, high + shift
    return float(max(low, bounds[0])), float(min(high, bounds[1]))


def naturalness_score(bng_value: float) -> float:
    """BNG (0 = human-like, larger = further) mapped to (0, 1]: exp(-BNG)."""
    return math.exp(-bng_value) if not math.isnan(bng_value) else float("nan")


def nuf_score(bng_value: float, utility: float) -> float:
    """One aggregate of the naturalness-utility trade-off: the harmonic mean of exp(-BNG) and utility
    (ROUGE-L), so a method cannot buy one with the other."""
    n = naturalness_score(bng_value)
    if math.isnan(n) or math.isnan(utility) or n + utility == 0:
        return float("nan") if math.isnan(n) or math.isnan(utility) else 0.0
    return 2 * n * utility / (n + utility)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (naturalness, utility) points no other point beats on both axes (ties allowed). NaN points are
    never on the front."""
    front = []
    for i, (x, y) in enumerate(points):
        if math.isnan(x) or math.isnan(y):
            front.append(False)
            continue
        dominated = any(a >= x and b >= y and (a > x or b > y) for j, (a, b) in enumerate(points)
                        if j != i and not (math.isnan(a) or math.isnan(b)))
        front.append(not dominated)
    return front
