"""Preference optimisation (any base loss of `training/objectives`, with HDPO's extras) as a LightningModule,
and its data.

Where that is cheaper, a batch runs its prompts once and scores the chosen and rejected responses (and the anchor's
human answers) against the prompts' kept keys and values, else each (prompt, response) sequence whole
(`modeling/shared_prompt.py`); summed response log-probs use the same masks as SFT. The reference is, by the variant's `reference`: log-probs precomputed by the pairs stage
(no reference model in memory), a frozen copy of the starting model, with LoRA the same model with its adapter
disabled, or none for a reference-free loss (SimPO, ORPO). An unpaired loss (KTO) also scores each pair's prompt
with another pair's rejected response, for its reference point.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from polyalign.modeling.model import (
    AS_SAVED,
    Loading,
    disable_dropout,
    folder_digest,
    folder_dtype,
    load_model_weights,
    save_model,
)
from polyalign.modeling.prompts import PromptRenderer
from polyalign.modeling.scoring import compute_dtype, training_precision
from polyalign.modeling.shared_prompt import examples_batch, group_logps, pair_logps
from polyalign.training.objectives import base_loss
from polyalign.training.objectives.batch import PairBatch
from polyalign.training.objectives.compose import preference_loss
from polyalign.training.optim import make_optimizer
from polyalign.training.samplers import EpochBatchSampler, ResumableDataLoader
from polyalign.training.selection import PROBED, CheckpointedHistory, Selection, probe_and_select
from polyalign.training.sft import lora_wrap

FINGERPRINT = "fingerprint.json"  # beside the pairs: what their precomputed reference log-probs were computed with


def pair_examples(renderer: PromptRenderer, row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chosen and rejected training examples of a pair. A sampled rejected response is scored from the token
    ids the model generated (`rejected_ids`), and one that its budget cut (`rejected_truncated`) gets no
    end-of-turn token; text-only sides (human answers, the user's own pairs) are encoded and end their turn. A
    sampled chosen side (`chosen_ids`, `pairs.chosen: nearest_sample`) is scored as generated too."""
    chosen_ids = row.get("chosen_ids")
    if chosen_ids is None:
        chosen = renderer.example(row, response=row["chosen"])
    else:
        chosen = renderer.example_from_ids(row, list(chosen_ids), ended=not row.get("chosen_truncated", False))
    ids = row.get("rejected_ids")
    if ids is None:
        rejected = renderer.example(row, response=row["rejected"])
    else:
        rejected = renderer.example_from_ids(row, list(ids), ended=not row.get("rejected_truncated", False))
    return chosen, rejected


def encode_pair(renderer: PromptRenderer, row: dict[str, Any]) -> dict[str, Any]:
    """Both sides' training examples, and the human answer's (the NLL anchor's: the chosen side's own when it is
    the human answer), as `<side>_input_ids` and `<side>_labels`. A row's `chosen_ids` and `rejected_ids` (a
    sample's response tokens) stay as they are."""
    chosen, rejected = pair_examples(renderer, row)
    anchor = chosen if row.get("chosen_ids") is None else renderer.example(
        row, response=row.get("human_answer") or row["chosen"])
    return {f"{side}_{key}": example[key] for side, example in (("chosen", chosen), ("rejected", rejected),
                                                               ("anchor", anchor))
            for key in ("input_ids", "labels")}


def add_kl_examples(renderer: PromptRenderer, rows: list[dict[str, Any]], seed: int) -> None:
    """For an unpaired loss's reference point (KTO): each row's prompt with the rejected response of another row,
    picked by a seeded derangement, as `kl_input_ids` and `kl_labels`."""
    order = np.random.default_rng(seed).permutation(len(rows))
    partner = np.empty(len(rows), dtype=int)
    partner[order] = np.roll(order, -1)
    for row, j in zip(rows, partner):
        other = rows[int(j)]
        if other.get("rejected_ids") is None:
            example = renderer.example(row, response=other["rejected"])
        else:
            example = renderer.example_from_ids(row, list(other["rejected_ids"]),
                                                ended=not other.get("rejected_truncated", False))
        row.update(kl_input_ids=example["input_ids"], kl_labels=example["labels"])


def reference_fingerprint(model_dir: Path, renderer: PromptRenderer, loading: Loading = AS_SAVED,
                          precision: str = "32-true") -> dict[str, Any]:
    """What precomputed reference log-probs depend on: the exact model files, the prompt format and the dtype
    they were computed in (the training precision's, `training_precision`). `hdpo` compares it with its own
    before trusting them."""
    template = renderer.tokenizer.chat_template or ""
    loaded = folder_dtype(model_dir) if loading.dtype == "auto" else loading.dtype
    return {"model_files_sha256": folder_digest(model_dir), "conditioning": renderer.conditioning,
            "max_prompt_tokens": renderer.max_prompt_tokens, "max_tokens": renderer.max_tokens,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "end_of_turn_ids": list(renderer.eot_ids), "dtype": compute_dtype(precision, loaded)}


def fingerprint_changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two reference fingerprints (empty when they match)."""
    changes = []
    for key in sorted(set(stored) | set(current)):
        if stored.get(key) != current.get(key):
            was, now = stored.get(key), current.get(key)
            if key.endswith("sha256"):
                changes.append(f"{key.removesuffix('_sha256')} changed")
            else:
                changes.append(f"{key}: {was!r} -> {now!r}")
    return changes


def reference_logps(model, renderer: PromptRenderer, pairs: list[dict[str, Any]],
                    precision: str = "32-true") -> tuple[np.ndarray, np.ndarray]:
    """The reference log-probs of both sides of every pair under `model` (what `hdpo.reference: precomputed`
    trains against), computed in the training `precision`."""
    with training_precision(model, precision) as scorer:
        return pair_logps(scorer, [pair_examples(renderer, p) for p in pairs], renderer.pad_id)


class PairCollator:
    """A batch of pairs laid out by `shared_prompt.examples_batch` (prompts shared where that is cheaper): the
    chosen then the rejected responses as group `pair`, and with `anchor` the human answers, for the NLL anchor when
    the chosen sides are samples, as a group of their own (a long human answer would otherwise pad every short
    sample to its length); KTO's mismatched responses as group `kl`."""

    def __init__(self, pad_id: int, bucket_index: dict[str, int], uniform: bool, anchor: bool = False):
        self.pad_id, self.bucket_index, self.uniform, self.anchor = pad_id, bucket_index, uniform, anchor

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        def side(name: str) -> list[dict[str, Any]]:
            return [{"input_ids": r[f"{name}_input_ids"], "labels": r[f"{name}_labels"]} for r in rows]

        groups = {"pair": side("chosen") + side("rejected")}
        if self.anchor:
            groups["anchor"] = side("anchor")
        if "kl_input_ids" in rows[0]:
            groups["kl"] = side("kl")
        batch = {**examples_batch(len(rows), groups, self.pad_id),
                 "d_chosen": torch.tensor([r["d_chosen"] for r in rows], dtype=torch.float32),
                 "d_rejected": torch.tensor([r["d_rejected"] for r in rows], dtype=torch.float32),
                 "weight": torch.ones(len(rows)) if self.uniform else
                 torch.tensor([r["weight"] for r in rows], dtype=torch.float32),
                 "bucket": torch.tensor([self.bucket_index[r["bucket_id"]] for r in rows])}
        for column, key in (("ref_chosen_logp", "ref_chosen"), ("ref_rejected_logp", "ref_rejected"),
                            ("ref_kl_logp", "ref_kl")):
            if column in rows[0]:
                batch[key] = torch.tensor([r[column] for r in rows], dtype=torch.float32)
        return batch


def pair_dataloader(rows: list[dict], collate: PairCollator, batch_size: int, *, train: bool, seed: int,
                    trainer=None, num_workers: int = 0):
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    lengths = [max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"])) for r in rows]
    sampler = EpochBatchSampler(lengths, batch_size, mode="shuffle" if train else "sequential", seed=seed,
                                world_size=world, rank=rank)
    if not train:
        return torch.utils.data.DataLoader(rows, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                                           generator=torch.Generator().manual_seed(0))  # not torch's global stream
    return ResumableDataLoader(rows, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                               consumed=lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed)


class PreferenceModule(CheckpointedHistory, L.LightningModule):
    """`variant` is an `HdpoVariant` whose `reference` is resolved (`objectives.resolve_reference`). `probe(model)`,
    when given, samples val responses at each validation and returns their naturalness
    (`evaluation.validation.naturalness_probe`). With `hdpo.select` other than `last`, the weights of the best
    validation so far are kept (`Selection`, in memory and in checkpoints); the stage loads them before export."""

    def __init__(self, model_dir: str, hdpo, variant, bucket_names: list[str], total_steps: int,
                 probe: Callable[[Any], dict[str, float]] | None = None, loading: Loading = AS_SAVED):
        super().__init__()
        self.loading = loading
        if variant.reference is None:
            raise ValueError("PreferenceModule needs the variant's reference resolved (resolve_reference)")
        self.model_dir, self.hdpo, self.variant = str(model_dir), hdpo, variant
        self.unpaired = base_loss(variant.loss).NEEDS_UNPAIRED
        self.bucket_names, self.total_steps, self.probe = bucket_names, total_steps, probe
        self.model = None
        self.reference = None
        self.history: dict[str, list] = {"train": [], "val": []}
        self.selection = Selection(hdpo.select)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = load_model_weights(self.model_dir, "the starting model", self.loading)  # checked against its manifest
        model.train()
        disable_dropout(model)  # before LoRA: an adapter's own dropout (hdpo.optim.lora.dropout) stays as set
        self.loading.prepare_for_training(model)
        lora = self.hdpo.optim.lora
        self.model = lora_wrap(model, lora) if lora.enabled else model
        if self.variant.reference == "frozen":
            reference = AutoModelForCausalLM.from_pretrained(self.model_dir, use_safetensors=True,
                                                             **self.loading.kwargs()).eval()
            reference.requires_grad_(False)
            object.__setattr__(self, "reference", reference)  # not a submodule: not trained, not checkpointed

    @staticmethod
    def _score(model, batch, groups: tuple[str, ...] = ("pair",)) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per group of the batch: summed response log-probs and scored lengths (`shared_prompt.group_logps`)."""
        return {name: (logps, lengths.float()) for name, (logps, lengths) in group_logps(model, batch, groups).items()}

    def _reference_model(self):
        """The model that scores the reference side on the fly (None when precomputed or reference-free)."""
        if self.variant.reference == "lora":
            return self.model
        return self.reference.to(self.device) if self.variant.reference == "frozen" else None

    def reference_logps(self, batch) -> dict[str, torch.Tensor]:
        """`ref_chosen`, `ref_rejected` (and for an unpaired loss `kl_ref`), or nothing for a reference-free loss."""
        reference = self.variant.reference
        if reference == "none":
            return {}
        if reference == "precomputed":
            out = {"ref_chosen": batch["ref_chosen"], "ref_rejected": batch["ref_rejected"]}
            return {**out, "kl_ref": batch["ref_kl"]} if self.unpaired else out
        model = self._reference_model()
        with torch.no_grad(), (self.model.disable_adapter() if reference == "lora" else contextlib.nullcontext()):
            scored = self._score(model, batch, ("pair", "kl") if self.unpaired else ("pair",))
            logps, n = scored["pair"][0], len(batch["weight"])
            out = {"ref_chosen": logps[:n], "ref_rejected": logps[n:]}
            if self.unpaired:
                out["kl_ref"] = scored["kl"][0]
        return out

    def pair_batch(self, batch) -> PairBatch:
        """The batch's policy log-probs (with gradients), reference log-probs and pair data."""
        scored = self._score(self.model, batch, ("pair", "anchor") if "anchor_input_ids" in batch else ("pair",))
        logps, lengths = scored["pair"]
        n = len(batch["weight"])
        extra = self.reference_logps(batch)
        if "anchor" in scored:
            extra["anchor_logps"], extra["anchor_lengths"] = scored["anchor"]
        if self.unpaired:
            with torch.no_grad():  # KTO's reference point is not differentiated
                extra["kl_policy"] = self._score(self.model, batch, ("kl",))["kl"][0]
        return PairBatch(policy_chosen=logps[:n], policy_rejected=logps[n:], len_chosen=lengths[:n],
                         len_rejected=lengths[n:], d_chosen=batch["d_chosen"], d_rejected=batch["d_rejected"],
                         weight=batch["weight"], **extra)

    def _loss(self, pairs: PairBatch):
        v = self.variant
        return preference_loss(pairs, v.loss, v.beta, v.knobs(), **v.extras())

    def training_step(self, batch, batch_idx):
        loss, parts, _ = self._loss(self.pair_batch(batch))
        n = len(batch["weight"])
        self.log("train/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        for name, value in parts.items():
            self.log(f"train/{name}" if "/" not in name else name, value, sync_dist=True, batch_size=n)
        self.history["train"].append((self.global_step + 1, float(loss.detach()),
                                      float(parts["rewards/accuracies"])))
        return loss

    # per validation, summed over pairs: the policy's and the reference's log-probs of both sides and the reward
    # margin (the base loss's implicit rewards). A chosen log-prob falling below its reference value is likelihood
    # displacement as it happens. A reference-free loss has no reference log-probs: NaN (null in the reports).
    SUMS = ("logps_chosen", "logps_rejected", "ref_logps_chosen", "ref_logps_rejected", "margin")

    def on_validation_epoch_start(self):
        self._acc = torch.zeros(len(self.bucket_names), dtype=torch.float64, device=self.device)
        self._n = torch.zeros(len(self.bucket_names), dtype=torch.float64, device=self.device)
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._sums = torch.zeros(len(self.SUMS), dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        with torch.no_grad():
            pairs = self.pair_batch(batch)
            loss, _, terms = self._loss(pairs)
        margin = terms.chosen_rewards - terms.rejected_rewards
        nan = torch.full_like(margin, float("nan"))
        pc, pr = pairs.policy_chosen, pairs.policy_rejected
        rc, rr = (pairs.ref_chosen, pairs.ref_rejected) if pairs.has_reference else (nan, nan)
        correct = (margin > 0).double()
        self._acc.index_add_(0, batch["bucket"], correct)
        self._n.index_add_(0, batch["bucket"], torch.ones_like(correct))
        self._loss_sum += loss.double() * len(correct)
        self._sums += torch.stack([x.double().sum() for x in (pc, pr, rc, rr, margin)])

    def on_validation_epoch_end(self):
        acc = self.trainer.strategy.reduce(self._acc, reduce_op="sum")
        n = self.trainer.strategy.reduce(self._n, reduce_op="sum")
        loss_sum = self.trainer.strategy.reduce(self._loss_sum, reduce_op="sum")
        sums = self.trainer.strategy.reduce(self._sums, reduce_op="sum")
        total = n.sum().clamp(min=1)
        means = {name: float(v) for name, v in zip(self.SUMS, sums / total)}
        self.log("val/loss", (loss_sum / total).float())
        self.log("val/rewards/accuracies", (acc.sum() / total).float())
        self.log_dict({"val/logps/chosen": means["logps_chosen"], "val/logps/rejected": means["logps_rejected"],
                       "val/rewards/margins": means["margin"]})
        per_bucket = {}
        for i in torch.nonzero(n > 0).flatten().tolist():
            per_bucket[self.bucket_names[i]] = float(acc[i] / n[i])
            self.log(f"val_bucket_accuracy/{self.bucket_names[i]}", per_bucket[self.bucket_names[i]])
        self.last_val = {"loss": float(loss_sum / total), "accuracy": float(acc.sum() / total),
                         "per_bucket": per_bucket, **means}
        if self.trainer.sanity_checking:
            return
        probed = probe_and_select(self, self.global_step)
        self.history["val"].append((self.global_step, float(loss_sum / total), float(acc.sum() / total),
                                    *(means[k] for k in self.SUMS), *(probed[k] for k in PROBED)))

    def configure_optimizers(self):
        return make_optimizer(self, self.hdpo.optim, self.total_steps)

    def export(self, folder: Path, tokenizer) -> None:
        lora = self.hdpo.optim.lora
        model = self.model.merge_and_unload() if lora.enabled and lora.merge else self.model
        save_model(model, tokenizer, folder)  # safetensors and the checksum manifest
