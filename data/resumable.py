"""Data order and augmentation that depend only on (seed, epoch, position): resumable mid-epoch.

A resumed run must see the same batches with the same augmentations as a run that was never
stopped, whatever ``--workers`` is. Two pieces make that hold:

* :class:`EpochBatchSampler` draws the epoch's permutation *and* one augmentation seed per
  position from a generator seeded with ``(seed, epoch)``, and can start at any step (the batches
  already trained on are skipped without being loaded).
* :class:`SeededSamples` applies each sample's transform under its own seed, so the augmentation
  does not depend on which DataLoader worker loads it, nor on what that worker loaded before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["epoch_seed", "EpochBatchSampler", "SeededSamples"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded with ``seed``."""
    return seed * 1_000_003 + epoch


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, augmentation seed)`` pairs; incomplete last batches dropped (published).

    Args:
        n: number of samples.
        batch_size: samples per batch.
        seed: the run's ``--seed``.

    Call :meth:`set_epoch` before iterating; ``start_step`` skips the first batches of that epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        self.epoch, self.start_step = epoch, start_step

    def plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(permutation [n], per-position seeds [n])`` of ``epoch``."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        perm = torch.randperm(self.n, generator=g)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        return perm, seeds

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm, seeds = self.plan(self.epoch)
        perm, seeds = perm.tolist(), seeds.tolist()
        b = self.batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            yield [(perm[i], seeds[i]) for i in range(step * b, (step + 1) * b)]

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is ``dataset[index]`` drawn under torch seed ``seed``.

    The caller's torch RNG state is left as it was (``fork_rng``), so the main process's stream is
    not disturbed when ``--workers 0`` loads in the main process.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
