"""Download an official CIFAR archive into the cache (md5-verified, atomic)."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

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
    tmp_name = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(spec.url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            digest = hashlib.md5()
            with tempfile.NamedTemporaryFile(
                dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False
            ) as f, tqdm(
                total=total, unit="B", unit_scale=True, desc=f"downloading {spec.archive_name}",
                disable=not verbose,
            ) as bar:
                tmp_name = f.name
                while block := response.read(1 << 20):
                    f.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if spec.md5 and digest.hexdigest() != spec.md5:
            raise DataError(
                f"downloaded {spec.url} has md5 {digest.hexdigest()}, expected {spec.md5}"
            )
        os.replace(tmp_name, dest)
        tmp_name = None
    except urllib.error.URLError as exc:
        raise DataError(f"download of {spec.url} failed ({exc.reason})") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DataError(f"download of {spec.url} failed ({type(exc).__name__}: {exc})") from exc
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return dest
