"""From per-bucket values to the numbers a reader compares: groups (n-weighted overall, macro over buckets, one
per slice en/zh x single/multi), bootstrap replicates and intervals, and the naturalness-utility frontier."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import norm

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


def aggregate(per_bucket: Mapping[str, Mapping[str, float]], counts: Mapping[str, int],
              metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Every group's value of every metric: `overall` and each slice weight their buckets by size, `macro`
    counts every bucket once. A bucket where a metric is undefined (NaN) is left out of that metric's mean."""
    buckets = sorted(per_bucket)
    members = {"overall": buckets, "macro": buckets, **{s: [b for b in buckets if slice_of(b) == s] for s in SLICES}}
    out: dict[str, dict[str, float]] = {}
    for group, keys in members.items():
        weights = [1.0 if group == "macro" else float(counts[b]) for b in keys]
        out[group] = {m: weighted_mean([per_bucket[b].get(m, float("nan")) for b in keys], weights) for m in metrics}
        out[group]["n"] = int(sum(counts[b] for b in keys))
        out[group]["buckets"] = len(keys)
    return out


def bootstrap_indices(rows_by_bucket: Mapping[str, np.ndarray], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Resampled row indices per bucket (resamples x bucket size), drawn with replacement inside each bucket so
    that bucket sizes stay fixed. They depend only on the seed and the buckets' rows: every method evaluated on
    the same test rows gets the same resamples, so differences between methods are paired."""
    rng = np.random.default_rng(seed)
    out = {}
    for bucket in sorted(rows_by_bucket):
        rows = np.asarray(rows_by_bucket[bucket])
        out[bucket] = rows[rng.integers(0, len(rows), size=(resamples, len(rows)))]
    return out


def interval(replicates: Sequence[float], level: float = 0.95, estimate: float | None = None) -> tuple[float, float]:
    """Bootstrap interval from replicates (NaN replicates ignored).

    With the point estimate given, the bias-corrected percentile interval (Efron's BC): distribution distances
    such as Wasserstein-1 grow when a resample repeats rows, so plain percentiles can sit entirely above the
    estimate; BC shifts the percentiles by how far the replicates' median lies from it."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[~np.isnan(r)]
    if len(r) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    probs = np.array([tail, 1 - tail])
    if estimate is not None and not math.isnan(estimate):
        below = (np.sum(r < estimate) + 0.5 * np.sum(r == estimate)) / len(r)
        z0 = norm.ppf(np.clip(below, 0.5 / len(r), 1 - 0.5 / len(r)))
        probs = norm.cdf(2 * z0 + norm.ppf(probs))
    low, high = np.quantile(r, probs)
    return float(low), float(high)


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
