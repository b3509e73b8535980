"""On-disk cache of canonical arrays, one uncompressed .npz per (dataset, source fingerprint).

Layout::

    <cache dir>/                  --cache-dir, else $FASTSSL_CACHE, else ~/.cache/fastssl
        cifar10/<key>.npz         key = sha256("v1|cifar10|<fingerprint>")[:20]
        cifar100/<key>.npz
        images/<key>.npz          your own images: key of "<fingerprint>|r<resolution>"
        downloads/cifar-10-python.tar.gz    official archives fetched by download.py

Each .npz holds train_x, train_y, test_x, test_y, classes, name, source, fingerprint, mean, std,
labeled and skipped (files left out as broken; the last two are absent from older CIFAR caches).
It is written to a temporary file in the same folder and renamed into place (``os.replace``), so
a reader never sees a half-written file. A file that fails to load or validate is reported,
deleted and rebuilt. Nothing is ever written next to the data source.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .dataset import Dataset
from .errors import DataError

CACHE_VERSION = 1
CACHE_ENV = "FASTSSL_CACHE"


def note(msg: str, verbose: bool) -> None:
    """Print a progress note to stderr when ``verbose``."""
    if verbose:
        print(f"data_prep: {msg}", file=sys.stderr)


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: the argument, else ``$FASTSSL_CACHE``, else ``~/.cache/fastssl``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fastssl"
    return Path(cache_dir).expanduser()


def cache_file(root: Path, name: str, source_fingerprint: str) -> Path:
    """Cache file of dataset ``name`` read from the source with this fingerprint (which also
    carries any conversion parameter, e.g. the resolution of your own images)."""
    key = hashlib.sha256(f"v{CACHE_VERSION}|{name}|{source_fingerprint}".encode())
    return root / name / f"{key.hexdigest()[:20]}.npz"


def load_cached(
    path: Path, name: str, num_classes: int | None = None, resolution: int | None = None,
    verbose: bool = True,
) -> Dataset | None:
    """The Dataset stored at ``path``; None if absent, or if corrupt (then the file is removed).

    It must be dataset ``name`` and validate with ``num_classes`` classes (None: any) and
    ``resolution`` x ``resolution`` images (None: any).
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION or str(z["name"]) != name:
                raise ValueError("written for another dataset or format version")
            ds = Dataset(
                name=name,
                train_x=z["train_x"],
                train_y=z["train_y"],
                test_x=z["test_x"],
                test_y=z["test_y"],
                classes=[str(c) for c in z["classes"]],
                source=str(z["source"]),
                cache_path=path,
                labeled=bool(z["labeled"]) if "labeled" in z.files else True,
                skipped=[str(n) for n in z["skipped"]] if "skipped" in z.files else [],
            )
            stats = tuple(map(float, z["mean"])), tuple(map(float, z["std"]))
        ds.validate(num_classes, resolution)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, DataError) as exc:
        note(f"ignoring unreadable cache file {path} ({type(exc).__name__}: {exc}); rebuilding", True)
        try:
            path.unlink()
        except OSError:
            pass
        return None
    ds.__dict__["_train_stats"] = stats  # pre-fill Dataset.mean/std (a cached_property)
    return ds


def newest_cached(
    root: Path, name: str, num_classes: int, resolution: int | None = None, verbose: bool = True
) -> Dataset | None:
    """The most recently written valid cache of dataset ``name`` in ``root``, or None."""
    folder = root / name
    if not folder.is_dir():
        return None
    def mtime(p: Path) -> int:
        try:
            return p.stat().st_mtime_ns
        except OSError:  # removed meanwhile by another process
            return -1

    files = sorted(folder.glob("*.npz"), key=mtime, reverse=True)
    for path in files:
        ds = load_cached(path, name, num_classes, resolution, verbose=verbose)
        if ds is not None:
            return ds
    return None


def save_cached(path: Path, ds: Dataset, fingerprint: str, verbose: bool = True) -> bool:
    """Write ``ds`` to ``path`` atomically; on success set ``ds.cache_path``.

    A failure to write (read-only or full disk) is reported and returns False: the data was read
    fine, only the next load will be slower.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                version=np.int64(CACHE_VERSION),
                name=np.str_(ds.name),
                source=np.str_(ds.source),
                fingerprint=np.str_(fingerprint),
                classes=np.array(ds.classes, dtype=np.str_),
                train_x=ds.train_x,
                train_y=ds.train_y,
                test_x=ds.test_x,
                test_y=ds.test_y,
                mean=np.array(ds.mean, dtype=np.float64),
                std=np.array(ds.std, dtype=np.float64),
                labeled=np.bool_(ds.labeled),
                skipped=np.array(ds.skipped, dtype=np.str_),
            )
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        note(f"could not write cache {path} ({exc}); continuing without it", verbose=True)
        return False
    ds.cache_path = path
    note(f"cached {ds.name} arrays in {path}", verbose)
    return True
