"""The scratch tokenizer: every token is whole characters, so nothing it decodes is broken text; unknown characters
are counted and stay visible; a byte-level tokenizer's cut response never ends inside a character."""

import json
import random

import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from conftest import shared_file
from polyalign.modeling.tokenizer import IM_END, PAD, UNK, decode_response, train_tokenizer, unknown_share
from polyalign.params import load_params
from polyalign.stages import bucketize, prepare
from polyalign.stages.init import training_texts
from polyalign.text import CJK_RE


def shared_texts() -> list[str]:
    """English (the PolyAlign sample) and Chinese (KdConv, CMRC 2018) texts of ../shared/data."""
    sample = json.loads(shared_file("polyalign-sample/dist_sft_val.json").read_text(encoding="utf-8"))
    kdconv = json.loads(shared_file("kdconv/film_dev.json").read_text(encoding="utf-8"))
    cmrc = json.loads(shared_file("cmrc2018/cmrc2018_trial.json").read_text(encoding="utf-8"))
    texts = [t for r in sample for t in (r["instruction"], r["input"], r["output"]) if t]
    texts += [m["message"] for c in kdconv for m in c["messages"]]
    texts += [p["context"] for d in cmrc["data"] for p in d["paragraphs"]]
    texts += [q["question"] for d in cmrc["data"] for p in d["paragraphs"] for q in p["qas"]]
    return texts


def known_characters(tokenizer, texts: list[str]) -> dict[str, bool]:
    """Whether each character of `texts` is in the tokenizer's alphabet (tokenised alone, it is not unknown)."""
    chars = sorted(set("".join(texts)))
    ids = tokenizer(chars, add_special_tokens=False)["input_ids"]
    return {c: tokenizer.unk_token_id not in row for c, row in zip(chars, ids)}


def test_round_trip_on_real_english_and_chinese_loses_only_the_counted_unknowns():
    texts = shared_texts()
    random.Random(0).shuffle(texts)
    train, held_out = texts[: len(texts) // 2], texts[len(texts) // 2:]
    tokenizer = train_tokenizer(train, vocab_size=8000, min_frequency=2)
    assert sum(CJK_RE.search(t) is not None for t in held_out) > 500  # both languages are really tested
    known = known_characters(tokenizer, held_out)
    unknown = 0
    for text, ids in zip(held_out, tokenizer(held_out, add_special_tokens=False)["input_ids"]):
        expected = "".join(c if known[c] else UNK for c in text)
        assert decode_response(tokenizer, ids) == expected.strip()
        assert ids.count(tokenizer.unk_token_id) == sum(not known[c] for c in text)
        unknown += ids.count(tokenizer.unk_token_id)
    share = unknown_share(tokenizer, held_out)
    assert share == unknown / sum(len(t) for t in held_out)
    assert 0 < share < 0.01  # rare CJK characters of the held-out half: counted, not lost


def test_every_token_is_whole_characters_and_cjk_stays_single():
    texts = shared_texts()
    tokenizer = train_tokenizer(texts, vocab_size=4000, min_frequency=2)
    pieces = {i: tokenizer.decode([i]) for i in range(len(tokenizer))}
    assert not [p for p in pieces.values() if "\ufffd" in p]
    assert not [p for p in pieces.values() if len(CJK_RE.findall(p)) > 1]
    rng = random.Random(1)
    for _ in range(200):  # any id sequence, however unlikely, decodes to the concatenation of its tokens
        ids = [rng.randrange(4, len(tokenizer)) for _ in range(rng.randrange(1, 30))]
        assert tokenizer.decode(ids) == "".join(pieces[i] for i in ids)


def test_unknown_share_of_the_default_corpus_val_split_is_under_half_a_percent(tmp_path):
    params = load_params(None, ["logging.progress=false"])
    prepare.run(params, tmp_path)
    bucketize.run(params, tmp_path)
    tokenizer = train_tokenizer(training_texts(params, tmp_path), params.model.vocab_size,
                                params.model.tokenizer_min_frequency)
    answers = pq.read_table(tmp_path / "data/buckets/val.parquet", columns=["human_answer"])
    assert unknown_share(tokenizer, training_texts(params, tmp_path, "val")) < 0.005
    assert unknown_share(tokenizer, answers.column("human_answer").to_pylist()) < 0.005


def test_decode_response_keeps_unknowns_visible_and_drops_control_tokens():
    tokenizer = train_tokenizer(["hello world", "你好"] * 5, vocab_size=300, min_frequency=1)
    ids = tokenizer("hello 世界", add_special_tokens=False)["input_ids"]
    assert decode_response(tokenizer, ids) == "hello <unk><unk>"
    padded = [tokenizer.convert_tokens_to_ids(PAD), *ids, tokenizer.convert_tokens_to_ids(IM_END)]
    assert decode_response(tokenizer, padded) == "hello <unk><unk>"


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A pretrained-style byte-level BPE too small to hold CJK characters whole."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["plain ascii text"], trainers.BpeTrainer(
        vocab_size=260, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[PAD],
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD)


def test_a_cut_byte_level_response_never_ends_inside_a_character():
    tokenizer = byte_level_tokenizer()
    ids = tokenizer("ok 你好", add_special_tokens=False)["input_ids"]
    assert len(ids) > 4  # each CJK character is three byte tokens here
    cut = ids[:-1]  # the budget cut the last character after two of its three bytes
    assert tokenizer.decode(cut).endswith("\ufffd")
    assert decode_response(tokenizer, cut, truncated=True) == "ok 你"
    # a response that ended on its own is decoded as it is: a broken byte there is the model's, and is counted
    assert decode_response(tokenizer, cut, truncated=False).endswith("\ufffd")
