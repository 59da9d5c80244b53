"""From an adapter's example to a clean record: normalised text, language, track, length bin, split."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from polyalign.data.record import Example
from polyalign.params import DataParams
from polyalign.text import count_tokens, detect_language, length_bin, normalise

SPLITS = ("train", "val", "test")
SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}  # a duplicate is kept in the first of these


def group_hash(seed: int, group_id: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the group key."""
    digest = hashlib.blake2b(f"{seed}\x1f{group_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def hashed_split(seed: int, group_id: str, ratios, pool: tuple[str, ...] | None = None) -> str:
    """Deterministic split of a whole group (conversation, document) from a hash of its key and the seed,
    among the splits of `pool` (default: all three) in proportion to their ratios. `prepare` refines this
    per-group choice across the whole corpus with `stratified_split`."""
    u = group_hash(seed, group_id)
    splits = [s for s in SPLITS if pool is None or s in pool]
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


def slice_of(record: dict) -> str:
    """The evaluation slice of a record: language/track, e.g. zh/multi."""
    return f"{record['language']}/{record['track']}"


def split_counts(n: int, ratios, pool: tuple[str, ...]) -> dict[str, int]:
    """How many of n groups each split of `pool` gets: the ratios rounded by largest remainder, then at least
    one group for every split with a positive ratio when there are enough groups for that."""
    splits = [s for s in SPLITS if s in pool]
    weights = [getattr(ratios, s) for s in splits]
    total = sum(weights)
    if total <= 0:
        return {s: n if i == 0 else 0 for i, s in enumerate(splits)}
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(splits)), key=lambda j: (counts[j] - exact[j], j))
    for j in by_remainder[: n - sum(counts)]:
        counts[j] += 1
    positive = [j for j, w in enumerate(weights) if w > 0]
    if n >= len(positive):
        for j in positive:
            if counts[j] == 0:  # take one group from the split that has the most
                donor = max(range(len(splits)), key=lambda k: (counts[k], -k))
                counts[donor] -= 1
                counts[j] += 1
    return dict(zip(splits, counts))


def stratified_split(records: list[dict], pools: list[tuple[str, ...] | None], seed: int, ratios) -> None:
    """Re-split, in place, the records that have no official split (their pool is not None) so that every
    slice with enough groups reaches every split of its pool.

    Groups (conversations, documents) are stratified by (pool, slice): a group belongs to the slice that holds
    most of its records (a tie goes to the slice name that sorts first). Within a stratum the groups are
    ordered by a seeded hash of their key and cut into consecutive runs sized by `split_counts`, so one
    group stays in one split, a stratum of n >= 3 groups (2 for a two-split pool) has a group in each split,
    and the result depends only on the seed and the set of groups."""
    groups: dict[tuple, list[int]] = {}
    for i, pool in enumerate(pools):
        if pool is not None:  # records of one source split share a pool
            groups.setdefault((pool, records[i]["group_id"]), []).append(i)
    strata: dict[tuple, list[str]] = {}
    for (pool, gid), rows in groups.items():
        slices = Counter(slice_of(records[i]) for i in rows)
        home = min(slices, key=lambda s: (-slices[s], s))
        strata.setdefault((pool, home), []).append(gid)
    for (pool, _), gids in strata.items():
        gids.sort(key=lambda g: (group_hash(seed, g), g))
        sequence = [s for s, k in split_counts(len(gids), ratios, pool).items() for _ in range(k)]
        for gid, split in zip(gids, sequence):
            for i in groups[(pool, gid)]:
                records[i]["split"] = split


def to_record(ex: Example, data: DataParams) -> dict | str:
    """The record for `ex`, or the reason it is dropped."""
    question, answer, context = normalise(ex.question), normalise(ex.human_answer), normalise(ex.context)
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
        "split": ex.split or hashed_split(data.split_seed, ex.group_id, data.split_ratios, ex.split_pool),
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
