"""The record: one target response with its prompt, context and history (field names follow the paper's
released schema so its files load as they are)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

HISTORY_TYPE = pa.list_(pa.struct([("role", pa.string()), ("text", pa.string())]))

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("language", pa.string()),
        ("track", pa.string()),
        ("family", pa.string()),
        ("style_bucket", pa.string()),
        ("length_bin", pa.string()),
        ("n_tokens", pa.int32()),
        ("question", pa.string()),
        ("context", pa.string()),
        ("dialogue_history", HISTORY_TYPE),
        ("human_answer", pa.string()),
        ("group_id", pa.string()),
        ("meta", pa.string()),  # JSON object: fields of the source that have no column of their own
    ]
)


@dataclass
class Example:
    """One target response as an adapter reads it, before normalisation, labels and splits.

    `None` labels are filled in by `prepare` (language by detection, track from the history)."""

    question: str
    human_answer: str
    dataset: str
    group_id: str  # conversation / document: all examples of a group land in one split
    origin: str  # file:line or file[index], for messages
    id: str | None = None
    context: str = ""
    history: list[tuple[str, str]] = field(default_factory=list)  # (role, text), oldest first
    language: str | None = None
    track: str | None = None
    family: str | None = None
    style_bucket: str | None = None
    split: str | None = None
    # with split None: the splits the hashed split may choose (None: train, val and test), e.g. ("train", "test")
    # carves a test split out of a source's official train split
    split_pool: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Problem:
    """A row that cannot become an example. With `data.on_invalid: error` the run stops with `describe()`;
    with `skip` it is counted under `reason`. `always_skip` marks known defects of packaged data."""

    reason: str
    origin: str
    field: str | None
    message: str
    always_skip: bool = False

    def describe(self) -> str:
        where = f" field '{self.field}':" if self.field else ""
        return f"{self.origin}:{where} {self.message}"
