"""The one prompt renderer used by SFT, pair sampling, HDPO and evaluation alike.

The paper's code rendered prompts one way in training and another at inference; here every stage calls
`PromptRenderer.prompt_ids`, so a record's prompt is the same token sequence whether it is trained on or
generated from. A training example is that prompt followed by the human answer and the end-of-turn token;
only the answer and the end-of-turn token carry loss.

Conditioning (DESIGN §5): `none` (no profile), `observable` (language, track and family: known at inference
time), `oracle_length` (also the answer's length bin: this leaks the answer's length and is labelled an oracle
in the profile and in every report that uses it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import PreTrainedTokenizerBase

from polyalign.errors import UserError

IGNORE_INDEX = -100
_SENTINEL = "\u2063POLYALIGN_RESPONSE\u2063"


def system_profile(record: Mapping[str, Any], conditioning: str) -> str | None:
    if conditioning == "none":
        return None
    profile = f"language={record['language']}; track={record['track']}; family={record['family']}"
    if conditioning == "oracle_length":
        profile += f"; length={record['length_bin']} (oracle: the human answer's length)"
    return f"Reply as a person would in this context: {profile}."


def user_turn(record: Mapping[str, Any]) -> str:
    context = record.get("context") or ""
    return f"{context}\n\n{record['question']}" if context else record["question"]


def chat_messages(record: Mapping[str, Any], conditioning: str, drop_history: int = 0) -> list[dict[str, str]]:
    """System profile, dialogue history (oldest `drop_history` turns left out) and the user turn."""
    messages = []
    profile = system_profile(record, conditioning)
    if profile:
        messages.append({"role": "system", "content": profile})
    history = list(record.get("dialogue_history") or [])[drop_history:]
    messages += [{"role": turn["role"], "content": turn["text"]} for turn in history]
    messages.append({"role": "user", "content": user_turn(record)})
    return messages


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens the chat template puts after an assistant message (e.g. <|im_end|>, <|eot_id|>)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False)
    suffix = text.split(_SENTINEL, 1)[1].rstrip() if _SENTINEL in text else ""
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if not ids:
        if tokenizer.eos_token_id is None:
            raise UserError("the tokenizer's chat template ends assistant turns with nothing and it has no eos token")
        ids = [tokenizer.eos_token_id]
    return ids


class PromptRenderer:
    """Renders records to token ids with the tokenizer's chat template.

    `max_prompt_tokens` bounds the prompt in every mode (the oldest history turns are dropped first, then the
    middle of what is left is cut), so training and generation see identical prompts."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, conditioning: str, max_prompt_tokens: int,
                 max_tokens: int):
        if getattr(tokenizer, "chat_template", None) is None:
            raise UserError("the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.conditioning = conditioning
        self.max_prompt_tokens = max_prompt_tokens
        self.max_tokens = max_tokens
        self.eot_ids = end_of_turn_ids(tokenizer)

    @classmethod
    def from_params(cls, tokenizer: PreTrainedTokenizerBase, prompt) -> PromptRenderer:
        """The renderer of the `prompt` params section: every stage renders with the same settings."""
        return cls(tokenizer, prompt.conditioning, prompt.max_prompt_tokens, prompt.max_tokens)

    @property
    def pad_id(self) -> int:
        """The id padded batches use: the tokenizer's pad token, else its end-of-turn token (padding is masked)."""
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_ids[0]

    def prompt_text(self, record: Mapping[str, Any], drop_history: int = 0) -> str:
        return self.tokenizer.apply_chat_template(chat_messages(record, self.conditioning, drop_history),
                                                  add_generation_prompt=True, tokenize=False)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, record: Mapping[str, Any]) -> list[int]:
        ids = self._encode(self.prompt_text(record))
        n_history = len(record.get("dialogue_history") or [])
        drop = 0
        while len(ids) > self.max_prompt_tokens and drop < n_history:
            drop += 2 if drop + 2 <= n_history else 1  # whole user/assistant exchanges first
            ids = self._encode(self.prompt_text(record, drop))
        if len(ids) > self.max_prompt_tokens:
            head = self.max_prompt_tokens // 4
            ids = ids[:head] + ids[len(ids) - (self.max_prompt_tokens - head):]
        return ids

    def response_ids(self, answer: str) -> list[int]:
        return self._encode(answer) + self.eot_ids

    def example(self, record: Mapping[str, Any], response: str | None = None) -> dict[str, Any]:
        """input_ids and labels (IGNORE_INDEX on the prompt) for one record and a response text: the record's
        human answer unless `response` is given (a pair's other side, a model sample). A response longer than
        the room left after the prompt is cut (and then has no end-of-turn token): `truncated` says so.
        `n_chars` is the number of characters of the response that the labels cover."""
        answer = record["human_answer"] if response is None else response
        example = self.example_from_ids(record, self._encode(answer), ended=True)
        # characters the response's loss covers: bits per character compare models across tokenizers
        kept = example["labels"][example["n_prompt"]:]
        example["n_chars"] = len(self.tokenizer.decode(kept)) if example["truncated"] else len(answer)
        return example

    def example_from_ids(self, record: Mapping[str, Any], response_ids: list[int], ended: bool) -> dict[str, Any]:
        """Like `example`, for a response given as token ids (a model sample scored as it was generated, with no
        decode/re-encode round trip). `ended=False` marks a sample its budget cut: it gets no end-of-turn token,
        so its log-prob covers only what was generated and training never teaches it to stop there."""
        prompt = self.prompt_ids(record)
        response = list(response_ids) + (self.eot_ids if ended else [])
        room = self.max_tokens - len(prompt)
        truncated = len(response) > room
        response = response[:room]
        return {
            "input_ids": prompt + response,
            "labels": [IGNORE_INDEX] * len(prompt) + response,
            "n_prompt": len(prompt),
            "n_response": len(response),
            "truncated": truncated or not ended,
        }
