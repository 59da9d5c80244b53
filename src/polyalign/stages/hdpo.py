"""Stage `hdpo@<variant>`: preference optimisation from the variant's `init` SFT model (`models/sft/<name>`,
default sft@bucket) on `data/pairs/`, whose samples come from `pairs.policy` (default sft@bucket).

With `hdpo.rounds: R` > 1 the stage runs R rounds: round 1 trains on `data/pairs/`; round r >= 2 samples fresh
pairs from the round r-1 policy on a seeded subset of `hdpo.prompts_per_round` train prompts (the `pairs`
settings pick the two sides), takes that policy as its reference, and trains on them. With `hdpo.refit_critic`
the critic is refit first with the policy's samples as "human < model sample" negatives, and scores that round's
pairs. Each round keeps its pairs, model and summary beside its checkpoints, so `--resume` continues mid-round.
The exported model is the last round's, or with `hdpo.select` the round whose selected validation scored best.

Each variant is a base loss of `training/objectives` (`loss`, `beta`, its `reference`) with HDPO's extras on top:
`dpo` (extras 0, uniform weights) is standard sigmoid DPO; `hdpo` adds the critic offset, the distribution
regulariser and the NLL anchor (DESIGN §8); `hdpo_simpo` adds them to reference-free SimPO. Reads params: seed, paths, prompt, trainer, generation,
hdpo (shared keys and `hdpo.variants.<variant>`), the names of sft.variants, logging, and for rounds > 1 pairs,
critic and data.length_bins. Reads `data/pairs/`, the start model, and for the val probe (`hdpo.val_prompts`)
and the rounds `data/buckets/{val,train}.parquet`, `references.json` (and `models/critic/` for the rounds). Writes `models/hdpo/<variant>/` (save_pretrained form; with `hdpo.select`, the selected
validation's weights) and `reports/hdpo/<variant>.json`. A variant that starts from another model than the
sampler gets its reference log-probs recomputed with its own start: the reference of DPO is the model it starts
from. Checkpoints go to `checkpoints/hdpo/<variant>/` for --resume.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoTokenizer

from polyalign.critic.model import Critic
from polyalign.errors import UserError, shown
from polyalign.evaluation.validation import naturalness_probe
from polyalign.generation import prompt_budgets
from polyalign.io import atomic_path, write_json, write_text
from polyalign.log import console
from polyalign.modeling.model import (
    AS_SAVED,
    Loading,
    inference_device,
    load_model_dir,
    model_context,
    model_dir,
)
from polyalign.modeling.prompts import PromptRenderer
from polyalign.modeling.scoring import score_examples, training_precision
from polyalign.params import HdpoVariant, Params
from polyalign.stages.pairs import draw_samples, sampled_pairs
from polyalign.stages.pairs import finish as finish_pairs
from polyalign.training.objectives import base_loss, resolve_reference
from polyalign.training.preference import (
    FINGERPRINT,
    PairCollator,
    PreferenceModule,
    add_kl_examples,
    encode_pair,
    fingerprint_changes,
    pair_dataloader,
    reference_fingerprint,
    reference_logps,
)
from polyalign.training.selection import PROBED
from polyalign.training.trainer import (
    build_trainer,
    check_devices,
    figure,
    finish_loggers,
    fit_and_export,
    identity_changes,
    identity_sha256,
    last_checkpoint,
    prepare_checkpoints,
    run_identity,
    sigterm_stops,
    total_optimizer_steps,
)

REQUIRED = ("question", "chosen", "rejected", "bucket_id", "d_chosen", "d_rejected", "weight", "language",
            "track", "family", "length_bin")


def read_pairs(path: Path, need_ref: bool) -> list[dict]:
    if not path.is_file():
        raise UserError(f"hdpo: {path} not found (run `polyalign pairs` first)")
    table = pq.read_table(path)
    required = REQUIRED + (("ref_chosen_logp", "ref_rejected_logp") if need_ref else ())
    missing = [c for c in required if c not in table.column_names]
    if missing:
        hint = " (reference: precomputed needs pairs.precompute_ref: true)" if "ref_chosen_logp" in missing else ""
        raise UserError(f"hdpo: {path} lacks columns {missing}{hint}")
    if table.num_rows == 0:
        raise UserError(f"hdpo: {path} holds no pair")
    return table.to_pylist()


def check_reference(pairs_dir: Path, start: Path, sampler: Path, renderer: PromptRenderer,
                    how: tuple[Loading, str] = (AS_SAVED, "32-true")) -> bool:
    """Precomputed reference log-probs are only valid for the model, prompt format and precision (`how`: the
    loading and the training precision) they were computed with.
    They are refused when the prompt format or the model that sampled the pairs (`sampler`) changed since
    `pairs` ran. Returns whether they hold for `start`; when a variant starts from another model than the
    sampler (`init: sft@global`), they do not, and the caller recomputes them with `start`."""
    path = pairs_dir / FINGERPRINT
    if not path.is_file():
        raise UserError(f"hdpo: {path} not found, so the precomputed reference log-probs cannot be checked "
                        "(rerun `polyalign pairs`)")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"hdpo: {path} is not valid JSON ({exc}); rerun `polyalign pairs`") from None
    if start != sampler and not fingerprint_changes(stored, reference_fingerprint(sampler, renderer, *how)):
        return False
    changes = fingerprint_changes(stored, reference_fingerprint(start, renderer, *how))
    if changes:
        raise UserError(f"hdpo: the reference log-probs in {pairs_dir} were computed with another model, prompt "
                        f"format or precision than hdpo uses now ({'; '.join(changes)}); rerun `polyalign pairs`, or set "
                        "the variant's reference: frozen")
    return True


def recompute_reference(rows: list[dict], start: Path, renderer: PromptRenderer, params: Params) -> None:
    """Replace the pairs' reference log-probs with those of `start`, the variant's own starting model."""
    model, _ = load_model_dir(start, f"the starting model {start}", Loading.from_params(params))
    model.to(inference_device(params.trainer.accelerator))
    ref_c, ref_r = reference_logps(model, renderer, rows, params.trainer.precision)
    for r, c, rj in zip(rows, ref_c, ref_r):
        r.update(ref_chosen_logp=float(c), ref_rejected_logp=float(rj))


def resolved_variant(params: Params, variant: str) -> HdpoVariant:
    """`hdpo.variants.<variant>` with its reference resolved for its loss (precomputed, or none where the loss is
    reference-free)."""
    if variant not in params.hdpo.variants:
        raise UserError(f"hdpo: no variant {variant!r}; params.yaml defines: {', '.join(params.hdpo.variants)}")
    v = params.hdpo.variants[variant]
    try:
        return v.model_copy(update={"reference": resolve_reference(v.loss, v.reference)})
    except ValueError as exc:
        raise UserError(f"hdpo.variants.{variant}.reference: {exc}") from None


def add_unpaired_reference(train: list[dict], val: list[dict], start: Path, renderer: PromptRenderer,
                           params: Params, precomputed: bool) -> None:
    """An unpaired loss's mismatched prompt-response pairs (KTO's reference point), and with precomputed
    reference log-probs their log-probs under `start`, the reference."""
    add_kl_examples(renderer, train, params.seed)
    add_kl_examples(renderer, val, params.seed + 1)
    if precomputed:
        model, _ = load_model_dir(start, f"the starting model {start}", Loading.from_params(params))
        model.to(inference_device(params.trainer.accelerator))
        examples = [{"input_ids": r["kl_input_ids"], "labels": r["kl_labels"]} for r in train + val]
        with training_precision(model, params.trainer.precision) as scorer:
            logps = score_examples(scorer, examples, renderer.pad_id)
        for row, logp in zip(train + val, logps):
            row["ref_kl_logp"] = float(logp)


def run(params: Params, variant: str, root: Path = Path("."), resume: bool = False,
        resume_anyway: bool = False) -> dict | None:
    """`resume` continues from checkpoints/hdpo/<variant>/last.ckpt; `resume_anyway` (which implies it) even
    from one that other settings or inputs wrote."""
    with sigterm_stops(f"hdpo@{variant}", f"; `polyalign hdpo --variant {variant} --resume` continues from the "
                       "last checkpoint"):
        return _train(params, variant, root, resume or resume_anyway, resume_anyway)


def _train(params: Params, variant: str, root: Path, resume: bool, resume_anyway: bool) -> dict | None:
    h = params.hdpo
    v = resolved_variant(params, variant)
    start = model_dir(v.init, params, root)  # the params name an existing SFT variant (Params._starts)
    if not (start / "config.json").is_file():
        raise UserError(f"hdpo: the SFT model {start} is missing (run `polyalign sft --variant "
                        f"{v.init.removeprefix('sft@')}` first)")
    ckpts = root / params.paths.checkpoints / "hdpo" / variant
    if h.rounds == 1:
        last_checkpoint(root, params, "hdpo", variant, resume)
    elif resume and not any(ckpts.glob("round*")):
        raise UserError(f"hdpo --resume: no checkpoint of any round in {ckpts} to resume from")
    pairs_dir = root / params.paths.data_pairs
    need_ref = v.reference == "precomputed"
    train, val = read_pairs(pairs_dir / "train.parquet", need_ref), read_pairs(pairs_dir / "val.parquet", need_ref)
    check_devices(params.trainer)

    tokenizer = AutoTokenizer.from_pretrained(start)
    renderer = PromptRenderer.from_params(tokenizer, params.prompt)
    if need_ref and not check_reference(pairs_dir, start, model_dir(params.pairs.policy, params, root), renderer,
                                        (Loading.from_params(params), params.trainer.precision)):
        recompute_reference(train + val, start, renderer, params)
        console.print(f"hdpo@{variant}: reference log-probs recomputed with {v.init} (the pairs were sampled "
                      f"from {params.pairs.policy})", highlight=False)
    probe = naturalness_probe(params, root, h.val_prompts, start, tokenizer, renderer, "hdpo.val_prompts")
    inputs = [pairs_dir / "train.parquet", pairs_dir / "val.parquet", start]
    if h.rounds == 1:
        fitted = fit_round(params, variant, v, variant, root, start, train, val, tokenizer, renderer, probe,
                           inputs, resume, resume_anyway, out=root / params.paths.models / "hdpo" / variant)
        if fitted is None:
            return None
        module, summary = fitted
        curve = [(s, loss, acc) for s, loss, acc in module.history["train"]]
        report = {"variant": variant, **v.settings(), "rounds": 1, **summary}
        return write_report(params, root, variant, report, curve)

    # several rounds: what the stage as a whole was run with, recorded in every finished round
    stage_identity = run_identity(params, "hdpo", variant, params.trainer.devices, root, inputs)
    stage_record = {"sha256": identity_sha256(stage_identity), "values": stage_identity}
    if not resume and "LOCAL_RANK" not in os.environ:  # DDP child processes keep what rank 0 set up
        shutil.rmtree(ckpts, ignore_errors=True)
        shutil.rmtree(root / params.paths.logs / "hdpo" / variant, ignore_errors=True)
    summaries, curve, current, critic = [], [], start, None
    for r in range(1, h.rounds + 1):
        done = ckpts / f"round{r}.json"
        if resume and done.is_file():
            summary = json.loads(done.read_text(encoding="utf-8"))
            changes = identity_changes(summary.pop("stage"), stage_identity)
            if changes and not resume_anyway:
                raise UserError(f"hdpo --resume: round {r} in {ckpts} was run with other settings or inputs: "
                                f"{'; '.join(changes)}. Run without --resume to start over, or add --resume-anyway")
        else:
            if r == 1:
                rows, round_val, round_inputs = train, val, inputs
            else:
                if critic is None:
                    critic = Critic.load(root / params.paths.models / "critic")
                rows, sampling = round_pairs(params, root, variant, r, current, tokenizer, renderer, critic, resume,
                                             need_ref)
                round_val = [dict(x) for x in val]
                if need_ref:  # the round's reference is the policy it starts from
                    recompute_reference(round_val, current, renderer, params)
                round_inputs = [ckpts / f"round{r}-pairs.parquet", pairs_dir / "val.parquet", current]
            label = f"{variant}/round{r}"
            fitted = fit_round(params, variant, v, label, root, current, rows, round_val, tokenizer, renderer,
                               probe, round_inputs, resume and (ckpts / f"round{r}" / "last.ckpt").is_file(),
                               resume_anyway, out=ckpts / f"round{r}-model")
            if fitted is None:
                return None
            module, summary = fitted
            summary["train_curve"] = [list(row) for row in module.history["train"]]
            if r > 1:
                summary["sampling"] = sampling
            write_json(done, {**summary, "round": r, "stage": stage_record})
        summaries.append({**summary, "round": r})
        offset = curve[-1][0] if curve else 0  # one step axis across rounds
        curve += [(offset + s, loss, acc) for s, loss, acc in summary["train_curve"]]
        current = ckpts / f"round{r}-model"

    chosen = summaries[-1]
    if h.select != "last":
        finite = [s for s in summaries if math.isfinite(s.get("selected_score", math.nan))]
        chosen = min(finite, key=lambda s: s["selected_score"]) if finite else chosen
    with atomic_path(root / params.paths.models / "hdpo" / variant, directory=True) as tmp:
        shutil.copytree(ckpts / f"round{chosen['round']}-model", tmp, dirs_exist_ok=True)
    report = {"variant": variant, **v.settings(), "rounds": h.rounds, "selected_round": chosen["round"],
              **{k: val_ for k, val_ in chosen.items() if k not in ("train_curve", "round")},
              "steps": sum(s["steps"] for s in summaries),
              "per_round": [{k: val_ for k, val_ in s.items() if k != "train_curve"} for s in summaries]}
    return write_report(params, root, variant, report, curve)


def fit_round(params: Params, variant: str, v: HdpoVariant, label: str, root: Path, start: Path,
              train: list[dict], val: list[dict], tokenizer, renderer: PromptRenderer, probe, inputs: list[Path],
              resume: bool, resume_anyway: bool, out: Path):
    """Train one round of variant `v` (its reference resolved) from `start` on `train` pairs (validated on `val`)
    and export the selected weights to `out`; returns the module and the round's summary, or None in a DDP child
    process. `label` is the variant, or `<variant>/round<r>`: it names the round's checkpoints, logs and W&B run."""
    h = params.hdpo
    # sampled chosen sides (pairs.chosen: nearest_sample | mixed): the NLL anchor scores the human answers apart
    anchor = v.alpha > 0 and any(r.get("chosen_ids") is not None for r in train + val)
    train, val = [{**r, **encode_pair(renderer, r)} for r in train], [{**r, **encode_pair(renderer, r)} for r in val]
    if base_loss(v.loss).NEEDS_UNPAIRED:
        add_unpaired_reference(train, val, start, renderer, params, v.reference == "precomputed")
    buckets = sorted({r["bucket_id"] for r in train + val})
    collate = PairCollator(renderer.pad_id, {b: i for i, b in enumerate(buckets)}, uniform=v.weighting == "uniform",
                           anchor=anchor)
    ckpt = root / params.paths.checkpoints / "hdpo" / label / "last.ckpt"
    trainer = build_trainer(params, root, "hdpo", label, optim=h.optim, val_every_n_steps=0)
    identity = run_identity(params, "hdpo", variant, trainer.world_size, root, inputs)
    # only now, with every input checked, may a fresh run remove the previous run's checkpoints
    resume_from = prepare_checkpoints(trainer, ckpt, root / params.paths.logs / "hdpo" / label, identity,
                                      resume=resume, resume_anyway=resume_anyway, command=f"hdpo --variant {variant}")
    train_loader = pair_dataloader(train, collate, h.batch_size, train=True, seed=params.seed, trainer=trainer)
    val_loader = pair_dataloader(val, collate, h.batch_size, train=False, seed=params.seed, trainer=trainer)
    total_steps = total_optimizer_steps(len(train_loader), h.optim)
    module = PreferenceModule(str(start), h, v, buckets, total_steps, probe=probe, loading=Loading.from_params(params))
    selected = fit_and_export(trainer, module, out, tokenizer, ckpt=ckpt, resume_from=resume_from,
                              lr_key="hdpo.optim.lr", train=train_loader, val=val_loader)
    if selected is None:
        return None
    finish_loggers(trainer)
    history = module.history["train"]
    tail = history[-max(1, len(history) // 10):]
    metrics = module.selection.scores(module.last_val)  # of the weights exported
    summary = {
        "steps": trainer.global_step, "train_pairs": len(train), "val_pairs": len(val),
        "train_loss_last_10pct": sum(x[1] for x in tail) / len(tail),
        "train_reward_accuracy_last_10pct": sum(x[2] for x in tail) / len(tail),
        "val_loss": metrics["loss"], "val_reward_accuracy": metrics["accuracy"],
        "val_reward_accuracy_per_bucket": metrics["per_bucket"],
        # mean val log-probs: below the reference's, the chosen side has lost likelihood (displacement)
        "val_logps_chosen": metrics["logps_chosen"], "val_ref_logps_chosen": metrics["ref_logps_chosen"],
        "val_logps_rejected": metrics["logps_rejected"], "val_ref_logps_rejected": metrics["ref_logps_rejected"],
        "val_reward_margin": metrics["margin"],
        "val_history": [dict(zip(("step", "loss", "reward_accuracy", *PreferenceModule.SUMS, *PROBED), row))
                        for row in module.history["val"]],
        # sampled val responses (hdpo.val_prompts) at the validation of the weights exported, and which it was
        **{f"val_{k}": metrics[k] for k in PROBED}, **selected,
    }
    return module, summary


def round_pairs(params: Params, root: Path, variant: str, r: int, policy: Path, tokenizer,
                renderer: PromptRenderer, critic: Critic, resume: bool, need_ref: bool) -> tuple[list[dict], dict]:
    """Round r's training pairs: `pairs.k` samples of the round r-1 `policy` per prompt of a seeded subset of
    `hdpo.prompts_per_round` train prompts, paired by the `pairs` settings and scored by the critic (refit on
    these samples first with `hdpo.refit_critic`), with the policy's reference log-probs, and what the
    sampling gave (counts, the critic's separation, the refit critic's validation). Kept beside the round's
    checkpoints, so a resumed round trains on the same pairs."""
    path = root / params.paths.checkpoints / "hdpo" / variant / f"round{r}-pairs.parquet"
    info_path = path.with_suffix(".json")
    if resume and path.is_file() and info_path.is_file():
        return pq.read_table(path).to_pylist(), json.loads(info_path.read_text(encoding="utf-8"))
    h = params.hdpo
    records = pq.read_table(root / params.paths.buckets / "train.parquet").to_pylist()
    answers, answer_buckets = [x["human_answer"] for x in records], [x["bucket_id"] for x in records]  # budgets
    n = h.prompts_per_round or len(records)
    if n < len(records):
        pick = np.random.default_rng(params.seed + r).choice(len(records), n, replace=False)
        records = [records[i] for i in np.sort(pick)]
    model, _ = load_model_dir(policy, f"the round {r - 1} policy", Loading.from_params(params))
    model.to(inference_device(params.trainer.accelerator))
    budgets = prompt_budgets(params.generation, tokenizer, answers, answer_buckets,
                             [x["bucket_id"] for x in records], [len(renderer.prompt_ids(x)) for x in records],
                             model_context(policy))
    seed = params.seed + 1000 * r
    flat = draw_samples(records, policy, model, tokenizer, renderer, params, budgets, seed)
    if h.refit_critic:
        from polyalign.stages.fit_critic import fit as fit_critic  # here: scikit-learn only for refits

        fitted = fit_critic(params, root, label=f"hdpo-{variant}-round{r}", extra_samples=[
            {"response": text, "bucket_id": records[i]["bucket_id"], "question": records[i]["question"]}
            for i, _, text in flat if text])
        if fitted is None:
            raise UserError("hdpo.refit_critic runs on one process only (set trainer.devices: 1)")
        critic = fitted[0]
    dropped: Counter = Counter()
    info: dict = {"prompts": len(records)}
    rows, _ = sampled_pairs(records, flat, critic, params, seed, dropped, info)
    if not rows:
        raise UserError(f"hdpo@{variant}: round {r} has no usable pair ({dict(dropped)})")
    finish_pairs(rows, critic, model, renderer, need_ref, params.trainer.precision)
    info.update(pairs=len(rows), dropped=dict(dropped),
                rejected_farther=float(np.mean([p["d_rejected"] > p["d_chosen"] for p in rows])),
                critic_refit=fitted[1] if h.refit_critic else None)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    write_json(info_path, info)
    console.print(f"hdpo@{variant}: round {r}: {len(rows)} pairs sampled from the round {r - 1} policy "
                  f"({dict(dropped) or 'none dropped'})", highlight=False)
    return rows, info


def write_report(params: Params, root: Path, variant: str, report: dict, curve: list[tuple]) -> dict:
    reports = root / params.paths.reports / "hdpo"
    write_text(reports / variant / "train.csv", "step,loss,reward_accuracy\n" +
               "".join(f"{s},{loss:.6f},{acc:.4f}\n" for s, loss, acc in curve))
    write_json(reports / f"{variant}.json", report)
    rounds = f" in {report['rounds']} rounds (round {report['selected_round']} exported)" if report["rounds"] > 1 else ""
    console.print(f"hdpo@{variant}: {report['steps']} steps{rounds}, val loss {figure(report['val_loss'])}, "
                  f"val reward accuracy {figure(report['val_reward_accuracy'])} "
                  f"→ {shown(root / params.paths.models / 'hdpo' / variant)}", highlight=False)
    return report
