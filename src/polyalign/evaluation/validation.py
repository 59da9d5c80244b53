"""Naturalness during training: a few numbers of the evaluation, computed on sampled val responses at each
validation, so that a run can be watched for drift (and `sft.select` or `hdpo.select: val_bng` can keep its most
human-like step). The definitions are the evaluation's (`naturalness.bng`, Len W1 = W1 of the token counts per bucket,
macro = every bucket counts once); only the intervals and the other metrics are left out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from polyalign.buckets.features import compute_features
from polyalign.buckets.references import References, group_rows
from polyalign.errors import UserError
from polyalign.evaluation import naturalness
from polyalign.evaluation.metrics import LENGTH
from polyalign.generation import generate, prompt_budgets, read_train_answers
from polyalign.modeling.model import model_context
from polyalign.modeling.tokenizer import decode_response


def macro_naturalness(responses: Sequence[str], human: Sequence[str], bucket_ids: Sequence[str], refs: References,
                      cap: float = 3.0) -> dict[str, float]:
    """Macro BNG and Len W1 of the responses against the human answers of the same prompts, and the responses'
    mean length in tokens."""
    gen, hum = compute_features(list(responses)), compute_features(list(human))
    bng, w1 = [], []
    for bucket, index in group_rows(list(bucket_ids)).items():
        ref = refs.buckets[refs.resolve(bucket)]
        bng.append(naturalness.bng(gen[index], hum[index], ref.stats["std"], ref.active, cap))
        w1.append(naturalness.wasserstein_1(gen[index, LENGTH], hum[index, LENGTH]))
    finite = [b for b in bng if np.isfinite(b)]
    return {"bng_macro": float(np.mean(finite)) if finite else float("nan"), "length_w1_macro": float(np.mean(w1)),
            "response_length": float(gen[:, LENGTH].mean())}


def naturalness_probe(params, root: Path, n: int, start: Path, tokenizer, renderer, setting: str):
    """What each validation of a training stage measures on sampled responses: `n` val prompts (a seeded
    subset, the same at every validation), decoded with the `generation` settings and budgets, scored against
    their human answers with the evaluation's definitions. `setting` names the parameter that asked for it (for
    the error message). None with n = 0."""
    if n == 0:
        return None
    buckets = root / params.paths.buckets
    for name in ("val.parquet", "train.parquet"):
        if not (buckets / name).is_file():
            raise UserError(f"{setting}: {buckets / name} not found; the probe samples val responses with the "
                            f"training answers' budgets (run `polyalign bucketize`, or set {setting}: 0)")
    records = pq.read_table(buckets / "val.parquet").to_pylist()
    if len(records) > n:
        records = [records[i] for i in np.sort(np.random.default_rng(params.seed).choice(len(records), n, False))]
    refs = References.load(buckets / "references.json")
    answers, answer_buckets = read_train_answers(buckets / "train.parquet")
    prompts = [renderer.prompt_ids(r) for r in records]
    g = params.generation
    bucket_ids = [r["bucket_id"] for r in records]
    budgets = prompt_budgets(g, tokenizer, answers, answer_buckets, bucket_ids, [len(x) for x in prompts],
                             model_context(start))
    human = [r["human_answer"] for r in records]

    def probe(model) -> dict[str, float]:
        samples = generate(model, tokenizer, prompts, stop_ids=renderer.eot_ids, max_new_tokens=budgets,
                           temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                           repetition_penalty=g.repetition_penalty, batch_size=g.batch_size, seed=params.seed,
                           progress=False)
        texts = [decode_response(tokenizer, s[0].ids, s[0].truncated) for s in samples]
        return macro_naturalness(texts, human, bucket_ids, refs)

    return probe
