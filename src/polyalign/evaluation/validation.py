"""Naturalness during training: a few numbers of the evaluation, computed on sampled val responses at each
validation, so that a run can be watched for drift (and `hdpo.select: val_bng` can keep its most human-like
step). The definitions are the evaluation's (`naturalness.bng`, Len W1 = W1 of the token counts per bucket,
macro = every bucket counts once); only the intervals and the other metrics are left out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from polyalign.buckets.features import compute_features
from polyalign.buckets.references import References, group_rows
from polyalign.evaluation import naturalness
from polyalign.evaluation.suite import LENGTH


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
