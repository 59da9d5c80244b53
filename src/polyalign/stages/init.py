"""Stage `init`: the base model in `models/base/` (save_pretrained form, safetensors).

Reads params: seed, paths, model (and trainer.accelerator, logging for pretraining). `scratch` trains a
character-level BPE tokenizer on the training split's prompts and answers, creates a small Qwen3-style LM from
config and pretrains it as a plain language model on the train split's texts for `model.pretrain_epochs` (see
`training/pretrain.py`); `pretrained` loads any Hugging Face causal LM. Writes `reports/init.json`. The base model
folder gets a checksum manifest like every model folder; a pretrained model with pickled weights only
(`pytorch_model.bin`) needs `model.allow_pickle: true`."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from polyalign.errors import UserError, rerun_hint, shown
from polyalign.io import atomic_path, write_json
from polyalign.log import console
from polyalign.modeling.model import (
    Loading,
    create_scratch_model,
    inference_device,
    load_pretrained,
    save_model,
)
from polyalign.modeling.prompts import system_profile
from polyalign.modeling.tokenizer import train_tokenizer, unknown_share
from polyalign.params import Params
from polyalign.text import CJK_RE
from polyalign.training.pretrain import heldout_bits_per_char, pretrain, resolve_precision
from polyalign.training.trainer import figure


def read_split(params: Params, root: Path, split: str) -> list[dict]:
    path = root / params.paths.buckets / f"{split}.parquet"
    if not path.is_file():
        raise UserError(f"init: {path} not found (run `polyalign bucketize` first)")
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"init: {shown(path)} is corrupt or unreadable ({str(exc).splitlines()[0]}); "
                        f"{rerun_hint(path)}") from None


def record_texts(rows: list[dict], with_profiles: bool = True) -> list[str]:
    """Every text of the records that the model reads or writes: questions, contexts, answers, history turns and
    (with `with_profiles`) the prompt profiles. The tokenizer is trained on the train split's, pretraining reads
    the train split's without the profiles, and `unknown_share` is measured on the val split's."""
    texts = []
    for r in rows:
        texts += [r["question"], r["context"], r["human_answer"], *(t["text"] for t in r["dialogue_history"])]
        if with_profiles:
            texts.append(system_profile(r, "oracle_length"))
    return [t for t in texts if t]


def training_texts(params: Params, root: Path, split: str = "train", with_profiles: bool = True) -> list[str]:
    return record_texts(read_split(params, root, split), with_profiles)


def run(params: Params, root: Path = Path(".")) -> dict:
    cfg = params.model
    pretrained = {}
    val = read_split(params, root, "val")  # unknown characters, and pretraining's held-out bits per character
    if cfg.source == "scratch":
        train = read_split(params, root, "train")
        tokenizer = train_tokenizer(record_texts(train), cfg.vocab_size, cfg.tokenizer_min_frequency)
        model = create_scratch_model(tokenizer, cfg, params.seed)
        if cfg.pretrain_epochs:
            pretrained = pretrain(model, tokenizer, record_texts(train, with_profiles=False),
                                  epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, block_size=cfg.pretrain_block_size,
                                  batch_size=cfg.pretrain_batch_size,
                                  precision=resolve_precision(cfg.pretrain_precision,
                                                              inference_device(params.trainer.accelerator)),
                                  seed=params.seed,
                                  accelerator=params.trainer.accelerator, progress=params.logging.progress)
            # read after training, never during it: how `pretrain_epochs` is chosen on val for a new corpus
            val_texts = record_texts(val, with_profiles=False)
            pretrained["pretrain_val_bits_per_char"] = round(heldout_bits_per_char(
                model, tokenizer, val_texts, cfg.pretrain_block_size, cfg.pretrain_batch_size), 4) if val_texts else None
    else:
        model, tokenizer = load_pretrained(cfg.name_or_path, cfg.trust_remote_code, cfg.chat_template,
                                           Loading.from_params(params), allow_pickle=cfg.allow_pickle)
    vocab = tokenizer.get_vocab()
    multi_cjk = sum(len(CJK_RE.findall(tokenizer.convert_tokens_to_string([t]))) > 1 for t in vocab)
    report = {
        "source": cfg.source,
        "name_or_path": cfg.name_or_path,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "tokens_with_several_cjk_characters": multi_cjk,
        # characters of the val split's texts that become the unknown token (scratch: unseen in train)
        "unknown_share_val": round(unknown_share(tokenizer, record_texts(val)), 5),
        **pretrained,
    }
    with atomic_path(root / params.paths.models / "base", directory=True) as tmp:
        save_model(model, tokenizer, tmp)
    write_json(root / params.paths.reports / "init.json", report)
    done = (f", pretrained {report['pretrain_steps']} steps in {report['pretrain_precision']} to loss "
            f"{report['pretrain_loss']:.3f} "
            f"(val {figure(report['pretrain_val_bits_per_char'])} bits/char)" if pretrained else "")
    console.print(f"init: {report['architecture']} with {report['parameters']:,} parameters, vocabulary "
                  f"{report['vocab_size']} ({report['unknown_share_val']:.2%} of val characters unknown){done} "
                  f"→ {shown(root / params.paths.models / 'base')}", highlight=False)
    return report
