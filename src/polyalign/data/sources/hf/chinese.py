"""Chinese corpora of the paper: COIG-CQIA, HC3-Chinese, OASST2 (Chinese trees), CMRC 2018, DRCD, DuReader.
One mapper per dataset from its published row layout to examples."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from pydantic import BeforeValidator

from polyalign.data.record import Example, Problem
from polyalign.data.sources.hf import HfAdapter, HfRow, Rows, as_records, drop, group_key, per_row

# COIG-CQIA's hub configurations: one per subset of human-written sources (the dataset card's `configs`)
COIG_CQIA_SUBSETS = ("chinese_traditional", "coig_pc", "exam", "finance", "douban", "human_value", "logi_qa",
                     "ruozhiba", "segmentfault", "wiki", "wikihow", "xhs", "zhihu")


class CoigCqiaRow(HfRow):
    instruction: str | None = None
    input: str | None = None
    output: str | None = None


@per_row
def coig_cqia(origin: str, row: dict) -> Iterator[Example | Problem]:
    """COIG-CQIA: instruction (+ input) -> output, kept only when a human wrote it and a human verified it."""
    source = str(row.get("answer_from") or "").strip().lower()
    if source != "human":
        yield drop("not_human_written", origin, f"answer_from is {row.get('answer_from')!r}, not 'human'",
                   "answer_from")
        return
    if row.get("human_verified") is not True:
        yield drop("not_human_verified", origin, "the row is not marked human_verified", "human_verified")
        return
    instruction = row.get("instruction") or ""
    yield Example(question=instruction, human_answer=row.get("output") or "", context=row.get("input") or "",
                  dataset="", group_id=group_key(instruction), origin=origin,
                  meta={"domain": row.get("domain"), "task_type": row.get("task_type")})


class Hc3Row(HfRow):
    question: str | None = None
    human_answers: list[str | None] | None = None


@per_row
def hc3_zh(origin: str, row: dict) -> Iterator[Example | Problem]:
    """HC3-Chinese: one example per human answer of a question; the ChatGPT answers are never used."""
    answers = [a for a in row.get("human_answers") or [] if a is not None]
    if not answers:
        yield drop("no_human_answer", origin, "the question has no human answer", "human_answers")
        return
    question = row.get("question") or ""
    meta = {"source_id": row.get("id")}
    if row.get("source"):
        meta["source"] = row["source"]
    for k, answer in enumerate(answers):
        yield Example(question=question, human_answer=answer, dataset="", group_id=group_key(question),
                      origin=f"{origin}#{k}", meta=dict(meta))


# --- OASST2: message trees ----------------------------------------------------------------------------------

class Oasst2Row(HfRow):
    message_id: str
    message_tree_id: str
    parent_id: str | None = None
    role: str | None = None
    text: str | None = None


def _oasst_unusable(message: dict) -> str | None:
    """Why a message may not be used (as a target or as an ancestor of one), or None."""
    if message.get("lang") != "zh":
        return "not_chinese"
    if message.get("deleted"):
        return "deleted"
    if message.get("review_result") is not True:
        return "not_reviewed"
    return None


def _oasst_ancestry(message: dict, by_id: dict[str, dict]) -> list[dict] | None:
    """The ancestors of `message`, root first, when the whole chain is present and usable and the roles alternate
    from a prompter root; otherwise None."""
    chain: list[dict] = []
    seen = {message["message_id"]}
    current = message
    while current.get("parent_id") is not None:
        parent = by_id.get(current["parent_id"])
        if parent is None or parent["message_id"] in seen or _oasst_unusable(parent):
            return None
        if parent.get("role") == current.get("role") or parent.get("role") not in ("prompter", "assistant"):
            return None
        seen.add(parent["message_id"])
        chain.append(parent)
        current = parent
    if not chain or current.get("role") != "prompter":
        return None
    chain.reverse()
    return chain


def oasst2(rows: Rows) -> Iterator[Example | Problem]:
    """OpenAssistant OASST2 (message rows of whole trees): every usable Chinese assistant reply whose ancestry up
    to a prompter root is itself usable Chinese; the parent prompt is the question, earlier turns the history.
    Only assistant messages are counted when dropped."""
    rows = list(rows)
    by_id = {row["message_id"]: row for _, row in rows}
    for origin, row in rows:
        if row.get("role") != "assistant":
            continue
        reason = _oasst_unusable(row)
        if reason:
            yield drop(reason, origin, {"not_chinese": f"lang is {row.get('lang')!r}, not 'zh'",
                                        "deleted": "the message is deleted",
                                        "not_reviewed": "the message did not pass review"}[reason])
            continue
        chain = _oasst_ancestry(row, by_id)
        if chain is None:
            yield drop("broken_ancestry", origin, "an ancestor of the message is missing, deleted, unreviewed, "
                       "not Chinese, or the roles do not alternate from a prompter root", "parent_id")
            continue
        *earlier, parent = chain
        history = [("user" if m["role"] == "prompter" else "assistant", m.get("text") or "") for m in earlier]
        yield Example(question=parent.get("text") or "", human_answer=row.get("text") or "", dataset="",
                      group_id=group_key(row["message_tree_id"]), origin=origin, id=row["message_id"],
                      history=history, track="multi",
                      meta={"message_tree_id": row["message_tree_id"], "rank": row.get("rank")})


# --- SQuAD-style reading comprehension: CMRC 2018, DRCD, DuReader-robust --------------------------------------

class SquadZhAnswer(HfRow):
    text: str | None = None


def _answer_items(value):
    """The hub's {"text": [...], "answer_start": [...]} or the original files' [{"text", ...}, ...] as a list of
    answers (a plain text stands for itself)."""
    if not isinstance(value, (dict, list)):
        return value
    return [{"text": a} if isinstance(a, str) else a for a in as_records(value)]


SquadZhAnswers = Annotated[list[SquadZhAnswer | None], BeforeValidator(_answer_items)]


class SquadZhQuestion(HfRow):
    question: str | None = None
    answers: SquadZhAnswers | None = None


class SquadZhParagraph(HfRow):
    context: str | None = None
    qas: list[SquadZhQuestion] | None = None


class SquadZhRow(HfRow):
    """A flat question row, or a document with paragraphs (see `squad_zh`)."""

    paragraphs: list[SquadZhParagraph] | None = None
    question: str | None = None
    context: str | None = None
    title: str | None = None
    answers: SquadZhAnswers | None = None


def _first_answer(answers) -> str | None:
    """The first answer text of `{"text": [...], "answer_start": [...]}` (hub rows) or `[{"text", ...}, ...]`
    (the original SQuAD files); None when there is none."""
    if isinstance(answers, dict):
        texts = answers.get("text") or []
    elif isinstance(answers, list):
        texts = [a.get("text") if isinstance(a, dict) else a for a in answers]
    else:
        texts = []
    texts = [t for t in texts if t is not None]
    return texts[0] if texts else None


def _squad_question(origin: str, context: str, question: str, qid, answers, title) -> Iterator[Example | Problem]:
    answer = _first_answer(answers)
    if answer is None:
        yield drop("no_answer", origin, "the question has no answer", "answers")
        return
    yield Example(question=question or "", human_answer=answer, context=context or "", dataset="",
                  group_id=group_key(context or ""), origin=origin, id=str(qid) if qid else None,
                  meta={"title": title} if title else {})


@per_row
def squad_zh(origin: str, row: dict) -> Iterator[Example | Problem]:
    """A flat row (id, context, question, answers) as the hub copies have them, or a document of the original
    SQuAD-format files ({"paragraphs": [{"context", "qas": [...]}], "title"}), flattened to its questions."""
    if row.get("paragraphs") is not None:
        k = 0
        for paragraph in row["paragraphs"] or []:
            for qa in paragraph.get("qas") or []:
                yield from _squad_question(f"{origin}#{k}", paragraph.get("context"), qa.get("question"),
                                           qa.get("id"), qa.get("answers"), row.get("title"))
                k += 1
    elif "question" in row and "context" in row:
        yield from _squad_question(origin, row["context"], row["question"], row.get("id"), row.get("answers"),
                                   row.get("title"))
    else:
        # malformed input, not a policy: it stops the run unless data.on_invalid is skip
        yield Problem("invalid_row", origin, None, f"neither a SQuAD question row nor a document with paragraphs "
                      f"(fields: {sorted(row)})")


ADAPTERS = [
    HfAdapter("coig_cqia", "m-a-p/COIG-CQIA", COIG_CQIA_SUBSETS, "zh", "single", "assistant", "assistant_like",
              "instruction", "CC BY-NC-SA 4.0 (see the dataset card)", coig_cqia, CoigCqiaRow),
    # HC3-Chinese and DuReader-robust hold loading scripts, which datasets >= 4 no longer runs: read the hub's
    # own parquet conversion of them
    HfAdapter("hc3_zh", "Hello-SimpleAI/HC3-Chinese", "all", "zh", "single", "qa", "longform_qa",
              "question", "CC BY-SA 4.0", hc3_zh, Hc3Row, revision="refs/convert/parquet"),
    HfAdapter("oasst2", "OpenAssistant/oasst2", None, "zh", "multi", "dialogue", "open_chat",
              "tree", "Apache-2.0", oasst2, Oasst2Row),
    HfAdapter("cmrc2018", "hfl/cmrc2018", None, "zh", "single", "qa", "qa_search",
              "paragraph", "CC BY-SA 4.0", squad_zh, SquadZhRow, json_field="data"),
    # the original Traditional Chinese SQuAD-format files (one row per article; splits train, dev, test)
    HfAdapter("drcd", "voidful/DRCD", None, "zh", "single", "qa", "qa_search",
              "paragraph", "CC BY-SA 3.0", squad_zh, SquadZhRow, json_field="data"),
    HfAdapter("dureader", "PaddlePaddle/dureader_robust", "plain_text", "zh", "single", "qa", "qa_search",
              "paragraph", "Apache-2.0", squad_zh, SquadZhRow, json_field="data", revision="refs/convert/parquet"),
]
