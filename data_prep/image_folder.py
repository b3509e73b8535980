"""Reader for image-folder trees: ``train/<class>/*`` and ``test/<class>/*``.

The tree may be a directory or a tar archive, optionally under one top-level folder
(``cifar10/train/cat/0001.png``). Classes are the sorted class-folder names (train and test must
agree), label i = classes[i]. Images (jpg, png, ...) are decoded with PIL to RGB uint8 and must be
32x32. Files are taken in sorted order, so the result is deterministic.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .dataset import Dataset
from .errors import DataError
from .progress import Progress
from .specs import DatasetSpec

SPLITS = ("train", "test")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)

# split -> class -> sorted list of (display name, path or bytes)
Tree = dict[str, dict[str, list[tuple[str, "Path | bytes"]]]]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def is_image_folder_dir(path: Path) -> bool:
    return all((path / split).is_dir() for split in SPLITS)


def dir_class_count(path: Path) -> int:
    return sum(1 for p in (path / "train").iterdir() if p.is_dir() and not p.name.startswith("."))


def tar_tree_layout(names: Iterable[str]) -> tuple[str, dict[str, set[str]]] | None:
    """Locate ``[prefix/]split/class/`` entries among archive member names.

    Returns (prefix, {split: class names}) or None if no image-folder tree is found. Only a
    prefix of at most one folder is accepted, and it must be the same for every entry.
    """
    found: dict[str, dict[str, set[str]]] = {}
    for name in names:
        is_dir = name.endswith("/")
        parts = name.rstrip("/").split("/")
        for depth in (0, 1):  # split at the top, or under one top-level folder
            # a class folder: "split/class/" itself, or any file below it
            if len(parts) >= depth + (2 if is_dir else 3) and parts[depth] in SPLITS:
                prefix = "/".join(parts[:depth])
                cls = parts[depth + 1]
                if not cls.startswith("."):
                    found.setdefault(prefix, {s: set() for s in SPLITS})[parts[depth]].add(cls)
                break
    complete = {p: c for p, c in found.items() if all(c[s] for s in SPLITS)}
    if len(complete) != 1:
        return None
    return next(iter(complete.items()))


def _tree_from_tar(files: Mapping[str, bytes], prefix: str) -> Tree:
    tree: Tree = {s: {} for s in SPLITS}
    base = prefix + "/" if prefix else ""
    for name in sorted(files):
        if not name.startswith(base):
            continue
        is_dir = name.endswith("/")
        parts = name[len(base) :].rstrip("/").split("/")
        if len(parts) < (2 if is_dir else 3) or parts[0] not in SPLITS or parts[1].startswith("."):
            continue
        images = tree[parts[0]].setdefault(parts[1], [])
        if len(parts) == 3 and not is_dir and _is_image(parts[2]):
            images.append((name, files[name]))
    return tree


def _tree_from_dir(path: Path) -> Tree:
    tree: Tree = {s: {} for s in SPLITS}
    for split in SPLITS:
        for cls_dir in sorted((path / split).iterdir()):
            if cls_dir.is_dir() and not cls_dir.name.startswith("."):
                tree[split][cls_dir.name] = [
                    (f"{split}/{cls_dir.name}/{f.name}", f)
                    for f in sorted(cls_dir.iterdir())
                    if f.is_file() and _is_image(f.name)
                ]
    return tree


def _decode(item: Path | bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as im:
            if im.size != (32, 32):
                raise DataError(f"{where}: image is {im.size[0]}x{im.size[1]}, expected 32x32")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: cannot decode image ({exc})") from exc


def _decode_split(
    classes: dict[str, list[tuple[str, Path | bytes]]],
    order: list[str],
    where: str,
    desc: str,
    verbose: bool,
) -> tuple[np.ndarray, np.ndarray]:
    total = sum(len(v) for v in classes.values())
    x = np.empty((total, 32, 32, 3), dtype=np.uint8)
    y = np.empty(total, dtype=np.int64)
    i = 0
    with Progress(total, desc, verbose) as bar:
        for label, cls in enumerate(order):
            for name, item in classes[cls]:
                x[i] = _decode(item, f"{where}: {name}")
                y[i] = label
                i += 1
                bar.update()
    return x, y


def _dataset_from_tree(
    tree: Tree, spec: DatasetSpec, where: str, verbose: bool
) -> Dataset:
    train_classes, test_classes = sorted(tree["train"]), sorted(tree["test"])
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataError(
            f"{where}: train and test class folders differ "
            f"(only in train: {only_train or '-'}; only in test: {only_test or '-'})"
        )
    if len(train_classes) != spec.num_classes:
        raise DataError(
            f"{where}: found {len(train_classes)} class folders, {spec.name} needs {spec.num_classes}"
        )
    for split in SPLITS:
        empty = [c for c in train_classes if not tree[split][c]]
        if empty:
            raise DataError(f"{where}: no images in {split}/{empty[0]} ({len(empty)} empty classes)")
    splits = {
        split: _decode_split(tree[split], train_classes, where, f"decoding {spec.name} {split}", verbose)
        for split in SPLITS
    }
    ds = Dataset(spec.name, *splits["train"], *splits["test"], classes=train_classes, source=where)
    ds.validate(spec.num_classes)
    return ds


def read_image_dir(path: Path, spec: DatasetSpec, verbose: bool = True) -> Dataset:
    """Read an image-folder tree from a directory holding ``train/`` and ``test/``."""
    return _dataset_from_tree(_tree_from_dir(path), spec, f"image folder {path}", verbose)


def read_image_tar(
    files: Mapping[str, bytes], path: Path, spec: DatasetSpec, verbose: bool = True
) -> Dataset:
    """Build a Dataset from the files of an image-folder tar archive (see archive.read_tar_files)."""
    layout = tar_tree_layout(files)
    if layout is None:
        raise DataError(f"{path}: no train/<class>/ and test/<class>/ folders in the archive")
    return _dataset_from_tree(
        _tree_from_tar(files, layout[0]), spec, f"image-folder archive {path}", verbose
    )
