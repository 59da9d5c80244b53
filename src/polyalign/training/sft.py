"""Bucket-Aware SFT as a LightningModule.

Supports: `balance: none` (global SFT baseline), `sampler` (bucket-balanced batches, see `EpochBatchSampler`)
and `loss_weight` (per-example loss x w_b over a constant normaliser); full fine-tuning or LoRA (peft);
any Lightning accelerator/strategy; resume mid-epoch. The per-example loss is the mean token cross-entropy
over the response (and its end-of-turn token); validation reports the loss overall, macro over buckets,
per bucket, and in bits per character of the answers (which compares models with different tokenizers).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch

from polyalign.modeling.model import AS_SAVED, Loading, load_model_weights, save_model
from polyalign.modeling.scoring import response_logits
from polyalign.training.losses import per_example_loss, sft_loss
from polyalign.training.optim import make_optimizer
from polyalign.training.selection import PROBED, CheckpointedHistory, Selection, probe_and_select


def lora_wrap(model, lora):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class SFTModule(CheckpointedHistory, L.LightningModule):
    """Starts from the weights in `model_dir` (the base model, or another variant's with `init`). `probe(model)`,
    when given, samples val responses at each validation (`sft.val_prompts`); with `sft.select` other than
    `last` the best validation's weights are kept (`Selection`) and the stage loads them before export."""

    def __init__(self, model_dir: str, sft, balance: str, bucket_names: list[str], total_steps: int,
                 optim, probe=None, loading: Loading = AS_SAVED):
        super().__init__()
        self.loading = loading
        self.total_steps, self.optim, self.probe = total_steps, optim, probe  # sft.optim, the variant's epochs and lr
        self.model_dir = str(model_dir)
        self.sft = sft
        self.balance = balance
        self.bucket_names = bucket_names
        self.model = None
        self.selection = Selection(sft.select)
        # train rows: (optimizer step, loss); val rows: (step, loss, *PROBED)
        self.history: dict[str, list] = {"train": [], "val": []}
        self._pending: list[float] = []  # losses of the micro-batches of the current optimizer step
        self.tokens = {"all": 0, "response": 0, "padded": 0}
        self._val_sum = torch.zeros(len(bucket_names), dtype=torch.float64)
        self._val_n = torch.zeros(len(bucket_names), dtype=torch.float64)

    def configure_model(self) -> None:
        """Load weights here (not in __init__) so that FSDP/DeepSpeed can shard them as they are created."""
        if self.model is not None:
            return
        model = load_model_weights(self.model_dir, "base model", self.loading)  # checked against its manifest
        model.train()  # from_pretrained returns eval mode
        self.loading.prepare_for_training(model)
        self.model = lora_wrap(model, self.optim.lora) if self.optim.lora.enabled else model

    def forward(self, batch):
        """Logits of the positions that predict response tokens, and the labels cut to match."""
        return response_logits(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])

    def training_step(self, batch, batch_idx):
        losses, n_response = per_example_loss(*self(batch))
        if self.balance == "loss_weight":
            loss = sft_loss(losses, batch["weight"], normaliser=self.sft.batch_size)
        elif self.trainer.world_size > 1:
            # the mean over the *global* batch (ranks may hold one example more or less than each other);
            # DDP averages gradients over ranks, hence the factor world_size
            n_global = self.trainer.strategy.reduce(torch.tensor(float(len(losses)), device=self.device),
                                                    reduce_op="sum")
            loss = losses.sum() * self.trainer.world_size / n_global
        else:
            loss = sft_loss(losses)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(losses))
        value = loss.detach()
        if self.trainer.world_size > 1:
            value = self.trainer.strategy.reduce(value, reduce_op="mean")
        self._pending.append(float(value))
        self.tokens["all"] += int(batch["attention_mask"].sum())
        self.tokens["response"] += int(n_response.sum())
        self.tokens["padded"] += batch["attention_mask"].numel()
        return loss

    def on_before_optimizer_step(self, optimizer):
        # before the step's checkpoint is written, so a resumed run's curve has no gap
        if self._pending:
            self.history["train"].append((self.trainer.global_step + 1, sum(self._pending) / len(self._pending)))
        self._pending = []

    def on_train_start(self):
        self._train_started = time.perf_counter()

    def on_train_end(self):
        self.train_seconds = time.perf_counter() - self._train_started

    def on_validation_epoch_start(self):
        self._val_sum = torch.zeros(len(self.bucket_names), dtype=torch.float64, device=self.device)
        self._val_n = torch.zeros(len(self.bucket_names), dtype=torch.float64, device=self.device)
        self._val_nats = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_chars = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        losses, n_tokens = per_example_loss(*self(batch))
        self._val_sum.index_add_(0, batch["bucket"], losses.double())
        self._val_n.index_add_(0, batch["bucket"], torch.ones_like(losses, dtype=torch.float64))
        self._val_nats += (losses.double() * n_tokens).sum()
        self._val_chars += batch["n_chars"].to(self._val_chars).sum()

    def on_validation_epoch_end(self):
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_n, reduce_op="sum")
        present = count > 0
        overall = total.sum() / count.sum().clamp(min=1)
        # the summed response NLL in bits per character of the answers: comparable across tokenizers
        bits_per_char = (self.trainer.strategy.reduce(self._val_nats, reduce_op="sum") / math.log(2)
                         / self.trainer.strategy.reduce(self._val_chars, reduce_op="sum").clamp(min=1))
        macro = (total[present] / count[present]).mean() if present.any() else overall
        self.log("val/loss", overall.float(), prog_bar=True)
        self.log("val/loss_macro", macro.float())
        self.log("val/bits_per_char", bits_per_char.float())
        per_bucket = {}
        for i in torch.nonzero(present).flatten().tolist():
            value = float(total[i] / count[i])
            per_bucket[self.bucket_names[i]] = value
            self.log(f"val_bucket/{self.bucket_names[i]}", value)
        self.last_val = {"loss": float(overall), "loss_macro": float(macro), "bits_per_char": float(bits_per_char),
                         "per_bucket": per_bucket}
        if self.trainer.sanity_checking:
            return
        probed = probe_and_select(self, self.trainer.global_step)
        self.history["val"].append((self.trainer.global_step, float(overall), *(probed[k] for k in PROBED)))

    def configure_optimizers(self):
        return make_optimizer(self, self.optim, self.total_steps)

    def export(self, folder: Path, tokenizer) -> None:
        """save_pretrained form (safetensors) with its checksum manifest, loadable with plain AutoModelForCausalLM
        (a LoRA adapter merged into the weights with `sft.optim.lora.merge`)."""
        model = self.model
        if self.optim.lora.enabled and self.optim.lora.merge:
            model = model.merge_and_unload()
        save_model(model, tokenizer, folder)
