"""Bilingual response features that mean the same thing in English and Chinese, computed vectorised.

The paper ran English-only tools (POS taggers, VADER, syllable readability) over Chinese text, which gives
zeros and noise. Every feature here is defined on the language-neutral tokens of `polyalign.text` (an English
word and a CJK character are one token each), on sentence boundaries that know full-width marks and on
script-independent character classes; lexical statistics (distinct-n, repetition, entropy) use the same
tokens, i.e. words for English and characters for Chinese.

Speed: a batch of texts becomes one array of code points; character classes come from a lookup table, token
boundaries and per-text counts from numpy, and n-gram statistics from hashed tokens grouped by pyarrow. That
is ~50x faster than a per-text Python loop, which matters for 10^5-10^6 responses (bucketize, critic, eval).
`tests/test_features.py` checks every feature against a plain per-text implementation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FEATURES: dict[str, str] = {
    "n_tokens": "language-neutral token count",
    "n_chars": "non-space characters",
    "n_sentences": "sentences (split at . ! ? ; … and their full-width forms, and at line breaks)",
    "sentence_tokens_mean": "mean tokens per sentence",
    "sentence_tokens_max": "tokens in the longest sentence",
    "sentence_tokens_std": "standard deviation of tokens per sentence",
    "punct_per_token": "punctuation marks (ASCII and full-width) per token",
    "comma_per_token": "commas and enumeration commas (, ， 、) per token",
    "fullwidth_punct_share": "share of punctuation marks that are full-width",
    "question_share": "runs of ? or ？ per sentence (at most 1)",
    "exclaim_share": "runs of ! or ！ per sentence (at most 1)",
    "digit_share": "share of tokens that are runs of digits",
    "caps_share": "share of cased letters that are upper case",
    "cjk_share": "share of letters that are CJK characters",
    "has_url": "contains a URL",
    "list_lines": "lines that start with a list marker (-, *, •, 1., 1), (1), 一、)",
    "has_code": "contains a code marker (``` or inline `code`)",
    "n_lines": "non-empty lines",
    "n_paragraphs": "blocks separated by blank lines",
    "ends_terminal": "ends with sentence-final punctuation (. ! ? … 。！？, possibly followed by a closing quote)",
    "distinct_1": "distinct unigrams / unigrams (words for English, characters for Chinese)",
    "distinct_2": "distinct bigrams / bigrams",
    "repeat_3": "share of trigram occurrences that repeat an earlier trigram",
    "unit_entropy": "Shannon entropy (bits) of the unigram distribution",
}
FEATURE_NAMES = list(FEATURES)
N_FEATURES = len(FEATURE_NAMES)

# Token classes, as in polyalign.text.TOKEN_RE: a run of word letters, a run of digits, one CJK character,
# one other non-space symbol.
SPACE, WORD, DIGIT, CJK, SYMBOL = range(5)
# Character flags.
PUNCT, FULLWIDTH, COMMA, QMARK, EXCL, SENT_END, NEWLINE, UPPER, LOWER = (1 << i for i in range(9))

_CJK_BLOCKS = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))
_FULLWIDTH_BLOCKS = ((0x3000, 0x303F), (0xFF01, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF65))
_PUNCT_BLOCKS = ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E), (0x2010, 0x206F)) + _FULLWIDTH_BLOCKS
_SENTENCE_END = set(".!?;…。！？；")

_URL_RE = r"(?i)https?://|www\."
_CODE_RE = r"```|`[^`\n]+`"
_LIST_RE = r"(?m)^(?:[-*•·]|[0-9]+[.)、]|[(（][0-9]+[)）]|[一二三四五六七八九十]+、)[^\n]*"
_PARAGRAPH_RE = r"\n\s*\n"
_TERMINAL_RE = re.compile(r"[.!?…。！？][\"'”’」』)）]*\s*$")


def _in_blocks(cp: int, blocks) -> bool:
    return any(lo <= cp <= hi for lo, hi in blocks)


def _classify(cp: int) -> tuple[int, int, int]:
    """(token class, flags, lower-case code point) of one code point."""
    ch = chr(cp)
    if ch.isspace():
        cls = SPACE
    elif _in_blocks(cp, _CJK_BLOCKS):
        cls = CJK
    elif ch.isdecimal():
        cls = DIGIT
    elif ch.isalnum():  # `[^\W\d_]` in Python's re
        cls = WORD
    else:
        cls = SYMBOL
    flags = 0
    if _in_blocks(cp, _PUNCT_BLOCKS):
        flags |= PUNCT
    if _in_blocks(cp, _FULLWIDTH_BLOCKS):
        flags |= FULLWIDTH
    flags |= COMMA * (ch in ",，、") | QMARK * (ch in "?？") | EXCL * (ch in "!！")
    flags |= SENT_END * (ch in _SENTENCE_END) | NEWLINE * (ch == "\n")
    flags |= UPPER * ch.isupper() | LOWER * ch.islower()
    lower = ch.lower()
    return cls, flags, ord(lower) if len(lower) == 1 else cp


@lru_cache(maxsize=1)
def _bmp_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [_classify(cp) for cp in range(0x10000)]
    cls, flags, lower = (np.array(col) for col in zip(*rows))
    return cls.astype(np.uint8), flags.astype(np.uint16), lower.astype(np.uint32)


def _char_tables(cp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cls_t, flag_t, lower_t = _bmp_tables()
    bmp = np.minimum(cp, 0xFFFF)
    cls, flags, lower = cls_t[bmp], flag_t[bmp], lower_t[bmp]
    astral = np.flatnonzero(cp > 0xFFFF)  # emoji and rare ideographs: classify the few there are one by one
    if astral.size:
        values, inverse = np.unique(cp[astral], return_inverse=True)
        table = np.array([_classify(int(v)) for v in values]).reshape(-1, 3)
        cls[astral], flags[astral] = table[inverse, 0], table[inverse, 1]
        lower[astral] = table[inverse, 2]
    return cls, flags, lower


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread 64-bit hash of a 64-bit integer (wraps on overflow by design)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _grouped_counts(text_id: np.ndarray, key: np.ndarray, n_texts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per text: number of distinct keys, and sum of c*log2(c) over the keys' counts c.

    One sort of (text id in the top 24 bits | 40 bits of the key's hash); 40 bits make a collision within one
    text's few thousand tokens vanishingly unlikely."""
    if key.size == 0:
        return np.zeros(n_texts), np.zeros(n_texts)
    packed = np.sort((text_id.astype(np.uint64) << np.uint64(40)) | (key >> np.uint64(24)))
    first = np.flatnonzero(np.r_[True, packed[1:] != packed[:-1]])
    counts = np.diff(np.r_[first, packed.size]).astype(np.float64)
    group_text = (packed[first] >> np.uint64(40)).astype(np.int64)
    return (np.bincount(group_text, minlength=n_texts).astype(np.float64),
            np.bincount(group_text, counts * np.log2(counts), minlength=n_texts))


def _ngram_key(h: np.ndarray, n: int) -> np.ndarray:
    key = h[: h.size - n + 1].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            key = _mix(key * np.uint64(0x9E3779B97F4A7C15) + h[j: h.size - n + 1 + j])
    return key


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def _features_batch(texts: list[str]) -> np.ndarray:
    """Features of non-empty texts."""
    n = len(texts)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    cp = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    text_start = np.zeros(cp.size, dtype=bool)
    text_start[offsets] = True
    text_end = np.roll(text_start, -1)
    cls, flags, lower = _char_tables(cp)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.add.reduceat(mask, offsets, dtype=np.int32).astype(np.float64)

    def previous(a: np.ndarray, fill) -> np.ndarray:
        p = np.roll(a, 1)
        p[text_start] = fill
        return p

    def has(flag: int) -> np.ndarray:
        return (flags & flag) > 0

    # Apostrophes: `word'word` joins once; in a'b'c'd every second apostrophe stands alone (TOKEN_RE semantics).
    eff = cls.copy()
    cand = np.flatnonzero(cp == 39)
    if cand.size:
        inner = (cand > 0) & (cand < cp.size - 1)
        cand = cand[inner]
        cand = cand[(cls[cand - 1] == WORD) & (cls[(cand + 1) % cp.size] == WORD) & ~text_start[cand]
                    & ~text_end[cand]]
        if cand.size:
            # candidates with only word letters between them belong to one run; count them 1, 2, 3 ... per run
            word_or_cand = cls == WORD
            word_or_cand[cand] = True
            gap_broken = np.array([True] + [not word_or_cand[a:b].all() or text_start[a + 1:b + 1].any()
                                            for a, b in zip(cand[:-1], cand[1:])], dtype=bool)
            run = np.cumsum(gap_broken) - 1
            rank = np.arange(cand.size) - np.flatnonzero(gap_broken)[run]
            eff[cand[rank % 2 == 0]] = WORD

    prev_eff = previous(eff, SPACE)
    tok_start = (eff == CJK) | (eff == SYMBOL) | (((eff == WORD) | (eff == DIGIT)) & (prev_eff != eff))
    if not tok_start.any():  # only whitespace in this batch
        return np.zeros((n, N_FEATURES))
    n_tokens = count(tok_start)
    upper, lower_n, punct = count(has(UPPER)), count(has(LOWER)), count(has(PUNCT))

    # Sentences: runs of end marks or line breaks separate them; a sentence needs a token of its own.
    is_end = has(SENT_END | NEWLINE)
    seg_id = np.cumsum(text_start | (is_end & ~previous(is_end, False)), dtype=np.int32) - 1
    seg_tok = np.bincount(seg_id[tok_start & ~is_end], minlength=int(seg_id[-1]) + 1).astype(np.float64)
    first_seg = seg_id[offsets]  # every text starts a segment
    n_sent = np.add.reduceat(seg_tok > 0, first_seg, dtype=np.int32).astype(np.float64)
    sum_sq = np.add.reduceat(seg_tok**2, first_seg)
    sent_max = np.maximum.reduceat(seg_tok, first_seg)
    sent_tok = np.add.reduceat(seg_tok, first_seg)
    n_sent_safe = np.maximum(n_sent, 1)

    # Lines: a non-space character that is the first of its line starts a non-empty line.
    line_id = np.cumsum(text_start | has(NEWLINE), dtype=np.int32)
    nonspace = np.flatnonzero(cls != SPACE)
    line_start = np.zeros(cp.size, dtype=bool)
    line_start[nonspace[np.r_[True, line_id[nonspace][1:] != line_id[nonspace][:-1]]]] = True

    # Lexical statistics over hashed, lower-cased unit tokens (words, digit runs, CJK characters).
    in_tok = np.flatnonzero(eff != SPACE)
    tok_of_char = np.cumsum(tok_start, dtype=np.int32)[in_tok] - 1
    tok_first = np.flatnonzero(np.r_[True, tok_of_char[1:] != tok_of_char[:-1]])
    pos = np.arange(in_tok.size) - np.repeat(tok_first, np.diff(np.r_[tok_first, in_tok.size]))
    with np.errstate(over="ignore"):
        contrib = _mix(lower[in_tok].astype(np.uint64) * np.uint64(0x100000001B3) + pos.astype(np.uint64))
    tok_hash = np.add.reduceat(contrib, tok_first)
    starts = in_tok[tok_first]
    is_unit = eff[starts] != SYMBOL
    unit_hash = tok_hash[is_unit]
    unit_tid = np.searchsorted(offsets, starts[is_unit], side="right") - 1
    n_units = np.bincount(unit_tid, minlength=n).astype(np.float64)
    uni_distinct, uni_clogc = _grouped_counts(unit_tid, unit_hash, n)
    same2 = unit_tid[1:] == unit_tid[:-1]
    bi_distinct, _ = _grouped_counts(unit_tid[:-1][same2], _ngram_key(unit_hash, 2)[same2], n)
    same3 = same2[:-1] & same2[1:]
    tri_distinct, _ = _grouped_counts(unit_tid[:-2][same3], _ngram_key(unit_hash, 3)[same3], n)
    n_tri = np.maximum(n_units - 2, 0)

    arrow = pa.array(texts, type=pa.large_string())

    def regex_count(pattern: str) -> np.ndarray:
        return pc.count_substring_regex(arrow, pattern).to_numpy().astype(np.float64)

    def run_starts(flag: int) -> np.ndarray:
        return count(has(flag) & ~(previous(flags & flag, 0) > 0))

    columns = {
        "n_tokens": n_tokens,
        "n_chars": count(cls != SPACE),
        "n_sentences": n_sent_safe,
        "sentence_tokens_mean": n_tokens / n_sent_safe,
        "sentence_tokens_max": np.where(n_sent > 0, sent_max, n_tokens),
        "sentence_tokens_std": np.sqrt(np.maximum(_safe_div(sum_sq, n_sent) - _safe_div(sent_tok, n_sent) ** 2, 0)),
        "punct_per_token": _safe_div(punct, n_tokens),
        "comma_per_token": _safe_div(count(has(COMMA)), n_tokens),
        "fullwidth_punct_share": _safe_div(count(has(FULLWIDTH)), punct),
        "question_share": np.minimum(run_starts(QMARK) / n_sent_safe, 1),
        "exclaim_share": np.minimum(run_starts(EXCL) / n_sent_safe, 1),
        "digit_share": _safe_div(count(tok_start & (eff == DIGIT)), n_tokens),
        "caps_share": _safe_div(upper, upper + lower_n),
        "cjk_share": _safe_div(count(cls == CJK), count((cls == WORD) | (cls == CJK))),
        "has_url": (regex_count(_URL_RE) > 0).astype(np.float64),
        "list_lines": regex_count(_LIST_RE),
        "has_code": (regex_count(_CODE_RE) > 0).astype(np.float64),
        "n_lines": count(line_start),
        "n_paragraphs": regex_count(_PARAGRAPH_RE) + 1,
        "ends_terminal": np.fromiter((_TERMINAL_RE.search(t) is not None for t in texts), dtype=np.float64,
                                     count=n),
        "distinct_1": _safe_div(uni_distinct, n_units),
        "distinct_2": _safe_div(bi_distinct, np.maximum(n_units - 1, 0)),
        "repeat_3": np.where(n_tri > 0, 1 - _safe_div(tri_distinct, n_tri), 0.0),
        "unit_entropy": np.where(n_units > 0, np.log2(np.maximum(n_units, 1)) - _safe_div(uni_clogc, n_units), 0.0),
    }
    out = np.column_stack([columns[name] for name in FEATURE_NAMES])
    out[n_tokens == 0] = 0.0  # an all-space response has no features
    return out


def compute_features(texts: Sequence[str], batch_size: int = 20_000, progress=None) -> np.ndarray:
    """Feature matrix (len(texts), N_FEATURES), float64, columns in FEATURE_NAMES order.

    `progress` is an optional callable advanced by the number of texts done after each batch."""
    out = np.zeros((len(texts), N_FEATURES))
    for start in range(0, len(texts), batch_size):
        chunk = texts[start: start + batch_size]
        rows = [i for i, t in enumerate(chunk) if t]  # an empty response has all features 0
        if rows:
            out[start + np.asarray(rows)] = _features_batch([chunk[i] for i in rows])
        if progress is not None:
            progress(len(chunk))
    return out
