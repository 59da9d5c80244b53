"""Benchmark: training-step time of our preference training against TRL's `DPOTrainer` (`bench` extra, trl 1.16),
like for like.

Both sides train the same tiny model (the default scratch model from `init`) on the same pairs (chosen = a human
answer, rejected = another human answer of the same language), tokenised once by our renderer and fed to both in
the same batches (our length-grouped order; TRL reads them with a sequential sampler), so padding, non-pad tokens
and batch shapes are identical; float32 on both; the same gradient checkpointing on both (TRL 1.16's `DPOConfig`
turns it on by default, our preference module does not): every comparison runs once with it off on both sides and
once with it on on both. The runs alternate (ours, TRL, ours, TRL, ...) so that both see the same machine load,
and the whole set is repeated `--repeats` times; reported are medians. Compared:
  dpo-frozen        our DPO with a frozen reference model scored on the fly  vs  TRL DPO (reference on the fly)
  dpo-precomputed   our DPO with reference log-probs from the pairs          vs  TRL DPO, precompute_ref_log_probs
  hdpo-precomputed  our HDPO (critic offset, regulariser, NLL anchor)        vs  TRL DPO, precompute_ref_log_probs
For each: median seconds per optimizer step after warm-up and non-pad tokens per second on each side, and the
ratio ours / TRL (seconds per step). It also times TRL's reference precomputation by its parts (see
`precompute_profile`).

    python benchmarks/preference_step.py [--steps 30] [--repeats 5] [--threads 1] [--out ...preference_step.json]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import torch
from common import ROOT, default_project, write_result

from polyalign.buckets.features import compute_features
from polyalign.buckets.references import References
from polyalign.modeling.model import load_model_dir
from polyalign.modeling.prompts import IGNORE_INDEX, PromptRenderer
from polyalign.modeling.scoring import response_logps
from polyalign.training.preference import PairCollator, PreferenceModule, encode_pair
from polyalign.training.samplers import EpochBatchSampler

WARMUP = 5  # steps left out of every median
BATCH = 8  # pairs per step on both sides: the default hdpo.batch_size


def make_pairs(root: Path, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = pq.read_table(root / "data/buckets/train.parquet").to_pylist()
    rows = [rows[i] for i in rng.permutation(len(rows))[:n]]
    by_lang: dict[str, list[str]] = {}
    for r in rows:
        by_lang.setdefault(r["language"], []).append(r["human_answer"])
    refs = References.load(root / "data/buckets/references.json")
    pairs = []
    for r in rows:
        pool = [a for a in by_lang[r["language"]] if a != r["human_answer"]]
        pairs.append({**r, "chosen": r["human_answer"], "rejected": pool[int(rng.integers(len(pool)))],
                      "weight": 1.0})
    buckets = [p["bucket_id"] for p in pairs]
    d_c = refs.distance(compute_features([p["chosen"] for p in pairs]), buckets)
    d_r = refs.distance(compute_features([p["rejected"] for p in pairs]), buckets)
    for p, c, rj in zip(pairs, d_c, d_r):
        p.update(d_chosen=float(c), d_rejected=float(rj))
    return pairs


def fixed_batches(pairs: list[dict], batch: int, steps: int, seed: int) -> list[list[int]]:
    """The first `steps` full batches of our training order (shuffled, grouped by length): both sides get these."""
    lengths = [max(len(p["chosen_input_ids"]), len(p["rejected_input_ids"])) for p in pairs]
    batches = [b.tolist() for b in EpochBatchSampler(lengths, batch, seed=seed).global_batches(0) if len(b) == batch]
    if len(batches) < steps:
        raise SystemExit(f"--pairs gives {len(batches)} full batches, fewer than --steps {steps}")
    return batches[:steps]


def trl_row(pair: dict) -> dict:
    """Our token ids of a pair in TRL's tokenised form (prompt, chosen and rejected completion ids)."""
    n_prompt = sum(1 for label in pair["chosen_labels"] if label == IGNORE_INDEX)
    assert pair["rejected_input_ids"][:n_prompt] == pair["chosen_input_ids"][:n_prompt]
    return {"prompt_ids": pair["chosen_input_ids"][:n_prompt], "chosen_ids": pair["chosen_input_ids"][n_prompt:],
            "rejected_ids": pair["rejected_input_ids"][n_prompt:]}


class Steps:
    """Per optimizer step: wall seconds, non-pad tokens and padded shape of its batch."""

    def __init__(self):
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.shapes: list[tuple[int, int]] = []
        self._start = 0.0

    def batch(self, attention_mask: torch.Tensor) -> None:
        self.tokens.append(int(attention_mask.sum()))
        self.shapes.append(tuple(attention_mask.shape))

    def begin(self) -> None:
        self._start = time.perf_counter()

    def end(self) -> None:
        self.seconds.append(time.perf_counter() - self._start)

    def summary(self, checkpointing: bool, dtype: torch.dtype, **extra) -> dict:
        seconds, tokens = self.seconds[WARMUP:], self.tokens[WARMUP:]
        # medians of each step's time and of each step's non-pad tokens / time: robust to a busy machine
        return {"s_per_step": statistics.median(seconds),
                "tokens_per_s": statistics.median(n / t for n, t in zip(tokens, seconds)),
                "tokens": self.tokens, "shapes": self.shapes, "checkpointing": checkpointing, "dtype": str(dtype),
                **extra}


def whole_sequence_mask(batch: dict) -> torch.Tensor:
    """The attention mask of our batch's chosen and rejected sequences as whole right-padded sequences (TRL's
    layout), also where the batch shares its prompts (`modeling/shared_prompt.py`): the same tokens and shape."""
    mask = batch["pair_attention_mask"]
    if "prompt_attention_mask" not in batch:
        return mask
    prompt = batch["prompt_attention_mask"].sum(dim=1)[torch.arange(len(mask)) % len(batch["prompt_attention_mask"])]
    lengths = prompt + mask.sum(dim=1)
    return (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long()


class LightningSteps(L.Callback):
    def __init__(self, steps: Steps):
        self.steps = steps

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.steps.batch(whole_sequence_mask(batch))
        self.steps.begin()

    def on_train_batch_end(self, *args):
        self.steps.end()


class CheckpointedPreferenceModule(PreferenceModule):
    """Our preference module with the policy's gradient checkpointing on, as TRL's `DPOConfig` has by default."""

    def configure_model(self) -> None:
        super().configure_model()
        self.model.gradient_checkpointing_enable()


def ours(params, model_dir: Path, pairs: list[dict], batches: list[list[int]], variant: str, reference: str,
         checkpointing: bool) -> dict:
    h = params.hdpo.model_copy(update={"batch_size": len(batches[0]),
                                       "optim": params.hdpo.optim.model_copy(update={"max_steps": len(batches)})})
    v = params.hdpo.variants[variant].model_copy(update={"reference": reference})
    _, tokenizer = load_model_dir(model_dir)
    collate = PairCollator(tokenizer.pad_token_id, {b: i for i, b in enumerate(sorted({p["bucket_id"] for p in pairs}))},
                           uniform=v.weighting == "uniform")
    cls = CheckpointedPreferenceModule if checkpointing else PreferenceModule
    module = cls(str(model_dir), h, v, sorted(collate.bucket_index), len(batches))
    steps = Steps()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[LightningSteps(steps)],
                        gradient_clip_val=h.optim.gradient_clip_val, limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(module, torch.utils.data.DataLoader(pairs, batch_sampler=batches, collate_fn=collate))
    return steps.summary(module.model.is_gradient_checkpointing, module.model.dtype)


def trl_trainer(model_dir: Path, rows: list[dict], steps: Steps | None, *, checkpointing: bool, precompute: bool,
                max_length: int, out: str):
    """TRL's `DPOTrainer` on our token ids, in the given row order, with the same settings as our module."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Trainer(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset  # already tokenised by our renderer: no chat-template re-tokenisation

        def training_step(self, model, inputs, *args, **kwargs):
            steps.batch(inputs["attention_mask"])
            return super().training_step(model, inputs, *args, **kwargs)

    class Timer(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            steps.begin()

        def on_step_end(self, *args, **kwargs):
            steps.end()

    model, tokenizer = load_model_dir(model_dir)
    args = DPOConfig(output_dir=out, per_device_train_batch_size=BATCH, max_steps=len(rows) // BATCH, use_cpu=True,
                     bf16=False, gradient_checkpointing=checkpointing, train_sampling_strategy="sequential",
                     report_to=[], logging_steps=10**6, save_strategy="no", max_length=max_length, beta=0.1,
                     learning_rate=5e-4, precompute_ref_log_probs=precompute, dataloader_num_workers=0,
                     disable_tqdm=True, seed=0)
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                   callbacks=[Timer()] if steps is not None else [])


def trl_dpo(model_dir: Path, rows: list[dict], checkpointing: bool, precompute: bool, max_length: int) -> dict:
    steps = Steps()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = trl_trainer(model_dir, rows, steps, checkpointing=checkpointing, precompute=precompute,
                              max_length=max_length, out=out)
        init_s = time.perf_counter() - start  # with precompute_ref_log_probs: TRL's whole precomputation
        trainer.train()
    # HF's Trainer turns checkpointing on in `train`; the flag on the model says what ran
    return steps.summary(trainer.model.is_gradient_checkpointing, trainer.model.dtype, init_s=init_s)


def padding_fraction(batches: list[dict]) -> float:
    return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel()
                                                                        for b in batches)


def timed(fn, batches) -> float:
    start = time.perf_counter()
    for b in batches:
        fn(b)
    return time.perf_counter() - start


def precompute_profile(model_dir: Path, pairs: list[dict], batches: list[list[int]], max_length: int,
                       pad_id: int) -> dict:
    """Where TRL's reference precomputation spends its time: its own loop (collate, then `compute_ref_log_probs`),
    split into the backbone forward and TRL's fused LM head, against our reference scoring of the same batches."""
    from trl.trainer.utils import add_fused_lm_head

    rows = [trl_row(pairs[i]) for b in batches for i in b]
    random_rows = [trl_row(p) for p in pairs[: len(rows)]]  # dataset order, as TRL reads a non-sorted dataset
    with tempfile.TemporaryDirectory() as out:
        trainer = trl_trainer(model_dir, rows, None, checkpointing=False, precompute=False, max_length=max_length,
                              out=out)
    model = trainer.model.eval()
    collated = [trainer.data_collator(rows[i: i + BATCH]) for i in range(0, len(rows), BATCH)]
    shuffled = [trainer.data_collator(random_rows[i: i + BATCH]) for i in range(0, len(random_rows), BATCH)]
    light, _ = load_model_dir(model_dir)
    add_fused_lm_head(light, outputs=("log_probs",))  # the head without the statistics TRL logs for the policy
    light.eval()
    examples = []
    for b in batches:
        examples += [{"input_ids": pairs[i]["chosen_input_ids"], "labels": pairs[i]["chosen_labels"]} for i in b]
        examples += [{"input_ids": pairs[i]["rejected_input_ids"], "labels": pairs[i]["rejected_labels"]} for i in b]

    def reference(m):
        return lambda batch: trainer.compute_ref_log_probs(m, batch)

    with torch.no_grad():
        collate_s = timed(trainer.data_collator, [rows[i: i + BATCH] for i in range(0, len(rows), BATCH)])
        trl_s = timed(reference(model), collated)
        backbone_s = timed(lambda b: model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]),
                           collated)
        light_s = timed(reference(light), collated)
        shuffled_s = timed(reference(model), shuffled)
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count())  # torch's default, which the earlier version of this benchmark kept
        default_threads_s = timed(reference(model), shuffled)
        torch.set_num_threads(threads)
        start = time.perf_counter()
        response_logps(model, examples, pad_id, batch_size=2 * len(batches[0]))
        ours_s = time.perf_counter() - start
        profile = cProfile.Profile()
        profile.enable()
        timed(reference(model), collated)
        profile.disable()
    n = len(collated)
    stats = pstats.Stats(profile)
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]
    return {
        "batches": n, "batch_size_pairs": len(batches[0]),
        "trl_batches_per_s": n / (trl_s + collate_s), "trl_loop_s": trl_s + collate_s, "collate_s": collate_s,
        "backbone_forward_s": backbone_s, "fused_lm_head_s": trl_s - backbone_s,
        "trl_head_log_probs_only_batches_per_s": n / (light_s + collate_s),
        "trl_dataset_order_batches_per_s": n / (shuffled_s + collate_s),
        "default_threads": os.cpu_count(),
        "trl_dataset_order_default_threads_batches_per_s": n / (default_threads_s + collate_s),
        "padding_fraction_our_order": padding_fraction(collated),
        "padding_fraction_dataset_order": padding_fraction(shuffled),
        "ours_batches_per_s": n / ours_s,
        "cprofile_top_tottime_s": {f"{Path(f).name}:{line}({fn})": round(s[2], 3) for (f, line, fn), s in top},
    }


def explain_precompute(p: dict, threads: int) -> str:
    """Where TRL's reference precomputation spends its time, in words, from the measured parts."""
    return (f"TRL's reference precomputation ran at {p['trl_batches_per_s']:.1f} batches/s ({threads} torch thread, "
            f"our batch order): {p['fused_lm_head_s'] / p['trl_loop_s']:.0%} of it in TRL's fused LM head, which "
            "on a CPU (no Triton) scores every position, prompt and padding included, and, with no separate "
            "reference model, also computes the entropy, mean-logit and top-1 statistics that TRL logs for the "
            f"policy (a head with log-probs only: {p['trl_head_log_probs_only_batches_per_s']:.1f} batches/s); "
            f"the backbone forward {p['backbone_forward_s'] / p['trl_loop_s']:.0%}, collation "
            f"{p['collate_s'] / p['trl_loop_s']:.0%}. In the dataset's own unsorted order "
            f"({p['padding_fraction_dataset_order']:.0%} padding instead of {p['padding_fraction_our_order']:.0%}) "
            f"it runs at {p['trl_dataset_order_batches_per_s']:.1f} batches/s, and with torch's default "
            f"{p['default_threads']} threads too (which the earlier version of this benchmark kept unless "
            f"OMP_NUM_THREADS was set; here on cores shared with other jobs) at {p['trl_dataset_order_default_threads_batches_per_s']:.1f} batches/s. Ours scores "
            f"the same batches at {p['ours_batches_per_s']:.1f} batches/s.")


def run_round(params, model_dir: Path, pairs: list[dict], batches: list[list[int]], checkpointing: bool,
              results: dict) -> None:
    """One repeat at one checkpointing setting: ours and TRL alternate."""
    rows = [trl_row(pairs[i]) for b in batches for i in b]
    max_length = params.prompt.max_tokens
    runs = [("ours-dpo-frozen", lambda: ours(params, model_dir, pairs, batches, "dpo", "frozen", checkpointing)),
            ("trl-dpo", lambda: trl_dpo(model_dir, rows, checkpointing, False, max_length)),
            ("ours-dpo-precomputed",
             lambda: ours(params, model_dir, pairs, batches, "dpo", "precomputed", checkpointing)),
            ("trl-dpo-precomputed", lambda: trl_dpo(model_dir, rows, checkpointing, True, max_length)),
            ("ours-hdpo-precomputed",
             lambda: ours(params, model_dir, pairs, batches, "hdpo", "precomputed", checkpointing))]
    for name, run in runs:
        result = run()
        if result["checkpointing"] != checkpointing or result["dtype"] != "torch.float32":
            raise SystemExit(f"{name}: ran with checkpointing={result['checkpointing']}, {result['dtype']}")
        results.setdefault(name, []).append(result)
        print(f"checkpointing={checkpointing} {name}: {result['s_per_step']:.4f} s/step "
              f"{result['tokens_per_s']:.0f} tokens/s", flush=True)


def summarise(results: dict[str, list[dict]]) -> dict:
    first = next(iter(results.values()))[0]
    for name, repeats in results.items():
        for r in repeats:  # like for like: every run trained on exactly the same padded batches
            if r["tokens"] != first["tokens"] or r["shapes"] != first["shapes"]:
                raise SystemExit(f"{name} saw other batches than {next(iter(results))}")
    sides = {name: {"s_per_step": statistics.median(r["s_per_step"] for r in repeats),
                    "tokens_per_s": statistics.median(r["tokens_per_s"] for r in repeats),
                    "s_per_step_each_repeat": [round(r["s_per_step"], 4) for r in repeats]}
             for name, repeats in results.items()}
    for name, repeats in results.items():
        if "init_s" in repeats[0]:
            sides[name]["trainer_init_s"] = statistics.median(r["init_s"] for r in repeats)

    def ratio(a: str, b: str) -> float:  # median over repeats of the adjacent runs' ratio
        return round(statistics.median(x["s_per_step"] / y["s_per_step"] for x, y in zip(results[a], results[b])), 3)

    ratios = {"dpo_frozen": ratio("ours-dpo-frozen", "trl-dpo"),
              "dpo_precomputed": ratio("ours-dpo-precomputed", "trl-dpo-precomputed"),
              "hdpo_precomputed": ratio("ours-hdpo-precomputed", "trl-dpo-precomputed")}
    return {"sides": {k: {m: round(x, 4) if isinstance(x, float) else x for m, x in v.items()}
                      for k, v in sides.items()}, "ratio_ours_vs_trl": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/preference_step.json")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = default_project(root)
        model_dir = root / "models/base"
        model, tokenizer = load_model_dir(model_dir)
        renderer = PromptRenderer(tokenizer, params.prompt.conditioning, params.prompt.max_prompt_tokens,
                                  params.prompt.max_tokens)
        pairs = make_pairs(root, args.pairs, params.seed)
        for p in pairs:
            p.update(encode_pair(renderer, p))
        batches = fixed_batches(pairs, BATCH, args.steps, params.seed)
        for side in ("chosen", "rejected"):
            logps, _ = response_logps(model, [{"input_ids": p[f"{side}_input_ids"], "labels": p[f"{side}_labels"]}
                                              for p in pairs], tokenizer.pad_token_id)
            for p, lp in zip(pairs, logps):
                p[f"ref_{side}_logp"] = float(lp)
        results = {"off": {}, "on": {}}
        for _ in range(args.repeats):
            for checkpointing in ("off", "on"):
                run_round(params, model_dir, pairs, batches, checkpointing == "on", results[checkpointing])
        profile = precompute_profile(model_dir, pairs, batches, params.prompt.max_tokens, tokenizer.pad_token_id)
    summary = {k: summarise(v) for k, v in results.items()}
    tokens = results["off"]["trl-dpo"][0]["tokens"]
    cells = [a * b for a, b in results["off"]["trl-dpo"][0]["shapes"]]
    write_result(args.out, {
        "steps": args.steps, "warmup_steps_excluded": WARMUP, "batch_size_pairs": BATCH, "pairs": args.pairs,
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "dtype": "float32",
        "data": "our renderer's token ids in the same batches on both sides (length-grouped order, right padding "
                "to the longest sequence of the batch), checked step by step",
        "non_pad_tokens_per_step_mean": round(statistics.mean(tokens), 1),
        "padding_fraction": round(1 - sum(tokens) / sum(cells), 3),
        "gradient_checkpointing_off": summary["off"]["sides"], "gradient_checkpointing_on": summary["on"]["sides"],
        "ratio_ours_vs_trl_checkpointing_off": summary["off"]["ratio_ours_vs_trl"],
        "ratio_ours_vs_trl_checkpointing_on": summary["on"]["ratio_ours_vs_trl"],
        "ratio_as_shipped_ours_off_vs_trl_on": {
            "dpo_frozen": round(summary["off"]["sides"]["ours-dpo-frozen"]["s_per_step"]
                                / summary["on"]["sides"]["trl-dpo"]["s_per_step"], 3),
            "dpo_precomputed": round(summary["off"]["sides"]["ours-dpo-precomputed"]["s_per_step"]
                                     / summary["on"]["sides"]["trl-dpo-precomputed"]["s_per_step"], 3)},
        "ratio_definition": "ours seconds per optimizer step / TRL seconds per step, median over repeats of "
                            "the ratio of adjacent runs (< 1: ours faster)",
        "precompute_profile": {k: round(v, 3) if isinstance(v, float) else v for k, v in profile.items()},
        "precompute_explanation": explain_precompute(profile, torch.get_num_threads()),
    })


if __name__ == "__main__":
    main()
