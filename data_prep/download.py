"""Download an official CIFAR archive into the cache (md5-verified, atomic)."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .atomic import atomic_path
from .errors import DataError
from .specs import DatasetSpec


def download_archive(
    spec: DatasetSpec, dest: Path, verbose: bool = True, timeout: float = 30.0
) -> Path:
    """Fetch ``spec.url`` to ``dest``; DataError (one line, with the reason) on any failure.

    The file is streamed into a temporary file beside ``dest`` while its md5 is computed, checked
    against ``spec.md5`` and only then renamed to ``dest``: an interrupted or corrupt download
    never leaves a file that looks complete.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(spec.url, timeout=timeout) as response, \
                atomic_path(dest, suffix=".part") as tmp, open(tmp, "wb") as f, tqdm(
                    total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                    desc=f"downloading {spec.archive_name}", disable=not verbose) as bar:
            digest = hashlib.md5()
            while block := response.read(1 << 20):
                f.write(block)
                digest.update(block)
                bar.update(len(block))
            if spec.md5 and digest.hexdigest() != spec.md5:  # raised inside: the partial file is removed
                raise DataError(f"downloaded {spec.url} has md5 {digest.hexdigest()}, expected {spec.md5}")
    except urllib.error.URLError as exc:
        raise DataError(f"download of {spec.url} failed ({exc.reason})") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DataError(f"download of {spec.url} failed ({type(exc).__name__}: {exc})") from exc
    return dest
