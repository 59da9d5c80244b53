"""The one table of evaluation metrics (`METRICS`): how each is computed on a bucket's rows, which way is better,
whether it is resampled for intervals, whether the human answers get it too, and where it is shown. The suite,
`reports/metrics.json`, the report's tables and plots, W&B and `polyalign compare` all read this table, so a new
metric is one `Metric` entry (`register`): docs/extending.md walks through it.

A metric is computed per bucket and then averaged over the buckets of each group (by size for `overall` and the
slices, once each for `macro`), except a `group` metric, which is computed from a group's other values (NUF).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from polyalign.buckets.features import FEATURE_NAMES
from polyalign.evaluation import diversity, naturalness
from polyalign.evaluation.summary import nuf_score

LENGTH = FEATURE_NAMES.index("n_tokens")
Better = Literal["higher", "lower", "0.5"]


@dataclass(frozen=True)
class Metric:
    """One evaluation metric.

    - `compute(rows)` gives its value on one bucket's rows (a `BucketRows`); a metric that is a mean of a
      per-row score over the rows says so with `per_row` (the name of the score array, NaN rows left out, then
      `transform`) instead, which also lets its resamples be computed all at once.
    - `group(values)` instead derives it from a group's other values (NUF from BNG and ROUGE-L).
    - `better`: higher, lower, or 0.5 (the closer to 0.5 the better); None for a diagnostic. `ranked_by` names the
      metric that rankings and differences use instead (C2ST by its distance from 0.5).
    - `bootstrap`: recomputed on every half-sample, so it gets intervals and paired differences; `bounds` is the
      range its intervals are clipped to.
    - `human_target`: the human answers get it too (the target the methods aim at).
    - `kind` places it in the report: `headline` (the main tables, W&B, `polyalign compare`), `diversity` (the
      diversity table, beside the human answers' own values) or `diagnostic`. `in_json`: in
      reports/metrics.json. `plot`: one panel of the per-bucket plot.
    """

    name: str
    label: str
    better: Better | None = None
    compute: Callable[[BucketRows], float] | None = None
    per_row: str | None = None
    transform: Callable[[Any], Any] | None = None
    group: Callable[[dict], float] | None = None
    bootstrap: bool = False
    bounds: tuple[float, float] | None = None
    human_target: bool = False
    kind: Literal["headline", "diversity", "diagnostic"] = "diagnostic"
    in_json: bool = False
    plot: bool = False
    ranked_by: str | None = None
    unit: str = ""

    def on(self, rows: BucketRows) -> float:
        """This metric's value on a bucket's rows."""
        if self.per_row is not None:
            value = nanmean(rows.score(self.per_row))
            return float(self.transform(value)) if self.transform else value
        return float(self.compute(rows))

    def on_resamples(self, scores: dict[str, np.ndarray], index: np.ndarray) -> np.ndarray:
        """A `per_row` metric on every resample at once (`index`: resamples x rows)."""
        values = scores[self.per_row]
        picked = np.asarray(values, dtype=np.float64)[index]
        present = ~np.isnan(picked)
        counts = present.sum(axis=1)
        means = np.divide(np.where(present, picked, 0.0).sum(axis=1), counts, out=np.full(len(index), np.nan),
                          where=counts > 0)
        return self.transform(means) if self.transform else means


def nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x[~np.isnan(x)])) if (~np.isnan(x)).any() else float("nan")


class BucketRows:
    """One bucket's rows (all of them, or a half-sample) of one method's responses (`gen`) and of the human answers:
    what a metric's `compute` reads. `gen` may be the human side itself (its own values, `human_target`). Values
    that several metrics share are computed once."""

    def __init__(self, test, bucket: str, rows: np.ndarray, gen, human, scores: dict, cfg, seed: int,
                 mauve: bool):
        self.test, self.bucket, self.rows, self.gen, self.human = test, bucket, rows, gen, human
        self.scores, self.cfg, self.seed, self.mauve = scores, cfg, seed, mauve

    def score(self, name: str) -> np.ndarray:
        return np.asarray(self.scores[name])[self.rows]

    @cached_property
    def reference(self):
        return self.test.reference(self.bucket)

    @cached_property
    def gen_features(self) -> np.ndarray:
        return self.gen.features[self.rows]

    @cached_property
    def human_features(self) -> np.ndarray:
        return self.human.features[self.rows]

    @cached_property
    def gen_hcr(self) -> dict[str, float]:
        return naturalness.hcr(self.gen.inside[self.rows], self.test.core)

    @cached_property
    def human_hcr(self) -> dict[str, float]:
        return naturalness.hcr(self.human.inside[self.rows], self.test.core)

    @cached_property
    def units(self) -> list[list[str]]:
        return [self.gen.units[i] for i in self.rows]

    @cached_property
    def texts(self) -> list[str]:
        return [self.gen.texts[i] for i in self.rows]

    @property
    def multi_turn(self) -> bool:
        return self.bucket.split("|")[1] == "multi"


def standardised(features: np.ndarray, ref) -> np.ndarray:
    """Features scaled by a reference bucket's statistics, its constant features left out (MAUVE's inputs)."""
    return ((features - ref.stats["mean"]) / ref.stats["scale"])[:, ref.active]


def _nll(r: BucketRows) -> float:
    tokens = r.score("nll_tokens").sum()
    return float(r.score("nll_sum").sum() / tokens) if tokens else float("nan")


def _length_w1(r: BucketRows) -> float:
    return float(naturalness.column_wasserstein(r.gen_features[:, [LENGTH]], r.human_features[:, [LENGTH]])[0])


def _truncated_share(r: BucketRows) -> float:
    if "truncated" not in r.scores:  # generation flags not given: unknown
        return float("nan")
    return float(np.asarray(r.score("truncated"), dtype=float).mean())


def _mauve(r: BucketRows) -> float:
    if not r.mauve or len(r.rows) < r.cfg.mauve_min_n or not r.reference.active.any():
        return float("nan")
    return naturalness.mauve_score(standardised(r.human_features, r.reference),
                                   standardised(r.gen_features, r.reference), r.seed)


def _distinct(n: int) -> Callable[[BucketRows], float]:
    return lambda r: diversity.distinct_n(r.units, n)


UNIT = (0.0, 1.0)
POSITIVE = (0.0, math.inf)

METRICS: list[Metric] = [
    # utility against the human answer of the same prompt
    Metric("em", "EM", "higher", per_row="em", bootstrap=True, bounds=UNIT, in_json=True),
    Metric("em_norm", "EM (normalised)", "higher", per_row="em_norm", bootstrap=True, bounds=UNIT, in_json=True),
    Metric("f1", "F1", "higher", per_row="f1", bootstrap=True, bounds=UNIT, kind="headline", in_json=True,
           plot=True),
    Metric("rouge_l", "ROUGE-L", "higher", per_row="rouge_l", bootstrap=True, bounds=UNIT, kind="headline",
           in_json=True),
    Metric("nll", "NLL", "lower", _nll, bootstrap=True, bounds=POSITIVE, kind="headline", in_json=True,
           unit="nats per token of the human answers"),
    # naturalness: the bucket's generated responses against its human answers
    Metric("bng", "BNG", "lower", lambda r: naturalness.bng(r.gen_features, r.human_features,
                                                              r.reference.stats["std"], r.reference.active,
                                                              r.cfg.bng_cap),
           bootstrap=True, bounds=POSITIVE, kind="headline", in_json=True, plot=True),
    Metric("hcr_joint", "HCR joint", "higher", lambda r: r.gen_hcr["hcr_joint"], bootstrap=True, bounds=UNIT,
           human_target=True, in_json=True),
    Metric("hcr_joint_gap", "HCR gap", "lower", lambda r: abs(r.gen_hcr["hcr_joint"] - r.human_hcr["hcr_joint"]),
           bootstrap=True, bounds=UNIT, kind="headline", in_json=True, plot=True),
    Metric("length_w1", "Len W1", "lower", _length_w1, bootstrap=True, bounds=POSITIVE, kind="headline",
           in_json=True, unit="tokens"),
    Metric("tdm", "TDM", "higher", lambda r: (naturalness.tdm(r.gen.dynamics[r.rows], r.human.dynamics[r.rows])
                                              if r.multi_turn else float("nan")),
           bootstrap=True, bounds=UNIT, kind="headline", in_json=True),
    Metric("critic_distance", "critic distance", None, per_row="critic_distance", bootstrap=True, in_json=True),
    Metric("c2st", "C2ST", "0.5", per_row="c2st_correct", bootstrap=True, bounds=UNIT, kind="headline",
           in_json=True, ranked_by="c2st_gap"),
    Metric("c2st_gap", "C2ST distance from 0.5", "lower", per_row="c2st_correct", transform=lambda x: abs(x - 0.5),
           bootstrap=True, bounds=(0.0, 0.5), in_json=True),
    # point estimates (no intervals)
    Metric("hcr_mean", "HCR mean", "higher", lambda r: r.gen_hcr["hcr_mean"], human_target=True),
    Metric("length_ks", "length KS", "lower", lambda r: naturalness.ks_statistic(r.gen_features[:, LENGTH],
                                                                                  r.human_features[:, LENGTH]),
           in_json=True),
    Metric("length_mean", "length", None, lambda r: float(r.gen_features[:, LENGTH].mean()), human_target=True,
           unit="tokens"),
    Metric("empty_prediction_share", "empty predictions", None, per_row="empty_prediction"),
    Metric("distinct_1", "distinct-1", "higher", _distinct(1), human_target=True, kind="diversity"),
    Metric("distinct_2", "distinct-2", "higher", _distinct(2), human_target=True, kind="diversity", in_json=True),
    Metric("distinct_3", "distinct-3", "higher", _distinct(3), human_target=True, kind="diversity"),
    Metric("self_bleu", "self-BLEU-4", "lower", lambda r: diversity.self_bleu(r.units, r.cfg.self_bleu_samples,
                                                                               r.seed),
           human_target=True, kind="diversity", in_json=True),
    Metric("mauve", "MAUVE", "higher", _mauve, in_json=True),
    Metric("replacement_char_share", "U+FFFD", None, lambda r: naturalness.replacement_share(r.texts),
           in_json=True),
    Metric("wrong_language_share", "wrong language", None,
           lambda r: naturalness.wrong_language_share(r.texts, [r.test.languages[i] for i in r.rows]), in_json=True),
    Metric("truncated_share", "truncated", None, _truncated_share, in_json=True),
    # of a group's values
    Metric("nuf_score", "NUF", "higher", group=lambda v: nuf_score(v["bng"], v["rouge_l"]), bootstrap=True,
           bounds=UNIT, kind="headline", in_json=True),
]


def register(metric: Metric) -> None:
    """Add a metric to the table (a plugin's, or a test's); its name must be new."""
    if any(m.name == metric.name for m in METRICS):
        raise ValueError(f"a metric named {metric.name!r} is registered already")
    if (metric.compute is None) + (metric.per_row is None) + (metric.group is None) != 2:
        raise ValueError(f"metric {metric.name!r}: give exactly one of compute, per_row and group")
    METRICS.append(metric)


def unregister(name: str) -> None:
    METRICS[:] = [m for m in METRICS if m.name != name]


def by_name(name: str) -> Metric:
    return next(m for m in METRICS if m.name == name)


def bucket_metrics(bootstrap_only: bool = False) -> list[Metric]:
    """The metrics computed on a bucket's rows (not from a group's values), in table order."""
    return [m for m in METRICS if m.group is None and (m.bootstrap or not bootstrap_only)]


def human_targets() -> list[Metric]:
    """The bucket metrics the human answers get too."""
    return [m for m in bucket_metrics() if m.human_target]


def group_metrics() -> list[Metric]:
    return [m for m in METRICS if m.group is not None]


def headline() -> list[Metric]:
    return [m for m in METRICS if m.kind == "headline"]


def ranked() -> list[Metric]:
    """The headline metrics as rankings and differences use them: C2ST by its distance from 0.5."""
    return [by_name(m.ranked_by) if m.ranked_by else m for m in headline()]
