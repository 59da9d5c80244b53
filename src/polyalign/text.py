"""Language-neutral text helpers: normalisation, token counting, length bins, script-based language detection.

These rules decide which bucket a response lands in, so English and Chinese must be measured with the same
yardstick: one token per English word (with an optional 'suffix), per run of digits, per CJK character and
per other non-space symbol (DESIGN §3).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence

# CJK Unified Ideographs Extension A, the main block and the compatibility block.
CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = rf"[^\W\d_{CJK_RANGES}]+(?:'[^\W\d_{CJK_RANGES}]+)?"
TOKEN_RE = re.compile(rf"{_WORD}|\d+|[{CJK_RANGES}]|\S")
CJK_RE = re.compile(f"[{CJK_RANGES}]")
LATIN_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")
LETTER_RE = re.compile(r"[^\W\d_]")

_INNER_SPACE_RE = re.compile(r"[^\S\n]+")
_BLANK_RUN_RE = re.compile(r"\n{3,}")


def normalise(text: str) -> str:
    """CRLF -> LF, strip every line, collapse inner whitespace and runs of blank lines."""
    if not text:
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_INNER_SPACE_RE.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUN_RE.sub("\n\n", "\n".join(lines)).strip()


def tokenize(text: str) -> list[str]:
    """Split into the language-neutral tokens that lengths are measured in."""
    return TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text)) if text else 0


def length_bin(n_tokens: int, edges: Sequence[int], names: Sequence[str]) -> str:
    """Bin a token count: with edges (40, 120, 240), 40 is the last `short` and 41 the first `medium`."""
    return names[bisect_left(edges, n_tokens)]


def detect_language(text: str, zh_threshold: float) -> str | None:
    """'zh' when CJK characters make up at least `zh_threshold` of the letters, 'en' when Latin letters
    dominate the rest, 'other' for other scripts (kana, Hangul, Cyrillic ...), None when there are no letters."""
    n_letters = len(LETTER_RE.findall(text))
    if n_letters == 0:
        return None
    n_cjk = len(CJK_RE.findall(text))
    n_latin = len(LATIN_RE.findall(text))
    n_other = n_letters - n_cjk - n_latin
    if n_cjk / n_letters >= zh_threshold and n_other < n_cjk:
        return "zh"
    if n_latin >= n_other:
        return "en"
    return "other"
