"""Converted formats: canonical arrays -> FFCV ``.beton`` (raw or JPEG image field) and a
webdataset tar of JPEGs for DALI.

Layout, next to the canonical arrays in the cache (never next to the source data)::

    <cache dir>/<dataset>/formats-<digest>/       digest = sha1 of the canonical arrays [:16]
        manifest.json                              what was written, with which parameters
        ffcv-raw-train.beton  ffcv-raw-test.beton  image field stored raw (exact), label field
        ffcv-jpg-train.beton  ffcv-jpg-test.beton  image field stored as JPEG (quality q)
        dali-train.tar        dali-test.tar        webdataset shard: NNNNNN.jpg + NNNNNN.cls
        dali-train.idx.npz    dali-test.idx.npz    byte offset/size of each JPEG in the tar, labels

The folder is keyed by the arrays' content, so the same data always maps to the same files and
any change of the data gets new ones. Every file is written to a temporary name in the same
folder and renamed into place (``os.replace``); the manifest is updated (atomically) after each
file. A conversion whose file exists with the size and parameters the manifest records is
skipped, so running it again is a no-op; a missing or truncated file is rebuilt. Conversions of
one folder are serialised with a lock file, so two processes never write the same file at once.

JPEG details: the ``dali`` tar is encoded by Pillow (libjpeg) at ``jpeg_quality`` without chroma
subsampling (4:4:4: at 32x32 px, 4:2:0 would halve the colour resolution); the ``ffcv-jpg`` field
is encoded by FFCV itself (OpenCV, its default 4:2:0 subsampling) at the same quality.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .cache import cache_root, note
from .dataset import Dataset
from .errors import DataError

FORMATS = ("ffcv-raw", "ffcv-jpg", "dali")
SPLITS = ("train", "test")
FORMAT_VERSION = 1
DEFAULT_JPEG_QUALITY = 90
# FFCV pads its file to pages per writer worker; 2 MiB (its minimum) keeps small datasets small.
FFCV_PAGE_SIZE = 1 << 21

EXTRAS = {"ffcv": "ffcv", "nvidia.dali": "dali"}


class MissingPackage(DataError, ImportError):
    """An optional package (ffcv, nvidia-dali) is needed but not installed. One-line message."""


def require(module: str, what: str):
    """Import ``module`` or raise :class:`MissingPackage` naming the pip extra that provides it."""
    import importlib

    if module.split(".")[0] == "ffcv":
        from .numba_env import prepare_numba
        prepare_numba()  # before FFCV imports numba
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0] if not module.startswith("nvidia.dali") else "nvidia.dali"
        extra = EXTRAS.get(top, top)
        raise MissingPackage(
            f"{what} needs the '{top}' package, which is not installed ({exc}); install it with "
            f"pip install 'fastssl[{extra}]'"
            + (" (FFCV builds from source: first apt-get install pkg-config libturbojpeg0-dev "
               "libopencv-dev)" if extra == "ffcv" else "")
        ) from exc


# --------------------------------------------------------------------------------------------
# Where things go
# --------------------------------------------------------------------------------------------

def check_arrays(images: np.ndarray, labels: np.ndarray, what: str = "arrays") -> None:
    """Raise DataError unless ``images`` is uint8 (N, R, R, 3) (R = 32 for CIFAR, any for your
    own images) and ``labels`` int (N,) >= -1 (-1: unlabelled)."""
    shape = getattr(images, "shape", ())
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or len(shape) != 4
            or shape[1] != shape[2] or shape[3] != 3):
        raise DataError(f"{what}: images must be uint8 (N, R, R, 3), got {getattr(images, 'dtype', type(images))} {shape or None}")
    if (not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu"
            or labels.shape != (len(images),)):
        raise DataError(f"{what}: labels must be integers of shape ({len(images)},)")
    if len(images) == 0:
        raise DataError(f"{what}: no images")
    if labels.min() < -1 or labels.max() >= 2**31:
        raise DataError(f"{what}: labels must lie in [-1, 2**31) (-1: unlabelled)")


def dataset_digest(ds: Dataset) -> str:
    """sha1 of the canonical arrays (about 0.15 s for CIFAR): names the formats folder."""
    h = hashlib.sha1(f"v{FORMAT_VERSION}|{ds.name}|".encode())
    for a in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        if a.size:  # an unlabelled dataset's test split is empty
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def formats_dir(ds: Dataset, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return cache_root(cache_dir) / ds.name / f"formats-{dataset_digest(ds)}"


def file_names(fmt: str, split: str) -> list[str]:
    """The files making up ``fmt`` for ``split`` (the first one is "the" path)."""
    if fmt == "dali":
        return [f"dali-{split}.tar", f"dali-{split}.idx.npz"]
    if fmt in ("ffcv-raw", "ffcv-jpg"):
        return [f"{fmt}-{split}.beton"]
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """'all' or a comma-separated list of FORMATS -> list, in FORMATS order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [s.strip() for s in items if s.strip()]
    if "all" in items:
        return list(FORMATS)
    bad = [s for s in items if s not in FORMATS]
    if bad or not items:
        raise DataError(f"unknown format(s) {', '.join(bad) or '(none)'}; choose from all, {', '.join(FORMATS)}")
    return [f for f in FORMATS if f in items]


# --------------------------------------------------------------------------------------------
# Atomic files, manifest, lock
# --------------------------------------------------------------------------------------------

def _read_manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / "manifest.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_manifest(folder: Path, manifest: dict) -> None:
    with atomic_path(folder / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _params(fmt: str, n: int, jpeg_quality: int) -> dict:
    p = {"version": FORMAT_VERSION, "images": int(n)}
    if fmt != "ffcv-raw":
        p["jpeg_quality"] = int(jpeg_quality)
    return p


def _up_to_date(folder: Path, entry: dict | None, params: dict) -> bool:
    if not entry or entry.get("params") != params:
        return False
    for name, size in entry.get("files", {}).items():
        try:
            if (folder / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return bool(entry.get("files"))


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

class _Indexed:
    """What FFCV's writer iterates: (HWC uint8 image, int label) by index."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def write_ffcv(path: Path, images: np.ndarray, labels: np.ndarray, mode: str = "raw",
               jpeg_quality: int = DEFAULT_JPEG_QUALITY, verbose: bool = True, workers: int | None = None) -> None:
    """Write an FFCV .beton with fields ``image`` (RGBImageField, ``mode`` 'raw' or 'jpg') and
    ``label`` (IntField) to ``path`` (atomically)."""
    check_arrays(images, labels, str(path))
    writer_mod = require("ffcv.writer", "the FFCV format")
    fields = require("ffcv.fields", "the FFCV format")
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    real_tqdm = writer_mod.tqdm
    if not verbose:
        writer_mod.tqdm = lambda *a, **k: real_tqdm(*a, **{**k, "disable": True})
    try:
        with atomic_path(path) as tmp:
            writer = writer_mod.DatasetWriter(
                str(tmp),
                {"image": fields.RGBImageField(write_mode=mode, jpeg_quality=jpeg_quality),
                 "label": fields.IntField()},
                num_workers=workers, page_size=FFCV_PAGE_SIZE,
            )
            writer.from_indexed_dataset(_Indexed(np.ascontiguousarray(images), labels), chunksize=256)
    finally:
        writer_mod.tqdm = real_tqdm


def encode_jpeg(image: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """RGB uint8 HWC -> baseline JPEG bytes, 4:4:4 (no chroma subsampling)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling=0)
    return buf.getvalue()


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
    info.uname = info.gname = ""
    return info


def write_dali_tar(tar_path: Path, index_path: Path, images: np.ndarray, labels: np.ndarray,
                   jpeg_quality: int = DEFAULT_JPEG_QUALITY, verbose: bool = True) -> None:
    """Write a webdataset shard (``%06d.jpg`` + ``%06d.cls``, in index order) and an index
    (``offsets``/``sizes`` of each JPEG's bytes in the tar, ``labels``), both atomically.

    The tar is a plain ustar file, byte-for-byte reproducible (fixed mtimes and owners); DALI's
    ``fn.readers.webdataset`` and the webdataset library read it as is.
    """
    from .progress import Progress

    check_arrays(images, labels, str(tar_path))
    n = len(images)
    offsets, sizes = np.zeros(n, np.int64), np.zeros(n, np.int64)
    with atomic_path(tar_path) as tmp_tar, atomic_path(index_path) as tmp_idx:
        with open(tmp_tar, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar, \
                Progress(n, tar_path.name, verbose) as progress:
            for i in range(n):
                progress.update()
                data = encode_jpeg(images[i], jpeg_quality)
                info = _member(f"{i:06d}.jpg", len(data))
                offsets[i] = tar.offset + len(info.tobuf(tarfile.USTAR_FORMAT, tar.encoding, tar.errors))
                sizes[i] = len(data)
                tar.addfile(info, io.BytesIO(data))
                cls = str(int(labels[i])).encode()
                tar.addfile(_member(f"{i:06d}.cls", len(cls)), io.BytesIO(cls))
        with open(tmp_idx, "wb") as f:
            np.savez(f, offsets=offsets, sizes=sizes, labels=labels.astype(np.int64),
                     jpeg_quality=np.int64(jpeg_quality), version=np.int64(FORMAT_VERSION))
        # Sanity check before the rename: the index points at JPEG start/end markers.
        with open(tmp_tar, "rb") as f:
            for i in (0, n - 1):
                f.seek(offsets[i])
                blob = f.read(int(sizes[i]))
                if blob[:2] != b"\xff\xd8" or blob[-2:] != b"\xff\xd9":
                    raise DataError(f"{tar_path}: internal error, index does not point at JPEG {i}")


def read_dali_index(index_path: Path) -> dict[str, np.ndarray]:
    """The index written by :func:`write_dali_tar` (DataError if unreadable)."""
    try:
        with np.load(index_path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("offsets", "sizes", "labels")}
            if int(z["version"]) != FORMAT_VERSION:
                raise ValueError("written by another format version")
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{index_path}: unreadable DALI index ({type(exc).__name__}: {exc}); delete it and convert again")
    return out


# --------------------------------------------------------------------------------------------
# The one entry point
# --------------------------------------------------------------------------------------------

def ensure_formats(ds: Dataset, formats: str | Sequence[str] = "all", splits: Sequence[str] = SPLITS,
                   cache_dir: str | os.PathLike[str] | None = None, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                   verbose: bool = True) -> dict[tuple[str, str], Path]:
    """Convert ``ds`` into each of ``formats`` for each of ``splits`` unless already done.

    Returns {(format, split): path} with the ``.beton`` or the ``.tar`` path (the DALI index is
    ``path.with_suffix('.idx.npz')``). An unlabelled dataset (your own images) has no test split:
    asking for it is an error. Raises DataError for bad arrays or an unwritable cache,
    MissingPackage when an FFCV format is asked for without ffcv installed.
    """
    formats = parse_formats(formats)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise DataError(f"unknown split(s) {', '.join(bad)}; choose from {', '.join(SPLITS)}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise DataError(f"JPEG quality must be in 1..100, got {jpeg_quality}")
    if not getattr(ds, "labeled", True) and "test" in splits:
        raise DataError(f"{ds.source} is unlabelled and has no test split: convert the train split only")
    arrays = {s: (getattr(ds, f"{s}_x"), getattr(ds, f"{s}_y")) for s in splits}
    for s, (x, y) in arrays.items():
        check_arrays(x, y, f"{ds.name} {s} split ({ds.source})")

    folder = formats_dir(ds, cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the formats folder {folder} ({exc.strerror}); set --cache-dir or $FASTSSL_CACHE")
    out: dict[tuple[str, str], Path] = {}
    with _locked(folder):
        manifest = _read_manifest(folder)
        todo = [(f, s) for f in formats for s in splits
                if not _up_to_date(folder, manifest.get(f"{f}-{s}"), _params(f, len(arrays[s][0]), jpeg_quality))]
        if any(f.startswith("ffcv") for f, _ in todo):
            require("ffcv.writer", "the FFCV format")  # fail before writing anything
        for fmt in formats:
            for split in splits:
                x, y = arrays[split]
                names = file_names(fmt, split)
                key, params = f"{fmt}-{split}", _params(fmt, len(x), jpeg_quality)
                out[(fmt, split)] = folder / names[0]
                if _up_to_date(folder, manifest.get(key), params):
                    note(f"{fmt} {split}: up to date ({folder / names[0]})", verbose)
                    continue
                note(f"{fmt} {split}: writing {len(x)} images to {folder / names[0]}", verbose)
                try:
                    if fmt == "dali":
                        write_dali_tar(folder / names[0], folder / names[1], x, y, jpeg_quality, verbose)
                    else:
                        write_ffcv(folder / names[0], x, y, fmt.split("-")[1], jpeg_quality, verbose)
                except OSError as exc:
                    raise DataError(f"could not write {folder / names[0]} ({exc})") from exc
                manifest[key] = {"params": params, "files": {n: (folder / n).stat().st_size for n in names}}
                _write_manifest(folder, manifest)
    return out
