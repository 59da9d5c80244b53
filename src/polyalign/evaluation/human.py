"""What blind human ratings say about the methods: the figures of the report's human-evaluation section.

A rating is a dict: `item`, `rater`, `task` (`pairwise`: which of two responses is more natural for the context;
`spot`: which of two responses a person wrote; `attention`: a human answer against a corrupted one), `a` and `b`
(the methods shown as A and B, `human` for the human answer), `choice` (`a`, `b`, `tie` or `skip`), and `bucket`
and `slice` of the item's prompt. Skips count nowhere. Raters who fail too many attention checks are left out of
every figure (`kept_raters`), and counted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

HUMAN = "human"
CHOICES = ("a", "b", "tie")


def answered(ratings: Iterable[dict], task: str) -> list[dict]:
    return [r for r in ratings if r["task"] == task and r["choice"] in CHOICES]


def attention_pass_rates(ratings: Sequence[dict]) -> dict[str, tuple[int, int]]:
    """Per rater: (attention checks passed, attention checks answered). A check passes when the human answer is
    chosen over its corrupted copy."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in answered(ratings, "attention"):
        human_side = "a" if r["a"] == HUMAN else "b"
        out[r["rater"]][0] += r["choice"] == human_side
        out[r["rater"]][1] += 1
    return {rater: (passed, n) for rater, (passed, n) in out.items()}


def kept_raters(ratings: Sequence[dict], threshold: float) -> tuple[set[str], dict[str, float]]:
    """The raters whose attention-check pass rate is at least `threshold` (a rater without checks is kept), and
    the pass rates of those left out."""
    rates = {rater: passed / n for rater, (passed, n) in attention_pass_rates(ratings).items()}
    everyone = {r["rater"] for r in ratings}
    excluded = {rater: rate for rater, rate in rates.items() if rate < threshold}
    return everyone - set(excluded), excluded


def in_human_figures(rating: dict) -> bool:
    """Whether an exported rating counts in the human figures: a human rater's, not left out by the attention
    checks (an automatic rater's ratings only feed its agreement with the humans)."""
    return not rating.get("excluded") and rating.get("rater_kind", "human") == "human"


def oriented(rating: dict) -> tuple[str, str, float]:
    """A pairwise rating as (first, second, score of first) with the methods in sorted order: 1 a win of the
    first, 0 a loss, 0.5 a tie."""
    score = {"a": 1.0, "b": 0.0, "tie": 0.5}[rating["choice"]]
    if rating["a"] <= rating["b"]:
        return rating["a"], rating["b"], score
    return rating["b"], rating["a"], 1.0 - score


def win_rates(ratings: Sequence[dict], resamples: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> list[dict]:
    """For each pair of methods compared: how often the first (in sorted order) was judged more natural, ties
    counting a half, with a percentile interval from a bootstrap over items and raters together (each replicate
    draws items and raters with replacement; a rating counts as often as its item times its rater was drawn)."""
    rows = [(*oriented(r), r["item"], r["rater"]) for r in answered(ratings, "pairwise")]
    out = []
    for first, second in sorted({(a, b) for a, b, *_ in rows}):
        mine = [(s, item, rater) for a, b, s, item, rater in rows if (a, b) == (first, second)]
        scores = np.array([s for s, _, _ in mine])
        items = {item: k for k, item in enumerate(sorted({item for _, item, _ in mine}))}
        raters = {rater: k for k, rater in enumerate(sorted({rater for _, _, rater in mine}))}
        item_of = np.array([items[i] for _, i, _ in mine])
        rater_of = np.array([raters[r] for _, _, r in mine])
        rng = np.random.default_rng(seed)
        replicates = []
        for _ in range(resamples):
            weight = (np.bincount(rng.integers(0, len(items), len(items)), minlength=len(items))[item_of]
                      * np.bincount(rng.integers(0, len(raters), len(raters)), minlength=len(raters))[rater_of])
            if weight.sum():
                replicates.append(float((weight * scores).sum() / weight.sum()))
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(replicates, [tail, 100 - tail]) if replicates else (np.nan, np.nan)
        counts = Counter(scores.tolist())
        out.append({"a": first, "b": second, "n": len(mine), "wins": counts[1.0], "ties": counts[0.5],
                    "losses": counts[0.0], "win_rate": float(scores.mean()), "low": float(low),
                    "high": float(high)})
    return out


def bradley_terry(ratings: Sequence[dict]) -> dict[str, float]:
    """Bradley–Terry strengths (log scale, mean 0) of the methods from the pairwise ratings: P(i judged more
    natural than j) = sigmoid(s_i - s_j), fitted as a logistic regression on e_i - e_j (a tie is half a win each
    way; a light L2 penalty keeps a method that always wins finite)."""
    from sklearn.linear_model import LogisticRegression

    rows = [oriented(r) for r in answered(ratings, "pairwise")]
    methods = sorted({m for a, b, _ in rows for m in (a, b)})
    if len(methods) < 2:
        return dict.fromkeys(methods, 0.0)
    index = {m: i for i, m in enumerate(methods)}
    x, y, w = [], [], []
    for a, b, score in rows:
        diff = np.zeros(len(methods))
        diff[index[a]], diff[index[b]] = 1.0, -1.0
        for outcome, weight in ((1, score), (0, 1.0 - score)):
            if weight:
                x.append(diff)
                y.append(outcome)
                w.append(weight)
    if len(set(y)) < 2:  # one outcome only: mirror the rows so the model has two classes
        x, y, w = x + [-v for v in x], y + [1 - v for v in y], w + w
    model = LogisticRegression(C=100.0, fit_intercept=False).fit(np.array(x), np.array(y), sample_weight=np.array(w))
    strengths = model.coef_[0] - model.coef_[0].mean()
    return {m: float(strengths[index[m]]) for m in methods}


def spot_accuracy(ratings: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per method: how often raters picked the human answer as the one a person wrote, against that method's
    response (0.5: the two cannot be told apart)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in answered(ratings, "spot"):
        if r["choice"] == "tie":
            continue
        method = r["b"] if r["a"] == HUMAN else r["a"]
        out[method][0] += r[r["choice"]] == HUMAN
        out[method][1] += 1
    return {m: {"accuracy": right / n, "n": n} for m, (right, n) in sorted(out.items())}


def agreement(ratings: Sequence[dict]) -> dict | None:
    """Inter-rater agreement on the pairwise items that more than one rater answered: Cohen's kappa for two
    raters, Krippendorff's alpha (nominal: a, b, tie) for more. None without such items."""
    rows = answered(ratings, "pairwise")
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows:
        by_item[r["item"]][r["rater"]] = r["choice"]
    shared = {item: votes for item, votes in by_item.items() if len(votes) > 1}
    if not shared:
        return None
    raters = sorted({rater for votes in shared.values() for rater in votes})
    if len(raters) == 2:
        from sklearn.metrics import cohen_kappa_score

        pairs = [(votes[raters[0]], votes[raters[1]]) for votes in shared.values()]
        value = cohen_kappa_score([p[0] for p in pairs], [p[1] for p in pairs], labels=list(CHOICES))
        return {"measure": "cohen_kappa", "value": float(value), "raters": 2, "items": len(pairs)}
    import krippendorff

    code = {c: i for i, c in enumerate(CHOICES)}
    matrix = np.full((len(raters), len(shared)), np.nan)
    for j, votes in enumerate(shared.values()):
        for rater, choice in votes.items():
            matrix[raters.index(rater), j] = code[choice]
    value = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal",
                               value_domain=list(code.values()))
    return {"measure": "krippendorff_alpha", "value": float(value), "raters": len(raters), "items": len(shared)}


def agreement_with_humans(ratings: Sequence[dict], rater: str) -> dict | None:
    """How often a (model) rater chose what the human raters' majority chose on the pairwise items both answered:
    the share of equal choices and Cohen's kappa (a, b, tie). Items where the humans split evenly are left out.
    `ratings` carry `rater_kind`; None without shared items."""
    from sklearn.metrics import cohen_kappa_score

    votes: dict[str, Counter] = defaultdict(Counter)
    theirs: dict[str, str] = {}
    for r in answered(ratings, "pairwise"):
        if r["rater"] == rater:
            theirs[r["item"]] = r["choice"]
        elif r.get("rater_kind", "human") == "human":
            votes[r["item"]][r["choice"]] += 1
    pairs = []
    for item, choice in theirs.items():
        ranked = votes[item].most_common(2)
        if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
            pairs.append((ranked[0][0], choice))
    if not pairs:
        return None
    kappa = cohen_kappa_score([h for h, _ in pairs], [m for _, m in pairs], labels=list(CHOICES))
    return {"items": len(pairs), "agreement": sum(h == m for h, m in pairs) / len(pairs),
            "cohen_kappa": float(kappa) if not np.isnan(kappa) else None}
