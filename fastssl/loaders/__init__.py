"""Training-data loaders, chosen with ``--loader {resident,ffcv,dali,torch}``.

Every loader has the contract of :class:`fastssl.data.ResidentLoader`: ``set_epoch(e)``,
``len(loader)`` batches, and iterating yields ``(view1, view2, labels)`` on the training device:
two augmented, normalised float views (channels_last when the augmentation asks for it) and int64
labels. An epoch visits every training index exactly once, in a permutation that depends only on
(seed, epoch); with ``drop_last`` (the default, as in training) the last ``n % batch_size``
indices of the permutation are left out of that epoch.

Data-parallel (``rank``, ``world``): ``batch_size`` is the global batch and ``len(loader)`` the
number of global steps; rank r yields rows ``shard_rows(len(batch), r, world)`` of each global batch
of that same permutation (each index once per epoch across ranks). resident, torch and ffcv with
device crops give a rank exactly those rows of the single-process views; ffcv's ``crops="ffcv"``
and dali draw their own (reproducible, equally distributed) augmentation parameters per rank.

- ``resident``: the uint8 dataset on the device, device-side augmentation (the default).
- ``ffcv``: FFCV ``Loader`` over an FFCV ``.beton`` (converted once into the cache).
- ``dali``: DALI pipeline over a webdataset tar of JPEGs (nvJPEG on GPU; CPU ops without one).
- ``torch``: plain ``DataLoader``, per-sample augmentation in worker processes (the baseline).

``ffcv`` needs ``pip install 'fastssl[ffcv]'``, ``dali`` needs ``pip install 'fastssl[dali]'``;
without them :class:`data_prep.formats.MissingPackage` says so.
"""
from __future__ import annotations

import numpy as np
import torch

from data_prep.formats import MissingPackage, ensure_formats

from ..augment import TwoViewAugment
from ..data import ResidentLoader, to_nchw

LOADERS = ("resident", "ffcv", "dali", "torch")

__all__ = ["LOADERS", "MissingPackage", "build_loader", "make_loader"]


def make_loader(name: str, ds, indices, batch_size: int, augment: TwoViewAugment, device, seed: int = 0,
                drop_last: bool = True, cache_dir=None, verbose: bool = True, rank: int = 0, world: int = 1,
                **options):
    """The loader ``name`` over ``ds.train_x[indices]`` (all of it when ``indices`` is None).

    ``ds`` is a data_prep Dataset (only the train split is used). FFCV/DALI files are converted
    on first use into the cache (``cache_dir``, else $FASTSSL_CACHE, else ~/.cache/fastssl).
    ``options`` go to the loader class: ``workers`` (torch, ffcv), ``threads`` (dali),
    ``mode`` ('raw' or 'jpg', ffcv), ``crops`` ('device' or 'ffcv', ffcv).
    """
    device = torch.device(device)
    idx = np.arange(len(ds.train_y)) if indices is None else np.asarray(indices, dtype=np.int64)
    if name == "resident":
        images = to_nchw(ds.train_x[idx], device)
        labels = torch.from_numpy(np.ascontiguousarray(ds.train_y[idx], dtype=np.int64)).to(device)
        return ResidentLoader(images, labels, batch_size, augment, seed=seed, drop_last=drop_last,
                              rank=rank, world=world)
    if name == "torch":
        from .torch_loader import TorchLoader
        return TorchLoader(ds.train_x, ds.train_y, idx, batch_size, augment, device, seed=seed,
                           drop_last=drop_last, rank=rank, world=world, **options)
    if name == "ffcv":
        from .ffcv_loader import FFCVLoader, _ffcv
        _ffcv()  # say what is missing before converting anything
        fmt = f"ffcv-{options.pop('mode', 'raw')}"
        path = ensure_formats(ds, [fmt], splits=("train",), cache_dir=cache_dir, verbose=verbose)[(fmt, "train")]
        return FFCVLoader(path, idx, batch_size, augment, device, seed=seed, drop_last=drop_last,
                          num_images=len(ds.train_y), rank=rank, world=world, **options)
    if name == "dali":
        from .dali_loader import DALILoader, _dali
        _dali()
        path = ensure_formats(ds, ["dali"], splits=("train",), cache_dir=cache_dir, verbose=verbose)[("dali", "train")]
        return DALILoader(path, idx, batch_size, augment, device, seed=seed, drop_last=drop_last,
                          rank=rank, world=world, **options)
    raise ValueError(f"unknown loader {name!r}; choose one of {', '.join(LOADERS)}")


def build_loader(cfg, ds, indices, augment: TwoViewAugment, device, rank: int = 0, world: int = 1):
    """The training loader ``cfg.loader`` (default resident) for a resolved Config; ``cfg.batch_size``
    is the global batch, this rank gets its shard of each."""
    return make_loader(cfg.loader or "resident", ds, indices, cfg.batch_size, augment, device, seed=cfg.seed,
                       verbose=cfg.progress and rank == 0, rank=rank, world=world)
