"""Checkpoints that cannot run code: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists, dicts, None): the
method's and optimiser's state dicts, the epoch, the metrics history and the run's config as a dict of
primitives. ``weights_only=True`` makes ``torch.load`` refuse anything else, so opening a file somebody
shared never unpickles (and so never runs) arbitrary objects. Every way a file can fail to be a
checkpoint (missing, truncated, foreign, malicious) becomes one ``CheckpointError`` with a one-line
message, which the command-line tools print before exiting with code 2.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from data_prep.atomic import atomic_path

CHECKPOINT = "checkpoint.pt"
REQUIRED_KEYS = ("method", "config")


class CheckpointError(ValueError):
    """A file that is not a loadable fastssl checkpoint (the message is one line)."""


def resolve_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder holding ``checkpoint.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` atomically (a temporary file, then a rename): a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The checkpoint at ``path`` (a file or a run folder), loaded with ``weights_only=True``.

    Raises ``CheckpointError`` (one line) when the file is missing, truncated, not a torch file, holds
    objects other than tensors and plain values (e.g. a pickle with a ``__reduce__`` payload: refused
    before anything of it runs), or is a torch file that is not a fastssl checkpoint.
    """
    path = resolve_path(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol ...": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...: all mean "not loadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "Unsupported operand" in str(exc):
            why = "it holds objects other than tensors and plain values (refused, nothing of it was run)"
        else:
            why = f"cannot be read ({type(exc).__name__}: {first[:160]})"
        raise CheckpointError(f"{path} is not a fastssl checkpoint: {why}") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a fastssl checkpoint: expected a dict with keys "
                              f"{', '.join(REQUIRED_KEYS)}")
    return state
