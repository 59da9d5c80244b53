"""Bilingual response features: the vectorised implementation against a plain per-text one, and what the
features mean on hand-made English and Chinese responses."""

import itertools
import json
import math
import random
import re
from collections import Counter

import numpy as np
import pytest

from conftest import SHARED_DATA
from polyalign.buckets.features import FEATURE_NAMES, compute_features
from polyalign.data.sources.chatterbot import corpus_dir
from polyalign.text import CJK_RANGES, TOKEN_RE

PUNCT = re.compile(r"[!-/:-@\[-`{-~\u2010-\u206f\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]")
FULLWIDTH = re.compile(r"[\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]")
LIST_LINE = re.compile(r"^(?:[-*•·]|[0-9]+[.)、]|[(（][0-9]+[)）]|[一二三四五六七八九十]+、)", re.MULTILINE)


def plain_features(text: str) -> dict[str, float]:
    """The definition of every feature, one text at a time (slow, obviously right)."""
    tokens = TOKEN_RE.findall(text)
    n = len(tokens)
    if n == 0:
        return dict.fromkeys(FEATURE_NAMES, 0.0)
    sentences = [k for k in (len(TOKEN_RE.findall(s)) for s in re.split(r"[.!?;…。！？；]+|\n", text)) if k]
    n_sent = max(len(sentences), 1)
    punct = len(PUNCT.findall(text))
    upper, lower = sum(c.isupper() for c in text), sum(c.islower() for c in text)
    letters = len(re.findall(r"[^\W\d_]", text))
    units = [t.lower() for t in tokens if t[0].isalnum()]
    counts = Counter(units)
    trigrams = list(zip(units, units[1:], units[2:]))
    return {
        "n_tokens": n,
        "n_chars": sum(not c.isspace() for c in text),
        "n_sentences": n_sent,
        "sentence_tokens_mean": n / n_sent,
        "sentence_tokens_max": max(sentences) if sentences else n,
        "sentence_tokens_std": float(np.std(sentences)) if sentences else 0.0,
        "punct_per_token": punct / n,
        "comma_per_token": len(re.findall(r"[,，、]", text)) / n,
        "fullwidth_punct_share": len(FULLWIDTH.findall(text)) / punct if punct else 0.0,
        "question_share": min(len(re.findall(r"[?？]+", text)) / n_sent, 1.0),
        "exclaim_share": min(len(re.findall(r"[!！]+", text)) / n_sent, 1.0),
        "digit_share": sum(t.isdecimal() for t in tokens) / n,
        "caps_share": upper / (upper + lower) if upper + lower else 0.0,
        "cjk_share": len(re.findall(f"[{CJK_RANGES}]", text)) / letters if letters else 0.0,
        "has_url": float(bool(re.search(r"https?://|www\.", text, re.IGNORECASE))),
        "list_lines": len(LIST_LINE.findall(text)),
        "has_code": float(bool(re.search(r"```|`[^`\n]+`", text))),
        "n_lines": sum(bool(line.strip()) for line in text.split("\n")),
        "n_paragraphs": len(re.findall(r"\n[\t\n\f\r ]*\n", text)) + 1,
        "ends_terminal": float(bool(re.search(r"[.!?…。！？][\"'”’」』)）]*\s*$", text))),
        "distinct_1": len(counts) / len(units) if units else 0.0,
        "distinct_2": len(set(itertools.pairwise(units))) / (len(units) - 1) if len(units) > 1 else 0.0,
        "repeat_3": 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0,
        "unit_entropy": (math.log2(len(units)) - sum(c * math.log2(c) for c in counts.values()) / len(units))
        if units else 0.0,
    }


def corpus_texts() -> list[str]:
    import yaml

    texts = []
    for path in sorted(corpus_dir().glob("*/*.yml"))[:60]:
        for conv in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            if isinstance(conv, list):
                texts.extend(str(u) for u in conv)
    sample = SHARED_DATA / "polyalign-sample/dist_sft_val.json"
    if sample.is_file():
        texts += [r["output"] for r in json.loads(sample.read_text(encoding="utf-8"))[:400]]
    return texts


EDGE_CASES = [
    "", "   ", "\n\n", "a'b'c'd don't", "x'y 'z' it's'", "'quoted'", "x.\n\ny", "你好！！！ 😀 𠀀abc",
    "ＡＢＣ１２３。", "Ünïcödé ÀÉ", "- a\n* b\n(1) c\n一、d\n2) e", "???!!!", "end;mid；x…y", "a'", "'a",
    "see https://example.org and `code`", "```\nprint(1)\n```", "3.14 is pi", "rock'n'roll", "__init__",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "ab Cd'.!?;\n\n你好。，！？1２_-😀Éé`"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def texts_and_definition():
    texts = EDGE_CASES + corpus_texts() + random_texts(2000)
    return texts, np.array([[plain_features(t)[name] for name in FEATURE_NAMES] for t in texts])


@pytest.mark.parametrize("batch_size", [7, 20_000])
def test_vectorised_features_equal_the_per_text_definition(texts_and_definition, batch_size):
    texts, want = texts_and_definition
    got = compute_features(texts, batch_size=batch_size)
    mismatch = np.argwhere(~np.isclose(got, want, atol=1e-9))
    assert not len(mismatch), [(texts[i], FEATURE_NAMES[j], got[i, j], want[i, j]) for i, j in mismatch[:5]]


def features(text: str) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, compute_features([text])[0]))


def test_english_and_chinese_responses_of_the_same_shape_get_the_same_structure_features():
    en = features("Hello there! How are you today? Let us go to the park.")
    zh = features("你好！今天怎么样？我们去公园吧。")
    for name in ("n_sentences", "question_share", "exclaim_share", "n_lines", "n_paragraphs", "has_url"):
        assert en[name] == zh[name], name
    assert en["n_sentences"] == 3 and en["question_share"] == pytest.approx(1 / 3)
    assert zh["fullwidth_punct_share"] == 1.0 and en["fullwidth_punct_share"] == 0.0
    assert zh["cjk_share"] == 1.0 and en["cjk_share"] == 0.0
    assert zh["n_tokens"] == 16 and en["n_tokens"] == 15


def test_lexical_statistics_use_words_for_english_and_characters_for_chinese():
    assert features("the cat the cat the cat")["distinct_1"] == pytest.approx(2 / 6)
    assert features("好好好好")["distinct_1"] == pytest.approx(1 / 4)
    assert features("The the THE")["distinct_1"] == pytest.approx(1 / 3)  # lower-cased
    assert features("a b c a b c")["repeat_3"] == pytest.approx(1 - 3 / 4)
    assert features("a b c d")["unit_entropy"] == pytest.approx(2.0)


def test_markers_lists_code_and_urls():
    text = "Steps:\n1. Install it\n2. Run `polyalign prepare`\n\nDocs: https://example.org"
    f = features(text)
    assert (f["list_lines"], f["has_code"], f["has_url"], f["n_lines"], f["n_paragraphs"]) == (2, 1, 1, 4, 2)


def test_empty_response_has_all_features_zero():
    assert not compute_features(["", "  \n "]).any()
