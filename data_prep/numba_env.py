"""numba's settings for FFCV (its pipeline kernels, its writer and fastssl's crop kernels).

They must be in place before numba starts its first parallel kernel, so every path into FFCV or
numba calls :func:`prepare_numba` first; a value the user already set in the environment wins.
"""
from __future__ import annotations

import os
import sys

from .cache import cache_root


def prepare_numba(cache_dir: bool = True) -> None:
    """Default ``NUMBA_THREADING_LAYER`` to ``omp`` and (``cache_dir``) ``NUMBA_CACHE_DIR`` to
    ``<fastssl cache>/numba``; the cache folder is read from $FASTSSL_CACHE now, so call this again
    just before use."""
    changed = False
    if cache_dir and "NUMBA_CACHE_DIR" not in os.environ:
        os.environ["NUMBA_CACHE_DIR"] = str(cache_root() / "numba")
        changed = True
    # numba picks its TBB threading layer when a system libtbb exists (Debian's OpenCV, which FFCV
    # needs, pulls one in), and TBB's at-exit unload was seen to hang a process forever at
    # interpreter shutdown (asleep in tbb::task_group::wait after all its work was done). The OpenMP
    # layer has no such exit hook.
    if "NUMBA_THREADING_LAYER" not in os.environ:
        os.environ["NUMBA_THREADING_LAYER"] = "omp"
        changed = True
    if changed and "numba" in sys.modules:  # imported already: make it read the variables again
        from numba.core import config
        config.reload_config()
