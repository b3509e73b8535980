"""``--loader torch``: the baseline users know: a plain ``torch.utils.data.DataLoader`` whose worker
processes augment one sample at a time (the same ops as the device-side path, run per sample on
the CPU), collate, and the main process moves the batch to the training device.

Each sample's two views come from a generator seeded by (seed, epoch, dataset index), so a batch is
the same whatever the number of workers, and a resumed run replays its epochs exactly. The batch
sampler yields (index, epoch) pairs, so persistent workers need no notice of ``set_epoch``.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..augment import TwoViewAugment
from .common import as_indices, batches, check_sizes, epoch_order, finish, num_batches, sample_seed, shard_batches


class _TwoViews(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: TwoViewAugment, seed: int):
        self.images, self.labels, self.seed = images, labels, seed
        # Per-sample CPU work: plain float32 NCHW; layout and dtype are fixed once per batch.
        self.augment = TwoViewAugment(augment.view1, augment.view2, augment.mean, augment.std,
                                      size=augment.size, channels_last=False)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index, epoch = key
        x = torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1).unsqueeze(0)
        gen = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        v1, v2 = self.augment(x, generator=gen)
        return v1[0], v2[0], int(self.labels[index])


class _EpochBatches:
    """Batch sampler: the epoch's permutation of ``indices`` cut into batches of (index, epoch); with
    several ranks, this rank's slice of each global batch."""

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int, drop_last: bool, rank: int = 0,
                 world: int = 1):
        self.indices, self.batch_size, self.seed, self.drop_last = indices, batch_size, seed, drop_last
        self.rank, self.world = rank, world
        self.epoch = 0

    def __len__(self) -> int:
        return num_batches(len(self.indices), self.batch_size, self.drop_last)

    def __iter__(self):
        epoch = self.epoch
        global_batches = batches(epoch_order(self.indices, self.seed, epoch), self.batch_size, self.drop_last)
        for b in shard_batches(global_batches, self.rank, self.world):
            yield [(int(i), epoch) for i in b]


class TorchLoader:
    """DataLoader baseline. ``workers`` processes (default: all CPU cores, at most 8). Per-sample seeds
    make a rank's shard (``rank``/``world``) identical to those rows of the single-process batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices, batch_size: int, augment: TwoViewAugment,
                 device, seed: int = 0, drop_last: bool = True, workers: int | None = None, prefetch: int = 4,
                 rank: int = 0, world: int = 1):
        idx = as_indices(indices, len(images))
        check_sizes(len(idx), batch_size, drop_last)
        self.device, self.augment, self.batch_size = torch.device(device), augment, batch_size
        workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.sampler = _EpochBatches(idx, batch_size, seed, drop_last, rank, world)
        self.loader = DataLoader(
            _TwoViews(images, labels, augment, seed), batch_sampler=self.sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers > 0 else None,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        self.sampler.epoch = self.epoch
        for v1, v2, y in self.loader:
            yield (finish(self.augment, v1.to(self.device, non_blocking=True)),
                   finish(self.augment, v2.to(self.device, non_blocking=True)),
                   y.to(self.device, non_blocking=True))

    def close(self) -> None:
        """Stop the persistent worker processes (they also stop at exit)."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None
