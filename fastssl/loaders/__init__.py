"""Training-data loaders, chosen with ``--loader {resident,ffcv,dali,torch}``.

Every loader has the contract of :class:`fastssl.loaders.resident.ResidentLoader` (the others share its setters
through ``common.EpochLoader``): ``set_epoch(e)``, ``set_global_size(px)``, ``len(loader)`` batches,
and iterating yields ``(views, labels)`` on the
training device: ``views`` the list [global1, global2, *local crops] of augmented, normalised float
views (channels_last when the augmentation asks for it; ``augment.local_crops`` local crops of
``augment.local_size`` px) and int64 labels. ``set_global_size(px)`` renders the global views at
px x px from the next batch on (progressive resolution; None = the dataset's resolution).
An epoch visits every training index exactly once, in a permutation that depends only on
(seed, epoch); with ``drop_last`` (the default, as in training) the last ``n % batch_size``
indices of the permutation are left out of that epoch.

Data-parallel (``rank``, ``world``): ``batch_size`` is the global batch and ``len(loader)`` the
number of global steps; rank r yields rows ``shard_rows(len(batch), r, world)`` of each global batch
of that same permutation (each index once per epoch across ranks). resident, torch and ffcv with
device crops give a rank exactly those rows of the single-process views; ffcv's ``crops="ffcv"``
and dali draw their own (reproducible, equally distributed) augmentation parameters per rank.

- ``resident``: the uint8 dataset on the device, device-side augmentation (the default).
- ``ffcv``: FFCV ``Loader`` over an FFCV ``.beton`` (converted once into the cache). With
  ``crops="ffcv"`` it refuses local crops and other global sizes (``UnsupportedOption``).
- ``dali``: DALI pipeline over a webdataset tar of JPEGs (nvJPEG on GPU; CPU ops without one).
  Refuses local crops and other global sizes (``UnsupportedOption``, one line).
- ``torch``: plain ``DataLoader``, per-sample augmentation in worker processes (the baseline).

``ffcv`` needs ``pip install 'fastssl[ffcv]'``, ``dali`` needs ``pip install 'fastssl[dali]'``;
without them :class:`data_prep.formats.MissingPackage` says so.
"""
from __future__ import annotations

import numpy as np
import torch

from data_prep.formats import MissingPackage, ensure_formats

from ..augment import TwoViewAugment
from ..data import to_nchw
from .common import UnsupportedOption, refuse_local_crops
from .resident import ResidentLoader

LOADERS = ("resident", "ffcv", "dali", "torch")

__all__ = ["LOADERS", "MissingPackage", "UnsupportedOption", "build_loader", "make_loader"]


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
    resolution = int(ds.train_x.shape[1])
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
        _ffcv()  # say what is missing (or unsupported) before converting anything
        if options.get("crops") == "ffcv":
            refuse_local_crops(augment, "--loader ffcv with FFCV-side crops")
        fmt = f"ffcv-{options.pop('mode', 'raw')}"
        path = ensure_formats(ds, [fmt], splits=("train",), cache_dir=cache_dir, verbose=verbose)[(fmt, "train")]
        return FFCVLoader(path, idx, batch_size, augment, device, seed=seed, drop_last=drop_last,
                          num_images=len(ds.train_y), rank=rank, world=world, resolution=resolution, **options)
    if name == "dali":
        from .dali_loader import DALILoader, _dali
        _dali()
        refuse_local_crops(augment, "--loader dali")
        path = ensure_formats(ds, ["dali"], splits=("train",), cache_dir=cache_dir, verbose=verbose)[("dali", "train")]
        return DALILoader(path, idx, batch_size, augment, device, seed=seed, drop_last=drop_last,
                          rank=rank, world=world, resolution=resolution, **options)
    raise ValueError(f"unknown loader {name!r}; choose one of {', '.join(LOADERS)}")


def multicrop_augment(cfg, augment: TwoViewAugment) -> TwoViewAugment:
    """``augment`` with the Config's local crops: ``cfg.local_crops`` (default 0), ``cfg.local_size``
    (16 px), ``cfg.local_scale`` ((0.05, 0.3)); a Config without those fields means no local crops."""
    return augment.replace(local_crops=getattr(cfg, "local_crops", 0) or 0,
                           local_size=getattr(cfg, "local_size", 16) or 16,
                           local_scale=tuple(getattr(cfg, "local_scale", None) or (0.05, 0.3)))


def build_loader(cfg, ds, indices, augment: TwoViewAugment, device, rank: int = 0, world: int = 1):
    """The training loader ``cfg.loader`` (default resident) for a resolved Config; ``cfg.batch_size``
    is the global batch, this rank gets its shard of each. Local crops come from the Config
    (``multicrop_augment``); a loader that cannot make them raises ``UnsupportedOption``."""
    return make_loader(cfg.loader or "resident", ds, indices, cfg.batch_size, multicrop_augment(cfg, augment), device,
                       seed=cfg.seed, verbose=cfg.progress and rank == 0, rank=rank, world=world)
