"""Your own images (``--dataset images``): a folder or tar archive of pictures -> (N, R, R, 3).

Any size and any common format (PNG, JPEG, WebP, BMP, GIF: first frame, TIFF, PPM); grayscale,
palette, CMYK and 16-bit images become RGB, transparent pixels are laid over white, and the EXIF
orientation of photos is applied. Each image is resized so that its shorter side is R (Lanczos,
with Pillow's reducing_gap shortcut for large pictures) and centre-cropped to R x R.

What the files are is read from the folder structure (after unwrapping single top folders such
as ``photos.tar`` -> ``photos/``):

* ``train/<class>/...`` and ``test/<class>/...``: labelled, with that split;
* every image inside a sub-folder and at least two sub-folders: labelled, the sub-folder is the
  class; ``TEST_FRACTION`` (20%) of each class, chosen by a fixed seed from the class name, is
  the test split (a class of one image stays in train);
* anything else (images at the top, or train/ and test/ without class folders): unlabelled,
  every image below the folder in name order (labels -1, no test split).

Image files are found by name (IMAGE_SUFFIXES); hidden files and folders and other files are
ignored. A file that cannot be decoded is skipped and reported (a DataError with ``strict``).
Many images are decoded by a pool of processes.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import sys
import tarfile
import warnings
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from . import archive
from .cache import note
from .dataset import UNLABELED, Dataset
from .errors import DataError, reading
from .image_folder import IMAGE_SUFFIXES, SPLITS
from .progress import Progress

NAME = "images"
DEFAULT_RESOLUTION = 32
TEST_FRACTION = 0.2  # of each class, when a labelled folder has no train/test split
SPLIT_SEED = 0
POOL_MIN_IMAGES = 2000  # decode in this process up to here; a process pool for the rest
CHUNK = 128  # images per pool task
SHOWN = 5  # broken files named in a message
_BYTESIO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")

Item = tuple[str, "Path | bytes"]  # (name relative to the source, file path or file bytes)

# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


# ----------------------------------------------------------------------------- one image

def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.alpha_composite(rgba)
        return out.convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer or float grey levels
        grey = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and grey.max() > 255):
            grey = grey / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def decode_image(src: Path | bytes, resolution: int) -> np.ndarray:
    """One image file -> uint8 (R, R, 3): the central square, resized to R x R, upright, RGB.

    Raises whatever Pillow raises for a broken file.
    """
    with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
        im.draft("RGB", (resolution, resolution))  # JPEG: decode at 1/2..1/8 scale when large
        orientation = im.getexif().get(0x0112, 1)
        rgb = _to_rgb(im)
        w, h = rgb.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        # Shorter side to R then centre crop == the central square resized to R x R.
        out = rgb.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        if orientation in _ORIENTATION:  # the central square stays central under these
            out = out.transpose(_ORIENTATION[orientation])
        return np.asarray(out, dtype=np.uint8)


def decode_chunk(items: list[Item], resolution: int) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode ``items``: (images of the good ones, their names, [(name, reason)] of the broken)."""
    out = np.empty((len(items), resolution, resolution, 3), dtype=np.uint8)
    names: list[str] = []
    broken: list[tuple[str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # corrupt EXIF, large pictures: not worth a line each
        for name, src in items:
            try:
                out[len(names)] = decode_image(src, resolution)
                names.append(name)
            except MemoryError:
                raise
            except Exception as exc:  # any failure of a decoder plugin means a broken file
                text = _BYTESIO.sub(name, str(exc).replace(str(src), name) if isinstance(src, Path) else str(exc))
                reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
                broken.append((name, " ".join(reason.split())[:100]))
    return out[: len(names)], names, broken


# ----------------------------------------------------------------------------- many images

def _chunks(items: Iterable[Item], size: int = CHUNK) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def default_workers() -> int:
    try:
        return max(1, min(32, len(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        return max(1, min(32, os.cpu_count() or 1))


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork: workers start at once and import nothing (the decode function needs PIL/numpy only);
    # the default elsewhere (macOS/Windows spawn).
    method = "fork" if sys.platform.startswith("linux") else None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


def decode_all(
    items: Iterable[Item], resolution: int, progress: Progress, workers: int | None = None
) -> list[tuple[np.ndarray, list[str], list[tuple[str, str]]]]:
    """Decode every item, in order: here for the first POOL_MIN_IMAGES, then in a process pool."""
    workers = default_workers() if workers is None else workers
    results = []
    chunks = _chunks(items)
    done = 0
    for chunk in chunks:
        results.append(decode_chunk(chunk, resolution))
        progress.update(len(chunk))
        done += len(chunk)
        if done >= POOL_MIN_IMAGES and workers > 1:
            break
    else:
        return results
    pool = _pool(workers)
    try:
        pending: deque = deque()

        def collect() -> None:
            results.append(pending.popleft().result())
            progress.update(len(results[-1][1]) + len(results[-1][2]))

        for chunk in chunks:  # the rest; at most a few chunks in flight (bounded memory)
            pending.append(pool.submit(decode_chunk, chunk, resolution))
            if len(pending) >= 3 * workers:
                collect()
        while pending:
            collect()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


# ----------------------------------------------------------------------------- listing

def _display(name: str) -> str:
    """A file name that prints on any terminal (undecodable bytes shown as U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _wanted(name: str) -> bool:
    parts = name.split("/")
    return (not any(p.startswith(".") for p in parts)
            and PurePosixPath(parts[-1]).suffix.lower() in IMAGE_SUFFIXES)


def dir_items(path: Path) -> list[Item]:
    """Image files below ``path`` (recursive, hidden ones skipped), sorted by relative name."""
    found: list[Item] = []
    with reading(path, "folder"):
        for root, dirs, files in os.walk(path, onerror=_raise):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = Path(root).relative_to(path).as_posix()
            for f in files:
                name = f if rel == "." else f"{rel}/{f}"
                if _wanted(name):
                    found.append((_display(name), Path(root) / f))
    return sorted(found, key=lambda item: item[0])


def _raise(exc: OSError) -> None:
    raise exc


def tar_items(path: Path) -> Iterator[Item]:
    """Image files of a tar archive (any compression), streamed in archive order."""
    with reading(path), tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            name = archive.member_name(member.name)
            if member.isfile() and _wanted(name):
                handle = tar.extractfile(member)
                yield _display(name), handle.read() if handle else b""


# ----------------------------------------------------------------------------- layout

def layout(names: list[str]) -> tuple[str, list[list[str]]]:
    """("splits" | "classes" | "flat", the names' path parts below the common top folders)."""
    parts = [n.split("/") for n in names]
    while parts and all(len(p) > 1 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]  # a single wrapping folder ("photos/...") is not a class
    tops = {p[0] for p in parts}
    if tops == set(SPLITS) and all(len(p) >= 3 for p in parts):
        return "splits", parts
    if len(tops) >= 2 and all(len(p) >= 2 for p in parts) and not tops <= set(SPLITS):
        return "classes", parts
    return "flat", parts


def split_mask(class_name: str, n: int) -> np.ndarray:
    """Which of a class's ``n`` images (in name order) are test images: TEST_FRACTION of them,
    at least one when n >= 2, chosen by a seed derived from the class name only (so adding or
    removing another class changes nothing here)."""
    n_test = 0 if n < 2 else max(1, int(round(TEST_FRACTION * n)))
    rng = np.random.default_rng([SPLIT_SEED, zlib.crc32(class_name.encode("utf-8", "replace"))])
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:n_test]] = True
    return mask


# ----------------------------------------------------------------------------- broken files

def broken_list(broken: list[str], reason: str = "") -> str:
    """"a.jpg (why), b.png, c.gif, ... (+7 more)": the first SHOWN names, the first one's reason."""
    shown = list(broken[:SHOWN])
    if reason and shown:
        shown[0] += f" ({reason})"
    more = f", ... (+{len(broken) - SHOWN} more)" if len(broken) > SHOWN else ""
    return ", ".join(shown) + more


def report_broken(source: str, broken: list[str], total: int, strict: bool, reason: str = "") -> None:
    """DataError under ``strict``; otherwise one warning line on stderr (always printed)."""
    if not broken:
        return
    names = broken_list(broken, reason)
    if strict:
        raise DataError(f"{source}: {len(broken)} of {total} image files could not be decoded: {names}; "
                        "fix or remove them, or leave out --strict to skip them")
    print(f"data_prep: warning: {source}: skipped {len(broken)} of {total} image files that could not "
          f"be decoded: {names}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the reader

def read_images(
    path: Path, resolution: int = DEFAULT_RESOLUTION, strict: bool = False, verbose: bool = True,
    workers: int | None = None,
) -> Dataset:
    """Read a folder or tar archive of images as a Dataset of (N, R, R, 3) images (see module doc).

    Broken files are skipped with one warning line (``Dataset.skipped`` names them), or raise a
    DataError under ``strict``; no decodable image at all is a DataError.
    """
    if path.is_dir():
        source = f"image folder {path}"
        items: Iterable[Item] = dir_items(path)
        total: int | None = len(items)  # type: ignore[arg-type]
    elif path.is_file() and archive.is_tar_name(path.name):
        source, items, total = f"image archive {path}", tar_items(path), None
    elif path.exists():
        raise DataError(f"{path}: not a folder or a tar archive of images (.tar, .tar.gz, .tgz, ...)")
    else:
        raise DataError(f"no such file or directory: {path}")
    if total == 0:
        raise DataError(f"{source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")

    note(f"decoding {source} at {resolution}x{resolution} (once; later loads use the cache)", verbose)
    with Progress(total, f"decoding {path.name}", verbose) as progress:  # tar: count unknown
        results = decode_all(items, resolution, progress, workers)
    names = [n for _, ok, _ in results for n in ok]
    broken = sorted((b for _, _, bad in results for b in bad))
    if not names and not broken:
        raise DataError(f"{source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = np.concatenate([x for x, _, _ in results]) if names else None
    del results
    total = len(names) + len(broken)
    if not names:
        raise DataError(f"{source}: none of the {total} image files could be decoded: "
                        f"{broken_list([b[0] for b in broken], broken[0][1])}")
    report_broken(source, [b[0] for b in broken], total, strict, broken[0][1] if broken else "")

    order = sorted(range(len(names)), key=names.__getitem__)  # a tar lists files in any order
    names = [names[i] for i in order]
    images = images[np.asarray(order, dtype=np.int64)]
    kind, parts = layout(names + [b[0] for b in broken])
    parts = parts[: len(names)]
    skipped = [b[0] for b in broken]
    empty = np.empty((0, resolution, resolution, 3), dtype=np.uint8)
    if kind == "flat":
        ds = Dataset(NAME, images, np.full(len(names), UNLABELED, dtype=np.int64), empty,
                     np.empty(0, dtype=np.int64), [], source, labeled=False, skipped=skipped)
    else:
        cls_of = [p[1] if kind == "splits" else p[0] for p in parts]
        classes = sorted(set(cls_of))
        label = {c: i for i, c in enumerate(classes)}
        y = np.array([label[c] for c in cls_of], dtype=np.int64)
        if kind == "splits":
            is_test = np.array([p[0] == "test" for p in parts])
        else:
            is_test = np.zeros(len(names), dtype=bool)
            for c in classes:
                rows = np.flatnonzero(y == label[c])
                is_test[rows] = split_mask(c, len(rows))
        if not is_test.any() or is_test.all():
            what = "test" if not is_test.any() else "train"
            raise DataError(f"{source}: the {what} split has no images (a class needs at least 2 images "
                            "to be split 80/20)")
        ds = Dataset(NAME, images[~is_test], y[~is_test], images[is_test], y[is_test], classes,
                     source, labeled=True, skipped=skipped)
    ds.validate(resolution=resolution)
    return ds
