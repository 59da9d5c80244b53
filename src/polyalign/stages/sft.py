"""Stage `sft@<variant>`: Bucket-Aware SFT (or the global-SFT baseline) from `models/base/`.

Reads params: seed, paths, prompt, trainer, sft (the shared keys and `sft.variants.<variant>`), logging.
Writes `models/sft/<variant>/` (save_pretrained form), `reports/sft/<variant>.json` and the loss curves
`reports/sft/<variant>/{train,val}_loss.csv`. Checkpoints go to `checkpoints/sft/<variant>/` for --resume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from polyalign.errors import UserError, shown
from polyalign.io import atomic_path, write_json, write_text
from polyalign.log import console
from polyalign.modeling.model import load_tokenizer
from polyalign.params import Params
from polyalign.training.data import SFTDataModule
from polyalign.training.sft import SFTModule
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


def variant_params(params: Params, variant: str):
    if variant not in params.sft.variants:
        raise UserError(f"sft: no variant {variant!r}; params.yaml defines: {', '.join(params.sft.variants)}")
    return params.sft.variants[variant]


def run(params: Params, variant: str, resume: bool = False, root: Path = Path("."),
        resume_anyway: bool = False) -> dict | None:
    """`resume_anyway` resumes from a checkpoint that other settings or inputs wrote (it implies `resume`)."""
    with sigterm_stops(f"sft@{variant}", f"; `polyalign sft --variant {variant} --resume` continues from the "
                       "last checkpoint"):
        return _train(params, variant, resume or resume_anyway, root, resume_anyway)


def _train(params: Params, variant: str, resume: bool, root: Path, resume_anyway: bool) -> dict | None:
    v = variant_params(params, variant)
    base = root / params.paths.models / "base"
    if not (base / "config.json").is_file():
        raise UserError(f"sft: base model not found in {base} (run `polyalign init` first)")
    ckpt = last_checkpoint(root, params, "sft", variant, resume)
    check_devices(params.trainer)

    sft = params.sft
    data = SFTDataModule(root / params.paths.buckets, base, params.prompt, sft, v, params.seed,
                         params.trainer.num_workers)
    data.setup()
    trainer = build_trainer(params, root, "sft", variant, max_epochs=sft.epochs, max_steps=sft.max_steps,
                            accumulate=sft.accumulate_grad_batches, clip=sft.gradient_clip_val,
                            val_every_n_steps=sft.val_every_n_steps, checkpoint_every=sft.checkpoint_every_n_steps)
    inputs = [root / params.paths.buckets / f"{split}.parquet" for split in ("train", "val")] + [base]
    identity = run_identity(params, "sft", variant, trainer.world_size, root, inputs)
    # only now, with every input checked, may a fresh run remove the previous run's checkpoints
    resume_from = prepare_checkpoints(trainer, ckpt, root / params.paths.logs / "sft" / variant, identity,
                                      resume=resume, resume_anyway=resume_anyway, command=f"sft --variant {variant}")
    total_steps = total_optimizer_steps(len(data.train_sampler(world_size=trainer.world_size)), sft.epochs,
                                        sft.accumulate_grad_batches, sft.max_steps)
    module = SFTModule(str(base), sft, v.balance, data.bucket_names, total_steps)
    trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    trainer.save_checkpoint(ckpt, weights_only=False)  # last.ckpt = the final state (the step checkpoints fire every n steps only)
    validate_at_end(trainer, module, datamodule=data)
    if not trainer.is_global_zero:
        return None
    check_finite(f"sft@{variant}", module.history, module.last_val, "sft.lr")

    out = root / params.paths.models / "sft" / variant
    reports = root / params.paths.reports / "sft"
    tokenizer = load_tokenizer(base, "base model")
    with atomic_path(out, directory=True) as tmp:
        module.export(tmp, tokenizer, merge_lora=sft.lora.merge)

    curves = module.history  # carried through checkpoints, so a resumed run has the whole curve
    for kind in ("train", "val"):
        write_text(reports / variant / f"{kind}_loss.csv",
                   "step,loss\n" + "".join(f"{s},{loss:.6f}\n" for s, loss in curves[kind]))

    seconds = getattr(module, "train_seconds", 0.0) or 1e-9
    world = trainer.world_size
    tokens = module.tokens
    val = module.last_val
    report = {
        "variant": variant,
        "balance": v.balance,
        "alpha": v.alpha,
        "conditioning": params.prompt.conditioning,
        "oracle": params.prompt.conditioning == "oracle_length",
        "lora": sft.lora.enabled,
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_examples": len(data.train),
        "val_examples": len(data.val),
        # training answers cut by prompt.max_tokens (they lose their end and their end-of-turn token); counted here
        # because prepare runs before any tokenizer exists
        "truncated_train_examples": int(sum(data.train["truncated"])),
        "truncated_train_share": round(float(np.mean(data.train["truncated"])) if len(data.train) else 0.0, 4),
        "train_loss": curves["train"][-1][1] if curves["train"] else None,
        "val_loss": val["loss"],
        "val_loss_macro": val["loss_macro"],
        "val_bits_per_char": val["bits_per_char"],
        "val_loss_per_bucket": val["per_bucket"],
        "train_seconds": round(seconds, 2),
        "tokens_per_s": round(tokens["all"] * world / seconds, 1),
        "response_tokens_per_s": round(tokens["response"] * world / seconds, 1),
        "padding_share": round(1 - tokens["all"] / max(tokens["padded"], 1), 4),
        "world_size": world,
    }
    write_json(reports / f"{variant}.json", report)
    finish_loggers(trainer)
    console.print(f"sft@{variant}: {report['steps']} steps, val loss {figure(report['val_loss'])} "
                  f"(macro {figure(report['val_loss_macro'])}), {figure(report['val_bits_per_char'])} bits/char, "
                  f"{report['tokens_per_s']:.0f} tokens/s → {shown(out)}", highlight=False)
    if report["truncated_train_examples"]:
        console.print(f"  {report['truncated_train_examples']} training answers were cut by "
                      f"prompt.max_tokens={params.prompt.max_tokens}", style="yellow", highlight=False)
    return report
