"""Locate the source for a dataset under a user-given path, and fingerprint it for the cache.

A path may be a source itself (an archive or an extracted/image folder), or a directory that
*contains* sources, e.g. ``/work/shared/data`` holding ``cifar10-jpeg-q75.tar.gz``, or a
download folder holding ``cifar-10-python.tar.gz`` and ``cifar-100-python.tar.gz``. The source
for the requested dataset is then picked by, in order: the official names (unambiguous), a
dataset name inside the file/folder name ("cifar10", "cifar-100", ...), and finally the number
of classes (10 or 100) found inside. Official archives are preferred over image folders.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from . import archive, image_folder, official
from .errors import DataError, SourceNotFound, reading
from .specs import DATASETS, DatasetSpec, name_hint


@dataclass
class _Candidate:
    path: Path
    dataset: str | None  # None: not known without looking inside
    official: bool

    def describe(self) -> str:
        slash = "/" if self.path.is_dir() else ""
        return f"{self.path.name}{slash} ({self.dataset or 'unknown dataset'})"


def _official_archive_dataset(name: str) -> str | None:
    return next((s.name for s in DATASETS.values() if s.archive_name == name), None)


def _classify(child: Path) -> _Candidate | None:
    """What ``child`` (an entry of a container directory) is, judged without reading much."""
    if child.is_file():
        found = _official_archive_dataset(child.name)
        if found:
            return _Candidate(child, found, official=True)
        if archive.is_tar_name(child.name):
            return _Candidate(child, name_hint(child.name), official=False)
    elif child.is_dir():
        found = official.official_dir_dataset(child)
        if found:
            return _Candidate(child, found, official=True)
        if image_folder.is_image_folder_dir(child):
            return _Candidate(child, name_hint(child.name), official=False)
    return None


def _probe(cand: _Candidate) -> None:
    """Fill in ``cand.dataset`` by looking inside (class count, or an official layout)."""
    if cand.path.is_dir():
        count = image_folder.dir_class_count(cand.path)
    else:
        try:
            names = archive.list_tar_names(cand.path)
        except DataError:
            return  # unreadable: leave it unknown, it is listed in the error message
        layout = official.official_layout(names)
        if layout:
            cand.dataset, cand.official = layout["dataset"], True
            return
        tree = image_folder.tar_tree_layout(names)
        count = len(tree[1]["train"]) if tree else -1
    cand.dataset = next((s.name for s in DATASETS.values() if s.num_classes == count), None)


def find_source(path: Path, spec: DatasetSpec) -> Path:
    """The concrete source for ``spec`` at ``path``.

    Raises DataError if ``path`` does not exist, and SourceNotFound (a DataError) if it holds
    no source for this dataset.
    """
    if not path.exists():
        raise DataError(f"no such file or directory: {path}")
    if path.is_file():
        other = _official_archive_dataset(path.name)
        if other not in (None, spec.name):
            raise SourceNotFound(f"{path} is the {other} archive, not {spec.name}")
        return path
    inside = official.official_dir_dataset(path)
    if inside not in (None, spec.name):
        raise SourceNotFound(f"{path} holds {inside}, not {spec.name}")
    if inside or image_folder.is_image_folder_dir(path):
        return path

    with reading(path, "directory"):
        children = sorted(c for c in path.iterdir() if not c.name.startswith("."))
    candidates = [c for c in map(_classify, children) if c is not None]
    matches = [c for c in candidates if c.dataset == spec.name]
    if not matches:
        for cand in candidates:
            if cand.dataset is None:
                _probe(cand)
        matches = [c for c in candidates if c.dataset == spec.name]
    if matches:
        # Lossless official data first, then by name for a deterministic choice.
        return min(matches, key=lambda c: (not c.official, c.path.name)).path

    described = {c.path: c.describe() for c in candidates}
    found = [described.get(c, c.name + ("/" if c.is_dir() else "")) for c in children]
    listing = ", ".join(found[:12]) + (f", ... ({len(found)} entries)" if len(found) > 12 else "")
    raise SourceNotFound(
        f"no {spec.name} source in {path} (found: {listing or 'nothing'}; expected "
        f"{spec.archive_name}, {spec.folder}/, or an image-folder tree or archive of "
        f"{spec.num_classes} classes named like '{spec.name}')"
    )


def fingerprint(path: Path) -> str:
    """Identity of a source's current content: resolved path + size + mtime.

    For a directory, the sizes and mtimes of all files below it (a stat per file, no reads).
    """
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return f"file:{path}:{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            st = os.stat(full)
            digest.update(f"{os.path.relpath(full, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"dir:{path}:{digest.hexdigest()}"
