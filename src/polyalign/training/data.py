"""SFT data: bucketed parquet splits rendered once with the shared prompt renderer (cached by `datasets`),
dynamically padded, batched by `EpochBatchSampler`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from transformers import AutoTokenizer

from polyalign.errors import UserError
from polyalign.modeling.prompts import PromptRenderer
from polyalign.modeling.scoring import padded_batch
from polyalign.training.samplers import EpochBatchSampler, ResumableDataLoader

if TYPE_CHECKING:  # `datasets` is imported where it is used: `pairs` and `hdpo` import BEST_OF_K only
    import datasets

KEEP_COLUMNS = ("bucket_id", "balance_bucket", "bucket_weight")
BEST_OF_K = "best_of_k.parquet"  # under paths.data_pairs: per train prompt, the sample nearest to human support


def load_split(path: Path, renderer: PromptRenderer) -> datasets.Dataset:
    """Tokenised examples of one bucketed split; `datasets` caches the result by content and renderer."""
    import datasets

    if not path.is_file():
        raise UserError(f"{path} not found (run `polyalign bucketize` first)")
    table = datasets.Dataset.from_parquet(str(path))
    drop = [c for c in table.column_names if c not in KEEP_COLUMNS]
    return table.map(renderer.example, remove_columns=drop, desc=f"tokenising {path.name}").add_column(
        "sampled", [False] * len(table))


def load_best_of_k(path: Path, renderer: PromptRenderer) -> datasets.Dataset:
    """Tokenised examples of the pairs stage's nearest samples, scored as the token ids the model generated (a
    sample its budget cut ends without an end-of-turn token)."""
    if not path.is_file():
        raise UserError(f"{path} not found: data: best_of_k trains on the samples of the pairs stage (run "
                        "`polyalign pairs` with sampled pairs, not pairs.preference_file)")
    import datasets

    table = datasets.Dataset.from_parquet(str(path))
    if len(table) == 0:
        raise UserError(f"{path} holds no sample (every sample was empty or dropped; see reports/pairs.json)")

    def example(row: dict[str, Any]) -> dict[str, Any]:
        out = renderer.example_from_ids(row, row["sample_ids"], ended=not row["sample_truncated"])
        return {**out, "n_chars": len(row["sample"]), "sampled": True}

    drop = [c for c in table.column_names if c not in KEEP_COLUMNS]
    return table.map(example, remove_columns=drop, desc=f"tokenising {path.name}")


class Collator:
    """Right-pads a list of examples to the longest one in the batch."""

    def __init__(self, pad_id: int, bucket_index: dict[str, int]):
        self.pad_id = pad_id
        self.bucket_index = bucket_index

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {
            **padded_batch([r["input_ids"] for r in rows], [r["labels"] for r in rows], self.pad_id),
            "weight": torch.tensor([r["bucket_weight"] for r in rows], dtype=torch.float32),
            "bucket": torch.tensor([self.bucket_index[r["bucket_id"]] for r in rows], dtype=torch.long),
            "n_chars": torch.tensor([r.get("n_chars", 0) for r in rows], dtype=torch.float64),
        }


class SFTDataModule(L.LightningDataModule):
    """The train split's human answers (and with `best_of_k`, a path, the nearest samples beside them) and the
    val split's human answers, which validation scores."""

    def __init__(self, buckets_dir: Path, model_dir: Path, prompt, sft, variant, seed: int, num_workers: int = 0,
                 best_of_k: Path | None = None):
        super().__init__()
        self.buckets_dir, self.model_dir, self.best_of_k = Path(buckets_dir), Path(model_dir), best_of_k
        self.prompt, self.sft, self.variant = prompt, sft, variant
        self.seed, self.num_workers = seed, num_workers
        self.train: datasets.Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        renderer = PromptRenderer.from_params(tokenizer, self.prompt)
        self.pad_id = renderer.pad_id
        self.train = load_split(self.buckets_dir / "train.parquet", renderer)
        if self.best_of_k is not None:
            import datasets

            self.train = datasets.concatenate_datasets([self.train, load_best_of_k(self.best_of_k, renderer)])
        self.val = load_split(self.buckets_dir / "val.parquet", renderer)
        self.bucket_names = sorted(set(self.train["bucket_id"]) | set(self.val["bucket_id"]))
        self.collate = Collator(self.pad_id, {b: i for i, b in enumerate(self.bucket_names)})
        balance = sorted(set(self.train["balance_bucket"]))
        self.train_balance = np.array([balance.index(b) for b in self.train["balance_bucket"]])

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_sampler(self, world_size: int | None = None) -> EpochBatchSampler:
        world, rank = self._world()
        world = world_size or world
        return EpochBatchSampler(
            [len(x) for x in self.train["input_ids"]], self.sft.batch_size,
            mode="balanced" if self.variant.balance == "sampler" else "shuffle", buckets=self.train_balance,
            alpha=self.variant.alpha, seed=self.seed, group_by_length=self.sft.group_by_length,
            world_size=world, rank=rank)

    def train_dataloader(self) -> ResumableDataLoader:
        def consumed() -> int:
            return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

        return ResumableDataLoader(self.train, batch_sampler=self.train_sampler(), collate_fn=self.collate,
                                   num_workers=self.num_workers, consumed=consumed)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        world, rank = self._world()
        sampler = EpochBatchSampler([len(x) for x in self.val["input_ids"]], self.sft.batch_size, mode="sequential",
                                    world_size=world, rank=rank)
        return torch.utils.data.DataLoader(self.val, batch_sampler=sampler, collate_fn=self.collate,
                                           num_workers=self.num_workers, generator=torch.Generator().manual_seed(0))
