"""``--loader torch``: the baseline users know: a plain ``torch.utils.data.DataLoader`` whose worker
processes augment one sample at a time (the same ops as the device-side path, run per sample on
the CPU), collate, and the main process moves the batch to the training device.

Each sample's views come from a generator seeded by (seed, epoch, dataset index), so a batch is
the same whatever the number of workers, and a resumed run replays its epochs exactly. The batch
sampler yields (index, epoch, global size) keys, so persistent workers need no notice of
``set_epoch`` or ``set_global_size``. The DataLoader asks its sampler for batches ahead of time, so
after ``set_global_size`` a few prefetched batches still carry the old size: their global views are
rendered again in the main process from the same per-sample seeds (hence exactly the views a worker
would have made), so the new size holds from the very next batch.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..augment import TwoViewAugment
from .common import (EpochLoader, as_indices, batches, check_sizes, epoch_order, finish, num_batches, sample_seed,
                     shard_batches)


class _Views(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: TwoViewAugment, seed: int):
        self.images, self.labels, self.seed = images, labels, seed
        # Per-sample CPU work: plain float32 NCHW; layout and dtype are fixed once per batch.
        self.augment = augment.replace(channels_last=False, out_dtype=torch.float32)
        self._by_size: dict = {}

    def __len__(self) -> int:
        return len(self.images)

    def views(self, index: int, epoch: int, size, local: bool = True) -> list[torch.Tensor]:
        """The views of one sample (the global ones only if not ``local``), each (3, S, S)."""
        key = (size, local)
        if key not in self._by_size:
            self._by_size[key] = self.augment.replace(size=size, **({} if local else {"local_crops": 0}))
        x = torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1).unsqueeze(0)
        gen = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        return [v[0] for v in self._by_size[key](x, generator=gen)]

    def __getitem__(self, key):
        index, epoch, size = key
        return self.views(index, epoch, size), int(self.labels[index]), index


class _EpochBatches:
    """Batch sampler: the epoch's permutation of ``indices`` cut into batches of (index, epoch, global
    size) keys; with several ranks, this rank's slice of each global batch."""

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int, drop_last: bool, rank: int = 0,
                 world: int = 1):
        self.indices, self.batch_size, self.seed, self.drop_last = indices, batch_size, seed, drop_last
        self.rank, self.world = rank, world
        self.epoch, self.size = 0, None

    def __len__(self) -> int:
        return num_batches(len(self.indices), self.batch_size, self.drop_last)

    def __iter__(self):
        epoch = self.epoch
        global_batches = batches(epoch_order(self.indices, self.seed, epoch), self.batch_size, self.drop_last)
        for b in shard_batches(global_batches, self.rank, self.world):
            yield [(int(i), epoch, self.size) for i in b]


class TorchLoader(EpochLoader):
    """DataLoader baseline. ``workers`` processes (default: all CPU cores, at most 8). Per-sample seeds
    make a rank's shard (``rank``/``world``) identical to those rows of the single-process batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices, batch_size: int, augment: TwoViewAugment,
                 device, seed: int = 0, drop_last: bool = True, workers: int | None = None, prefetch: int = 4,
                 rank: int = 0, world: int = 1):
        idx = as_indices(indices, len(images))
        check_sizes(len(idx), batch_size, drop_last)
        self.device, self.augment, self.batch_size = torch.device(device), augment, batch_size
        self.resolution = tuple(images.shape[1:3])
        workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.sampler = _EpochBatches(idx, batch_size, seed, drop_last, rank, world)
        self.sampler.size = augment.size
        self.dataset = _Views(images, labels, augment, seed)
        self.loader = DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers > 0 else None,
        )

    def set_global_size(self, px: int | None) -> None:
        super().set_global_size(px)
        self.sampler.size = px  # the workers render batches they are asked for at this size

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        self.sampler.epoch = epoch = self.epoch
        side = lambda: self.augment.global_side(*self.resolution)  # noqa: E731
        for views, y, index in self.loader:
            if views[0].shape[-1] != side():  # prefetched before set_global_size: render its global views again
                size = self.sampler.size
                redo = [self.dataset.views(int(i), epoch, size, local=False) for i in index]
                views = [torch.stack(v) for v in zip(*redo)] + list(views[2:])
            yield ([finish(self.augment, v.to(self.device, non_blocking=True)) for v in views],
                   y.to(self.device, non_blocking=True))

    def close(self) -> None:
        """Stop the persistent worker processes (they also stop at exit)."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None
