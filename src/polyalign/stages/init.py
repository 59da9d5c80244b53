"""Stage `init`: the base model in `models/base/` (save_pretrained form, safetensors).

Reads params: seed, paths, model. `scratch` trains a byte-level BPE tokenizer on the training split's prompts
and answers and creates a small Qwen2-style LM from config; `pretrained` loads any Hugging Face causal LM.
Writes `reports/init.json`. The base model folder gets a checksum manifest like every model folder; a
pretrained model with pickled weights only (`pytorch_model.bin`) needs `model.allow_pickle: true`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from polyalign.errors import UserError, rerun_hint, shown
from polyalign.io import atomic_path, write_json
from polyalign.log import console
from polyalign.modeling.model import create_scratch_model, load_pretrained, save_model
from polyalign.modeling.prompts import system_profile
from polyalign.modeling.tokenizer import train_tokenizer
from polyalign.params import Params
from polyalign.text import CJK_RE


def training_texts(params: Params, root: Path) -> list[str]:
    path = root / params.paths.buckets / "train.parquet"
    if not path.is_file():
        raise UserError(f"init: {path} not found (run `polyalign bucketize` first)")
    try:
        table = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"init: {shown(path)} is corrupt or unreadable ({str(exc).splitlines()[0]}); "
                        f"{rerun_hint(path)}") from None
    texts = []
    for r in table:
        texts += [r["question"], r["context"], r["human_answer"], *(t["text"] for t in r["dialogue_history"])]
        texts.append(system_profile(r, "oracle_length"))
    return [t for t in texts if t]


def run(params: Params, root: Path = Path(".")) -> dict:
    cfg = params.model
    if cfg.source == "scratch":
        texts = training_texts(params, root)
        tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg.tokenizer_min_frequency)
        model = create_scratch_model(tokenizer, cfg, params.seed)
    else:
        model, tokenizer = load_pretrained(cfg.name_or_path, cfg.trust_remote_code, cfg.chat_template,
                                           allow_pickle=cfg.allow_pickle)
    vocab = tokenizer.get_vocab()
    multi_cjk = sum(len(CJK_RE.findall(tokenizer.convert_tokens_to_string([t]))) > 1 for t in vocab)
    report = {
        "source": cfg.source,
        "name_or_path": cfg.name_or_path,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "tokens_with_several_cjk_characters": multi_cjk,
    }
    with atomic_path(root / params.paths.models / "base", directory=True) as tmp:
        save_model(model, tokenizer, tmp)
    write_json(root / params.paths.reports / "init.json", report)
    console.print(f"init: {report['architecture']} with {report['parameters']:,} parameters, "
                  f"vocabulary {report['vocab_size']}")
    return report
