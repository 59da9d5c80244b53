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
from polyalign.evaluation import diversity, naturalness
from polyalign.evaluation.summary import (
    aggregate,
    aggregate_replicates,
    interval,
    nuf_score,
    rescale,
    slice_of,
    subsample_indices,
    subsample_scale,
    weighted_mean,
)
from polyalign.evaluation.utility import answer_units

LENGTH = FEATURE_NAMES.index("n_tokens")
# Metrics recomputed on every resample (cheap, and the ones the report gives intervals for). C2ST is resampled
# through its per-prompt held-out correctness (the classifiers are fitted once); c2st_gap = |C2ST - 0.5|.
BOOTSTRAP_METRICS = ("em", "em_norm", "f1", "rouge_l", "nll", "bng", "hcr_joint", "hcr_joint_gap", "length_w1",
                     "tdm", "critic_distance", "c2st", "c2st_gap")
POINT_METRICS = ("hcr_mean", "length_ks", "length_mean", "empty_prediction_share", "distinct_1", "distinct_2",
                 "distinct_3", "self_bleu", "mauve", "replacement_char_share", "wrong_language_share",
                 "truncated_share")
METRICS = (*BOOTSTRAP_METRICS, *POINT_METRICS, "nuf_score")
# The range of each resampled metric, which its interval is clipped to (others are unbounded).
BOUNDS = {**dict.fromkeys(("em", "em_norm", "f1", "rouge_l", "hcr_joint", "hcr_joint_gap", "tdm", "c2st",
                           "nuf_score"), (0.0, 1.0)),
          **dict.fromkeys(("nll", "bng", "length_w1"), (0.0, math.inf)), "c2st_gap": (0.0, 0.5)}
HUMAN_METRICS = ("hcr_joint", "hcr_mean", "length_mean", "distinct_1", "distinct_2", "distinct_3", "self_bleu")


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


@dataclass
class Settings:
    bng_cap: float = 3.0
    self_bleu_samples: int = 200
    c2st_min_n: int = 10
    c2st_folds: int = 5
    mauve: bool = False
    mauve_min_n: int = 20
    seed: int = 0


def _nanmean(x: np.ndarray) -> float:
    return float(np.mean(x[~np.isnan(x)])) if (~np.isnan(x)).any() else float("nan")


def _standardised(features: np.ndarray, ref) -> np.ndarray:
    return ((features - ref.stats["mean"]) / ref.stats["scale"])[:, ref.active]


def bucket_values(test: EvalRows, bucket: str, rows: np.ndarray, gen: Side, human: Side, scores: dict,
                  settings: Settings, full: bool) -> dict[str, float]:
    """All metrics of one bucket on the given rows (all of them, or a half-sample); `full=False` computes only the
    BOOTSTRAP_METRICS. `scores["c2st_correct"]` holds the per-prompt C2ST correctness (`c2st_rows`)."""
    ref = test.reference(bucket)
    v: dict[str, float] = {name: _nanmean(scores[name][rows]) for name in ("em", "em_norm", "f1", "rouge_l")}
    tokens = scores["nll_tokens"][rows].sum()
    v["nll"] = float(scores["nll_sum"][rows].sum() / tokens) if tokens else float("nan")
    v["critic_distance"] = float(scores["critic_distance"][rows].mean())
    g_feat, h_feat = gen.features[rows], human.features[rows]
    v["bng"] = naturalness.bng(g_feat, h_feat, ref.stats["std"], ref.active, settings.bng_cap)
    g_hcr, h_hcr = naturalness.hcr(gen.inside[rows], test.core), naturalness.hcr(human.inside[rows], test.core)
    v["hcr_joint"] = g_hcr["hcr_joint"]
    v["hcr_joint_gap"] = abs(g_hcr["hcr_joint"] - h_hcr["hcr_joint"])
    v["length_w1"] = float(naturalness.column_wasserstein(g_feat[:, [LENGTH]], h_feat[:, [LENGTH]])[0])
    v["tdm"] = (naturalness.tdm(gen.dynamics[rows], human.dynamics[rows]) if bucket.split("|")[1] == "multi"
                else float("nan"))
    v["c2st"] = _nanmean(scores["c2st_correct"][rows])
    v["c2st_gap"] = abs(v["c2st"] - 0.5)
    if not full:
        return v
    v["n"] = len(rows)
    v["hcr_mean"] = g_hcr["hcr_mean"]
    v["hcr_per_feature"] = per_feature_coverage(gen.inside[rows])
    v["length_ks"] = naturalness.ks_statistic(g_feat[:, LENGTH], h_feat[:, LENGTH])
    v["length_mean"] = float(g_feat[:, LENGTH].mean())
    v["empty_prediction_share"] = float(scores["empty_prediction"][rows].mean())
    units = [gen.units[i] for i in rows]
    for n in (1, 2, 3):
        v[f"distinct_{n}"] = diversity.distinct_n(units, n)
    v["self_bleu"] = diversity.self_bleu(units, settings.self_bleu_samples, settings.seed)
    v["replacement_char_share"] = naturalness.replacement_share([gen.texts[i] for i in rows])
    v["wrong_language_share"] = naturalness.wrong_language_share([gen.texts[i] for i in rows],
                                                                 [test.languages[i] for i in rows])
    truncated = scores.get("truncated")  # generation hit its token budget without an end of turn
    v["truncated_share"] = float("nan") if truncated is None else float(np.asarray(truncated, dtype=float)[rows].mean())
    v["mauve"] = (naturalness.mauve_score(_standardised(h_feat, ref), _standardised(g_feat, ref), settings.seed)
                  if settings.mauve and len(rows) >= settings.mauve_min_n and ref.active.any() else float("nan"))
    return v


def c2st_rows(test: EvalRows, gen: Side, human: Side, settings: Settings) -> np.ndarray:
    """Per test row, the C2ST correctness of its prompt, the classifier fitted inside the row's bucket; NaN in
    buckets smaller than `c2st_min_n`."""
    out = np.full(len(test.ids), np.nan)
    for rows in test.rows.values():
        if len(rows) >= settings.c2st_min_n:
            out[rows] = naturalness.c2st_correct([human.texts[i] for i in rows], [gen.texts[i] for i in rows],
                                                 settings.c2st_folds, settings.seed)
    return out


def per_feature_coverage(inside: np.ndarray) -> dict[str, float]:
    """HCR of every feature: the share of responses inside the bucket's support band on that feature."""
    return dict(zip(FEATURE_NAMES, np.asarray(inside, dtype=float).mean(axis=0).tolist()))


def weighted_coverage(per_bucket: dict[str, dict]) -> dict[str, float]:
    """Per-feature HCR over all rows: the buckets' values weighted by their size."""
    sizes = [v["n"] for v in per_bucket.values()]
    return {f: weighted_mean([v["hcr_per_feature"][f] for v in per_bucket.values()], sizes) for f in FEATURE_NAMES}


def human_values(test: EvalRows, human: Side, settings: Settings) -> dict[str, dict[str, float]]:
    """The human answers' own coverage, length and diversity per bucket (the target the methods aim at)."""
    out = {}
    for bucket, rows in sorted(test.rows.items()):
        units = [human.units[i] for i in rows]
        out[bucket] = {
            "n": len(rows), **naturalness.hcr(human.inside[rows], test.core),
            "hcr_per_feature": per_feature_coverage(human.inside[rows]),
            "length_mean": float(human.features[rows, LENGTH].mean()),
            **{f"distinct_{n}": diversity.distinct_n(units, n) for n in (1, 2, 3)},
            "self_bleu": diversity.self_bleu(units, settings.self_bleu_samples, settings.seed),
        }
    return out


def _with_nuf(groups: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    for values in groups.values():
        values["nuf_score"] = nuf_score(values["bng"], values["rouge_l"])
    return groups


def summarise(test: EvalRows, gen: Side, human: Side, scores: dict, settings: Settings, resamples: int,
              level: float) -> dict:
    """Per-bucket values, group values, resampled replicates and intervals of one method.

    Every resample takes half of each bucket's rows without replacement (`subsample_indices`); each bucket's
    value on it is rescaled towards the full estimate (`rescale`) before the groups are formed, and intervals
    are centred on the estimates (`interval`), so every interval contains its estimate."""
    counts = test.counts()
    scores = {**scores, "c2st_correct": c2st_rows(test, gen, human, settings)}
    per_bucket = {b: bucket_values(test, b, rows, gen, human, scores, settings, full=True)
                  for b, rows in sorted(test.rows.items())}
    groups = _with_nuf(aggregate(per_bucket, counts, METRICS[:-1]))
    groups["overall"]["hcr_per_feature"] = weighted_coverage(per_bucket)
    if settings.mauve:  # MAUVE of the pooled responses, blind to buckets (the per-bucket mean is conditional)
        root = test.refs.buckets[test.refs.resolve("*|*|*|*")]
        groups["overall"]["mauve_unconditional"] = naturalness.mauve_score(
            _standardised(human.features, root), _standardised(gen.features, root), settings.seed)
    bucket_replicates = {b: {m: np.full(resamples, np.nan) for m in BOOTSTRAP_METRICS} for b in per_bucket}
    for b, idx in subsample_indices(test.rows, resamples, settings.seed).items():
        for r in range(resamples):
            half = bucket_values(test, b, idx[r], gen, human, scores, settings, full=False)
            for m, series in bucket_replicates[b].items():
                series[r] = half[m]
        for m, series in bucket_replicates[b].items():
            series[:] = rescale(series, per_bucket[b][m], subsample_scale(counts[b]))
    replicates = aggregate_replicates(bucket_replicates, counts, BOOTSTRAP_METRICS, resamples)
    for values in replicates.values():
        values["nuf_score"] = np.array([nuf_score(x, y) for x, y in zip(values["bng"], values["rouge_l"])])
    unbounded = (-math.inf, math.inf)
    intervals = {g: {m: list(interval(series, level, groups[g][m], BOUNDS.get(m, unbounded)))
                     for m, series in metrics.items()}
                 for g, metrics in replicates.items()} if resamples else {}
    for b, metrics in bucket_replicates.items():
        per_bucket[b]["intervals"] = {m: list(interval(series, level, per_bucket[b][m], BOUNDS.get(m, unbounded)))
                                      for m, series in metrics.items()} if resamples else {}
    return {
        "buckets": {b: {"slice": slice_of(b), "reference_bucket": test.reference_of[b], **v}
                    for b, v in per_bucket.items()},
        "groups": groups,
        "intervals": intervals,
        "bootstrap": {"resamples": resamples, "level": level, "seed": settings.seed,
                      "scheme": "half-samples without replacement within buckets, rescaled; median-centred",
                      "replicates": {g: {m: np.round(s, 6).tolist() for m, s in ms.items()}
                                     for g, ms in replicates.items()}},
    }
