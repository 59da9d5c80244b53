import pytest

from polyalign.text import count_tokens, detect_language, length_bin, normalise, tokenize

EDGES, NAMES = (40, 120, 240), ("short", "medium", "long", "xlong")


def test_token_rule_counts_words_digit_runs_cjk_characters_and_symbols():
    assert tokenize("I don't have 12,000 apples!") == ["I", "don't", "have", "12", ",", "000", "apples", "!"]
    assert tokenize("我有3个苹果。") == ["我", "有", "3", "个", "苹", "果", "。"]
    # mixed text: each CJK character is one token, an English word is one token
    assert count_tokens("我喜欢Python编程") == 6
    assert count_tokens("The word 你好 means hello") == 6


def test_empty_and_blank_text_has_no_tokens():
    assert count_tokens("") == 0
    assert count_tokens(" \n\t ") == 0


@pytest.mark.parametrize(("n", "expected"), [
    (0, "short"), (40, "short"), (41, "medium"), (120, "medium"), (121, "long"), (240, "long"), (241, "xlong"),
])
def test_length_bin_boundaries(n, expected):
    assert length_bin(n, EDGES, NAMES) == expected


def test_length_bin_from_text_at_the_boundary():
    assert length_bin(count_tokens("字" * 40), EDGES, NAMES) == "short"
    assert length_bin(count_tokens("字" * 41), EDGES, NAMES) == "medium"
    assert length_bin(count_tokens(" ".join(["word"] * 121)), EDGES, NAMES) == "long"


@pytest.mark.parametrize(("text", "expected"), [
    ("How are you doing today?", "en"),
    ("今天天气怎么样？", "zh"),
    ("這是繁體中文的句子。", "zh"),
    ("我喜欢Python编程", "zh"),          # mixed, mostly Chinese by script share
    ("The word 你好 means hello", "en"),  # mixed, mostly English
    ("!!! 123 :-)", None),              # no letters: undetectable
    ("", None),
    ("こんにちは、世界", "other"),       # kana: neither en nor zh
    ("Привет, как дела?", "other"),
])
def test_language_detection_by_script(text, expected):
    assert detect_language(text, zh_threshold=0.2) == expected


def test_normalise_line_endings_whitespace_and_blank_runs():
    assert normalise("  Hello\r\n  world   again \r\n\r\n\r\n\r\nbye  ") == "Hello\nworld again\n\nbye"
    assert normalise("a\tb") == "a b"
    assert normalise("") == ""
