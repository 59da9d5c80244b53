"""Stage `hdpo@<variant>`: preference optimisation from the variant's `init` SFT model (`models/sft/<name>`,
default sft@bucket) on `data/pairs/`, whose rejected responses were sampled from sft@bucket.

`dpo` (gamma = lam = alpha = 0, uniform weights) is standard sigmoid DPO; `hdpo` adds the critic offset, the
distribution regulariser and the NLL anchor (DESIGN §8). Reads params: seed, paths, prompt, trainer, generation,
hdpo (shared keys and `hdpo.variants.<variant>`), the names of sft.variants, logging. Reads `data/pairs/`, the
start model, and for the val probe (`hdpo.val_prompts`) `data/buckets/{val,train}.parquet` and
`references.json`. Writes `models/hdpo/<variant>/` (save_pretrained form; with `hdpo.select`, the selected
validation's weights) and `reports/hdpo/<variant>.json`. A variant that starts from another model than the
sampler gets its reference log-probs recomputed with its own start: the reference of DPO is the model it starts
from. Checkpoints go to `checkpoints/hdpo/<variant>/` for --resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from transformers import AutoTokenizer

from polyalign.errors import UserError, shown
from polyalign.evaluation.validation import naturalness_probe
from polyalign.io import atomic_path, write_json, write_text
from polyalign.log import console
from polyalign.modeling.model import inference_device, load_model_dir
from polyalign.modeling.prompts import PromptRenderer
from polyalign.params import Params
from polyalign.training.preference import (
    FINGERPRINT,
    SAMPLER,
    PairCollator,
    PreferenceModule,
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
    check_finite,
    figure,
    finish_loggers,
    last_checkpoint,
    prepare_checkpoints,
    run_identity,
    sigterm_stops,
    total_optimizer_steps,
    validate_at_end,
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
        hint = " (hdpo.reference: precomputed needs pairs.precompute_ref: true)" if "ref_chosen_logp" in missing else ""
        raise UserError(f"hdpo: {path} lacks columns {missing}{hint}")
    if table.num_rows == 0:
        raise UserError(f"hdpo: {path} holds no pair")
    return table.to_pylist()


def check_reference(pairs_dir: Path, start: Path, sampler: Path, renderer: PromptRenderer) -> bool:
    """Precomputed reference log-probs are only valid for the model and prompt format they were computed with.
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
    if start != sampler and not fingerprint_changes(stored, reference_fingerprint(sampler, renderer)):
        return False
    changes = fingerprint_changes(stored, reference_fingerprint(start, renderer))
    if changes:
        raise UserError(f"hdpo: the reference log-probs in {pairs_dir} were computed with another model or prompt "
                        f"format than hdpo uses now ({'; '.join(changes)}); rerun `polyalign pairs`, or set "
                        "hdpo.reference: frozen")
    return True


def recompute_reference(rows: list[dict], start: Path, renderer: PromptRenderer, accelerator: str) -> None:
    """Replace the pairs' reference log-probs with those of `start`, the variant's own starting model."""
    model, _ = load_model_dir(start, f"the starting model {start}")
    model.to(inference_device(accelerator))
    ref_c, ref_r = reference_logps(model, renderer, rows)
    for r, c, rj in zip(rows, ref_c, ref_r):
        r.update(ref_chosen_logp=float(c), ref_rejected_logp=float(rj))


def run(params: Params, variant: str, root: Path = Path("."), resume: bool = False,
        resume_anyway: bool = False) -> dict | None:
    """`resume` continues from checkpoints/hdpo/<variant>/last.ckpt; `resume_anyway` (which implies it) even
    from one that other settings or inputs wrote."""
    with sigterm_stops(f"hdpo@{variant}", f"; `polyalign hdpo --variant {variant} --resume` continues from the "
                       "last checkpoint"):
        return _train(params, variant, root, resume or resume_anyway, resume_anyway)


def _train(params: Params, variant: str, root: Path, resume: bool, resume_anyway: bool) -> dict | None:
    h = params.hdpo
    if variant not in h.variants:
        raise UserError(f"hdpo: no variant {variant!r}; params.yaml defines: {', '.join(h.variants)}")
    v = h.variants[variant]
    sft_variant = v.init.removeprefix("sft@")
    if sft_variant not in params.sft.variants:
        raise UserError(f"hdpo.variants.{variant}.init: {v.init!r} names no variant of sft.variants "
                        f"({', '.join(params.sft.variants)})")
    start = root / params.paths.models / "sft" / sft_variant
    if not (start / "config.json").is_file():
        raise UserError(f"hdpo: the SFT model {start} is missing (run `polyalign sft --variant {sft_variant}` "
                        "first)")
    ckpt = last_checkpoint(root, params, "hdpo", variant, resume)
    pairs_dir = root / params.paths.data_pairs
    need_ref = h.reference == "precomputed"
    train, val = read_pairs(pairs_dir / "train.parquet", need_ref), read_pairs(pairs_dir / "val.parquet", need_ref)
    check_devices(params.trainer)

    tokenizer = AutoTokenizer.from_pretrained(start)
    renderer = PromptRenderer(tokenizer, params.prompt.conditioning, params.prompt.max_prompt_tokens,
                              params.prompt.max_tokens)
    if need_ref and not check_reference(pairs_dir, start, root / params.paths.models / SAMPLER, renderer):
        recompute_reference(train + val, start, renderer, params.trainer.accelerator)
        console.print(f"hdpo@{variant}: reference log-probs recomputed with {v.init} (the pairs were sampled "
                      f"from sft@bucket)", highlight=False)
    for rows in (train, val):
        for r in rows:
            r.update(encode_pair(renderer, r))
    buckets = sorted({r["bucket_id"] for r in train + val})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else renderer.eot_ids[0]
    # sampled chosen sides (pairs.chosen: nearest_sample | mixed): the NLL anchor scores the human answers apart
    anchor = v.alpha > 0 and any(r.get("chosen_ids") is not None for r in train + val)
    collate = PairCollator(pad_id, {b: i for i, b in enumerate(buckets)}, uniform=v.weighting == "uniform",
                           anchor=anchor)

    trainer = build_trainer(params, root, "hdpo", variant, max_epochs=h.epochs, max_steps=h.max_steps,
                            accumulate=h.accumulate_grad_batches, clip=h.gradient_clip_val, val_every_n_steps=0,
                            checkpoint_every=h.checkpoint_every_n_steps)
    inputs = [pairs_dir / "train.parquet", pairs_dir / "val.parquet", start]
    identity = run_identity(params, "hdpo", variant, trainer.world_size, root, inputs)
    # only now, with every input checked, may a fresh run remove the previous run's checkpoints
    resume_from = prepare_checkpoints(trainer, ckpt, root / params.paths.logs / "hdpo" / variant, identity,
                                      resume=resume, resume_anyway=resume_anyway, command=f"hdpo --variant {variant}")
    train_loader = pair_dataloader(train, collate, h.batch_size, train=True, seed=params.seed, trainer=trainer)
    val_loader = pair_dataloader(val, collate, h.batch_size, train=False, seed=params.seed, trainer=trainer)
    total_steps = total_optimizer_steps(len(train_loader), h.epochs, h.accumulate_grad_batches, h.max_steps)
    module = PreferenceModule(str(start), h, v, buckets, total_steps,
                              probe=naturalness_probe(params, root, h.val_prompts, start, tokenizer, renderer,
                                                    "hdpo.val_prompts"))
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume_from, weights_only=True)
    trainer.save_checkpoint(ckpt, weights_only=False)  # the final state, as sft keeps it
    validate_at_end(trainer, module, dataloaders=val_loader)
    if not trainer.is_global_zero:
        return None
    check_finite(f"hdpo@{variant}", module.history, module.last_val, "hdpo.lr")

    selected = module.selection.apply(module.model, trainer.global_step)
    with atomic_path(root / params.paths.models / "hdpo" / variant, directory=True) as tmp:
        module.export(tmp, tokenizer)
    reports = root / params.paths.reports / "hdpo"
    history = module.history["train"]
    write_text(reports / variant / "train.csv", "step,loss,reward_accuracy\n" +
               "".join(f"{s},{loss:.6f},{acc:.4f}\n" for s, loss, acc in history))
    tail = history[-max(1, len(history) // 10):]
    metrics = module.selection.scores(module.last_val)  # of the weights exported
    report = {
        "variant": variant, **v.model_dump(), "beta": h.beta, "reference": h.reference, "loss_type": h.loss_type,
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
    write_json(reports / f"{variant}.json", report)
    finish_loggers(trainer)
    console.print(f"hdpo@{variant}: {report['steps']} steps, val loss {figure(report['val_loss'])}, "
                  f"val reward accuracy {figure(report['val_reward_accuracy'])} "
                  f"→ {shown(root / params.paths.models / 'hdpo' / variant)}", highlight=False)
    return report
