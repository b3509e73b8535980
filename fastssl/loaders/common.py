"""Pieces shared by the loaders: epoch order, batch counts, the output contract."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..augment import AugmentPolicy, TwoViewAugment
from ..data import epoch_seed, shard_rows


class UnsupportedOption(ValueError):
    """A loader cannot do what was asked (e.g. local crops with ``--loader dali``); one-line message."""


def refuse_local_crops(augment: TwoViewAugment, what: str) -> None:
    if augment.local_crops:
        raise UnsupportedOption(f"{what} cannot make local crops (--local-crops {augment.local_crops}); "
                                f"use --loader resident, torch or ffcv (device crops)")


def refuse_global_size(px, resolution: int, what: str) -> None:
    if px is not None and px != resolution:
        raise UnsupportedOption(f"{what} renders global views at the dataset's {resolution} px only, not {px} px "
                                f"(--res-schedule); use --loader resident, torch or ffcv (device crops)")


class EpochLoader:
    """The setters every loader shares. ``set_epoch(e)``: the epoch the next iteration covers.
    ``set_global_size(px)``: global views at ``px`` x ``px`` from the next batch on (None: the
    dataset's resolution), re-rendered through ``self.augment``; a loader whose pipeline is built for
    one size sets ``fixed_size`` (and ``what``, for the message) and refuses any other."""

    epoch = 0
    fixed_size: int | None = None
    what = "this loader"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_global_size(self, px: int | None) -> None:
        if self.fixed_size is not None:
            refuse_global_size(px, self.fixed_size, self.what)
        elif px != self.augment.size:
            self.augment = self.augment.replace(size=px)

    def close(self) -> None:
        """Stop worker processes or threads (none by default)."""


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else (n + batch_size - 1) // batch_size


def check_sizes(n: int, batch_size: int, drop_last: bool) -> None:
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if n == 0 or (drop_last and n < batch_size):
        raise ValueError(f"batch size {batch_size} is larger than the dataset ({n} images)")


def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``indices`` that depends only on (seed, epoch)."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return indices[torch.randperm(len(indices), generator=gen).numpy()]


def batches(order: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    return [order[i * batch_size:(i + 1) * batch_size]
            for i in range(num_batches(len(order), batch_size, drop_last))]


def shard_batches(batch_list: list[np.ndarray], rank: int, world: int) -> list[np.ndarray]:
    """This rank's contiguous slice of every global batch (``shard_rows``); the identity for one rank."""
    if world == 1:
        return batch_list
    return [b[slice(*shard_rows(len(b), rank, world))] for b in batch_list]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (a splitmix64 step of a mixed key)."""
    z = (epoch_seed(seed, epoch) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) >> 1


def colour_only(policy: AugmentPolicy) -> AugmentPolicy:
    """``policy`` without its geometric part (crop and flip done elsewhere)."""
    return dataclasses.replace(policy, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0)


def finish(augment: TwoViewAugment, v: torch.Tensor) -> torch.Tensor:
    """A normalised float (B, 3, H, W) view -> the contract's dtype and memory format."""
    v = v.to(augment.out_dtype)
    return v.contiguous(memory_format=torch.channels_last) if augment.channels_last else v.contiguous()


def as_indices(indices, n: int) -> np.ndarray:
    idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"indices must lie in [0, {n})")
    if len(np.unique(idx)) != len(idx):
        raise ValueError("indices must be distinct")
    return idx
