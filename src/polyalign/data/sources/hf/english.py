"""English corpora of the paper: Dolly, ELI5, MS MARCO v1.1, SQuAD v2, Natural Questions, CoQA, DailyDialog,
MultiWOZ 2.2. One mapper per dataset from its published row layout to examples."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from polyalign.data.record import Example, Problem
from polyalign.data.sources.hf import HfAdapter, HfRow, Records, as_records, drop, group_key, per_row


class DollyRow(HfRow):
    instruction: str
    response: str
    context: str | None = None


@per_row
def dolly(origin: str, row: dict) -> Iterator[Example | Problem]:
    """databricks-dolly-15k: instruction (+ optional context) -> the human-written response."""
    yield Example(question=row["instruction"], human_answer=row["response"], context=row.get("context") or "",
                  dataset="", group_id=group_key(row["instruction"]), origin=origin,
                  meta={"category": row.get("category")})


def _texts(value) -> list[str]:
    """The non-blank strings of a list field (MS MARCO keeps an empty list as the string "[]" in places)."""
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and v.strip()]


ELI5_PLACEHOLDERS = {"[deleted]", "[removed]"}


class Eli5Answer(HfRow):
    text: str | None = None
    score: float | None = None


class Eli5Row(HfRow):
    q_id: Any
    title: str | None = None
    selftext: str | None = None
    answers: Records[Eli5Answer] | None = None


@per_row
def eli5(origin: str, row: dict) -> Iterator[Example | Problem]:
    """ELI5-Category: the Reddit post (title, body as context) -> its highest-scored answer (first on ties)."""
    every = as_records(row.get("answers"))
    answers = [a for a in every if isinstance(a.get("text"), str) and a["text"].strip()]
    if not answers:
        yield drop("no_answer", origin, "the question has no answer", "answers")
        return
    best = max(answers, key=lambda a: a.get("score") if a.get("score") is not None else float("-inf"))
    selftext = (row.get("selftext") or "").strip()
    yield Example(question=row.get("title") or "", human_answer=best["text"],
                  context="" if selftext in ELI5_PLACEHOLDERS else selftext,
                  dataset="", group_id=group_key(str(row["q_id"])), origin=origin,
                  meta={"q_id": row["q_id"], "score": best.get("score"), "n_answers": len(every),
                        "category": row.get("category")})


MS_MARCO_NO_ANSWER = "No Answer Present."
# MS MARCO holds an empty answer list as the string "[]" in places: any string there is no answer
MsMarcoTexts = Annotated[list[str | None], BeforeValidator(lambda v: [] if isinstance(v, str) else v)]


class MsMarcoPassage(HfRow):
    passage_text: str | None = None
    is_selected: int | None = None


class MsMarcoRow(HfRow):
    query: str
    query_id: Any
    answers: MsMarcoTexts | None = None
    wellFormedAnswers: MsMarcoTexts | None = None
    passages: Records[MsMarcoPassage] | None = None


@per_row
def ms_marco(origin: str, row: dict) -> Iterator[Example | Problem]:
    """MS MARCO v1.1: query -> the first well-formed answer, else the first answer; the passages the annotator
    selected as context. Queries without an answer ("No Answer Present.") are left out."""
    well_formed = _texts(row.get("wellFormedAnswers"))
    plain = [a for a in _texts(row.get("answers")) if a.strip() != MS_MARCO_NO_ANSWER]
    if well_formed:
        answer, source = well_formed[0], "well_formed"
    elif plain:
        answer, source = plain[0], "answers"
    else:
        yield drop("no_answer", origin, "the query has no answer", "answers")
        return
    passages = as_records(row.get("passages"))
    selected = [p["passage_text"] for p in passages if p.get("is_selected") == 1 and p.get("passage_text")]
    yield Example(question=row["query"], human_answer=answer, context="\n\n".join(selected), dataset="",
                  group_id=group_key(str(row["query_id"])), origin=origin,
                  meta={"query_id": row["query_id"], "query_type": row.get("query_type"), "answer_source": source})


class SquadV2Answers(HfRow):
    text: list[str | None] = Field(default_factory=list)


class SquadV2Row(HfRow):
    question: str
    context: str | None = None
    title: str | None = None
    id: str | None = None
    answers: SquadV2Answers | None = None


@per_row
def squad_v2(origin: str, row: dict) -> Iterator[Example | Problem]:
    """SQuAD 2.0: question + paragraph -> the first answer span. An unanswerable question keeps an empty answer
    (marked in meta), which `prepare` drops unless `data.drop_empty_answers` is off."""
    answers = _texts((row.get("answers") or {}).get("text"))
    meta = {"title": row.get("title")}
    if not answers:
        meta["unanswerable"] = True
    yield Example(question=row["question"], human_answer=answers[0] if answers else "",
                  context=row.get("context") or "",
                  dataset="", group_id=group_key(row.get("title") or ""), origin=origin, id=row.get("id"),
                  meta=meta)


class NqSpan(HfRow):
    start_token: int | None = None
    end_token: int | None = None


class NqAnnotation(HfRow):
    long_answer: NqSpan | None = None


class NqToken(HfRow):
    token: str | None = None
    is_html: bool | None = None


class NqDocument(HfRow):
    title: str | None = None
    tokens: Records[NqToken] | None = None


class NqRow(HfRow):
    # the hub's {"text", "tokens"}, or the text itself
    question: Annotated[str, BeforeValidator(lambda v: v.get("text", "") if isinstance(v, dict) else v)]
    annotations: Records[NqAnnotation] | None = None
    document: NqDocument | None = None
    id: Any = None


def _long_answer(annotations) -> dict | None:
    """The first annotated long answer (start_token >= 0) of a Natural Questions row."""
    for ann in as_records(annotations):
        long_answer = ann.get("long_answer") or {}
        if (long_answer.get("start_token") if long_answer.get("start_token") is not None else -1) >= 0:
            return long_answer
    return None


@per_row
def natural_questions(origin: str, row: dict) -> Iterator[Example | Problem]:
    """Natural Questions: the query -> the text of the first annotated long answer (its non-HTML document
    tokens). Questions no annotator found a long answer for are left out."""
    question = row["question"]
    question = question.get("text", "") if isinstance(question, dict) else str(question)
    long_answer = _long_answer(row.get("annotations"))
    if long_answer is None:
        yield drop("no_long_answer", origin, "no annotator marked a long answer", "annotations")
        return
    document = row.get("document") or {}
    tokens = as_records(document.get("tokens"))[long_answer["start_token"]:long_answer["end_token"]]
    answer = " ".join(t["token"] for t in tokens if not t.get("is_html") and t.get("token"))
    yield Example(question=question, human_answer=answer, dataset="", group_id=group_key(question), origin=origin,
                  id=str(row["id"]) if row.get("id") is not None else None, meta={"title": document.get("title")})


class CoqaAnswers(HfRow):
    input_text: list[str] = Field(default_factory=list)


class CoqaRow(HfRow):
    story: str | None = None
    questions: list[str] = Field(default_factory=list)
    answers: CoqaAnswers | None = None


@per_row
def coqa(origin: str, row: dict) -> Iterator[Example | Problem]:
    """CoQA: one example per turn of a story's conversation, the earlier turns as history."""
    questions = list(row.get("questions") or [])
    answers = list((row.get("answers") or {}).get("input_text") or [])
    story = row.get("story") or ""
    group = group_key(story)
    history: list[tuple[str, str]] = []
    for turn, (question, answer) in enumerate(zip(questions, answers)):
        yield Example(question=question, human_answer=answer, context=story, history=list(history), dataset="",
                      group_id=group, origin=f"{origin}#{turn}", track="multi",
                      meta={"source": row.get("source"), "turn": turn})
        history += [("user", question), ("assistant", answer)]


def _at(values, index: int):
    return values[index] if isinstance(values, list) and index < len(values) else None


class DailyDialogRow(HfRow):
    dialog: list[str] = Field(default_factory=list)


@per_row
def daily_dialog(origin: str, row: dict) -> Iterator[Example | Problem]:
    """DailyDialog: speakers alternate, the first as the user; every second utterance answers the one before,
    with all earlier utterances as history."""
    dialog = list(row.get("dialog") or [])
    group = group_key(*dialog)
    for turn in range(1, len(dialog), 2):
        history = [("user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(dialog[:turn - 1])]
        yield Example(question=dialog[turn - 1], human_answer=dialog[turn], history=history, dataset="", group_id=group,
                      origin=f"{origin}#{turn}",
                      meta={"turn": turn, "emotion": _at(row.get("emotion"), turn), "act": _at(row.get("act"), turn)})


MULTIWOZ_ROLES = {0: "user", 1: "assistant", "USER": "user", "SYSTEM": "assistant"}


class MultiwozTurn(HfRow):
    speaker: Literal[0, 1, "USER", "SYSTEM"]
    utterance: str | None = None


class MultiwozRow(HfRow):
    dialogue_id: str
    turns: Records[MultiwozTurn] | None = None


@per_row
def multiwoz22(origin: str, row: dict) -> Iterator[Example | Problem]:
    """MultiWOZ 2.2: every system turn that answers a user turn, the earlier turns as history."""
    turns = as_records(row.get("turns"))
    roles = [MULTIWOZ_ROLES.get(t.get("speaker")) for t in turns]
    dialogue_id = row["dialogue_id"]
    for i in range(1, len(turns)):
        if roles[i] != "assistant" or roles[i - 1] != "user":
            continue
        history = [(role, t.get("utterance") or "") for role, t in zip(roles[:i - 1], turns[:i - 1]) if role]
        yield Example(question=turns[i - 1].get("utterance") or "", human_answer=turns[i].get("utterance") or "",
                      history=history, dataset="", group_id=group_key(dialogue_id), origin=f"{origin}#{i}",
                      id=f"{dialogue_id}/{turns[i].get('turn_id')}",
                      meta={"dialogue_id": dialogue_id, "services": list(row.get("services") or [])})


ADAPTERS = [
    HfAdapter("dolly", "databricks/databricks-dolly-15k", None, "en", "single", "assistant", "assistant_like",
              "instruction", "CC BY-SA 3.0", dolly, DollyRow),
    # these three hub repos hold only a loading script, which datasets >= 4 no longer runs: read the hub's own
    # parquet conversion of them instead
    HfAdapter("eli5", "rexarski/eli5_category", None, "en", "single", "qa", "longform_qa", "question",
              "see the dataset card (Reddit content)", eli5, Eli5Row, revision="refs/convert/parquet"),
    HfAdapter("ms_marco", "microsoft/ms_marco", "v1.1", "en", "single", "qa", "qa_search", "question",
              "MS MARCO terms (non-commercial research)", ms_marco, MsMarcoRow),
    HfAdapter("squad_v2", "rajpurkar/squad_v2", "squad_v2", "en", "single", "qa", "qa_search", "article",
              "CC BY-SA 4.0", squad_v2, SquadV2Row),
    HfAdapter("natural_questions", "google-research-datasets/natural_questions", "default", "en", "single", "qa",
              "qa_search", "question", "CC BY-SA 3.0", natural_questions, NqRow),
    HfAdapter("coqa", "stanfordnlp/coqa", None, "en", "multi", "qa", "qa_search", "story",
              "CC BY-SA 4.0 / MSR-LA / Apache-2.0 by source", coqa, CoqaRow),
    HfAdapter("daily_dialog", "li2017dailydialog/daily_dialog", None, "en", "multi", "dialogue", "open_chat",
              "dialogue", "CC BY-NC-SA 4.0", daily_dialog, DailyDialogRow, revision="refs/convert/parquet"),
    HfAdapter("multiwoz22", "pfb30/multi_woz_v22", "v2.2", "en", "multi", "dialogue", "task_dialogue", "dialogue",
              "MIT", multiwoz22, MultiwozRow, revision="refs/convert/parquet"),
]
