"""Errors raised by ``data_prep``.

Everything that can go wrong with a user's data (missing path, corrupt archive, wrong layout,
no internet) is reported as a :class:`DataError` whose message is a single user-facing line:
callers print it and exit, no traceback needed.
"""

from __future__ import annotations

import contextlib
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path


class DataError(Exception):
    """A problem with the data the user gave (or did not give). The message is one line."""

    def __init__(self, message: object) -> None:
        # Collapse whitespace so that the message always prints as one line.
        super().__init__(" ".join(str(message).split()))


class SourceNotFound(DataError):
    """A path exists but holds no source for the requested dataset."""


# Low-level exceptions that mean "this file is damaged or not what it claims to be".
_READ_ERRORS = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    OSError,  # includes gzip.BadGzipFile, PIL.UnidentifiedImageError, truncated reads
    pickle.UnpicklingError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
)


@contextlib.contextmanager
def reading(path: Path | str, what: str = "archive") -> Iterator[None]:
    """Turn low-level read errors inside the block into a :class:`DataError` naming ``path``."""
    try:
        yield
    except DataError:
        raise
    except PermissionError as exc:
        raise DataError(f"{path}: permission denied ({exc.strerror})") from exc
    except _READ_ERRORS as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise DataError(f"{path}: corrupt, truncated or unreadable {what} ({detail})") from exc
