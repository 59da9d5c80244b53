"""Diversity of a set of responses: distinct-n and self-BLEU-4, on the language-neutral units of
`polyalign.evaluation.utility.answer_units` (words for English, characters for Chinese)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

BLEU_ORDER = 4
SMOOTHING_EPSILON = 0.1  # a zero n-gram match counts as 0.1 matches (Chen & Cherry's first smoothing method)


def ngrams(units: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(units[i: i + n]) for i in range(len(units) - n + 1)]


def distinct_n(texts: Sequence[Sequence[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of the set (NaN when the set has none)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for units in texts:
        grams = ngrams(units, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else float("nan")


def sentence_bleu(hyp_counts: list[Counter], hyp_len: int, clip: list[dict], ref_len: int) -> float:
    """BLEU of one hypothesis from its n-gram counts, the clipping counts of its references and the closest
    reference length: geometric mean of smoothed modified precisions times the brevity penalty."""
    if hyp_len == 0:
        return 0.0
    log_sum = 0.0
    for n in range(BLEU_ORDER):
        total = sum(hyp_counts[n].values())
        matched = sum(min(c, clip[n].get(g, 0)) for g, c in hyp_counts[n].items())
        log_sum += math.log((matched or SMOOTHING_EPSILON) / max(total, 1))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_sum / BLEU_ORDER)


def self_bleu(texts: Sequence[Sequence[str]], samples: int = 200, seed: int = 0) -> float:
    """Mean BLEU-4 of up to `samples` responses (drawn with `seed`), each against all the other responses of
    the set as references. High = the responses repeat each other. NaN for fewer than two non-empty texts.

    Clipping against "every other text" uses the largest and second-largest count of each n-gram over the set,
    so one pass serves every hypothesis (no O(n^2) comparisons)."""
    texts = [list(t) for t in texts if len(t)]
    if len(texts) < 2:
        return float("nan")
    counts = [[Counter(ngrams(t, n + 1)) for n in range(BLEU_ORDER)] for t in texts]
    best: list[dict] = [{} for _ in range(BLEU_ORDER)]  # n-gram -> (largest count, its text, second largest)
    for i, per_order in enumerate(counts):
        for n in range(BLEU_ORDER):
            table = best[n]
            for gram, c in per_order[n].items():
                top, owner, second = table.get(gram, (0, -1, 0))
                table[gram] = (c, i, top) if c > top else (top, owner, max(second, c))
    lengths = Counter(len(t) for t in texts)
    rng = np.random.default_rng(seed)
    chosen = range(len(texts)) if len(texts) <= samples else sorted(rng.choice(len(texts), samples, replace=False))
    scores = []
    for i in chosen:
        clip = [{g: (entry[2] if entry[1] == i else entry[0]) for g in counts[i][n]
                 for entry in (best[n][g],)} for n in range(BLEU_ORDER)]
        own = len(texts[i])
        others = [length for length, k in lengths.items() if k - (length == own) > 0]
        ref_len = min(others, key=lambda length: (abs(length - own), length))
        scores.append(sentence_bleu(counts[i], own, clip, ref_len))
    return float(np.mean(scores))
