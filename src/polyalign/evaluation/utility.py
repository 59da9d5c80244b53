"""Utility metrics against the human answer: exact match, normalised exact match, token F1 and ROUGE-L.

Units are the language-neutral tokens of `polyalign.text`, lower-cased and without punctuation: words for
English (articles dropped, as in SQuAD's normalisation) and single characters for Chinese, so one scale fits
both languages. A row whose human answer is empty (an unanswerable question) is not scored: an empty prediction
there is an abstention, counted apart, never a perfect answer (DESIGN §9).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from polyalign.text import tokenize

ENGLISH_ARTICLES = frozenset({"a", "an", "the"})


def answer_units(text: str, language: str | None = None) -> list[str]:
    """Lower-cased words (English) or characters (Chinese), punctuation dropped; with language "en" the English
    articles are dropped too."""
    units = [t.lower() for t in tokenize(text) if t[0].isalnum()]
    if language == "en":
        units = [u for u in units if u not in ENGLISH_ARTICLES]
    return units


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def token_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """Harmonic mean of unit precision and recall (multiset overlap); two empty sequences agree (1.0)."""
    if not prediction or not reference:
        return float(len(prediction) == len(reference))
    overlap = sum((Counter(prediction) & Counter(reference)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(prediction), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyrö): one big-integer update per
    unit of `b`, so it stays fast for long answers where the O(|a||b|) table would not."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, unit in enumerate(a):
        masks[unit] = masks.get(unit, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for unit in b:
        u = v & masks.get(unit, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1: precision and recall of the longest common subsequence."""
    if not prediction or not reference:
        return float(len(prediction) == len(reference))
    lcs = lcs_length(prediction, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def score_utility(predictions: Sequence[str], references: Sequence[str], languages: Sequence[str]) -> dict:
    """Per-row arrays em, em_norm, f1, rouge_l (NaN where the human answer is empty) and the flags
    `empty_prediction` and `empty_reference`, so groups can count abstentions apart."""
    n = len(predictions)
    out = {name: np.full(n, np.nan) for name in ("em", "em_norm", "f1", "rouge_l")}
    out["empty_prediction"] = np.array([not p.strip() for p in predictions])
    out["empty_reference"] = np.array([not r.strip() for r in references])
    for i, (pred, ref, lang) in enumerate(zip(predictions, references, languages)):
        if out["empty_reference"][i]:
            continue
        p_units, r_units = answer_units(pred, lang), answer_units(ref, lang)
        out["em"][i] = exact_match(pred, ref)
        out["em_norm"][i] = float(p_units == r_units and bool(pred.strip()))
        out["f1"][i] = token_f1(p_units, r_units) if pred.strip() else 0.0
        out["rouge_l"][i] = rouge_l(p_units, r_units) if pred.strip() else 0.0
    return out
