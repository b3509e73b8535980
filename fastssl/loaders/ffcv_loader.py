"""``--loader ffcv``: an FFCV ``Loader`` over a ``.beton`` (raw or JPEG image field): decoding on
FFCV's CPU threads, ``ToDevice`` to the training device, then the views.

Two ways to make the two views (``crops``):

- ``"device"`` (default): FFCV delivers the decoded uint8 batch; all views come from the same
  batched device-side augmentation as ``--loader resident`` (one decode per image), so local crops
  (multi-crop) and ``set_global_size`` (progressive resolution) work as there.
- ``"ffcv"``: the geometric part runs on FFCV's CPU threads. FFCV cannot natively make two random
  crops of one decoded image (its crop lives inside the decoder, so a second ``PipelineSpec``
  decodes every image twice); :class:`TwoViewCropFlip` is an FFCV ``Operation``, compiled with
  numba, that cuts both random resized crops (torchvision ``RandomResizedCrop`` sampling, bilinear,
  the same pixel-centre convention as the device path) and flips them from one decoded image. The
  colour part of the policy then runs on the device. The operation's output shape is fixed when
  FFCV compiles the pipeline: this mode refuses local crops and global sizes other than the one it
  was built with (``UnsupportedOption``, one line).

Order: a custom FFCV ``TraversalOrder`` gives the same permutation of the epoch as the other
loaders (``common.epoch_order(indices, seed, epoch)``); the device-side augmentation draws
from a generator seeded with ``epoch_seed(seed, epoch)``, so an epoch is reproducible, resume
included. In ``"ffcv"`` crop mode each sample's crops are seeded from (seed, its index, its batch's
first and last index), which the epoch's order fixes: reproducible as well.

Data-parallel (``rank``/``world``, ``drop_last`` only): the traversal order handed to FFCV is this
rank's contiguous slice of every global batch of the epoch's permutation, one after the other, and
FFCV batches it by the local batch B / world. With device crops the augmentation parameters are
drawn for the global batch and sliced (the rank gets exactly those rows of the single-process
views); with ``crops="ffcv"`` a sample's crop seed involves its local batch, so crops are
reproducible but differ from a single-process run's.

FFCV pitfalls handled here: batch buffers are reused (labels are copied; views are new tensors),
an epoch abandoned mid-way is shut down properly (terminate, drain, join) so that the process does
not hang or abort at exit, ``NUMBA_CACHE_DIR`` defaults to ``<fastssl cache>/numba`` and numba's threading
layer to OpenMP (``data_prep.numba_env``: its TBB layer can hang the process at exit), and the
torch thread count that importing ffcv resets to 1 is restored (FFCV then sets it to its worker
count, which on a CPU device defaults to that same thread count).
"""
from __future__ import annotations

import os
import queue
from dataclasses import replace

import numpy as np
import torch

from data_prep.formats import require
from data_prep.numba_env import prepare_numba

from ..augment import AugmentPolicy, TwoViewAugment, augment_view
from ..data import epoch_seed
from .common import (EpochLoader, as_indices, batches, check_sizes, colour_only, epoch_order, finish,
                     refuse_local_crops, shard_batches)

CROPS = ("device", "ffcv")

prepare_numba(cache_dir=False)  # numba's OpenMP threading layer, before anything here starts numba


def _ffcv():
    threads = torch.get_num_threads()
    require("ffcv.loader", "--loader ffcv")
    torch.set_num_threads(threads)  # importing ffcv sets torch's thread count to 1: undo that
    import ffcv.fields.decoders as decoders
    import ffcv.loader as loader
    import ffcv.transforms as transforms
    return loader, decoders, transforms


# --------------------------------------------------------------------------------------------
# The numba kernels of the two-crop operation
# --------------------------------------------------------------------------------------------

_KERNELS = None


def _kernels():
    """Compile (once per process; cached on disk by numba) the per-image crop kernels."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    prepare_numba()
    from numba import njit

    @njit(cache=True, fastmath=False, nogil=True)
    def sample_box(height, width, s_lo, s_hi, logr_lo, logr_hi):
        """torchvision RandomResizedCrop.get_params: 10 tries, else the ratio-clipped centre."""
        area = height * width
        for _ in range(10):
            target = area * (s_lo + (s_hi - s_lo) * np.random.random())
            aspect = np.exp(logr_lo + (logr_hi - logr_lo) * np.random.random())
            cw = np.rint(np.sqrt(target * aspect))
            ch = np.rint(np.sqrt(target / aspect))
            if 0 < cw <= width and 0 < ch <= height:
                top = min(np.floor(np.random.random() * (height - ch + 1)), height - ch)
                left = min(np.floor(np.random.random() * (width - cw + 1)), width - cw)
                return int(top), int(left), int(ch), int(cw)
        in_ratio = width / height
        if in_ratio < np.exp(logr_lo):
            fw, fh = width, int(np.rint(width / np.exp(logr_lo)))
        elif in_ratio > np.exp(logr_hi):
            fw, fh = int(np.rint(height * np.exp(logr_hi))), height
        else:
            fw, fh = width, height
        return (height - fh) // 2, (width - fw) // 2, fh, fw

    @njit(cache=True, fastmath=False, nogil=True)
    def crop_resize_flip(img, out, top, left, ch, cw, flip):
        """Bilinear resize of img[top:top+ch, left:left+cw] to out (S, S, 3), sample points at
        pixel centres (align_corners=False) clamped to the box, mirrored if ``flip``."""
        size = out.shape[0]
        for oy in range(size):
            y = top + (oy + 0.5) * ch / size - 0.5
            y = min(max(y, top), top + ch - 1)
            y0 = int(np.floor(y))
            y1 = min(y0 + 1, top + ch - 1)
            wy = y - y0
            for ox in range(size):
                sx = size - 1 - ox if flip else ox
                x = left + (sx + 0.5) * cw / size - 0.5
                x = min(max(x, left), left + cw - 1)
                x0 = int(np.floor(x))
                x1 = min(x0 + 1, left + cw - 1)
                wx = x - x0
                for c in range(3):
                    top_v = img[y0, x0, c] * (1 - wx) + img[y0, x1, c] * wx
                    bot_v = img[y1, x0, c] * (1 - wx) + img[y1, x1, c] * wx
                    v = top_v * (1 - wy) + bot_v * wy
                    out[oy, ox, c] = np.uint8(min(max(np.rint(v), 0.0), 255.0))

    @njit(cache=True, nogil=True)
    def sample_seed(seed, index, first, last):
        """splitmix64 of the key, 32 bits (what np.random.seed takes)."""
        z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(index) * np.uint64(0xBF58476D1CE4E5B9)
        z = z + np.uint64(first) * np.uint64(0x94D049BB133111EB) + np.uint64(last)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return np.uint32(z & np.uint64(0xFFFFFFFF))

    _KERNELS = sample_box, crop_resize_flip, sample_seed
    return _KERNELS


def make_two_view_crop_flip(size: int, view1: AugmentPolicy, view2: AugmentPolicy, seed: int):
    """An FFCV Operation: decoded uint8 (B, H, W, 3) -> (B, 2, size, size, 3) crops + flips."""
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation

    class TwoViewCropFlip(Operation):
        def __init__(self):
            super().__init__()
            self.size, self.views, self.seed = int(size), (view1, view2), int(seed) % 2**63

        def declare_state_and_memory(self, previous_state):
            shape = (2, self.size, self.size, 3)
            return replace(previous_state, shape=shape, dtype=np.dtype("uint8"), jit_mode=True), \
                AllocationQuery(shape, np.dtype("uint8"))

        def generate_code(self):
            sample_box, crop_resize_flip, sample_seed = _kernels()
            my_range = Compiler.get_iterator()
            seed = self.seed
            params = np.array([[p.crop_scale[0], p.crop_scale[1], np.log(p.crop_ratio[0]), np.log(p.crop_ratio[1]),
                                p.flip_p] for p in self.views], dtype=np.float64)

            def two_crops(images, dst, indices):
                n = images.shape[0]
                height, width = images.shape[1], images.shape[2]
                for i in my_range(n):
                    np.random.seed(sample_seed(seed, indices[i], indices[0], indices[n - 1]))
                    for v in range(2):
                        top, left, ch, cw = sample_box(height, width, params[v, 0], params[v, 1],
                                                       params[v, 2], params[v, 3])
                        flip = np.random.random() < params[v, 4]
                        crop_resize_flip(images[i], dst[i, v], top, left, ch, cw, flip)
                return dst

            two_crops.is_parallel = True
            two_crops.with_indices = True
            return two_crops

    return TwoViewCropFlip()


# --------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------

def _epoch_order_class(seed: int, batch_size: int = 0, rank: int = 0, world: int = 1):
    """FFCV TraversalOrder of the shared epoch permutation; with several ranks, this rank's slices of
    the global batches of ``batch_size``, concatenated (FFCV then batches by batch_size / world)."""
    from ffcv.traversal_order.base import TraversalOrder

    class EpochOrder(TraversalOrder):
        """The epoch's permutation shared by every fastssl loader. FFCV's Loader wants an
        instance of TraversalOrder that it then calls with itself: ``__call__`` binds it."""

        def __init__(self, loader=None):
            if loader is not None:
                super().__init__(loader)

        def __call__(self, loader):
            return EpochOrder(loader)

        def sample_order(self, epoch: int):
            order = epoch_order(np.asarray(self.indices, dtype=np.int64), seed, epoch)
            if world == 1:
                return order
            return np.concatenate(shard_batches(batches(order, batch_size, True), rank, world))

    return EpochOrder()


def _shutdown(it) -> None:
    """Stop an FFCV EpochIterator: signal, drain its queue until the thread ends, join, release."""
    alive = it.is_alive()
    it.terminate_event.set()
    while it.is_alive():
        try:
            it.output_queue.get(timeout=0.05)
        except queue.Empty:
            pass
    it.join()
    if alive:
        it.close()


class FFCVLoader(EpochLoader):
    """FFCV loader over the ``.beton`` at ``path`` (fields ``image``, ``label``)."""

    def __init__(self, path, indices, batch_size: int, augment: TwoViewAugment, device, seed: int = 0,
                 drop_last: bool = True, workers: int | None = None, crops: str = "device",
                 batches_ahead: int = 3, num_images: int | None = None, rank: int = 0, world: int = 1,
                 resolution: int = 32):
        loader_mod, decoders, transforms = _ffcv()
        if crops not in CROPS:
            raise ValueError(f"crops must be one of {CROPS}, got {crops!r}")
        if crops == "ffcv":
            refuse_local_crops(augment, "--loader ffcv with FFCV-side crops")
        # The side FFCV-side crops are cut at (fixed when FFCV compiles the pipeline).
        self.crop_size = augment.size or resolution
        if crops == "ffcv":  # the operation's output shape is fixed when FFCV compiles the pipeline
            self.fixed_size, self.what = self.crop_size, "--loader ffcv with FFCV-side crops"
        if world > 1 and (batch_size % world or not drop_last):
            raise ValueError(f"--loader ffcv on {world} ranks needs drop_last and a global batch divisible by "
                             f"{world}, got {batch_size}")
        self.rank, self.world = rank, world
        self.device, self.augment, self.seed, self.crops = torch.device(device), augment, seed, crops
        self.batch_size, self.drop_last = batch_size, drop_last
        # FFCV sets torch's intra-op thread count to its worker count: on a CPU device keep it as is.
        if workers is None:
            workers = torch.get_num_threads() if self.device.type == "cpu" else min(16, os.cpu_count() or 1)
        image = [decoders.SimpleRGBImageDecoder()]
        if crops == "ffcv":
            image.append(make_two_view_crop_flip(self.crop_size, augment.view1, augment.view2, seed))
        image += [transforms.ToTensor(), transforms.ToDevice(self.device, non_blocking=True)]
        if crops == "device":
            image.append(transforms.ToTorchImage(channels_last=True))  # NCHW view, no copy
        label = [decoders.IntDecoder(), transforms.ToTensor(), transforms.Squeeze(),
                 transforms.ToDevice(self.device, non_blocking=True)]
        self.loader = loader_mod.Loader(
            str(path), batch_size=batch_size // world, num_workers=workers,
            order=_epoch_order_class(seed, batch_size, rank, world),
            seed=seed, indices=None if indices is None else as_indices(indices, num_images or 2**62),
            drop_last=drop_last, os_cache=True, batches_ahead=batches_ahead,
            pipelines={"image": image, "label": label},
        )
        check_sizes(len(self.loader.indices), batch_size, drop_last)
        self.colour = (colour_only(augment.view1), colour_only(augment.view2))

    def __len__(self) -> int:
        return len(self.loader)

    def _views(self, images: torch.Tensor, gen: torch.Generator):
        if self.crops == "device":
            if self.world == 1:
                return self.augment(images, generator=gen)
            local = self.batch_size // self.world  # parameters drawn for the global batch, this rank's rows kept
            return self.augment(images, generator=gen, rows=(self.rank * local, self.batch_size))
        x = images.permute(0, 1, 4, 2, 3).to(torch.float32).div_(255)  # (B, 2, 3, S, S)
        return [finish(self.augment, self.augment._finish(augment_view(x[:, k], self.colour[k], self.crop_size, gen)))
                for k in range(2)]

    def __iter__(self):
        self.loader.next_epoch = self.epoch
        gen = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, self.epoch))
        it = iter(self.loader)
        try:
            for images, labels in it:
                labels = labels.to(torch.int64, copy=True)  # the buffer is reused by FFCV
                yield self._views(images, gen), labels
        finally:
            _shutdown(it)
