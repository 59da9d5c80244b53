"""Stage `sft@<variant>`: Bucket-Aware SFT (or the global-SFT baseline) from `models/base/`, or, with a
variant's `init: sft@<other>` and `data: best_of_k`, rejection-sampling SFT: another SFT model fine-tuned on the
human answers plus the pairs stage's sample nearest to human support per train prompt (`data/pairs/`).

Reads params: seed, paths, prompt, trainer, generation (the decoding of `sft.val_prompts`), sft (the shared keys
and `sft.variants.<variant>`), logging. Reads `data/buckets/{train,val}.parquet` (and `references.json` for the
val probe), the start model, and with best_of_k `data/pairs/best_of_k.parquet`. Writes `models/sft/<variant>/`
(save_pretrained form; with `sft.select`, the selected validation's weights), `reports/sft/<variant>.json` and the
loss curves `reports/sft/<variant>/{train,val}_loss.csv`. Checkpoints go to `checkpoints/sft/<variant>/` for
--resume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from polyalign.errors import UserError, shown
from polyalign.evaluation.validation import naturalness_probe
from polyalign.io import write_json, write_text
from polyalign.log import console
from polyalign.modeling.model import Loading, load_tokenizer, model_dir
from polyalign.modeling.prompts import PromptRenderer
from polyalign.params import Params
from polyalign.training.data import BEST_OF_K, SFTDataModule
from polyalign.training.selection import PROBED
from polyalign.training.sft import SFTModule
from polyalign.training.trainer import (
    build_trainer,
    check_devices,
    figure,
    finish_loggers,
    fit_and_export,
    last_checkpoint,
    prepare_checkpoints,
    run_identity,
    sigterm_stops,
    total_optimizer_steps,
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


def start_model(params: Params, variant: str, root: Path) -> Path:
    """The folder a variant starts from: models/base, or with `init: sft@<other>` that variant's model."""
    init = variant_params(params, variant).init
    folder = model_dir(init, params, root)
    if init == "base":
        if not (folder / "config.json").is_file():
            raise UserError(f"sft: base model not found in {folder} (run `polyalign init` first)")
        return folder
    other = init.removeprefix("sft@")
    if not (folder / "config.json").is_file():
        raise UserError(f"sft@{variant} starts from {init}, which is missing in {folder} (run `polyalign sft "
                        f"--variant {other}` first)")
    return folder


def _train(params: Params, variant: str, resume: bool, root: Path, resume_anyway: bool) -> dict | None:
    v = variant_params(params, variant)
    start = start_model(params, variant, root)
    best_of_k = root / params.paths.data_pairs / BEST_OF_K if v.data == "best_of_k" else None
    ckpt = last_checkpoint(root, params, "sft", variant, resume)
    check_devices(params.trainer)

    sft = params.sft
    optim = sft.optim.model_copy(update={k: getattr(v, k) for k in ("epochs", "lr") if getattr(v, k) is not None})
    data = SFTDataModule(root / params.paths.buckets, start, params.prompt, sft, v, params.seed,
                         params.trainer.num_workers, best_of_k=best_of_k)
    data.setup()
    trainer = build_trainer(params, root, "sft", variant, optim=optim, val_every_n_steps=sft.val_every_n_steps)
    inputs = [root / params.paths.buckets / f"{split}.parquet" for split in ("train", "val")] + [start]
    if best_of_k is not None:
        inputs.append(best_of_k)
    identity = run_identity(params, "sft", variant, trainer.world_size, root, inputs)
    # only now, with every input checked, may a fresh run remove the previous run's checkpoints
    resume_from = prepare_checkpoints(trainer, ckpt, root / params.paths.logs / "sft" / variant, identity,
                                      resume=resume, resume_anyway=resume_anyway, command=f"sft --variant {variant}")
    total_steps = total_optimizer_steps(len(data.train_sampler(world_size=trainer.world_size)), optim)
    tokenizer = load_tokenizer(start, "the starting model")
    renderer = PromptRenderer.from_params(tokenizer, params.prompt)
    probe = naturalness_probe(params, root, sft.val_prompts, start, tokenizer, renderer, "sft.val_prompts")
    module = SFTModule(str(start), sft, v.balance, data.bucket_names, total_steps, optim, probe=probe,
                       loading=Loading.from_params(params))
    out = root / params.paths.models / "sft" / variant
    selected = fit_and_export(trainer, module, out, tokenizer, ckpt=ckpt, resume_from=resume_from,
                              lr_key="sft.optim.lr", datamodule=data)
    if selected is None:
        return None
    reports = root / params.paths.reports / "sft"

    curves = module.history  # carried through checkpoints, so a resumed run has the whole curve
    for kind in ("train", "val"):
        write_text(reports / variant / f"{kind}_loss.csv",
                   "step,loss\n" + "".join(f"{row[0]},{row[1]:.6f}\n" for row in curves[kind]))

    seconds = getattr(module, "train_seconds", 0.0) or 1e-9
    sampled, cut = np.array(data.train["sampled"], dtype=bool), np.array(data.train["truncated"], dtype=bool)
    world = trainer.world_size
    tokens = module.tokens
    val = module.selection.scores(module.last_val)  # of the weights exported
    report = {
        "variant": variant,
        "balance": v.balance,
        "alpha": v.alpha,
        "init": v.init,
        "data": v.data,
        "lr": optim.lr,
        "conditioning": params.prompt.conditioning,
        "oracle": params.prompt.conditioning == "oracle_length",
        "lora": optim.lora.enabled,
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_examples": len(data.train),
        "train_sampled_examples": int(sampled.sum()),  # data: best_of_k: the nearest samples among them
        "val_examples": len(data.val),
        # training answers cut by prompt.max_tokens (they lose their end and their end-of-turn token); counted here
        # because prepare runs before any tokenizer exists
        "truncated_train_examples": int(cut[~sampled].sum()),
        "truncated_train_share": round(float(cut[~sampled].mean()) if (~sampled).any() else 0.0, 4),
        "train_loss": curves["train"][-1][1] if curves["train"] else None,
        "val_loss": val["loss"],
        "val_loss_macro": val["loss_macro"],
        "val_bits_per_char": val["bits_per_char"],
        "val_loss_per_bucket": val["per_bucket"],
        "val_history": [dict(zip(("step", "loss", *PROBED), row)) for row in curves["val"]],
        # sampled val responses (sft.val_prompts) at the validation of the weights exported, and which it was
        **{f"val_{k}": val[k] for k in PROBED}, **selected,
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
