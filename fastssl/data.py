"""Training-data loaders. Every loader yields (views, labels) on the training device, ``views`` the list
[global1, global2, *local crops], augmented and normalised, covering its epoch once (drop_last drops
the final partial batch). ``set_global_size(px)`` changes the side of the global views from the next
batch on (progressive resolution; None = the dataset's resolution).

Data-parallel runs (``rank``/``world`` of a loader): ``batch_size`` is the global batch; each global
batch of the epoch's permutation is cut by ``shard_rows`` and rank r yields its contiguous slice,
so every index is seen once per epoch across ranks and the ranks' batches, concatenated in rank
order, are the single-process batch.
"""
from __future__ import annotations

import numpy as np
import torch

from .augment import TwoViewAugment


def to_nchw(images: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy -> uint8 (N, 3, H, W) tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()


def shard_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [r n // K, (r + 1) n // K) of a global batch of n: contiguous, in rank order, a partition."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    return rank * n // world, (rank + 1) * n // world


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed that depends only on (seed, epoch): a resumed run replays the same epochs."""
    return seed * 1_000_003 + epoch


class ResidentLoader:
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_global_size(self, px: int | None) -> None:
        """Render the global views at ``px`` x ``px`` from the next batch on (None: full resolution).
        The random parameters drawn do not depend on the size: only the rendering changes."""
        if px != self.augment.size:
            self.augment = self.augment.replace(size=px)

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
