"""Stage `evaluate`: every method of `evaluate.methods` answers the same prompts of `evaluate.split` (test by
default; val for tuning) with the same renderer and the same decoding, and is scored against the human answers
(DESIGN §9). `test_ids` in the JSON files are the ids of the evaluated split's rows, whichever it is.

Reads params: seed, paths, prompt, evaluate, trainer.accelerator (and sft/hdpo variant names). Reads the evaluated
split, the train split's answers (budgets) and references (data/buckets), the critic (models/critic, a diagnostic
only) and each method's model. Writes
`reports/eval/<method>.json` (every number, intervals, bootstrap replicates, per-example responses),
`reports/eval/human.json`, the report (see `polyalign.evaluation.report`) and a W&B run.

Each prompt gets the token budget of its bucket (`evaluate.generation.budget`, see `polyalign.generation`); every
response records its budget and whether the budget cut it. Models run on the device `trainer.accelerator` selects.
Generations and the human answers' NLL are cached in `cache/eval/<method>/<key>.json`, keyed by the model's
files, the prompts, the budgets, the decoding settings and the seed: changing a metric setting reuses them,
changing the model or the decoding regenerates; a damaged cache entry is a miss. Prompts are rendered from the prompt fields only, so neither the human answer
nor (unless `prompt.conditioning: oracle_length`, which the report labels) its length bin can reach a model.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from transformers import AutoTokenizer

from polyalign.buckets.references import References
from polyalign.critic.encoders import NgramEncoder
from polyalign.critic.model import Critic
from polyalign.errors import UserError, shown
from polyalign.evaluation import report as report_builder
from polyalign.evaluation.suite import (
    EvalRows,
    Side,
    human_metrics,
    human_values,
    mauve_on,
    summarise,
    weighted_coverage,
)
from polyalign.evaluation.summary import aggregate
from polyalign.evaluation.utility import score_utility
from polyalign.generation import prompt_budgets, read_train_answers
from polyalign.io import atomic_path, json_safe, write_json
from polyalign.log import console
from polyalign.modeling.model import (
    Loading,
    folder_digest,
    inference_device,
    load_model_dir,
    model_context,
    model_dir,
)
from polyalign.modeling.prompts import PromptRenderer
from polyalign.modeling.scoring import response_logps
from polyalign.modeling.tokenizer import decode_response
from polyalign.params import Params
from polyalign.sampling import sample_responses

PROMPT_FIELDS = ("id", "language", "track", "family", "question", "context", "dialogue_history")
TDM_ENCODER_TEXTS = 20_000  # train texts the latent space of the turn-coupling metric is fit on


def prompt_record(record: dict, conditioning: str) -> dict:
    """The fields a prompt may see: never the human answer; its length bin only under oracle conditioning."""
    fields = PROMPT_FIELDS + (("length_bin",) if conditioning == "oracle_length" else ())
    return {k: record[k] for k in fields}


def _sha(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def read_split(params: Params, root: Path) -> list[dict]:
    """The records of `evaluate.split` (test or val) in id order, or the subset `max_prompts` asks for: the ids
    with the smallest hashes, so every method and every seed of a sweep is scored on the same rows."""
    split = params.evaluate.split
    path = root / params.paths.buckets / f"{split}.parquet"
    if not path.is_file():
        raise UserError(f"evaluate: {path} not found (run `polyalign bucketize` first)")
    rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: r["id"])
    if not rows:
        raise UserError(f"evaluate: {path} holds no {split} record")
    limit = params.evaluate.max_prompts
    if limit and len(rows) > limit:
        by_hash = sorted(rows, key=lambda r: (hashlib.blake2b(r["id"].encode(), digest_size=8).digest(), r["id"]))
        kept = {r["id"] for r in by_hash[:limit]}
        rows = [r for r in rows if r["id"] in kept]
    return rows


def tdm_encoder(params: Params, root: Path) -> NgramEncoder:
    """The latent space of the turn-coupling dynamics: character n-gram TF-IDF + SVD fit on training questions
    and answers (a seeded sample), never on the test split."""
    table = pq.read_table(root / params.paths.buckets / "train.parquet", columns=["question", "human_answer"])
    texts = table.column("question").to_pylist() + table.column("human_answer").to_pylist()
    if len(texts) > TDM_ENCODER_TEXTS:
        keep = np.random.default_rng(params.seed).choice(len(texts), size=TDM_ENCODER_TEXTS, replace=False)
        texts = [texts[i] for i in np.sort(keep)]
    return NgramEncoder((1, 3), 20_000, 64, params.seed).fit(texts)


def method_prompts(folder: Path, tokenizer, records: list[dict], train: dict[str, list[str]],
                   params: Params) -> tuple[PromptRenderer, list[dict], list[list[int]], list[int]]:
    """What a method's model (in `folder`) is asked: the renderer, the records as a prompt may see them, their
    prompt ids and each prompt's budget of new tokens under `evaluate.generation`."""
    renderer = PromptRenderer.from_params(tokenizer, params.prompt)
    visible = [prompt_record(r, params.prompt.conditioning) for r in records]
    prompts = [renderer.prompt_ids(r) for r in visible]
    budgets = prompt_budgets(params.evaluate.generation, tokenizer, train["answers"], train["buckets"],
                             [r["bucket_id"] for r in records], [len(x) for x in prompts], model_context(folder))
    return renderer, visible, prompts, budgets


def generations(method: str, records: list[dict], train: dict[str, list[str]], params: Params, root: Path) -> dict:
    """The method's responses to the test prompts and its NLL of the human answers, from the cache when the
    model files, prompts, budgets, decoding and seed are unchanged."""
    folder = model_dir(method, params, root)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # enough for the cache key; the weights only on a miss
    p, g = params.prompt, params.evaluate.generation
    renderer, visible, prompts, budgets = method_prompts(folder, tokenizer, records, train, params)
    answers = [r["human_answer"] for r in records]
    loading = Loading.from_params(params)
    key = _sha({"model": folder_digest(folder), "prompts": prompts, "answers": answers, "decoding": g.model_dump(),
                "budgets": budgets, "seed": params.seed, "max_tokens": p.max_tokens,
                "loading": [loading.dtype, loading.attn_implementation]})
    cache = root / params.paths.cache / "eval" / method / f"{key[:24]}.json"
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            cached = {}  # a damaged cache entry is a miss
        if not isinstance(cached, dict):
            cached = {}
        if cached.get("key") == key:
            return {**cached, "cache": "hit", "model_dir": folder, "timing_s": {"generation": 0.0, "nll": 0.0}}
    model, tokenizer = load_model_dir(folder, f"the model of {method}", loading)
    model.to(inference_device(params.trainer.accelerator))
    start = time.perf_counter()
    samples = sample_responses(g, params, folder, model, tokenizer, prompts, stop_ids=renderer.eot_ids,
                               budgets=budgets, num_samples=1, seed=params.seed,
                               description=f"evaluate: generating ({method})")
    generated_s = time.perf_counter() - start
    responses = [decode_response(tokenizer, s[0].ids, s[0].truncated) for s in samples]
    start = time.perf_counter()
    examples = [renderer.example(r, response=a) for r, a in zip(visible, answers)]
    logps, counts = response_logps(model, examples, renderer.pad_id, batch_size=g.batch_size)
    nll_s = time.perf_counter() - start
    result = {"key": key, "responses": responses, "generated_tokens": sum(len(s[0].ids) for s in samples),
              "truncated": [s[0].truncated for s in samples], "budgets": budgets,
              "nll_sum": (-logps).tolist(), "nll_tokens": counts.tolist()}
    write_json(cache, result)
    return {**result, "cache": "miss", "model_dir": folder, "timing_s": {"generation": generated_s, "nll": nll_s}}


def score_method(method: str, order: int, records: list[dict], train: dict[str, list[str]], test: EvalRows,
                 human: Side, encoder, critic: Critic, params: Params, root: Path) -> dict:
    out = generations(method, records, train, params, root)
    start = time.perf_counter()
    responses = out["responses"]
    gen = Side.build(responses, test, encoder)
    scores = score_utility(responses, human.texts, test.languages)
    scores.update(nll_sum=np.asarray(out["nll_sum"], dtype=np.float64),
                  nll_tokens=np.asarray(out["nll_tokens"], dtype=np.float64),
                  critic_distance=critic.score_responses(responses, records, progress=False),
                  truncated=np.asarray(out["truncated"], dtype=bool))
    cfg = params.evaluate
    summary = summarise(test, gen, human, scores, params)
    metrics_s = time.perf_counter() - start
    lengths = gen.features[:, 0]
    return {
        "method": method, "order": order, "model_dir": str(out["model_dir"].relative_to(root)),
        "conditioning": params.prompt.conditioning, "oracle": params.prompt.conditioning == "oracle_length",
        "decoding": cfg.generation.model_dump(), "seed": params.seed, "split": cfg.split, "n": len(records),
        "test_ids": test.ids,
        "cache": out["cache"], "generated_tokens": out["generated_tokens"],
        "truncated_responses": int(np.sum(out["truncated"])),
        "timing_s": {**out["timing_s"], "metrics": metrics_s},
        "counts": {"empty_predictions": int(scores["empty_prediction"].sum()),
                   "empty_references": int(scores["empty_reference"].sum()),
                   "abstentions": int((scores["empty_prediction"] & scores["empty_reference"]).sum())},
        "mauve": "computed" if mauve_on(cfg) else (
            "off (evaluate.mauve: off)" if cfg.mauve == "off" else
            "not computed: install the optional GPL-3.0 extra with `pip install -e '.[mauve]'`"),
        **summary,
        "examples": [{"id": i, "bucket_id": b, "response": r, "n_tokens": int(n), "f1": f, "rouge_l": rl,
                      "critic_distance": float(d), "budget": int(budget), "truncated": bool(cut)}
                     for i, b, r, n, f, rl, d, budget, cut in zip(
                         test.ids, test.bucket_ids, responses, lengths, scores["f1"], scores["rouge_l"],
                         scores["critic_distance"], out["budgets"], out["truncated"])],
    }


def check_methods(params: Params) -> None:
    """Every sft@/hdpo@ method must name a variant of its stage (checked here, not when params load, so that a
    user who renames the SFT variants can still run `sft` before updating evaluate.methods)."""
    for method in params.evaluate.methods:
        stage, _, variant = method.partition("@")
        known = {"sft": params.sft.variants, "hdpo": params.hdpo.variants}.get(stage)
        if known is not None and variant not in known:
            raise UserError(f"evaluate.methods: {method!r} names no variant of {stage}.variants ({', '.join(known)})")


def run(params: Params, root: Path = Path(".")) -> dict:
    cfg = params.evaluate
    check_methods(params)
    missing = [m for m in cfg.methods if not (model_dir(m, params, root) / "config.json").is_file()]
    if missing:
        raise UserError(f"evaluate: no model for {', '.join(missing)} (run `dvc repro` or the stages that write "
                        f"{', '.join(str(model_dir(m, params, root)) for m in missing)})")
    records = read_split(params, root)
    refs = References.load(root / params.paths.buckets / "references.json")
    critic = Critic.load(root / params.paths.models / "critic")
    encoder = tdm_encoder(params, root)
    test = EvalRows(records, refs, encoder, cfg.hcr_core)
    human = Side.build([r["human_answer"] for r in records], test, encoder)
    per_bucket = human_values(test, human, params)
    groups = aggregate(per_bucket, test.counts(), human_metrics())
    groups["overall"]["hcr_per_feature"] = weighted_coverage(per_bucket)
    human_report = {
        "split": cfg.split, "n": len(records), "test_ids": test.ids, "buckets": per_bucket, "groups": groups,
        "examples": [{"id": i, "bucket_id": b, "n_tokens": int(n)}
                     for i, b, n in zip(test.ids, test.bucket_ids, human.features[:, 0])],
    }
    answers, buckets = read_train_answers(root / params.paths.buckets / "train.parquet")
    train = {"answers": answers, "buckets": buckets}
    results = [score_method(m, k, records, train, test, human, encoder, critic, params, root)
               for k, m in enumerate(cfg.methods)]
    reports = root / params.paths.reports
    with atomic_path(reports / "eval", directory=True) as tmp:
        write_json(tmp / "human.json", json_safe(human_report))
        for result in results:
            write_json(tmp / f"{result['method']}.json", json_safe(result))
        built = report_builder.build(tmp, reports, cfg.compare)
    report_builder.log_to_wandb(params, root, built)
    seconds = sum(sum(r["timing_s"].values()) for r in results)
    bng = ", ".join(f"{r['method']} {report_builder.value(r, 'overall', 'bng'):.3f}" for r in results)
    console.print(f"evaluate: {len(cfg.methods)} methods on {len(records)} {cfg.split} prompts in {seconds:.0f} s; "
                  f"BNG {bng} → {shown(reports / 'eval' / 'report.md')}", highlight=False)
    return built
