"""Scores one method's responses against the human answers of the same test rows, bucket by bucket, and
summarises them into groups with bootstrap intervals (DESIGN §9).

Human and generated responses are aligned row by row (one generated response per test prompt). Distribution
metrics compare the two sets inside each bucket of the human answer; the reference statistics of that bucket
(train split, with backoff) give the support bands for HCR and the feature scales for BNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from polyalign.buckets.features import FEATURE_NAMES, compute_features
from polyalign.buckets.references import References, group_rows
from polyalign.evaluation import diversity, naturalness
from polyalign.evaluation.summary import (
    GROUPS,
    aggregate,
    bootstrap_indices,
    interval,
    nuf_score,
    slice_of,
    weighted_mean,
)
from polyalign.evaluation.utility import answer_units

LENGTH = FEATURE_NAMES.index("n_tokens")
# Metrics recomputed on every bootstrap resample (cheap, and the ones the report gives intervals for).
BOOTSTRAP_METRICS = ("em", "em_norm", "f1", "rouge_l", "nll", "bng", "hcr_joint", "hcr_joint_gap", "length_w1",
                     "tdm", "critic_distance")
POINT_METRICS = ("hcr_mean", "length_ks", "length_mean", "empty_prediction_share", "distinct_1", "distinct_2",
                 "distinct_3", "self_bleu", "c2st", "mauve")
METRICS = (*BOOTSTRAP_METRICS, *POINT_METRICS, "nuf_score")
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
    """All metrics of one bucket on the given rows (a resample repeats rows); `full=False` computes only the
    BOOTSTRAP_METRICS."""
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
    v["c2st"] = (naturalness.c2st([human.texts[i] for i in rows], [gen.texts[i] for i in rows],
                                  settings.c2st_folds, settings.seed)
                 if len(rows) >= settings.c2st_min_n else float("nan"))
    v["mauve"] = (naturalness.mauve_score(_standardised(h_feat, ref), _standardised(g_feat, ref), settings.seed)
                  if settings.mauve and len(rows) >= settings.mauve_min_n and ref.active.any() else float("nan"))
    return v


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
    """Per-bucket values, group values, bootstrap replicates and intervals of one method."""
    counts = test.counts()
    per_bucket = {b: bucket_values(test, b, rows, gen, human, scores, settings, full=True)
                  for b, rows in sorted(test.rows.items())}
    groups = _with_nuf(aggregate(per_bucket, counts, METRICS[:-1]))
    groups["overall"]["hcr_per_feature"] = weighted_coverage(per_bucket)
    if settings.mauve:  # MAUVE of the pooled responses, blind to buckets (the per-bucket mean is conditional)
        root = test.refs.buckets[test.refs.resolve("*|*|*|*")]
        groups["overall"]["mauve_unconditional"] = naturalness.mauve_score(
            _standardised(human.features, root), _standardised(gen.features, root), settings.seed)
    replicates: dict[str, dict[str, list[float]]] = {g: {m: [] for m in (*BOOTSTRAP_METRICS, "nuf_score")}
                                                     for g in GROUPS}
    indices = bootstrap_indices(test.rows, resamples, settings.seed)
    for r in range(resamples):
        resampled = {b: bucket_values(test, b, idx[r], gen, human, scores, settings, full=False)
                     for b, idx in indices.items()}
        for group, values in _with_nuf(aggregate(resampled, counts, BOOTSTRAP_METRICS)).items():
            for metric, series in replicates[group].items():
                series.append(values[metric])
    intervals = {g: {m: list(interval(series, level, groups[g][m])) for m, series in metrics.items()}
                 for g, metrics in replicates.items()} if resamples else {}
    return {
        "buckets": {b: {"slice": slice_of(b), "reference_bucket": test.reference_of[b], **v}
                    for b, v in per_bucket.items()},
        "groups": groups,
        "intervals": intervals,
        "bootstrap": {"resamples": resamples, "level": level, "seed": settings.seed,
                      "replicates": {g: {m: [round(x, 6) for x in s] for m, s in ms.items()}
                                     for g, ms in replicates.items()}},
    }
