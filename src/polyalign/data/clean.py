"""From an adapter's example to a clean record: normalised text, language, track, length bin, split."""

from __future__ import annotations

import hashlib
import json

from polyalign.data.record import Example
from polyalign.params import DataParams
from polyalign.text import count_tokens, detect_language, length_bin, normalise

SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}  # a duplicate is kept in the first of these


def hashed_split(seed: int, group_id: str, ratios, pool: tuple[str, ...] | None = None) -> str:
    """Deterministic split of a whole group (conversation, document) from a hash of its key and the seed,
    among the splits of `pool` (default: all three) in proportion to their ratios."""
    digest = hashlib.blake2b(f"{seed}\x1f{group_id}".encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    splits = [s for s in ("train", "val", "test") if pool is None or s in pool]
    weights = [getattr(ratios, s) for s in splits]
    total = sum(weights)
    if total <= 0:  # every split of the pool has ratio 0: nothing to share out, use the pool's first split
        return splits[0]
    edge = 0.0
    for split, weight in zip(splits, weights):
        edge += weight / total
        if u < edge:
            return split
    return splits[-1]


def to_record(ex: Example, data: DataParams, seed: int) -> dict | str:
    """The record for `ex`, or the reason it is dropped."""
    question, answer, context = normalise(ex.question), normalise(ex.answer), normalise(ex.context)
    history = [{"role": role, "text": normalise(text)} for role, text in ex.history]
    if not question and not context:
        return "empty_question"
    if not answer and data.drop_empty_answers:
        return "empty_answer"
    # the language of the exchange, not of the answer alone: a Chinese question answered "Nexon" is still zh
    language = ex.language or detect_language(question + "\n" + answer, data.zh_threshold) or detect_language(
        context + "\n" + "\n".join(t["text"] for t in history), data.zh_threshold)
    if language is None:
        return "language_undetected"
    if language not in ("en", "zh"):
        return "unsupported_language"
    n_tokens = count_tokens(answer)
    return {
        "id": ex.id or f"{ex.dataset}/{ex.origin.rsplit('/', 1)[-1]}",
        "dataset": ex.dataset,
        "split": ex.split or hashed_split(seed, ex.group_id, data.split_ratios, ex.split_pool),
        "language": language,
        "track": ex.track or ("multi" if history else "single"),
        "family": ex.family or "assistant",
        "style_bucket": ex.style_bucket,
        "length_bin": length_bin(n_tokens, data.length_bins.edges_for(language), data.length_bins.names),
        "n_tokens": n_tokens,
        "question": question,
        "context": context,
        "dialogue_history": history,
        "human_answer": answer,
        "group_id": ex.group_id,
        "meta": json.dumps(ex.meta, ensure_ascii=False, sort_keys=True, default=str),
    }


def dedup_key(record: dict) -> bytes:
    history = [(t["role"], t["text"]) for t in record["dialogue_history"]]
    key = (record["language"], record["track"], record["family"], record["question"], record["context"],
           record["human_answer"], history)
    return hashlib.blake2b(json.dumps(key, ensure_ascii=False).encode("utf-8"), digest_size=16).digest()


def deduplicate(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Exact dedup: of identical records the one in the highest-priority split (test > val > train) stays,
    the first one within a split. Returns (kept, dropped) in input order."""
    best: dict[bytes, int] = {}
    for i, rec in enumerate(records):
        key = dedup_key(rec)
        j = best.get(key)
        if j is None or SPLIT_PRIORITY[rec["split"]] < SPLIT_PRIORITY[records[j]["split"]]:
            best[key] = i
    keep = set(best.values())
    kept = [r for i, r in enumerate(records) if i in keep]
    dropped = [r for i, r in enumerate(records) if i not in keep]
    return kept, dropped
