"""Language-model pretraining of the scratch base model on the training split's own texts.

A model created from config knows no words, and SFT alone would have to teach it the language from the answers
only (about 54k characters on the default corpus). `init` therefore first trains it as a plain language model
on every distinct text of the train split: questions, contexts, history turns and answers. The texts are packed
into blocks of `block_size` tokens with the end-of-text token between them, so no step computes padding.
The val and test splits are never read. Supports one device (the base model is small by construction: a
pretrained model skips this step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import lightning as L
import torch

from polyalign.modeling.prompts import IGNORE_INDEX
from polyalign.training.optim import make_optimizer
from polyalign.training.trainer import TrainingProgress


def joined(token_rows: Sequence[Sequence[int]], separator: int) -> list[int]:
    """The rows one after another, each followed by `separator` (the end-of-text token)."""
    return [t for row in token_rows for t in (*row, separator)]


def packed_blocks(token_rows: Sequence[Sequence[int]], separator: int, block_size: int) -> torch.Tensor:
    """All rows joined by `separator` and cut into [n_blocks, block_size] (the incomplete tail is dropped)."""
    stream = joined(token_rows, separator)
    n = len(stream) // block_size
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)


class PretrainModule(L.LightningModule):
    def __init__(self, model, lr: float, total_steps: int):
        super().__init__()
        self.model, self.lr, self.total_steps = model, lr, total_steps
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = self.model(input_ids=batch, labels=batch).loss  # next-token cross-entropy over the whole block
        self.log("train/loss", loss, batch_size=len(batch))
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        from polyalign.params import OptimParams

        # model.pretrain_lr, with SFT's default decay and schedule
        schedule = OptimParams(lr=self.lr, weight_decay=0.01, warmup_ratio=0.05, min_lr_ratio=0.1)
        return make_optimizer(self, schedule, self.total_steps)


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 in hardware. A CPU without bf16 instructions (AVX512-BF16 or AMX)
    emulates bf16 autocast, which made a pretraining step of the default model 14 times slower than float32 on a
    2-core AMD EPYC (AVX2), where one with AVX512-BF16 ran it 25% faster than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (x86)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(setting: str, device: torch.device) -> str:
    """`model.pretrain_precision`: `auto` is bf16-mixed where the device has bf16 in hardware, else 32-true."""
    if setting != "auto":
        return setting
    return "bf16-mixed" if has_native_bf16(device) else "32-true"


def pretrain(model, tokenizer, texts: Sequence[str], *, epochs: int, lr: float, block_size: int, batch_size: int,
             seed: int, accelerator: str, progress: bool, precision: str = "32-true") -> dict:
    """Train `model` in place on `texts` (each distinct text once per epoch); returns what the report needs."""
    distinct = sorted(set(texts))
    rows = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    blocks = packed_blocks(rows, tokenizer.pad_token_id, block_size)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(blocks, batch_size=batch_size, shuffle=True, generator=generator)
    total_steps = epochs * math.ceil(len(blocks) / batch_size)
    module = PretrainModule(model, lr, total_steps)
    L.seed_everything(seed, workers=True, verbose=False)
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_epochs=epochs, logger=False, precision=precision,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TrainingProgress("init: pretraining")] if progress else [], num_sanity_val_steps=0)
    start = time.perf_counter()
    model.train()
    trainer.fit(module, train_dataloaders=loader)
    model.eval()
    last = module.losses[-max(1, len(module.losses) // 10):]  # the last tenth of the steps: less noise
    return {"pretrain_texts": len(distinct), "pretrain_tokens": int(blocks.numel()), "pretrain_steps": total_steps,
            "pretrain_loss": round(sum(last) / len(last), 4), "pretrain_seconds": round(time.perf_counter() - start, 1),
            # the seconds depend on the threads (a queued experiment gets a share) and the precision
            "pretrain_threads": torch.get_num_threads(), "pretrain_precision": precision}


@torch.no_grad()
def heldout_bits_per_char(model, tokenizer, texts: Sequence[str], block_size: int, batch_size: int) -> float:
    """The language model's bits per character on held-out texts, laid out as pretraining lays out its own.

    The distinct texts are joined by the end-of-text token, with one in front so that every text's first token
    is predicted too, and cut into windows of `block_size` predictions (each window sees only its own tokens, as
    a training block does). The nats of every text token and every closing end-of-text token are summed and
    divided by the texts' characters. This is how `model.pretrain_epochs` is chosen on a new corpus: the
    `init` report's `pretrain_val_bits_per_char` on the val split."""
    distinct = sorted({t for t in texts if t})
    separator = tokenizer.pad_token_id
    rows = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    stream = [separator, *joined(rows, separator)]
    windows = [stream[i:i + block_size + 1] for i in range(0, len(stream) - 1, block_size)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nats = 0.0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        width = max(len(w) for w in chunk)
        ids = torch.full((len(chunk), width), separator, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for row, window in enumerate(chunk):
            ids[row, :len(window)] = torch.tensor(window)
            labels[row, 1:len(window)] = torch.tensor(window[1:])
        logits = model(input_ids=ids[:, :-1].to(device)).logits.float()
        nats += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten().to(device),
                                                        ignore_index=IGNORE_INDEX, reduction="sum"))
    model.train(was_training)
    return nats / math.log(2) / sum(len(t) for t in distinct)
