"""Batch order for training: shuffled or bucket-balanced, grouped by length, split across ranks, resumable.

Every epoch's order is a pure function of (seed, epoch), so
- a run resumed mid-epoch skips exactly the batches it already trained on (see `ResumableDataLoader`), and
- with DDP each *global* batch (batch_size x world_size examples) is the same set of examples as the batch of
  one process with the global batch size: rank r takes every world_size-th example of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

MEGABATCH = 50  # length grouping sorts windows of this many global batches


def bucket_probabilities(counts: Sequence[int], alpha: float) -> np.ndarray:
    """p_b proportional to n_b ** alpha: alpha = 0 gives uniform buckets, alpha = 1 the natural frequencies."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.where(counts > 0, counts**alpha, 0.0)
    return weights / weights.sum()


class EpochBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of each global batch.

    mode `shuffle`: a permutation of the data per epoch. mode `balanced`: each example is drawn by first
    drawing its bucket with p_b ~ n_b^alpha, then the next example of that bucket's own shuffled cycle (an
    epoch still has len(data) draws). mode `sequential`: data order (validation). `group_by_length` sorts
    windows of MEGABATCH global batches by length and shuffles the resulting batches, which keeps the drawn
    examples but wastes little padding."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, mode: str = "shuffle",
                 buckets: Sequence[int] | None = None, alpha: float = 0.0, seed: int = 0,
                 group_by_length: bool = True, world_size: int = 1, rank: int = 0):
        if mode not in ("shuffle", "balanced", "sequential"):
            raise ValueError(f"unknown mode {mode!r}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.mode = mode
        self.buckets = np.asarray(buckets if buckets is not None else np.zeros(len(self.lengths), int))
        self.probabilities = bucket_probabilities(np.bincount(self.buckets), alpha) if mode == "balanced" else None
        self.seed = seed
        self.group_by_length = group_by_length
        self.world_size = world_size
        self.rank = rank
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already consumed in it)

    @property
    def sampler(self) -> EpochBatchSampler:
        """Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler`, not on the batch sampler itself."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        self._resume = (epoch, consumed)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of example indices for one epoch."""
        n = len(self.lengths)
        if self.mode == "sequential":
            return np.arange(n)
        rng = np.random.default_rng([self.seed, epoch])
        if self.mode == "shuffle":
            return rng.permutation(n)
        drawn = rng.choice(len(self.probabilities), size=n, p=self.probabilities)
        order = np.empty(n, dtype=np.int64)
        for b in np.flatnonzero(self.probabilities):
            members = np.flatnonzero(self.buckets == b)
            slots = np.flatnonzero(drawn == b)
            cycles = -(-len(slots) // len(members))
            order[slots] = np.concatenate([rng.permutation(members) for _ in range(cycles)])[: len(slots)]
        return order

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        order = self.epoch_order(epoch)
        size = self.batch_size * self.world_size
        if self.group_by_length and self.mode != "sequential":
            rng = np.random.default_rng([self.seed, epoch, 1])
            window = size * MEGABATCH
            batches = []
            for start in range(0, len(order), window):
                chunk = order[start: start + window]
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                batches += [chunk[i: i + size] for i in range(0, len(chunk), size)]
            batches = [batches[i] for i in rng.permutation(len(batches))]
        else:
            if self.mode == "sequential" and self.group_by_length:
                order = order[np.argsort(-self.lengths, kind="stable")]
            batches = [order[i: i + size] for i in range(0, len(order), size)]
        # every rank needs a non-empty share of every global batch: a final batch smaller than world_size
        # (at most world_size - 1 examples) is left out of this epoch
        return [b for b in batches if len(b) >= self.world_size]

    def __len__(self) -> int:
        n, size = len(self.lengths), self.batch_size * self.world_size
        return n // size + (n % size >= self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self._resume is not None:
            epoch, consumed = self._resume
            self._resume = None
            skip = consumed if epoch == self.epoch else 0
        for k, batch in enumerate(self.global_batches(self.epoch)):
            if k < skip:
                continue
            yield batch[self.rank:: self.world_size].tolist()


class ResumableDataLoader(DataLoader):
    """A DataLoader whose state (epoch, batches consumed) goes into Lightning checkpoints, so `--resume`
    continues mid-epoch with the very next batch instead of restarting the epoch."""

    def __init__(self, *args, consumed: Callable[[], int], **kwargs):
        # a generator of its own: a DataLoader draws its workers' base seed when an epoch starts, and drawn from
        # torch's global stream that would shift the dropout masks of a resumed run by one draw
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(*args, **kwargs)
        self._consumed = consumed

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.batch_sampler.epoch), "consumed": int(self._consumed())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.set_epoch(state["epoch"])  # Lightning sets the epoch only after the first fetch
        self.batch_sampler.resume(state["epoch"], state["consumed"])
