"""``--loader dali``: a DALI pipeline that decodes the JPEGs of the ``dali`` webdataset shard
(``device="mixed"``: nvJPEG on the GPU) and makes both views with DALI ops implementing the same
policy as the device-side augmentation; on a CPU-only machine the same pipeline runs with
``device_id=None`` and CPU ops.

Reading: the shard is memory-mapped and JPEG bytes are handed to the pipeline by an
``external_source`` in the order of the epoch's permutation (from the index written next to the
tar), so every index is read exactly once per epoch, a subset (``--train-subset``) is just a
list of indices, and the order depends only on (seed, epoch). ``fn.readers.webdataset`` can read
the same file, but its shuffling is a bounded buffer, not a permutation of the epoch, and it
cannot take a subset or an epoch-seeded order.

Each epoch builds a fresh pipeline seeded with ``epoch_seed(seed, epoch)`` (about 50 ms on CPU):
an epoch's augmentations are then reproducible, resume included, and an epoch abandoned mid-way
leaves nothing behind.

One view, in the order of ``fastssl.augment.augment_view`` (values are floats in [0, 1]):
``fn.random_resized_crop`` (area and log-uniform aspect as the policy, bilinear, no antialiasing,
float output); colour jitter with probability ``jitter_p``: brightness (x f), contrast (blend with
the image's mean luma, via ``fn.reductions.mean``), saturation (blend with the pixel's luma) and
hue (an exact RGB -> HSV -> RGB rotation written with DALI arithmetic; DALI's own ``fn.hue`` is a
linear YIQ approximation), each clamped to [0, 1]; grayscale (ITU-R 601 luma); Gaussian blur
(``fn.gaussian_blur``, sigma ~ U[0.1, 2], 13 taps); solarisation; then the flip and normalisation
in ``fn.crop_mirror_normalize`` (a flip commutes with every colour op). Probabilistic ops are
per-sample ``fn.random.coin_flip`` masks.

Data-parallel (``rank``/``world``): the external source feeds this rank's slice of every global
batch (``shard_batches``); the pipeline's seed is the single-process one on rank 0 and a
splitmix64 of (seed, epoch, rank) elsewhere, so ranks draw independent augmentations (not the
single-process run's parameters for those rows: DALI's per-sample randomness depends on the batch).

Local crops (multi-crop) and global sizes other than the dataset's resolution (progressive
resolution) are refused with one line (``UnsupportedOption``): use the resident, torch or ffcv loader.

Known differences from the device path (checked statistically by tests/test_loaders.py): DALI's
crop box is not rounded to whole pixels, and its fallback when no try fits differs; the JPEG
round trip (quality 90, 4:4:4) changes pixels by about 1 grey level on average.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from data_prep.formats import read_dali_index, require

from ..augment import AugmentPolicy, TwoViewAugment
from ..colour import BLUR_SIGMA
from ..data import epoch_seed
from .common import (EpochLoader, as_indices, batches, check_sizes, epoch_order, num_batches, refuse_local_crops,
                     sample_seed, shard_batches)

_LUMA = (0.299, 0.587, 0.114)
_BLUR_WINDOW = 13


def _dali():
    require("nvidia.dali", "--loader dali")
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator
    return fn, dmath, types, pipeline_def, DALIGenericIterator


def _view(img, policy: AugmentPolicy, size: int, mean, std, gpu: bool):
    """The DALI graph of one view of decoded uint8 HWC images; float HWC normalised output."""
    fn, dm, types, _, _ = _dali()
    arg = (lambda t: t.gpu()) if gpu else (lambda t: t)  # per-sample scalars next to GPU data

    def clamp01(t):
        return dm.clamp(t, 0.0, 1.0)

    def channels(t):
        return t[:, :, 0:1], t[:, :, 1:2], t[:, :, 2:3]

    def luma(t):
        r, g, b = channels(t)
        return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b

    def blend(mask, a, b):  # per-sample choice between two tensors
        m = arg(fn.cast(mask, dtype=types.FLOAT))
        return m * a + (1.0 - m) * b

    def uniform(lo, hi):
        return fn.random.uniform(range=(float(lo), float(hi)))

    def factor(strength):
        return arg(uniform(max(0.0, 1.0 - strength), 1.0 + strength))

    def hue_shift(t, shift):
        r, g, b = channels(t)
        maxc, minc = dm.max(dm.max(r, g), b), dm.min(dm.min(r, g), b)
        delta = maxc - minc
        has = fn.cast(delta > 0, dtype=types.FLOAT)
        d = delta + (1.0 - has)
        hr = (g - b) / d
        hr = hr - 6.0 * dm.floor(hr / 6.0)
        is_r = fn.cast(maxc == r, dtype=types.FLOAT)
        is_g = fn.cast(maxc == g, dtype=types.FLOAT) * (1.0 - is_r)
        h = is_r * hr + is_g * ((b - r) / d + 2.0) + (1.0 - is_r - is_g) * ((r - g) / d + 4.0)
        h = h * has
        s = delta / (maxc + fn.cast(maxc <= 0, dtype=types.FLOAT))
        h = h + 6.0 * shift
        h = h - 6.0 * dm.floor(h / 6.0)
        out = []
        for n in (5.0, 3.0, 1.0):
            k = h + n
            k = k - 6.0 * dm.floor(k / 6.0)
            out.append(maxc * (1.0 - s * dm.clamp(dm.min(k, 4.0 - k), 0.0, 1.0)))
        return clamp01(fn.cat(*out, axis=2))

    identity_crop = (tuple(policy.crop_scale) == (1.0, 1.0) and tuple(policy.crop_ratio) == (1.0, 1.0))
    if identity_crop:
        x = fn.resize(img, size=(size, size), interp_type=types.INTERP_LINEAR, antialias=False, dtype=types.FLOAT)
    else:
        x = fn.random_resized_crop(img, size=(size, size), random_area=list(policy.crop_scale),
                                   random_aspect_ratio=list(policy.crop_ratio), num_attempts=10,
                                   interp_type=types.INTERP_LINEAR, antialias=False, dtype=types.FLOAT)
    x = x * (1.0 / 255.0)

    if policy.jitter_p > 0 and (policy.brightness or policy.contrast or policy.saturation or policy.hue):
        y = x
        if policy.brightness:
            y = clamp01(y * factor(policy.brightness))
        if policy.contrast:
            f = factor(policy.contrast)
            y = clamp01(f * y + (1.0 - f) * fn.reductions.mean(luma(y)))
        if policy.saturation:
            f = factor(policy.saturation)
            y = clamp01(f * y + (1.0 - f) * luma(y))
        if policy.hue:
            y = hue_shift(y, arg(uniform(-policy.hue, policy.hue)))
        x = blend(fn.random.coin_flip(probability=policy.jitter_p), y, x)
    if policy.gray_p > 0:
        g = luma(x)
        x = blend(fn.random.coin_flip(probability=policy.gray_p), fn.cat(g, g, g, axis=2), x)
    if policy.blur_p > 0:
        blurred = fn.gaussian_blur(x, sigma=uniform(*BLUR_SIGMA), window_size=_BLUR_WINDOW)
        x = blend(fn.random.coin_flip(probability=policy.blur_p), blurred, x)
    if policy.solarize_p > 0:
        bright = fn.cast(x >= 0.5, dtype=types.FLOAT)
        x = blend(fn.random.coin_flip(probability=policy.solarize_p), bright * (1.0 - x) + (1.0 - bright) * x, x)
    mirror = fn.random.coin_flip(probability=policy.flip_p) if policy.flip_p > 0 else 0
    return fn.crop_mirror_normalize(x, mirror=mirror, mean=[m / 255 for m in mean], std=[s / 255 for s in std],
                                    dtype=types.FLOAT, output_layout="HWC")


class _Feed:
    """external_source: the epoch's batches as lists of JPEG byte arrays and int64 labels."""

    def __init__(self, data: np.ndarray, offsets, sizes, labels, batch_list):
        self.data, self.offsets, self.sizes, self.labels, self.batch_list = data, offsets, sizes, labels, batch_list

    def __iter__(self):
        for b in self.batch_list:
            yield ([self.data[self.offsets[i]:self.offsets[i] + self.sizes[i]] for i in b],
                   [self.labels[i:i + 1] for i in b])


class DALILoader(EpochLoader):
    """DALI loader over ``dali-<split>.tar`` (+ ``.idx.npz``) written by data_prep."""

    def __init__(self, tar_path, indices, batch_size: int, augment: TwoViewAugment, device, seed: int = 0,
                 drop_last: bool = True, threads: int | None = None, prefetch: int = 2, rank: int = 0,
                 world: int = 1, resolution: int = 32):
        _dali()
        refuse_local_crops(augment, "--loader dali")
        self.size = self.fixed_size = augment.size or resolution
        self.what = "--loader dali"
        self.rank, self.world = rank, world
        from pathlib import Path
        tar_path = Path(tar_path)
        index = read_dali_index(tar_path.with_suffix(".idx.npz"))
        self.data = np.asarray(np.memmap(tar_path, dtype=np.uint8, mode="r"))
        self.offsets, self.sizes, self.labels = index["offsets"], index["sizes"], index["labels"]
        if len(self.offsets) == 0 or int((self.offsets + self.sizes).max()) > len(self.data):
            raise ValueError(f"{tar_path} is shorter than its index says: convert again (python -m data_prep --formats dali)")
        self.indices = as_indices(indices, len(self.labels))
        check_sizes(len(self.indices), batch_size, drop_last)
        self.device, self.augment, self.seed = torch.device(device), augment, seed
        self.batch_size, self.drop_last = batch_size, drop_last
        self.threads = threads or max(1, min(8, os.cpu_count() or 1))
        self.prefetch = prefetch
        if self.device.type == "cuda":
            self.device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        elif self.device.type == "cpu":
            self.device_id = None
        else:
            raise ValueError(f"--loader dali runs on CPU or CUDA, not {self.device}")

    def __len__(self) -> int:
        return num_batches(len(self.indices), self.batch_size, self.drop_last)

    def _pipeline(self, feed: _Feed, seed: int):
        fn, _, types, pipeline_def, _ = _dali()
        gpu = self.device_id is not None
        aug = self.augment

        max_batch = -(-self.batch_size // self.world)  # the largest shard of a global batch

        @pipeline_def(batch_size=max_batch, num_threads=self.threads, device_id=self.device_id,
                      seed=seed, prefetch_queue_depth=self.prefetch)
        def pipe():
            jpegs, labels = fn.external_source(source=feed, num_outputs=2, batch=True,
                                               dtype=[types.UINT8, types.INT64])
            images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
            v1 = _view(images, aug.view1, self.size, aug.mean, aug.std, gpu)
            v2 = _view(images, aug.view2, self.size, aug.mean, aug.std, gpu)
            return v1, v2, (labels.gpu() if gpu else labels)

        return pipe()

    def _finish(self, v: torch.Tensor) -> torch.Tensor:
        v = v.permute(0, 3, 1, 2)  # HWC batch -> NCHW view with channels_last strides
        v = v.to(self.augment.out_dtype)
        return v.contiguous(memory_format=torch.channels_last) if self.augment.channels_last else v.contiguous()

    def __iter__(self):
        _, _, _, _, DALIGenericIterator = _dali()
        order = epoch_order(self.indices, self.seed, self.epoch)
        mine = shard_batches(batches(order, self.batch_size, self.drop_last), self.rank, self.world)
        feed = _Feed(self.data, self.offsets, self.sizes, self.labels, mine)
        seed = epoch_seed(self.seed, self.epoch) if self.rank == 0 else sample_seed(self.seed, self.epoch, self.rank)
        pipe = self._pipeline(feed, seed % 2**31)
        pipe.build()
        it = DALIGenericIterator([pipe], ["v1", "v2", "y"], auto_reset=False)
        try:
            for out in it:
                d = out[0]
                yield [self._finish(d["v1"]), self._finish(d["v2"])], d["y"].reshape(-1).to(self.device)
        finally:
            del it, pipe
