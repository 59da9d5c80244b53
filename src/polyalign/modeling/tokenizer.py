"""A character-level BPE tokenizer trained on the training split, for the CPU default model.

Every token is a string of whole characters, so every sequence of tokens decodes to valid text: a model cannot
emit half of a UTF-8 character, as it could with byte-level BPE. The alphabet is every character of the training
text plus printable ASCII and common CJK punctuation; any other character becomes `<unk>`, which decodes to the
visible text "<unk>" (`decode_response`) and is counted by `unknown_share`. There is no byte fallback.

Chinese has no spaces, so every CJK character is isolated before BPE and Chinese is tokenised per character;
English is split into words with their leading space (GPT-2's pattern) and gets sub-word merges. Tokens keep
their spaces as they are, and decoding concatenates them. The chat template is ChatML, the format of Qwen2 chat
models.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from polyalign.text import CJK_RANGES

PAD, IM_START, IM_END, UNK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"

# ChatML. `add_generation_prompt` opens the assistant turn; the renderer appends the response and <|im_end|>.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# GPT-2's split: contractions, words, numbers and punctuation runs with their leading space, then whitespace
WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BASE_ALPHABET = sorted(set(string.printable) - set("\x0b\x0c\r") | set("，。！？：；、“”‘’（）《》【】…—～·"))


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=UNK, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(f"[{CJK_RANGES}]"), behavior="isolated"),
        pre_tokenizers.Split(Regex(WORDS), behavior="isolated"),
    ])
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, IM_START, IM_END, UNK],
        initial_alphabet=BASE_ALPHABET, show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, unk_token=UNK, chat_template=CHATML_TEMPLATE,
        padding_side="right", clean_up_tokenization_spaces=False,
    )


def unknown_share(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> float:
    """The share of characters of `texts` that the tokenizer maps to its unknown token (0 without one)."""
    unk = tokenizer.unk_token_id
    chars = sum(len(t) for t in texts)
    if unk is None or not chars:
        return 0.0
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return sum(row.count(unk) for row in ids) / chars


def decode_response(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], truncated: bool = False) -> str:
    """A generated response as text, by the tokenizer's own decoding rules.

    Control tokens (padding, turn markers) are left out; an unknown token stays visible as its text (`<unk>`).
    A response its budget cut (`truncated`) may end inside a character with a byte-level tokenizer: the tokens of
    that unfinished character are dropped, so the text never ends in a partial character. A U+FFFD anywhere else
    is what the model generated, and evaluation counts it."""
    hidden = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    kept = [i for i in ids if i not in hidden]
    text = tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if truncated:
        for cut in range(1, min(4, len(kept)) + 1):  # a UTF-8 character spans at most four byte tokens
            if not text.endswith("\ufffd"):
                break
            text = tokenizer.decode(kept[:-cut], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text.strip()
