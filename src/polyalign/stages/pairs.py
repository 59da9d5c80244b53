"""Stage `pairs`: preference pairs for HDPO. Chosen = the human answer; rejected = one of `pairs.k` samples of
`models/sft/bucket` (`first`, or `farthest` by critic distance), or the user's own pairs
(`pairs.preference_file`). Empty sides and samples identical to the human answer are dropped and counted.

Reads params: seed, paths, prompt, generation, pairs. Writes `data/pairs/{train,val}.parquet` (prompt fields,
chosen, rejected, bucket, critic distances d_chosen/d_rejected, bucket-balanced weight normalised over the
file, and with `precompute_ref` the reference model's summed log-probs of both sides) and `reports/pairs.json`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyalign.critic.model import Critic
from polyalign.errors import UserError
from polyalign.generation import generate
from polyalign.io import atomic_path, write_json
from polyalign.log import console
from polyalign.modeling.model import load_model_dir
from polyalign.modeling.prompts import PromptRenderer
from polyalign.params import Params
from polyalign.training.preference import score_examples

PROMPT_FIELDS = ("id", "language", "track", "family", "length_bin", "question", "context", "dialogue_history",
                 "bucket_id")


def read_records(path: Path, limit: int, seed: int) -> list[dict]:
    if not path.is_file():
        raise UserError(f"pairs: {path} not found (run `polyalign bucketize` first)")
    rows = pq.read_table(path).to_pylist()
    if limit and len(rows) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
        rows = [rows[i] for i in keep]
    return rows


def read_preference_file(path: str, root: Path) -> list[dict]:
    """The user's own pairs: JSONL rows with `chosen`, `rejected`, `question` and the bucket labels."""
    p = Path(path) if Path(path).is_absolute() else root / path
    if not p.is_file():
        raise UserError(f"pairs.preference_file: file not found: {path}")
    rows = []
    required = {"question": str, "chosen": str, "rejected": str, "language": str, "track": str, "family": str,
                "length_bin": str}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
        for field, kind in required.items():
            if not isinstance(row.get(field), kind):
                raise UserError(f"{p}:{lineno}: field '{field}' must be a string")
        row.setdefault("context", "")
        row.setdefault("dialogue_history", [])
        row.setdefault("id", f"{p.stem}/{lineno}")
        row["bucket_id"] = "|".join(row[k] for k in ("language", "track", "family", "length_bin"))
        rows.append(row)
    return rows


def sampled_pairs(records: list[dict], model, tokenizer, renderer: PromptRenderer, critic: Critic,
                  params: Params, seed: int, dropped: Counter) -> list[dict]:
    g, cfg = params.generation, params.pairs
    prompts = [renderer.prompt_ids(r) for r in records]
    samples = generate(model, tokenizer, prompts, stop_ids=renderer.eot_ids, max_new_tokens=g.max_new_tokens,
                       temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                       repetition_penalty=g.repetition_penalty, num_samples=cfg.k, batch_size=g.batch_size,
                       seed=seed, progress=params.logging.progress, description="sampling rejected responses")
    pairs = []
    for record, outs in zip(records, samples):
        candidates = []
        for ids in outs:
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            if not text:
                dropped["empty_sample"] += 1
            elif text == record["human_answer"].strip():
                dropped["sample_equals_human"] += 1
            else:
                candidates.append(text)
        if not record["human_answer"].strip():
            dropped["empty_chosen"] += 1
        elif not candidates:
            dropped["no_usable_sample"] += 1
        else:
            pairs.append({**{k: record[k] for k in PROMPT_FIELDS}, "chosen": record["human_answer"],
                          "candidates": candidates, "balance_weight": record["bucket_weight"]})
    if cfg.rejected == "farthest" and pairs:
        flat = [(i, c) for i, p in enumerate(pairs) for c in p["candidates"]]
        d = critic.distance([c for _, c in flat], [pairs[i]["bucket_id"] for i, _ in flat])
        best: dict[int, tuple[float, str]] = {}
        for (i, c), dist in zip(flat, d):
            if i not in best or dist > best[i][0]:
                best[i] = (float(dist), c)
        for i, p in enumerate(pairs):
            p["rejected"] = best[i][1]
    else:
        for p in pairs:
            p["rejected"] = p["candidates"][0]
    for p in pairs:
        del p["candidates"]
    return pairs


def finish(pairs: list[dict], critic: Critic, model, tokenizer, renderer: PromptRenderer, precompute: bool) -> None:
    """Critic distances, weights normalised over the file, and optionally reference log-probs."""
    buckets = [p["bucket_id"] for p in pairs]
    d_c = critic.distance([p["chosen"] for p in pairs], buckets)
    d_r = critic.distance([p["rejected"] for p in pairs], buckets)
    raw = np.array([p.get("balance_weight") or np.nan for p in pairs], dtype=np.float64)
    if np.isnan(raw).any():  # user data or unseen buckets: balance over the file's own buckets
        counts = Counter(buckets)
        raw = np.array([len(pairs) / (len(counts) * counts[b]) for b in buckets])
    weights = raw / raw.mean()
    if precompute:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else renderer.eot_ids[0]
        ref_c = score_examples(model, [renderer.example({**p, "human_answer": p["chosen"]}) for p in pairs], pad_id)
        ref_r = score_examples(model, [renderer.example({**p, "human_answer": p["rejected"]}) for p in pairs],
                               pad_id)
    for i, p in enumerate(pairs):
        p.pop("balance_weight", None)
        p.update(d_chosen=float(d_c[i]), d_rejected=float(d_r[i]), weight=float(weights[i]))
        if precompute:
            p.update(ref_chosen_logp=float(ref_c[i]), ref_rejected_logp=float(ref_r[i]))


def run(params: Params, root: Path = Path(".")) -> dict:
    cfg = params.pairs
    models = root / params.paths.models
    model, tokenizer = load_model_dir(models / "sft" / "bucket", "the bucket-aware SFT model (sft@bucket)")
    critic = Critic.load(models / "critic")
    renderer = PromptRenderer(tokenizer, params.prompt.conditioning, params.prompt.max_prompt_tokens,
                              params.prompt.max_tokens)
    report: dict = {"source": "file" if cfg.preference_file else "samples", "k": cfg.k, "rejected": cfg.rejected}
    out: dict[str, list[dict]] = {}
    user_rows = read_preference_file(cfg.preference_file, root) if cfg.preference_file else None
    for offset, split in enumerate(("train", "val")):
        dropped: Counter = Counter()
        if user_rows is not None:
            is_val = np.random.default_rng(params.seed).random(len(user_rows)) < 0.1  # a 10% validation share
            if len(user_rows) > 1 and not is_val.any():
                is_val[-1] = True
            pairs = [dict(r) for r, v in zip(user_rows, is_val) if v == (split == "val")]
        else:
            records = read_records(root / params.paths.buckets / f"{split}.parquet", cfg.max_prompts, params.seed)
            pairs = sampled_pairs(records, model, tokenizer, renderer, critic, params, params.seed + offset, dropped)
        if not pairs:
            raise UserError(f"pairs: no usable {split} pair ({dict(dropped)})")
        finish(pairs, critic, model, tokenizer, renderer, cfg.precompute_ref)
        out[split] = pairs
        report[f"{split}_pairs"] = len(pairs)
        report[f"{split}_dropped"] = dict(dropped)
        report[f"{split}_dist_gap"] = float(np.mean([p["d_rejected"] - p["d_chosen"] for p in pairs]))
        report[f"{split}_rejected_farther"] = float(np.mean([p["d_rejected"] > p["d_chosen"] for p in pairs]))
    with atomic_path(root / params.paths.data_pairs, directory=True) as tmp:
        for split, pairs in out.items():
            pq.write_table(pa.Table.from_pylist(pairs), tmp / f"{split}.parquet")
    write_json(root / params.paths.reports / "pairs.json", report)
    console.print(f"pairs: {report['train_pairs']} train / {report['val_pairs']} val pairs; the rejected side is "
                  f"farther from human support in {report['train_rejected_farther']:.0%} of train pairs")
    return report
