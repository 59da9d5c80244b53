"""Adapters for files in the paper's and common public formats: `polyalign`, `alpaca`, `messages`, `squad`,
`kdconv`. Each turns rows into examples; a row that cannot be used becomes a `Problem` naming file, line (or
index) and field."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from polyalign.data.record import Example, Problem
from polyalign.data.sources.base import (
    RowModel,
    Track,
    Turn,
    alternating,
    conversation_targets,
    load_json,
    resolve,
    validate_row,
    validated_rows,
)
from polyalign.errors import UserError
from polyalign.params import (
    AlpacaSource,
    Family,
    KdconvSource,
    Language,
    MessagesSource,
    PolyalignSource,
    Split,
    SquadSource,
)


def _dataset(cfg: Any, path: Path) -> str:
    return cfg.name or path.stem


def _group_key(*parts: str) -> str:
    """Rows of one conversation share their context and first user turn; hash them into a group id."""
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------------- polyalign


class BucketedRow(RowModel):
    """The optional id and bucket fields that the PolyAlign and alpaca formats share (the paper's exports carry
    them; our own rows may)."""

    id: str | None = None
    language: Language | None = None
    track: Track | None = None
    family: Family | None = None
    style_bucket: str | None = None
    length_bin: str | None = None
    bucket_id: str | None = None


class PolyalignRow(BucketedRow):
    question: str
    human_answer: str
    context: str = ""
    dialogue_history: list[Turn] = Field(default_factory=list)
    dataset: str | None = None
    split: Split | None = None
    group_id: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


def read_polyalign(cfg: PolyalignSource, root: Path) -> Iterator[Example | Problem]:
    path = resolve(cfg.path, root)
    for item in validated_rows(path, PolyalignRow):
        if isinstance(item, Problem):
            yield item
            continue
        origin, row = item
        history = [(t.role, t.text) for t in row.dialogue_history]
        first_user = history[0][1] if history else row.question
        meta = {**row.meta, **row.extras()}
        for key in ("length_bin", "bucket_id"):
            if getattr(row, key) is not None:
                meta[f"source_{key}"] = getattr(row, key)
        yield Example(
            id=row.id, question=row.question, human_answer=row.human_answer, context=row.context, history=history,
            dataset=row.dataset or _dataset(cfg, path),
            group_id=f"{row.dataset or _dataset(cfg, path)}/{row.group_id or _group_key(row.context, first_user)}",
            origin=origin, language=cfg.language or row.language, track=row.track, family=row.family,
            style_bucket=row.style_bucket, split=cfg.split or row.split, meta=meta,
        )


# ------------------------------------------------------------------------------------------------- alpaca


class AlpacaRow(BucketedRow):
    """LLaMA-Factory alpaca row; the paper's bucket fields are optional."""

    output: str
    instruction: str = ""
    input: str = ""
    history: list[tuple[str, str]] = Field(default_factory=list)
    system: str = ""


def read_alpaca(cfg: AlpacaSource, root: Path) -> Iterator[Example | Problem]:
    path = resolve(cfg.path, root)
    dataset = _dataset(cfg, path)
    for item in validated_rows(path, AlpacaRow):
        if isinstance(item, Problem):
            yield item
            continue
        origin, row = item
        question, context = (row.instruction, row.input) if row.instruction.strip() else (row.input, "")
        history = [turn for user, assistant in row.history for turn in (("user", user), ("assistant", assistant))]
        meta = row.extras()
        if row.system:
            meta["system"] = row.system
        for key in ("length_bin", "bucket_id"):
            if getattr(row, key) is not None:
                meta[f"source_{key}"] = getattr(row, key)
        yield Example(
            id=row.id, question=question, human_answer=row.output, context=context, history=history,
            dataset=dataset, group_id=f"{dataset}/{_group_key(context, row.history[0][0] if row.history else question)}",
            origin=origin, language=cfg.language or row.language, track=row.track,
            family=row.family or cfg.family, style_bucket=row.style_bucket, split=cfg.split, meta=meta,
        )


# ----------------------------------------------------------------------------------------------- messages

_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
          "model": "assistant", "system": "system"}
Role = Literal["user", "human", "assistant", "gpt", "bot", "model", "system"]


class OpenAIMessage(BaseModel):
    role: Role
    content: str


class ShareGPTMessage(BaseModel):
    from_: Role = Field(alias="from")
    value: str


class MessagesRow(RowModel):
    messages: list[OpenAIMessage] | None = None
    conversations: list[ShareGPTMessage] | None = None
    id: str | None = None
    language: Language | None = None
    family: Family | None = None
    style_bucket: str | None = None


def merge_runs(turns: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """Consecutive messages of one speaker as one turn, joined by a blank line (a reply sent in two messages is
    one reply), and how many messages were merged into the one before."""
    merged: list[tuple[str, str]] = []
    for role, text in turns:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + "\n\n" + text)
        else:
            merged.append((role, text))
    return merged, len(turns) - len(merged)


def read_messages(cfg: MessagesSource, root: Path) -> Iterator[Example | Problem]:
    """Every assistant turn that answers a user turn; consecutive messages of one speaker are first merged into
    one turn (counted in `meta.merged_messages`), so no message is lost and histories alternate."""
    path = resolve(cfg.path, root)
    dataset = _dataset(cfg, path)
    for item in validated_rows(path, MessagesRow):
        if isinstance(item, Problem):
            yield item
            continue
        origin, row = item
        if row.messages is not None:
            turns = [(_ROLES[m.role], m.content) for m in row.messages]
        elif row.conversations is not None:
            turns = [(_ROLES[m.from_], m.value) for m in row.conversations]
        else:
            yield Problem("invalid_field", origin, "messages", "a row needs `messages` or `conversations`")
            continue
        system = "\n".join(text for role, text in turns if role == "system")
        turns, merged = merge_runs([t for t in turns if t[0] != "system"])
        targets = list(conversation_targets(turns))
        if not targets:
            yield Problem("no_target", origin, "messages", "no assistant turn that answers a user turn")
            continue
        if cfg.targets == "last":
            targets = targets[-1:]
        group = f"{dataset}/{row.id or origin.rsplit(':', 1)[-1]}"
        meta = row.extras() | ({"system": system} if system else {})
        if merged:
            meta["merged_messages"] = merged
        for turn, history, question, answer in targets:
            yield Example(
                id=f"{group}/{turn}", question=question, human_answer=answer, history=history, dataset=dataset,
                group_id=group, origin=origin, language=cfg.language or row.language,
                track="single" if len(turns) <= 2 else "multi", family=row.family or cfg.family,
                style_bucket=row.style_bucket, split=cfg.split, meta=meta,
            )


# -------------------------------------------------------------------------------------------------- squad


class SquadAnswer(BaseModel):
    text: str
    answer_start: int | None = None


class SquadQuestion(RowModel):
    id: str | int
    question: str
    answers: list[SquadAnswer] = Field(default_factory=list)
    is_impossible: bool = False


class SquadParagraph(BaseModel):
    context: str
    qas: list[SquadQuestion]


class SquadArticle(RowModel):
    paragraphs: list[SquadParagraph]
    title: str | None = None
    id: str | None = None


def read_squad(cfg: SquadSource, root: Path) -> Iterator[Example | Problem]:
    """SQuAD v1/v2 and CMRC 2018: one single-turn QA example per question, the paragraph as context; an
    unanswerable question keeps an empty answer and `meta.unanswerable`. A whole article is one group."""
    path = resolve(cfg.path, root)
    dataset = _dataset(cfg, path)
    data = load_json(path)
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise UserError(f"{path}: expected SQuAD JSON with a top-level `data` list of articles")
    for a_index, raw in enumerate(articles):
        origin = f"{path}: data[{a_index}]"
        article = validate_row(SquadArticle, raw, origin)
        if isinstance(article, Problem):
            yield article
            continue
        group = f"{dataset}/{article.id or article.title or a_index}"
        for p_index, paragraph in enumerate(article.paragraphs):
            for q_index, qa in enumerate(paragraph.qas):
                answerable = bool(qa.answers) and not qa.is_impossible
                yield Example(
                    id=str(qa.id), question=qa.question, human_answer=qa.answers[0].text if answerable else "",
                    context=paragraph.context, dataset=dataset, group_id=group,
                    origin=f"{origin}.paragraphs[{p_index}].qas[{q_index}]", language=cfg.language,
                    track="single", family="qa", split=cfg.split,
                    meta={"title": article.title, "unanswerable": not answerable,
                          "n_answers": len(qa.answers), **qa.extras()},
                )


# ------------------------------------------------------------------------------------------------- kdconv


class KdconvMessage(BaseModel):
    message: str
    attrs: list[dict[str, Any]] = Field(default_factory=list)


class KdconvConversation(RowModel):
    messages: list[KdconvMessage]
    name: str | None = None


def read_kdconv(cfg: KdconvSource, root: Path) -> Iterator[Example | Problem]:
    """KdConv: speakers alternate, the user first; every second message is a target. The knowledge triples a
    target message used are kept in `meta.knowledge`."""
    path = resolve(cfg.path, root)
    dataset = _dataset(cfg, path)
    for item in validated_rows(path, KdconvConversation):
        if isinstance(item, Problem):
            yield item
            continue
        origin, conv = item
        turns = alternating([m.message for m in conv.messages])
        group = f"{dataset}/{origin.rsplit('[', 1)[-1].rstrip(']')}"
        for turn, history, question, answer in conversation_targets(turns):
            yield Example(
                id=f"{group}/{turn}", question=question, human_answer=answer, history=history, dataset=dataset,
                group_id=group, origin=f"{origin}.messages[{turn}]", language=cfg.language,
                track="single" if len(turns) <= 2 else "multi", family="dialogue", split=cfg.split,
                meta={"topic": conv.name, "knowledge": conv.messages[turn].attrs},
            )
