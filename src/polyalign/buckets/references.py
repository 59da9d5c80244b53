"""Buckets, human reference distributions and the support-band distance (DESIGN §4).

`bucket_id = language|track|family|length_bin`. References are feature statistics of the *training* split's
human responses per bucket. A bucket with fewer than `min_bucket_size` training records backs off to its
parent: drop the length bin, then the family, then the track, then the language (`*` marks a dropped part).
The same backoff resolves bucket ids that training never saw, so nothing silently falls to zero.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polyalign.errors import UserError

WILDCARD = "*"
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
STAT_NAMES = ("mean", "std", "min", "max", "q10", "q25", "q50", "q75", "q90", "low", "high", "scale")


def bucket_id(language: str, track: str, family: str, length_bin: str) -> str:
    return f"{language}|{track}|{family}|{length_bin}"


def backoff_chain(bid: str) -> list[str]:
    """The bucket itself, then its parents from the most to the least specific."""
    parts = bid.split("|")
    keep = len(parts) - parts.count(WILDCARD)
    return ["|".join(parts[:k] + [WILDCARD] * (len(parts) - k)) for k in range(keep, -1, -1)]


@dataclass
class Reference:
    """Statistics of one bucket's human responses; arrays are indexed like `References.features`."""

    count: int
    stats: dict[str, np.ndarray]
    active: np.ndarray  # False where the feature is constant within the bucket: distances ignore it


class References:
    """Reference distributions per bucket (and parent bucket) with their backoff and the support distance."""

    def __init__(self, features: Sequence[str], buckets: dict[str, Reference], min_bucket_size: int,
                 support: tuple[float, float]):
        self.features = list(features)
        self.buckets = buckets
        self.min_bucket_size = min_bucket_size
        self.support = support

    # ---------------------------------------------------------------------------------------------- build

    @classmethod
    def build(cls, X: np.ndarray, bucket_ids: Sequence[str], features: Sequence[str], *, min_bucket_size: int,
              support_low: float = 0.1, support_high: float = 0.9, epsilon: float = 1e-6) -> References:
        """References from the feature matrix of the training split: every bucket and parent bucket with at
        least `min_bucket_size` records, plus the global `*|*|*|*` as the last resort."""
        if len(bucket_ids) == 0:
            raise UserError("bucketize: the train split is empty, so there is nothing to build references from")
        rows_by_key: dict[str, list[np.ndarray]] = {}
        for bid, rows in group_rows(bucket_ids).items():
            for key in backoff_chain(bid):
                rows_by_key.setdefault(key, []).append(rows)
        buckets = {}
        root = WILDCARD + ("|" + WILDCARD) * 3
        for key in sorted(rows_by_key, key=lambda k: (k.count(WILDCARD), k)):
            rows = np.concatenate(rows_by_key[key])
            if len(rows) >= min_bucket_size or key == root:
                buckets[key] = _reference(X[rows], support_low, support_high, epsilon)
        return cls(features, buckets, min_bucket_size, (support_low, support_high))

    # -------------------------------------------------------------------------------------------- resolve

    def resolve(self, bid: str) -> str:
        """The most specific reference bucket for `bid` (itself if it has enough training records)."""
        for key in backoff_chain(bid):
            if key in self.buckets:
                return key
        raise AssertionError("the global reference bucket is always present")

    def resolve_many(self, bucket_ids: Sequence[str]) -> list[str]:
        resolved = {b: self.resolve(b) for b in set(bucket_ids)}
        return [resolved[b] for b in bucket_ids]

    # ------------------------------------------------------------------------------------------- distance

    def distance(self, X: np.ndarray, bucket_ids: Sequence[str]) -> np.ndarray:
        """Support-band distance of each row of X to its bucket's reference (after backoff):
        mean over the bucket's non-constant features f of max(0, low_f - x_f, x_f - high_f) / scale_f."""
        X = np.asarray(X, dtype=np.float64)
        out = np.zeros(len(X))
        for key, rows in group_rows(self.resolve_many(bucket_ids)).items():
            out[rows] = support_distance(X[rows], self.buckets[key])
        return out

    # ------------------------------------------------------------------------------------------------- io

    def to_json(self) -> dict:
        return {
            "version": 1,
            "features": self.features,
            "min_bucket_size": self.min_bucket_size,
            "support_band": list(self.support),
            "buckets": {
                key: {
                    "count": ref.count,
                    "features": {
                        name: {**{s: float(ref.stats[s][j]) for s in STAT_NAMES}, "constant": not bool(ref.active[j])}
                        for j, name in enumerate(self.features)
                    },
                }
                for key, ref in self.buckets.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> References:
        features = data["features"]
        buckets = {}
        for key, entry in data["buckets"].items():
            per_feature = [entry["features"][name] for name in features]
            stats = {s: np.array([f[s] for f in per_feature]) for s in STAT_NAMES}
            buckets[key] = Reference(entry["count"], stats, np.array([not f["constant"] for f in per_feature]))
        return cls(features, buckets, data["min_bucket_size"], tuple(data["support_band"]))

    @classmethod
    def load(cls, path: str | Path) -> References:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"references not found: {path} (run `polyalign bucketize` first)")
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


DEFAULT_LENGTH_ORDER = ("short", "medium", "long", "xlong")


class BalanceBuckets:
    """The groups of buckets that balancing (sampler probabilities, loss weights) counts in.

    Every training bucket starts as its own group. While a group holds fewer than `min_size` training records
    (and there is more than one group), the smallest such group is merged into its nearest group: the one
    sharing the most leading parts (language, then track, then family) with it, then the nearest length bin,
    then the smaller one. So a small length bin joins the adjacent bin of its family, a small family the
    family of its language and track with the same length, and so on; every group ends with at least
    `min_size` records unless the whole train split is smaller, and no handful of records gets a whole
    bucket's mass. Weights are w_g = N / (K * n_g) over the training split (mean 1), at most N / (K * min_size).
    """

    def __init__(self, train_bucket_ids: Sequence[str], min_size: int,
                 length_order: Sequence[str] = DEFAULT_LENGTH_ORDER):
        self.length_order = list(length_order)
        self.bucket_counts = dict(sorted(Counter(train_bucket_ids).items()))
        groups = [[b] for b in self.bucket_counts]
        while len(groups) > 1:
            small = [g for g in groups if self._size(g) < min_size]
            if not small:
                break
            g = min(small, key=lambda x: (self._size(x), x))
            groups.remove(g)
            h = min(groups, key=lambda x: (self._distance(g, x), self._size(x), x))
            h.extend(g)
        self.members = {self._name(g): sorted(g, key=self._order) for g in groups}
        self.merged: dict[str, str] = {b: name for name, g in self.members.items() for b in g}
        self.counts = {name: self._size(g) for name, g in sorted(self.members.items())}
        total, k = sum(self.counts.values()), len(self.counts)
        self.weights = {name: total / (k * n) for name, n in self.counts.items()}

    def _size(self, group: Sequence[str]) -> int:
        return sum(self.bucket_counts[b] for b in group)

    def _order(self, bid: str) -> tuple:
        *labels, length = bid.split("|")
        return (*labels, self._length_index(length), length)

    def _name(self, group: Sequence[str]) -> str:
        """`en|single|assistant|medium+long` for buckets that differ only in the parts joined by `+`; the
        members joined by ` + ` when the group is not such a product of parts."""
        group = sorted(group, key=self._order)
        if len(group) == 1:
            return group[0]
        parts = [list(dict.fromkeys(p)) for p in zip(*(b.split("|") for b in group))]
        if int(np.prod([len(p) for p in parts])) == len(group):
            return "|".join("+".join(p) for p in parts)
        return " + ".join(group)

    def _length_index(self, length_bin: str) -> int:
        return self.length_order.index(length_bin) if length_bin in self.length_order else len(self.length_order)

    def _pair_distance(self, a: str, b: str) -> tuple[int, int]:
        """(label parts not shared before the first difference, length bins apart) of two bucket ids."""
        pa, pb = a.split("|"), b.split("|")
        shared = next((i for i in range(3) if pa[i] != pb[i]), 3)
        return 3 - shared, abs(self._length_index(pa[3]) - self._length_index(pb[3]))

    def _distance(self, g: Sequence[str], h: Sequence[str]) -> tuple[int, int]:
        return min(self._pair_distance(a, b) for a in g for b in h)

    def resolve(self, bid: str) -> str:
        """Balance group of `bid`; a bucket that training never saw goes to its nearest group (as above)."""
        if bid in self.merged:
            return self.merged[bid]
        if not self.members:
            return backoff_chain(bid)[-1]
        return min(self.members, key=lambda name: (self._distance([bid], self.members[name]), self.counts[name],
                                                   name))

    def weight(self, bid: str) -> float:
        """NaN when training holds no record at all."""
        return self.weights.get(self.resolve(bid), float("nan"))

    def merges(self) -> list[dict]:
        """Each training bucket that shares its balance group with others: its count and its group's."""
        return [{"bucket": b, "train": n, "balance": self.merged[b], "group_train": self.counts[self.merged[b]]}
                for b, n in self.bucket_counts.items() if len(self.members[self.merged[b]]) > 1]


def group_rows(labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Row indices of each distinct label."""
    uniq, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return dict(zip(uniq.tolist(), np.split(order, np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1])))


def _reference(X: np.ndarray, low_q: float, high_q: float, epsilon: float) -> Reference:
    q = np.quantile(X, QUANTILES, axis=0)
    low, high = np.quantile(X, [low_q, high_q], axis=0)
    std = X.std(axis=0)
    stats = {
        "mean": X.mean(axis=0), "std": std, "min": X.min(axis=0), "max": X.max(axis=0),
        **{f"q{int(round(p * 100))}": q[i] for i, p in enumerate(QUANTILES)},
        "low": low, "high": high, "scale": np.maximum(np.maximum(high - low, std), epsilon),
    }
    return Reference(count=len(X), stats=stats, active=stats["max"] > stats["min"])


def support_distance(X: np.ndarray, ref: Reference) -> np.ndarray:
    """d(x, b) for the rows of X against one reference; 0 inside the band on every active feature."""
    if not ref.active.any():
        return np.zeros(len(X))
    low, high, scale = (ref.stats[s][ref.active] for s in ("low", "high", "scale"))
    Xa = X[:, ref.active]
    gap = np.maximum(0.0, np.maximum(low - Xa, Xa - high)) / scale
    return gap.mean(axis=1)
