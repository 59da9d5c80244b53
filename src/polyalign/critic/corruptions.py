"""Corrupted versions of human responses: negatives the critic must score as farther from human support.

Each corruption returns None where it does not apply (e.g. truncating a one-token answer); the caller counts
those. Every corruption changes what its name says (tests check it)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from polyalign.text import count_tokens, tokenize

_SENTENCE_RE = re.compile(r"(?<=[.!?。！？])\s*")


def _join(tokens: list[str], language: str) -> str:
    if language == "zh":
        return "".join(tokens)
    out = ""
    for t in tokens:  # no space before punctuation
        out += t if not out or not t[0].isalnum() else " " + t
    return out


def truncate(text: str, language: str, rng: np.random.Generator, **_) -> str | None:
    """Keep the first 20-60% of the tokens."""
    tokens = tokenize(text)
    if len(tokens) < 2:
        return None
    keep = max(1, min(len(tokens) - 1, int(len(tokens) * rng.uniform(0.2, 0.6))))
    return _join(tokens[:keep], language)


def repeat(text: str, language: str, rng: np.random.Generator, **_) -> str | None:
    """Say the same thing two to four times."""
    if not text.strip():
        return None
    sep = "" if language == "zh" else " "
    return sep.join([text] * int(rng.integers(2, 5)))


def shuffle(text: str, language: str, rng: np.random.Generator, **_) -> str | None:
    """Shuffle the sentences; a one-sentence response has its tokens shuffled instead."""
    sentences = [s for s in _SENTENCE_RE.split(text) if s.strip()]
    if len(sentences) >= 2:
        order = rng.permutation(len(sentences))
        if (order == np.arange(len(sentences))).all():
            order = order[::-1]
        return ("" if language == "zh" else " ").join(sentences[i] for i in order)
    tokens = tokenize(text)
    if len(set(tokens)) < 2:
        return None
    order = rng.permutation(len(tokens))
    while (np.asarray(tokens)[order] == np.asarray(tokens)).all():
        order = rng.permutation(len(tokens))
    return _join([tokens[i] for i in order], language)


def pad_length(text: str, language: str, rng: np.random.Generator, *, same_language: Sequence[str],
               edges: Sequence[int], **_) -> str | None:
    """Append other human responses of the same language until the answer reaches the next length bin."""
    n = count_tokens(text)
    target = next((e + 1 for e in edges if e >= n), None)
    if target is None or not same_language:
        return None
    sep = "" if language == "zh" else " "
    out = text
    while count_tokens(out) < target:
        out += sep + same_language[int(rng.integers(len(same_language)))]
    return out


def swap_language(text: str, language: str, rng: np.random.Generator, *, other_language: Sequence[str],
                  **_) -> str | None:
    """A human response in the other language, of similar length."""
    if not other_language:
        return None
    n = count_tokens(text)
    picks = [other_language[int(i)] for i in rng.integers(len(other_language), size=8)]
    return min(picks, key=lambda t: abs(count_tokens(t) - n))


FUNCTIONS: dict[str, Callable[..., str | None]] = {
    "truncate": truncate, "repeat": repeat, "shuffle": shuffle, "pad_length": pad_length,
    "swap_language": swap_language,
}


def corrupt(kind: str, text: str, language: str, rng: np.random.Generator, pools: dict[str, list[str]],
            edges: Sequence[int]) -> str | None:
    other = "en" if language == "zh" else "zh"
    return FUNCTIONS[kind](text, language, rng, same_language=pools.get(language, []),
                           other_language=pools.get(other, []), edges=edges)
