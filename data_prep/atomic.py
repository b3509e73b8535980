"""One atomic write for the whole project (data_prep is the lowest layer that fastssl and bench import).

``with atomic_path(dest) as tmp: write to tmp`` writes into a temporary file in ``dest``'s folder and
renames it onto ``dest`` only when the block succeeds (``os.replace`` is atomic within one file system),
so a crash or an exception never leaves half a file at ``dest``; the temporary file is removed on failure.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path beside ``dest``; on success rename it to ``dest`` (mode 0644).

    ``suffix`` keeps the extension a writer keys on (e.g. ``".png"`` for matplotlib's ``savefig``)."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; these are ordinary files
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(dest: str | os.PathLike, text: str) -> None:
    """``dest`` holds ``text``, or (after a crash) what it held before: never half of it."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: str | os.PathLike, obj, **dumps_kw) -> None:
    """``obj`` as indented JSON (and a final newline), written atomically."""
    write_text(dest, json.dumps(obj, indent=2, **dumps_kw) + "\n")
