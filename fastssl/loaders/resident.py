"""The device-resident loader: the whole uint8 dataset on the training device, batches from a (seed, epoch)
permutation, every view from the batched device-side augmentation (the random parameters drawn do not depend
on the rendered size, so ``set_global_size`` changes only the rendering)."""
from __future__ import annotations

import torch

from ..augment import TwoViewAugment
from ..data import epoch_seed, shard_rows
from .common import EpochLoader


class ResidentLoader(EpochLoader):
    """The whole uint8 dataset lives on the device; each epoch is a random permutation of it and
    all views come from the batched device-side augmentation. The fastest path for CIFAR.

    With ``world`` > 1 every rank holds the dataset, draws the same permutation and augmentation
    parameters for the whole global batch, and keeps its slice (``TwoViewAugment(rows=...)``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, augment: TwoViewAugment,
                 seed: int = 0, drop_last: bool = True, rank: int = 0, world: int = 1):
        if len(images) < batch_size and drop_last:
            raise ValueError(f"batch size {batch_size} is larger than the dataset ({len(images)} images)")
        shard_rows(0, rank, world)  # checks the rank
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.augment, self.seed, self.drop_last = augment, seed, drop_last
        self.rank, self.world = rank, world
        self.epoch = 0

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else (n + b - 1) // b

    def __iter__(self):
        gen = torch.Generator(device=self.images.device).manual_seed(epoch_seed(self.seed, self.epoch))
        perm = torch.randperm(len(self.images), generator=gen, device=self.images.device)
        for i in range(len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            if self.world == 1:
                views = self.augment(self.images[idx], generator=gen)
            else:
                lo, hi = shard_rows(len(idx), self.rank, self.world)
                rows = (lo, len(idx))  # draw for the global batch, keep this rank's rows
                idx = idx[lo:hi]
                views = self.augment(self.images[idx], generator=gen, rows=rows)
            yield views, self.labels[idx]
