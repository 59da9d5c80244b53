"""Stage `fit-critic`: train the bucket-conditioned critic and validate it, or refuse to save a collapsed one.

Reads params: seed, paths, critic, trainer, logging. Reads `data/buckets/{train,val}.parquet` and
`references.json`. Writes `models/critic/` (safetensors weights, encoder state, config, references, checksum
manifest) and `reports/critic.json` (validation: Spearman with the support distance on the held-out features
`critic.heldout_features`, which are neither inputs nor target, so it is not a fit to the critic's own inputs;
AUROC human-vs-corrupted overall, per language and per corruption kind, AUROC own-vs-mismatched bucket (and,
with `use_prompt`, own-vs-other prompt) per language, score mean/std).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from polyalign.buckets.features import compute_features
from polyalign.buckets.references import References
from polyalign.critic.encoders import HFEncoder, NgramEncoder
from polyalign.critic.model import Critic, CriticNet, build_inputs, feature_distance, feature_mask
from polyalign.critic.training import CriticModule, Pairs, build_pairs, pair_loader
from polyalign.errors import UserError, shown
from polyalign.io import atomic_path, write_json
from polyalign.log import console
from polyalign.params import Params
from polyalign.training.trainer import build_trainer, finish_loggers, total_optimizer_steps


def read_split(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"fit-critic: {path} not found (run `polyalign bucketize` first)")
    table = pq.read_table(path)
    missing = {"human_answer", "bucket_id", "language", "question"} - set(table.column_names)
    if missing:
        raise UserError(f"fit-critic: {path} lacks columns {sorted(missing)} (is it a `bucketize` output?)")
    return table.select(["human_answer", "bucket_id", "language", "question"]).to_pylist()


def read_model_samples(path: str, root: Path) -> list[dict]:
    p = Path(path) if Path(path).is_absolute() else root / path
    if not p.is_file():
        raise UserError(f"critic.model_samples: file not found: {path}")
    if p.suffix == ".parquet":
        rows = pq.read_table(p).to_pylist()
    else:
        rows = []
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{p}:{i}: not valid JSON ({exc.msg})") from None
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get("response"), str) or not isinstance(r.get("bucket_id"), str):
            raise UserError(f"{p}:{i}: a model sample needs string fields 'response' and 'bucket_id'")
    return rows


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float | None:
    """AUROC of telling positives (should score higher) from negatives; None without both classes."""
    if len(negatives) == 0 or len(positives) == 0:
        return None
    labels = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    return float(roc_auc_score(labels, np.r_[negatives, positives]))


def spearman(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Spearman's rho; None where it is undefined (no held-out features, or one side constant)."""
    if len(scores) < 2 or np.ptp(scores) == 0 or np.ptp(targets) == 0:
        return None
    return float(spearmanr(scores, targets).statistic)


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def validation_report(pairs: Pairs, scores: np.ndarray, heldout_d: np.ndarray) -> dict:
    """`heldout_d`: the support distance on the held-out features only (the critic never saw them)."""
    rows = pairs.rows
    kinds, langs = np.asarray(rows.kinds), np.asarray(rows.language)
    lo, hi, types = np.asarray(pairs.lo), np.asarray(pairs.hi), np.asarray(pairs.types)
    human = kinds == "human"
    report: dict = {
        "rows": len(kinds),
        "score_mean_human": float(scores[human].mean()),
        "score_std_human": float(scores[human].std()),
        "score_mean_all": float(scores.mean()),
        "score_std_all": float(scores.std()),
        "spearman_heldout_distance": spearman(scores, heldout_d),
        "spearman_heldout_distance_human": spearman(scores[human], heldout_d[human]),
        "skipped_corruptions": pairs.skipped,
    }
    corrupted = types == 0
    report["auroc_human_vs_corrupted"] = auroc(scores[human], scores[hi[corrupted]])
    report["auroc_own_vs_mismatched"] = auroc(scores[lo[types == 1]], scores[hi[types == 1]])
    if (types == 3).any():
        report["auroc_own_vs_other_prompt"] = auroc(scores[lo[types == 3]], scores[hi[types == 3]])
    for lang in sorted(set(langs)):
        in_lang = langs == lang
        report[f"{lang}/auroc_human_vs_corrupted"] = auroc(scores[human & in_lang],
                                                           scores[hi[corrupted & in_lang[hi]]])
        mism = (types == 1) & in_lang[lo]
        report[f"{lang}/auroc_own_vs_mismatched"] = auroc(scores[lo[mism]], scores[hi[mism]])
        if (types == 3).any():
            other = (types == 3) & in_lang[lo]
            report[f"{lang}/auroc_own_vs_other_prompt"] = auroc(scores[lo[other]], scores[hi[other]])
        report[f"{lang}/spearman_heldout_distance"] = spearman(scores[in_lang], heldout_d[in_lang])
        report[f"{lang}/score_std_human"] = float(scores[human & in_lang].std())
        for kind in sorted(set(kinds[hi[corrupted]])):
            of_kind = corrupted & (kinds[hi] == kind) & in_lang[hi]
            report[f"{lang}/auroc_{kind}"] = auroc(scores[human & in_lang], scores[hi[of_kind]])
    return report


def run(params: Params, root: Path = Path(".")) -> dict:
    fitted = fit(params, root)
    if fitted is None:  # a DDP child process
        return {}
    critic, report = fitted
    with atomic_path(root / params.paths.models / "critic", directory=True) as tmp:
        critic.save(tmp)
    write_json(root / params.paths.reports / "critic.json", report)
    figures = {"AUROC human-vs-corrupted": "auroc_human_vs_corrupted", "own-vs-mismatched": "auroc_own_vs_mismatched",
               "own-vs-other prompt": "auroc_own_vs_other_prompt",
               "Spearman with the held-out features' distance": "spearman_heldout_distance"}
    shown_figures = ", ".join(f"{label} {_figure(report[key])}" for label, key in figures.items() if key in report)
    critic_dir = root / params.paths.models / "critic"
    console.print(f"fit-critic: {shown_figures} → {shown(critic_dir)}", highlight=False)
    return report


def fit(params: Params, root: Path, extra_samples: list[dict] | None = None,
        label: str = "default") -> tuple[Critic, dict] | None:
    """Train the critic on the train split (validated on val); `extra_samples` ({response, bucket_id,
    question}) are model samples added to `critic.model_samples` as "human < model sample" pairs (HDPO's
    `refit_critic` passes its policy's samples). `label` names the run's logs. None in a DDP child process."""
    cfg = params.critic
    buckets_dir = root / params.paths.buckets
    refs_path = buckets_dir / "references.json"
    if not refs_path.is_file():
        raise UserError(f"fit-critic: references not found: {refs_path} (run `polyalign bucketize` first)")
    refs = References.load(refs_path)
    train, val = read_split(buckets_dir / "train.parquet"), read_split(buckets_dir / "val.parquet")
    if not train:
        raise UserError(f"fit-critic: the training split {buckets_dir / 'train.parquet'} is empty")
    if not val:
        raise UserError(f"fit-critic: the validation split {buckets_dir / 'val.parquet'} is empty")
    samples = (read_model_samples(cfg.model_samples, root) if cfg.model_samples else []) + (extra_samples or [])
    samples = samples or None

    rng = np.random.default_rng(params.seed)
    pools: dict[str, list[str]] = {}
    for r in train:
        pools.setdefault(r["language"], []).append(r["human_answer"])
    mismatch_pool = sorted({r["bucket_id"] for r in train})
    edges = params.data.length_bins.edges
    data = {"train": build_pairs(train, list(cfg.corruptions), rng, pools, edges, mismatch_pool, samples,
                                 cfg.use_prompt),
            "val": build_pairs(val, list(cfg.corruptions), rng, pools, edges, mismatch_pool, None, cfg.use_prompt)}

    if cfg.encoder == "ngram":
        encoder = NgramEncoder((cfg.ngram_min, cfg.ngram_max), cfg.max_features, cfg.embedding_dim, params.seed)
        encoder.fit([r["human_answer"] for r in train] + [s["response"] for s in samples or []])
    else:
        encoder = HFEncoder(cfg.encoder_path)
    config = {"buckets": sorted(refs.buckets), "use_prompt": cfg.use_prompt, "bucket_dim": cfg.bucket_dim,
              "hidden_size": cfg.hidden_size, "heldout_features": list(cfg.heldout_features)}
    bucket_index = {b: i for i, b in enumerate(config["buckets"])}
    heldout = feature_mask(refs, cfg.heldout_features)
    arrays, heldout_d = {}, {}
    for split, pairs in data.items():
        rows = pairs.rows
        features = compute_features(rows.texts)
        x, b = build_inputs(refs, encoder, bucket_index, cfg.use_prompt, rows.texts, rows.buckets, rows.prompts,
                            features, cfg.heldout_features)
        arrays[split] = (x, b, feature_distance(refs, features, rows.buckets, ~heldout))
        heldout_d[split] = feature_distance(refs, features, rows.buckets, heldout)
    config["in_dim"] = int(arrays["train"][0].shape[1])

    import torch

    torch.manual_seed(params.seed)
    net = CriticNet(config["in_dim"], len(config["buckets"]), cfg.bucket_dim, cfg.hidden_size)
    train_loader = pair_loader(*arrays["train"], data["train"], cfg.batch_size, True, params.seed)
    module = CriticModule(net, cfg, total_optimizer_steps(len(train_loader), cfg.optim))
    trainer = build_trainer(params, root, "critic", label, optim=cfg.optim, val_every_n_steps=0)
    trainer.fit(module, train_loader, pair_loader(*arrays["val"], data["val"], cfg.batch_size, False, params.seed))
    if not trainer.is_global_zero:
        return None

    critic = Critic(net, encoder, refs, config)
    x_val, b_val, _ = arrays["val"]
    scores = critic.score_inputs(x_val, b_val)
    report = {"encoder": cfg.encoder, "seed": params.seed, "train_pairs": len(data["train"].lo),
              "val_pairs": len(data["val"].lo), "heldout_features": list(cfg.heldout_features),
              "model_samples": len(samples or []), **validation_report(data["val"], scores, heldout_d["val"])}
    finish_loggers(trainer)
    if report["score_std_human"] < cfg.min_score_std:
        raise UserError(f"fit-critic: the critic collapsed: the standard deviation of its validation scores on "
                        f"human responses is {report['score_std_human']:.2e} < critic.min_score_std="
                        f"{cfg.min_score_std}; nothing was saved (check the training data for variety)")
    return critic, report
