"""Stage `pairs`: preference pairs for HDPO from `pairs.k` samples per prompt of the `pairs.policy` SFT model
(default sft@bucket), or the user's own pairs (`pairs.preference_file`). Chosen = the human answer, the sample nearest to human support (on-policy)
or either (`pairs.chosen`); rejected = another sample (`first`, `farthest` by critic distance or `random`). Empty
sides, samples identical to the human answer and (with `pairs.min_gap`) pairs whose critic-distance gap is too
small are dropped and counted.

Each prompt's token budget comes from `generation` (by default 1.5 x the q90 length of its bucket's training
answers). A sample its budget cut is kept with `rejected_truncated` (and scored without an end-of-turn token)
or dropped (`pairs.truncated`); samples are stored and scored as the token ids the model generated.

Reads params: seed, paths, prompt, generation, pairs, trainer.accelerator. Writes `data/pairs/{train,val}.parquet`
(prompt fields, human_answer, chosen, chosen_ids and chosen_truncated for a sampled chosen side, rejected,
rejected_ids, rejected_truncated, bucket, critic distances d_chosen/d_rejected,
bucket-balanced weight normalised over the file, and with `precompute_ref` the reference model's summed log-probs
of both sides), `data/pairs/best_of_k.parquet` (per train prompt, its sample nearest to human support: the data of
rejection-sampling SFT, `sft.variants.<name>.data: best_of_k`), `data/pairs/fingerprint.json` (what the
log-probs were computed with) and `reports/pairs.json`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from polyalign.critic.model import Critic
from polyalign.data.record import Problem
from polyalign.data.sources.base import RowModel, Track, Turn, resolve, validated_rows
from polyalign.errors import UserError, shown
from polyalign.generation import Sample, prompt_budgets, read_train_answers
from polyalign.io import atomic_path, write_json
from polyalign.log import console
from polyalign.modeling.model import Loading, inference_device, load_model_dir, model_dir
from polyalign.modeling.prompts import PromptRenderer
from polyalign.modeling.tokenizer import decode_response
from polyalign.params import Family, Language, Params
from polyalign.sampling import sample_responses
from polyalign.training.data import BEST_OF_K
from polyalign.training.preference import FINGERPRINT, reference_fingerprint, reference_logps

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


class PreferenceRow(RowModel):
    """A row of `pairs.preference_file`, checked as a data source's rows are (other fields are ignored)."""

    question: str
    chosen: str
    rejected: str
    language: Language
    track: Track
    family: Family
    length_bin: str
    context: str = ""
    dialogue_history: list[Turn] = Field(default_factory=list)
    id: str | None = None


def read_preference_file(path: str, root: Path) -> list[dict]:
    """The user's own pairs: JSON Lines rows with `chosen`, `rejected`, `question` and the bucket labels. The
    first line that does not fit `PreferenceRow` stops the run, naming the file, line and field."""
    p = resolve(path, root, "pairs.preference_file")
    rows = []
    for item in validated_rows(p, PreferenceRow, lines=True):
        if isinstance(item, Problem):
            raise UserError(item.describe())
        origin, row = item
        labels = {"language": row.language, "track": row.track, "family": row.family, "length_bin": row.length_bin}
        rows.append({
            "id": row.id or f"{p.stem}/{origin.rsplit(':', 1)[1]}", "question": row.question,
            "context": row.context, "dialogue_history": [turn.model_dump() for turn in row.dialogue_history],
            "chosen": row.chosen, "rejected": row.rejected, **labels, "bucket_id": "|".join(labels.values()),
        })
    return rows


def draw_samples(records: list[dict], folder: Path, model, tokenizer, renderer: PromptRenderer, params: Params,
                 budgets: list[int], seed: int) -> list[tuple[int, Sample, str]]:
    """`pairs.k` samples per prompt of the model (loaded from `folder`) with the `generation` settings, as
    (record index, sample, decoded text). Samples keep the token ids the model generated and their `truncated`
    flag (cut by the budget, no end of turn)."""
    prompts = [renderer.prompt_ids(r) for r in records]
    samples = sample_responses(params.generation, params, folder, model, tokenizer, prompts,
                               stop_ids=renderer.eot_ids, budgets=budgets, num_samples=params.pairs.k, seed=seed,
                               description="sampling responses")
    return [(i, s, decode_response(tokenizer, s.ids, s.truncated)) for i, outs in enumerate(samples) for s in outs]


def sampled_pairs(records: list[dict], flat: list[tuple[int, Sample, str]], critic: Critic, params: Params,
                  seed: int, dropped: Counter, report: dict) -> tuple[list[dict], list[dict]]:
    """Pair up the samples of `draw_samples` (`pick_pair`: chosen = the human answer or the nearest sample,
    rejected = another sample). Also returns, per prompt with a usable sample, the sample nearest to human
    support (`best_of_k`: what rejection-sampling SFT trains on).

    `pairs.truncated: drop` leaves truncated samples out. `report` gets the share of truncated samples and the
    critic's AUROC of human answers vs the samples, overall and per language: how well the critic separates
    exactly the responses HDPO will be asked to move away from."""
    cfg = params.pairs
    report["samples"] = len(flat)
    report["samples_truncated"] = sum(s.truncated for _, s, _ in flat)
    sample_d = critic.score_responses([t for _, _, t in flat], [records[i] for i, _, _ in flat])
    human_d = critic.score_responses([r["human_answer"] for r in records], records)
    report.update(critic_separation(records, human_d, [(i, d) for (i, _, t), d in zip(flat, sample_d) if t]))

    candidates: list[list[tuple[float, str, Sample]]] = [[] for _ in records]
    for (i, sample, text), d in zip(flat, sample_d):
        if not text:
            dropped["empty_sample"] += 1
        elif text == records[i]["human_answer"].strip():
            dropped["sample_equals_human"] += 1
        elif sample.truncated and cfg.truncated == "drop":
            dropped["truncated_sample"] += 1
        else:
            candidates[i].append((float(d), text, sample))
    rng = np.random.default_rng(seed)
    pairs, best = [], []
    for record, options, d_human in zip(records, candidates, human_d):
        if options:
            d_best, text, sample = min(options, key=lambda o: o[0])
            best.append({**{k: record[k] for k in PROMPT_FIELDS}, "human_answer": record["human_answer"],
                         "balance_bucket": record["balance_bucket"], "bucket_weight": record["bucket_weight"],
                         "sample": text, "sample_ids": sample.ids, "sample_truncated": sample.truncated,
                         "d_sample": d_best, "d_human": float(d_human)})
        human = (float(d_human), record["human_answer"], None) if record["human_answer"].strip() else None
        picked = pick_pair(human, options, cfg.chosen, cfg.rejected, cfg.human_share, cfg.min_gap, rng)
        if isinstance(picked, str):
            dropped[picked] += 1
            continue
        (d_c, chosen, c_sample), (d_r, rejected, r_sample) = picked
        pairs.append({**{k: record[k] for k in PROMPT_FIELDS}, "human_answer": record["human_answer"],
                      "chosen": chosen, "chosen_ids": None if c_sample is None else c_sample.ids,
                      "chosen_truncated": c_sample is not None and c_sample.truncated,
                      "rejected": rejected, "rejected_ids": r_sample.ids, "rejected_truncated": r_sample.truncated,
                      "bucket_weight": record["bucket_weight"], "d_chosen": d_c, "d_rejected": d_r})
    return pairs, best


Candidate = tuple[float, str, "Sample | None"]  # critic distance, text, the sample (None: the human answer)


def pick_pair(human: Candidate | None, samples: list[Candidate], chosen: str, rejected: str, human_share: float,
              min_gap: float | None, rng: np.random.Generator) -> tuple[Candidate, Candidate] | str:
    """The (chosen, rejected) pair of one prompt, or why it has none.

    chosen: `human` the human answer; `nearest_sample` the sample nearest to human support (smallest critic
    distance: an on-policy chosen side); `mixed` the human answer with probability `human_share`, else the nearest
    sample. rejected, among the samples left: `farthest` (largest distance), `first` (the first drawn) or `random`.
    A pair whose distance gap d_rejected - d_chosen is below `min_gap` is dropped."""
    if chosen == "mixed":
        chosen = "human" if rng.random() < human_share else "nearest_sample"
    if chosen == "human":
        if human is None:
            return "empty_chosen"
        pick, rest = human, samples
    else:
        if not samples:
            return "no_usable_sample"
        nearest = min(range(len(samples)), key=lambda i: samples[i][0])
        pick, rest = samples[nearest], samples[:nearest] + samples[nearest + 1:]
    if not rest:
        return "no_usable_sample" if chosen == "human" else "one_usable_sample"
    if rejected == "farthest":
        other = max(rest, key=lambda o: o[0])
    elif rejected == "random":
        other = rest[int(rng.integers(len(rest)))]
    else:
        other = rest[0]
    if min_gap is not None and other[0] - pick[0] < min_gap:
        return "small_gap"
    return pick, other


def critic_separation(records: list[dict], human_d: np.ndarray, samples: list[tuple[int, float]]) -> dict:
    """AUROC of the critic telling the model's samples (should score farther) from the human answers of the same
    prompts, overall and per language; None where one side is missing."""
    from sklearn.metrics import roc_auc_score  # here, not at the top: hdpo imports this module and skips it

    out = {}
    languages = sorted({r["language"] for r in records})
    for lang in [None, *languages]:
        humans = [d for r, d in zip(records, human_d) if lang in (None, r["language"])]
        model = [d for i, d in samples if lang in (None, records[i]["language"])]
        key = "critic_auroc_human_vs_sample" + (f"/{lang}" if lang else "")
        out[key] = (float(roc_auc_score(np.r_[np.zeros(len(humans)), np.ones(len(model))], np.r_[humans, model]))
                    if humans and model else None)
    return out


def finish(pairs: list[dict], critic: Critic, model, renderer: PromptRenderer, precompute: bool,
           precision: str = "32-true") -> None:
    """Critic distances (sampled pairs already have them), weights normalised over the file, and optionally
    reference log-probs, in the training `precision`."""
    buckets = [p["bucket_id"] for p in pairs]
    if "d_chosen" not in pairs[0]:  # the user's own pairs
        d_c = critic.score_responses([p["chosen"] for p in pairs], pairs)
        d_r = critic.score_responses([p["rejected"] for p in pairs], pairs)
        for p, c, r in zip(pairs, d_c, d_r):
            p.update(d_chosen=float(c), d_rejected=float(r))
    # bucketize's `bucket_weight` of each pair's prompt, normalised over the file into the pair weight `weight`
    raw = np.array([p.get("bucket_weight") or np.nan for p in pairs], dtype=np.float64)
    if np.isnan(raw).any():  # user data or unseen buckets: balance over the file's own buckets
        counts = Counter(buckets)
        raw = np.array([len(pairs) / (len(counts) * counts[b]) for b in buckets])
    weights = raw / raw.mean()
    if precompute:
        ref_c, ref_r = reference_logps(model, renderer, pairs, precision)
    for i, p in enumerate(pairs):
        p.pop("bucket_weight", None)
        p["weight"] = float(weights[i])
        if precompute:
            p.update(ref_chosen_logp=float(ref_c[i]), ref_rejected_logp=float(ref_r[i]))


def model_context(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def run(params: Params, root: Path = Path(".")) -> dict:
    cfg = params.pairs
    models = root / params.paths.models
    start = model_dir(params.pairs.policy, params, root)
    loading = Loading.from_params(params)
    model, tokenizer = load_model_dir(start, f"the sampling policy {params.pairs.policy} (pairs.policy)", loading)
    model.to(inference_device(params.trainer.accelerator))
    critic = Critic.load(models / "critic")
    renderer = PromptRenderer.from_params(tokenizer, params.prompt)
    report: dict = {"source": "file" if cfg.preference_file else "samples", "k": cfg.k, "chosen": cfg.chosen,
                    "rejected": cfg.rejected, "min_gap": cfg.min_gap, "truncated": cfg.truncated,
                    "budget": params.generation.budget}
    out: dict[str, list[dict]] = {}
    user_rows = read_preference_file(cfg.preference_file, root) if cfg.preference_file else None
    if user_rows is None:
        train_answers, train_buckets = read_train_answers(root / params.paths.buckets / "train.parquet")
    for offset, split in enumerate(("train", "val")):
        dropped: Counter = Counter()
        if user_rows is not None:
            is_val = np.random.default_rng(params.seed).random(len(user_rows)) < 0.1  # a 10% validation share
            if len(user_rows) > 1 and not is_val.any():
                is_val[-1] = True
            pairs = [dict(r) for r, v in zip(user_rows, is_val) if v == (split == "val")]
            for p in pairs:
                p.update(human_answer=p["chosen"], chosen_ids=None, chosen_truncated=False, rejected_ids=None,
                         rejected_truncated=False)
        else:
            records = read_records(root / params.paths.buckets / f"{split}.parquet", cfg.max_prompts, params.seed)
            budgets = prompt_budgets(params.generation, tokenizer, train_answers, train_buckets,
                                     [r["bucket_id"] for r in records],
                                     [len(renderer.prompt_ids(r)) for r in records], model_context(model))
            sample_report: dict = {}
            flat = draw_samples(records, start, model, tokenizer, renderer, params, budgets, params.seed + offset)
            pairs, best = sampled_pairs(records, flat, critic, params, params.seed + offset, dropped, sample_report)
            if split == "train":
                out[BEST_OF_K.removesuffix(".parquet")] = best
                report["best_of_k_prompts"] = len(best)
                report["best_of_k_d_sample"] = float(np.mean([b["d_sample"] for b in best])) if best else None
                report["best_of_k_d_human"] = float(np.mean([b["d_human"] for b in best])) if best else None
            report.update({f"{split}_{k}": v for k, v in sample_report.items()})
            report[f"{split}_budget_mean"] = float(np.mean(budgets)) if budgets else 0.0
        if not pairs:
            raise UserError(f"pairs: no usable {split} pair ({dict(dropped)})")
        finish(pairs, critic, model, renderer, cfg.precompute_ref, params.trainer.precision)
        out[split] = pairs
        report[f"{split}_pairs"] = len(pairs)
        report[f"{split}_dropped"] = dict(dropped)
        report[f"{split}_rejected_truncated"] = float(np.mean([p["rejected_truncated"] for p in pairs]))
        report[f"{split}_chosen_sampled"] = float(np.mean([p["chosen_ids"] is not None for p in pairs]))
        report[f"{split}_dist_gap"] = float(np.mean([p["d_rejected"] - p["d_chosen"] for p in pairs]))
        report[f"{split}_rejected_farther"] = float(np.mean([p["d_rejected"] > p["d_chosen"] for p in pairs]))
    with atomic_path(root / params.paths.data_pairs, directory=True) as tmp:
        for split, pairs in out.items():
            pq.write_table(pa.Table.from_pylist(pairs), tmp / f"{split}.parquet")
        if cfg.precompute_ref:
            write_json(tmp / FINGERPRINT, reference_fingerprint(start, renderer, loading, params.trainer.precision))
    write_json(root / params.paths.reports / "pairs.json", report)
    auroc = report.get("val_critic_auroc_human_vs_sample")
    console.print(f"pairs: {report['train_pairs']} train / {report['val_pairs']} val pairs; the rejected side is "
                  f"farther from human support in {report['train_rejected_farther']:.0%} of train pairs"
                  + (f"; critic AUROC human vs sample (val) {auroc:.3f}" if auroc is not None else "")
                  + f" → {shown(root / params.paths.data_pairs)}", highlight=False)
    return report
