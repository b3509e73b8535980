"""The canonical in-memory dataset: uint8 HWC images and int64 labels (-1 when unlabelled)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import DataError

UNLABELED = -1  # the label of every image of an unlabelled dataset


@dataclass(eq=False)
class Dataset:
    """A train/test split in canonical form.

    ``train_x``/``test_x`` are uint8 arrays of shape (N, R, R, 3), RGB, channels last (R = 32
    for CIFAR); ``train_y``/``test_y`` are int64 arrays of shape (N,) with values in
    ``range(num_classes)``; ``classes[i]`` is the name of label ``i``; ``source`` says where the
    data came from and ``cache_path`` is the cache file holding these arrays (None if not cached).

    ``labeled`` is False for a folder of images without class sub-folders: then every train
    label is -1, the test split is empty (shape (0, R, R, 3) and (0,)) and ``classes`` is [].
    ``skipped`` names the image files that could not be decoded and were left out.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str
    cache_path: Path | None = field(default=None, repr=False)
    labeled: bool = True
    skipped: list[str] = field(default_factory=list, repr=False)  # broken files left out

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def resolution(self) -> int:
        """Side R of the square images (32 for CIFAR)."""
        return int(self.train_x.shape[1])

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

    def validate(self, num_classes: int | None = None, resolution: int | None = None) -> None:
        """Raise DataError unless arrays, labels and class names are consistent.

        ``resolution``: the side R the images must have (default: whatever the train split has,
        the same for both splits).
        """
        if num_classes is not None and self.num_classes != num_classes:
            raise DataError(
                f"{self.source}: found {self.num_classes} classes, {self.name} needs {num_classes}"
            )
        if resolution is None:
            shape = getattr(self.train_x, "shape", ())
            resolution = shape[1] if len(shape) == 4 and shape[1] > 0 else 32
        image_shape = (resolution, resolution, 3)
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape[1:] != image_shape:
                raise DataError(
                    f"{self.source}: {split} images are not uint8 (N, {resolution}, {resolution}, 3)"
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (len(x),):
                raise DataError(f"{self.source}: {split} labels do not match the {len(x)} images")
            if not self.labeled:
                if split == "test" and len(x):
                    raise DataError(f"{self.source}: an unlabelled dataset has no test split")
                if self.classes or (y != UNLABELED).any():
                    raise DataError(f"{self.source}: an unlabelled dataset has labels")
                if split == "train" and len(x) == 0:
                    raise DataError(f"{self.source}: no images")
                continue
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
        kind = f"{self.num_classes} classes" if self.labeled else "unlabelled"
        lines = [
            f"{self.name}: {len(self.train_x)} train / {len(self.test_x)} test images, {kind}, "
            f"{self.resolution}x{self.resolution}",
            f"  source:  {self.source}",
            f"  classes: {shown if self.labeled else '(none: unlabelled)'}",
            f"  train mean (0-255): {fmt(self.mean)}",
            f"  train std  (0-255): {fmt(self.std)}",
            f"  cache:   {self.cache_path if self.cache_path else '(not cached)'}",
        ]
        if self.skipped:
            lines.append(f"  skipped: {len(self.skipped)} broken image files")
        return "\n".join(lines)


def channel_stats(
    x: np.ndarray, chunk: int = 1024
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Exact per-channel (mean, population std) of a uint8 (N, H, W, 3) array, 0-255 scale.

    Integer sums of values and of squares, accumulated over rows of ``g`` interleaved RGB pixels,
    g = gcd(H * W, 256) (a fast contiguous column reduction; g = 256 for 32x32 images). Each
    column of a chunk sums chunk * H * W / g values below 2**16, so the chunk is capped to keep
    that under 2**32 (uint32 per chunk cannot overflow) and the block near 64 MiB.
    """
    if len(x) == 0:
        nan = (float("nan"),) * 3
        return nan, nan
    pixels = x.shape[1] * x.shape[2]
    group = math.gcd(pixels, 256)
    rows_per_image = pixels // group
    chunk = max(1, min(chunk, (2**32 - 1) // (255**2 * rows_per_image), (1 << 25) // (3 * pixels)))
    width = 3 * group
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
