"""Reader for the official CIFAR "python version" archives.

Layout (as published at https://www.cs.toronto.edu/~kriz/cifar.html): a folder
``cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta) or ``cifar-100-python/``
(train, test, meta) of pickled dicts with bytes keys. ``b"data"`` is a uint8 (N, 3072) array whose
rows hold the R, G and B planes of a 32x32 image, each plane row-major. Labels are ``b"labels"``
(CIFAR-10) or ``b"fine_labels"`` (CIFAR-100, which also has ``b"coarse_labels"``, unused here);
class names are ``label_names`` / ``fine_label_names`` in the meta dict.

The pickles are parsed with a restricted unpickler that only admits the numpy functions needed to
rebuild arrays, so a malicious "archive" cannot run code.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Dataset
from .errors import DataError, reading
from .specs import DATASETS, DatasetSpec


def _numpy_module(*candidates: str) -> Any:
    for name in candidates:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(candidates[0])


_MULTIARRAY = _numpy_module("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = _numpy_module("numpy._core.numeric", "numpy.core.numeric")
# The only globals an array pickle needs: numpy's array/scalar rebuilders (module names of numpy
# 1.x and 2.x, protocols 2 to 5) and codecs.encode, which Python 3 uses for bytes at protocol 2.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {("_codecs", "encode"): codecs.encode}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_module, "_reconstruct")] = _MULTIARRAY._reconstruct
    _ALLOWED_GLOBALS[(_module, "scalar")] = _MULTIARRAY.scalar
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    if hasattr(_NUMERIC, "_frombuffer"):
        _ALLOWED_GLOBALS[(_module, "_frombuffer")] = _NUMERIC._frombuffer
_ALLOWED_GLOBALS[("numpy", "ndarray")] = np.ndarray
_ALLOWED_GLOBALS[("numpy", "dtype")] = np.dtype


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in pickle")
        return target


def load_pickle(blob: bytes) -> dict[Any, Any]:
    """Parse one official batch/meta pickle (Python-2 pickles need encoding="bytes")."""
    obj = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"expected a dict, got {type(obj).__name__}")
    return obj


def _entry(d: Mapping[Any, Any], key: str, where: str) -> Any:
    """``d[b"key"]`` (official) or ``d["key"]`` (re-pickled with str keys)."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{where}: missing entry {key!r}")


def official_layout(names: set[str] | list[str]) -> dict[str, str] | None:
    """Find an official layout among archive member names.

    Returns ``{"dataset": name, "prefix": "cifar-10-batches-py/"}`` or None. The folder prefix is
    the official one (then any official file there counts, so that a missing member is reported
    as such later), or empty when all the files sit at the top of the archive.
    """
    names = set(names)
    for spec in DATASETS.values():
        if any(spec.folder + "/" + f in names for f in spec.member_files):
            return {"dataset": spec.name, "prefix": spec.folder + "/"}
        if all(f in names for f in spec.member_files):
            return {"dataset": spec.name, "prefix": ""}
    return None


def official_dir_dataset(path: Path) -> str | None:
    """Dataset name if ``path`` is an extracted official folder (e.g. cifar-10-batches-py/)."""
    for spec in DATASETS.values():
        if all((path / f).is_file() for f in spec.member_files):
            return spec.name
    return None


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_md5(path: Path, spec: DatasetSpec, verify_md5: bool) -> None:
    """Verify the official tarball's md5.

    Only done when ``verify_md5`` is on, the spec has a checksum and the file carries the official
    name (``cifar-10-python.tar.gz``): a file with that name claims to be the official archive, so
    a mismatch means a damaged download. Any other file name (a re-packed copy, a synthetic test
    archive) is validated by its contents only (counts, shapes, label ranges).
    """
    if not (verify_md5 and spec.md5 and path.is_file() and path.name == spec.archive_name):
        return
    with reading(path):
        actual = file_md5(path)
    if actual != spec.md5:
        raise DataError(
            f"{path}: md5 {actual} does not match the official {spec.archive_name} "
            f"({spec.md5}); the file is damaged or not the official archive, download it again"
        )


def parse_official(
    blobs: Mapping[str, bytes],
    spec: DatasetSpec,
    where: str,
    expected_sizes: tuple[int, int] | None = None,
) -> Dataset:
    """Build a Dataset from the raw bytes of the official member files.

    ``blobs`` maps member file names (``data_batch_1``, ..., relative to the folder) to bytes.
    ``expected_sizes`` = (train, test) image counts to enforce; default: the spec's official
    counts (50000, 10000). Tests pass small counts to use tiny synthetic archives.
    """
    train_size, test_size = expected_sizes or (spec.train_size, spec.test_size)
    for f in spec.member_files:
        if f not in blobs:
            raise DataError(f"{where}: missing member {spec.folder}/{f}")

    with reading(where):
        meta = load_pickle(blobs[spec.meta_file])
    classes = [
        n.decode("utf-8") if isinstance(n, bytes) else str(n)
        for n in _entry(meta, spec.names_key, f"{where} ({spec.meta_file})")
    ]
    if len(classes) != spec.num_classes:
        raise DataError(
            f"{where}: {spec.meta_file} lists {len(classes)} classes, "
            f"{spec.name} has {spec.num_classes}"
        )

    splits = []
    for files, expected in ((spec.train_files, train_size), (spec.test_files, test_size)):
        xs, ys = [], []
        for f in files:
            member = f"{where} ({f})"
            with reading(where):
                batch = load_pickle(blobs[f])
            data = np.asarray(_entry(batch, "data", member))
            labels = np.asarray(_entry(batch, spec.label_key, member))
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataError(
                    f"{member}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
                )
            if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{member}: {len(labels)} labels for {len(data)} images")
            # Row = [R plane | G plane | B plane], each 32x32 row-major -> (N, 32, 32, 3).
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(labels.astype(np.int64))
        x = np.ascontiguousarray(np.concatenate(xs))
        y = np.concatenate(ys)
        if len(x) != expected:
            split = "train" if files == spec.train_files else "test"
            raise DataError(
                f"{where}: {split} split has {len(x)} images, expected {expected} "
                f"(truncated or not the official {spec.name} archive)"
            )
        splits.append((x, y))

    (train_x, train_y), (test_x, test_y) = splits
    ds = Dataset(spec.name, train_x, train_y, test_x, test_y, classes, source=where)
    ds.validate(spec.num_classes)
    return ds


def read_official_dir(
    path: Path, spec: DatasetSpec, expected_sizes: tuple[int, int] | None = None
) -> Dataset:
    """Read an extracted official folder such as ``cifar-10-batches-py/``."""
    blobs = {}
    for f in spec.member_files:
        file = path / f
        if not file.is_file():
            raise DataError(f"{path}: missing file {f}")
        with reading(file, "file"):
            blobs[f] = file.read_bytes()
    return parse_official(blobs, spec, f"official {spec.name} folder {path}", expected_sizes)
