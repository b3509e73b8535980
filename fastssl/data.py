"""The data rules every loader (``fastssl.loaders``) follows: uint8 NHWC arrays to NCHW device tensors, the
(seed, epoch) seed of an epoch's permutation, and ``shard_rows``, the cut of a global batch over ranks.

Data-parallel runs (``rank``/``world`` of a loader): ``batch_size`` is the global batch; each global
batch of the epoch's permutation is cut by ``shard_rows`` and rank r yields its contiguous slice,
so every index is seen once per epoch across ranks and the ranks' batches, concatenated in rank
order, are the single-process batch.
"""
from __future__ import annotations

import numpy as np
import torch


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
