"""Training-data loaders. Every loader yields (view1, view2, labels) on the training device, the
views augmented and normalised, covering its epoch once (drop_last drops the final partial batch).
"""
from __future__ import annotations

import numpy as np
import torch

from .augment import TwoViewAugment


def to_nchw(images: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy -> uint8 (N, 3, H, W) tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed that depends only on (seed, epoch): a resumed run replays the same epochs."""
    return seed * 1_000_003 + epoch


class ResidentLoader:
    """The whole uint8 dataset lives on the device; each epoch is a random permutation of it and
    both views come from the batched device-side augmentation. The fastest path for CIFAR."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, augment: TwoViewAugment,
                 seed: int = 0, drop_last: bool = True):
        if len(images) < batch_size and drop_last:
            raise ValueError(f"batch size {batch_size} is larger than the dataset ({len(images)} images)")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.augment, self.seed, self.drop_last = augment, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else (n + b - 1) // b

    def __iter__(self):
        gen = torch.Generator(device=self.images.device).manual_seed(epoch_seed(self.seed, self.epoch))
        perm = torch.randperm(len(self.images), generator=gen, device=self.images.device)
        for i in range(len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            v1, v2 = self.augment(self.images[idx], generator=gen)
            yield v1, v2, self.labels[idx]
