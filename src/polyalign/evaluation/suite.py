"""Scores one method's responses against the human answers of the same test rows, bucket by bucket, and
summarises them into groups with intervals from half-samples of every bucket (DESIGN §9).

Human and generated responses are aligned row by row (one generated response per test prompt). Distribution
metrics compare the two sets inside each bucket of the human answer; the reference statistics of that bucket
(train split, with backoff) give the support bands for HCR and the feature scales for BNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from polyalign.buckets.features import FEATURE_NAMES, compute_features
from polyalign.buckets.references import References, group_rows
from polyalign.evaluation import metrics, naturalness
from polyalign.evaluation.metrics import BucketRows, standardised
from polyalign.evaluation.summary import (
    aggregate,
    aggregate_replicates,
    interval,
    rescale,
    slice_of,
    subsample_indices,
    subsample_scale,
    weighted_mean,
)
from polyalign.evaluation.utility import answer_units


@dataclass
class Side:
    """One set of responses aligned with the test rows: the human answers or one method's generations."""

    texts: list[str]
    units: list[list[str]]
    features: np.ndarray  # rows x FEATURE_NAMES
    inside: np.ndarray  # rows x features: inside the support band of the row's reference bucket
    dynamics: np.ndarray  # rows x 3, see naturalness.turn_dynamics

    @classmethod
    def build(cls, texts: Sequence[str], test: EvalRows, encoder) -> Side:
        texts = list(texts)
        features = compute_features(texts)
        vectors = encoder.encode(texts)
        return cls(texts, [answer_units(t) for t in texts], features, test.inside(features),
                   naturalness.turn_dynamics(texts, test.user_turns, vectors, test.turn_vectors))


class EvalRows:
    """The test rows' buckets, their reference statistics and the user turns the responses answer."""

    def __init__(self, records: Sequence[dict], refs: References, encoder, core: Sequence[str]):
        self.ids = [r["id"] for r in records]
        self.bucket_ids = [r["bucket_id"] for r in records]
        self.languages = [r["language"] for r in records]
        self.rows = group_rows(self.bucket_ids)
        self.refs = refs
        self.reference_of = {b: refs.resolve(b) for b in self.rows}
        self.core = np.array([FEATURE_NAMES.index(f) for f in core])
        self.user_turns = [r["question"] for r in records]
        self.turn_vectors = encoder.encode(self.user_turns)

    def reference(self, bucket: str):
        return self.refs.buckets[self.reference_of[bucket]]

    def inside(self, features: np.ndarray) -> np.ndarray:
        out = np.zeros(features.shape, dtype=bool)
        for bucket, rows in self.rows.items():
            ref = self.reference(bucket)
            out[rows] = naturalness.inside_band(features[rows], ref.stats["low"], ref.stats["high"])
        return out

    def counts(self) -> dict[str, int]:
        return {b: len(rows) for b, rows in self.rows.items()}


def mauve_on(cfg) -> bool:
    """Whether MAUVE is computed: `evaluate.mauve: auto` and the optional extra installed."""
    return cfg.mauve == "auto" and naturalness.mauve_available()


def bucket_values(test: EvalRows, bucket: str, rows: np.ndarray, gen: Side, human: Side, scores: dict,
                  params, full: bool) -> dict[str, float]:
    """Every bucket metric of the registry on one bucket's rows (all of them, or a half-sample); `full=False`
    computes only the resampled ones. `scores["c2st_correct"]` holds the per-prompt C2ST correctness
    (`c2st_rows`). Settings come from `params.evaluate` and `params.seed`."""
    view = BucketRows(test, bucket, rows, gen, human, scores, params.evaluate, params.seed, mauve_on(params.evaluate))
    v = {m.name: m.on(view) for m in metrics.bucket_metrics(bootstrap_only=not full)}
    if full:
        v["n"] = len(rows)
        v["hcr_per_feature"] = per_feature_coverage(gen.inside[rows])
    return v


def c2st_rows(test: EvalRows, gen: Side, human: Side, cfg, seed: int) -> np.ndarray:
    """Per test row, the C2ST correctness of its prompt, the classifier fitted inside the row's bucket; NaN in
    buckets smaller than `evaluate.c2st_min_n`."""
    out = np.full(len(test.ids), np.nan)
    for rows in test.rows.values():
        if len(rows) >= cfg.c2st_min_n:
            out[rows] = naturalness.c2st_correct([human.texts[i] for i in rows], [gen.texts[i] for i in rows],
                                                 cfg.c2st_folds, seed)
    return out


def per_feature_coverage(inside: np.ndarray) -> dict[str, float]:
    """HCR of every feature: the share of responses inside the bucket's support band on that feature."""
    return dict(zip(FEATURE_NAMES, np.asarray(inside, dtype=float).mean(axis=0).tolist()))


def weighted_coverage(per_bucket: dict[str, dict]) -> dict[str, float]:
    """Per-feature HCR over all rows: the buckets' values weighted by their size."""
    sizes = [v["n"] for v in per_bucket.values()]
    return {f: weighted_mean([v["hcr_per_feature"][f] for v in per_bucket.values()], sizes) for f in FEATURE_NAMES}


def human_metrics() -> list[str]:
    return [m.name for m in metrics.human_targets()]


def human_values(test: EvalRows, human: Side, params) -> dict[str, dict[str, float]]:
    """The human answers' own values of the `human_target` metrics per bucket (the target the methods aim at),
    with their coverage per feature."""
    targets = metrics.human_targets()
    out = {}
    for bucket, rows in sorted(test.rows.items()):
        view = BucketRows(test, bucket, rows, human, human, {}, params.evaluate, params.seed, False)
        out[bucket] = {"n": len(rows), **{m.name: m.on(view) for m in targets},
                       "hcr_per_feature": per_feature_coverage(human.inside[rows])}
    return out


def _with_group_metrics(groups: dict[str, dict]) -> dict[str, dict]:
    for values in groups.values():
        for m in metrics.group_metrics():
            values[m.name] = m.group(values)
    return groups


def summarise(test: EvalRows, gen: Side, human: Side, scores: dict, params) -> dict:
    """Per-bucket values, group values, resampled replicates and intervals of one method.

    Every resample takes half of each bucket's rows without replacement (`subsample_indices`); each bucket's
    value on it is rescaled towards the full estimate (`rescale`) before the groups are formed, and intervals
    are centred on the estimates (`interval`), so every interval contains its estimate. A `per_row` metric is
    computed on all resamples at once."""
    cfg, seed = params.evaluate, params.seed
    resamples, level = cfg.bootstrap_resamples, cfg.confidence
    counts = test.counts()
    scores = {**scores, "c2st_correct": c2st_rows(test, gen, human, cfg, seed)}
    per_bucket = {b: bucket_values(test, b, rows, gen, human, scores, params, full=True)
                  for b, rows in sorted(test.rows.items())}
    bucket_names = [m.name for m in metrics.bucket_metrics()]
    groups = _with_group_metrics(aggregate(per_bucket, counts, bucket_names))
    groups["overall"]["hcr_per_feature"] = weighted_coverage(per_bucket)
    if mauve_on(cfg):  # MAUVE of the pooled responses, blind to buckets (the per-bucket mean is conditional)
        root = test.refs.buckets[test.refs.resolve("*|*|*|*")]
        groups["overall"]["mauve_unconditional"] = naturalness.mauve_score(
            standardised(human.features, root), standardised(gen.features, root), seed)
    resampled = metrics.bucket_metrics(bootstrap_only=True)
    vectorised = [m for m in resampled if m.per_row is not None]
    looped = [m for m in resampled if m.per_row is None]
    bucket_replicates = {b: {m.name: np.full(resamples, np.nan) for m in resampled} for b in per_bucket}
    for b, idx in subsample_indices(test.rows, resamples, seed).items():
        series = bucket_replicates[b]
        for m in vectorised:
            series[m.name][:] = m.on_resamples(scores, idx)
        for r in range(resamples):
            view = BucketRows(test, b, idx[r], gen, human, scores, cfg, seed, False)
            for m in looped:
                series[m.name][r] = m.on(view)
        for name, values in series.items():
            values[:] = rescale(values, per_bucket[b][name], subsample_scale(counts[b]))
    replicates = aggregate_replicates(bucket_replicates, counts, [m.name for m in resampled], resamples)
    for values in replicates.values():
        for m in metrics.group_metrics():
            if m.bootstrap:
                values[m.name] = np.array([m.group({k: v[r] for k, v in values.items()}) for r in range(resamples)])
    bounds = {m.name: m.bounds or (-math.inf, math.inf) for m in metrics.METRICS}
    intervals = {g: {m: list(interval(series, level, groups[g][m], bounds[m])) for m, series in values.items()}
                 for g, values in replicates.items()} if resamples else {}
    for b, values in bucket_replicates.items():
        per_bucket[b]["intervals"] = {m: list(interval(series, level, per_bucket[b][m], bounds[m]))
                                      for m, series in values.items()} if resamples else {}
    return {
        "buckets": {b: {"slice": slice_of(b), "reference_bucket": test.reference_of[b], **v}
                    for b, v in per_bucket.items()},
        "groups": groups,
        "intervals": intervals,
        "bootstrap": {"resamples": resamples, "level": level, "seed": seed,
                      "scheme": "half-samples without replacement within buckets, rescaled; median-centred",
                      "replicates": {g: {m: np.round(s, 6).tolist() for m, s in ms.items()}
                                     for g, ms in replicates.items()}},
    }
