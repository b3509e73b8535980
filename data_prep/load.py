"""``load_dataset``: find the data, read and validate it once, cache the canonical arrays."""

from __future__ import annotations

import numbers
import os
from pathlib import Path

from . import cache, images, readers, sources
from . import download as _download
from .dataset import Dataset
from .errors import DataError, SourceNotFound, reading
from .specs import DATASETS, DatasetSpec, get_spec

DATA_ENV = "FASTSSL_DATA"


def dataset_names() -> tuple[str, ...]:
    """Every name ``load_dataset`` (and ``--dataset``) accepts: the specs' datasets, then your own images."""
    return (*DATASETS, images.NAME)


def load_dataset(
    name: str = "cifar10",
    data: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    verbose: bool = True,
    resolution: int = images.DEFAULT_RESOLUTION,
    strict: bool = False,
) -> Dataset:
    """Load CIFAR-10/100, or your own images, as canonical arrays (see :class:`Dataset`).

    ``name="images"``: ``data`` is a folder or tar archive of images of any size and format
    (see data_prep/images.py), resized (shorter side) and centre-cropped to ``resolution`` px;
    unlabelled (``labeled=False``) unless it has class sub-folders. Files that cannot be decoded
    are skipped with a warning line, or raise a DataError when ``strict``. Cached like CIFAR,
    keyed by the source's fingerprint and the resolution. CIFAR is always 32x32 (``resolution``
    must be 32; ``strict`` changes nothing: a broken CIFAR source is always an error).

    Where the data comes from, first match wins:

    1. ``data``: an official archive (``cifar-10-python.tar.gz``) or its extracted folder, an
       image-folder tree (``train/<class>/*``, ``test/<class>/*``) as a directory or tar archive,
       or a directory containing such sources (the one matching ``name`` is picked);
    2. ``$FASTSSL_DATA``, same forms (if it holds nothing for ``name``, the search goes on);
    3. the newest cache of ``name`` in the cache directory;
    4. the official archive, previously downloaded into ``<cache>/downloads/`` or downloaded now
       if ``download`` is true (needs internet; md5-verified).

    A source is read once; its arrays are cached in the cache directory (``cache_dir``, else
    ``$FASTSSL_CACHE``, else ``~/.cache/fastssl``) keyed by the source's path, size and mtime, so
    later loads take about a second. Every problem raises :class:`DataError` with a one-line
    message. ``verbose`` prints progress bars and notes to stderr.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral) or not 1 <= resolution <= 4096:
        raise DataError(f"resolution must be a whole number of pixels in 1..4096, got {resolution!r}")
    resolution = int(resolution)
    if name == images.NAME:
        if data is None:
            raise DataError("--dataset images needs --data PATH (a folder or tar archive of images)")
        root = cache.cache_root(cache_dir)
        return _load_images(Path(data).expanduser(), root, resolution, strict, verbose)
    spec = get_spec(name)
    if resolution != 32:
        raise DataError(f"{spec.name} images are 32x32; --resolution {resolution} applies to --dataset images only")
    root = cache.cache_root(cache_dir)
    if data is not None:
        path = Path(data).expanduser()
        return _load_path(sources.find_source(path, spec), spec, root, verbose)

    env_note = ""
    env_value = os.environ.get(DATA_ENV)
    if env_value:
        path = Path(env_value).expanduser()
        if not path.exists():
            raise DataError(f"{DATA_ENV}={env_value}: no such file or directory")
        try:
            source = sources.find_source(path, spec)
        except SourceNotFound as exc:
            cache.note(f"{DATA_ENV}: {exc}; looking further", verbose)
            env_note = f"{DATA_ENV}={env_value} has no {spec.name} source; "
        else:
            return _load_path(source, spec, root, verbose)

    cached = cache.newest_cached(root, spec.name, spec.num_classes, 32, verbose)
    if cached is not None:
        cache.note(f"using cached {spec.name} from {cached.cache_path} ({cached.source})", verbose)
        return cached

    archive_path = root / "downloads" / spec.archive_name
    if not archive_path.is_file():
        if not download:
            reason = "downloading is disabled"
        else:
            try:
                _download.download_archive(spec, archive_path, verbose)
                reason = ""
            except DataError as exc:
                reason = str(exc)
        if reason:
            raise DataError(
                f"no {spec.name} data found ({env_note}no cache in {root}; {reason}). "
                f"Give the data with --data PATH (data=PATH in Python), or set {DATA_ENV}=PATH, "
                f"or let it download {spec.archive_name} (internet needed)"
            )
    return _load_path(archive_path, spec, root, verbose)


def _load_path(source: Path, spec: DatasetSpec, root: Path, verbose: bool) -> Dataset:
    """Load a concrete source through the cache."""
    with reading(source, "source"):
        fingerprint = sources.fingerprint(source)
    path = cache.cache_file(root, spec.name, fingerprint)
    ds = cache.load_cached(path, spec.name, spec.num_classes, 32, verbose=verbose)
    if ds is not None:
        cache.note(f"using cached {spec.name} from {path}", verbose)
        return ds
    cache.note(f"reading {spec.name} from {source} (once; later loads use the cache)", verbose)
    ds = readers.read_source(source, spec, verbose=verbose)
    cache.save_cached(path, ds, fingerprint, verbose)
    return ds


def _load_images(source: Path, root: Path, resolution: int, strict: bool, verbose: bool) -> Dataset:
    """Your own images through the cache; broken files are reported on every load."""
    if not source.exists():
        raise DataError(f"no such file or directory: {source}")
    with reading(source, "source"):
        fingerprint = sources.fingerprint(source)
    path = cache.cache_file(root, images.NAME, f"{fingerprint}|r{resolution}")
    ds = cache.load_cached(path, images.NAME, resolution=resolution, verbose=verbose)
    if ds is not None:
        total = len(ds.train_x) + len(ds.test_x) + len(ds.skipped)
        images.report_broken(ds.source, ds.skipped, total, strict)
        cache.note(f"using cached images from {path}", verbose)
        return ds
    # Read completely (and, under strict, checked) before anything is written: a failure or an
    # interrupt leaves no cache file; save_cached itself writes atomically.
    ds = images.read_images(source, resolution, strict, verbose)
    cache.save_cached(path, ds, fingerprint, verbose)
    return ds
