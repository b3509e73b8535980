"""Reading tar archives (.tar, .tar.gz, .tgz, ...) in one sequential pass, nothing extracted."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from .errors import reading

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_tar_name(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def member_name(name: str) -> str:
    """Normalised member path: no leading "./" or "/"."""
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


class _ProgressReader:
    """File wrapper that advances a progress bar by the (compressed) bytes read."""

    def __init__(self, raw: BinaryIO, bar: tqdm) -> None:
        self._raw, self._bar = raw, bar

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._bar.update(len(data))
        return data


def read_tar_files(path: Path, verbose: bool = True) -> dict[str, bytes]:
    """Bytes of every regular file in the archive, keyed by normalised member name.

    Streams the archive once ("r|*"), which is the fast way to read a compressed tar; any
    truncation or corruption becomes a DataError naming ``path``. Directory members are recorded
    with value ``b""`` under their name plus a trailing "/", so empty folders stay visible.
    """
    files: dict[str, bytes] = {}
    with reading(path):
        size = path.stat().st_size
        with open(path, "rb") as raw, tqdm(
            total=size, unit="B", unit_scale=True, desc=f"reading {path.name}",
            disable=not (verbose and sys.stderr.isatty()), leave=False,  # no bars in logs
        ) as bar:
            with tarfile.open(fileobj=_ProgressReader(raw, bar), mode="r|*") as tar:  # type: ignore[call-overload]
                for member in tar:
                    name = member_name(member.name)
                    if member.isdir():
                        files[name.rstrip("/") + "/"] = b""
                    elif member.isfile():
                        handle = tar.extractfile(member)
                        files[name] = handle.read() if handle else b""
    return files


def list_tar_names(path: Path) -> list[str]:
    """Normalised names of all members (reads through the whole archive once)."""
    with reading(path), tarfile.open(path, mode="r:*") as tar:
        return [member_name(m.name) + ("/" if m.isdir() else "") for m in tar]
