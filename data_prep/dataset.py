"""The canonical in-memory dataset: uint8 HWC images and int64 labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGE_SHAPE = (32, 32, 3)


@dataclass(eq=False)
class Dataset:
    """A train/test split in canonical form.

    ``train_x``/``test_x`` are uint8 arrays of shape (N, 32, 32, 3), RGB, channels last;
    ``train_y``/``test_y`` are int64 arrays of shape (N,) with values in ``range(num_classes)``;
    ``classes[i]`` is the name of label ``i``; ``source`` says where the data came from and
    ``cache_path`` is the cache file holding these arrays (None if not cached).
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str
    cache_path: Path | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean of ``train_x`` on the 0-255 scale."""
        return self._train_stats[0]

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel (population) standard deviation of ``train_x`` on the 0-255 scale."""
        return self._train_stats[1]

    @cached_property
    def _train_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return channel_stats(self.train_x)

    def validate(self, num_classes: int | None = None) -> None:
        """Raise DataError unless arrays, labels and class names are consistent."""
        if num_classes is not None and self.num_classes != num_classes:
            raise DataError(
                f"{self.source}: found {self.num_classes} classes, {self.name} needs {num_classes}"
            )
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPE:
                raise DataError(f"{self.source}: {split} images are not uint8 (N, 32, 32, 3)")
            if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (len(x),):
                raise DataError(f"{self.source}: {split} labels do not match the {len(x)} images")
            if len(x) == 0:
                raise DataError(f"{self.source}: {split} split is empty")
            if y.min() < 0 or y.max() >= self.num_classes:
                raise DataError(
                    f"{self.source}: {split} labels outside 0..{self.num_classes - 1} "
                    f"(min {y.min()}, max {y.max()})"
                )

    def summary(self) -> str:
        """A few human-readable lines: counts, classes, statistics, cache."""
        shown = ", ".join(self.classes[:10]) + (", ..." if self.num_classes > 10 else "")
        fmt = lambda v: ", ".join(f"{c:.2f}" for c in v)  # noqa: E731
        lines = [
            f"{self.name}: {len(self.train_x)} train / {len(self.test_x)} test images, "
            f"{self.num_classes} classes",
            f"  source:  {self.source}",
            f"  classes: {shown}",
            f"  train mean (0-255): {fmt(self.mean)}",
            f"  train std  (0-255): {fmt(self.std)}",
            f"  cache:   {self.cache_path if self.cache_path else '(not cached)'}",
        ]
        return "\n".join(lines)


def channel_stats(
    x: np.ndarray, chunk: int = 1024
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Exact per-channel (mean, population std) of a uint8 (N, H, W, 3) array, 0-255 scale.

    Integer sums of values and of squares, accumulated over rows of 256 interleaved RGB pixels
    (a fast contiguous column reduction); uint32 per chunk cannot overflow since
    chunk * H * W / 256 * 255**2 < 2**32 for 32x32 images and chunk <= 1024.
    """
    if len(x) == 0:
        nan = (float("nan"),) * 3
        return nan, nan
    width = 3 * 256
    total = np.zeros(width, dtype=np.uint64)
    total_sq = np.zeros(width, dtype=np.uint64)
    for start in range(0, len(x), chunk):
        block = np.ascontiguousarray(x[start : start + chunk]).reshape(-1, width)
        total += block.sum(axis=0, dtype=np.uint32)
        squares = block.astype(np.uint16)
        squares *= squares  # 255**2 fits in uint16
        total_sq += squares.sum(axis=0, dtype=np.uint32)
    n = x.size // 3
    mean = total.reshape(-1, 3).sum(axis=0) / n
    var = total_sq.reshape(-1, 3).sum(axis=0) / n - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    return (
        tuple(float(v) for v in mean),  # type: ignore[return-value]
        tuple(float(v) for v in std),
    )
