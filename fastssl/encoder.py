"""The pretrained backbone of a checkpoint, for use outside fastssl.

    from fastssl import load_encoder
    encoder, dim = load_encoder("runs/simclr-cifar10-resnet18")   # a run folder or a checkpoint file

The encoder expects images normalised with the training dataset's per-channel mean and std (0-255
scale): ``encoder_info(path)`` returns them with the encoder's name and width. Checkpoints are read
with ``fastssl.checkpoint.load_checkpoint`` (``weights_only=True``): a file that is not a fastssl
checkpoint raises ``CheckpointError`` with a one-line message and nothing in it is ever run.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, resolve_path
from .models import build_encoder

ENCODER_PREFIX = "encoder."


def backbone_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The backbone's state dict: the checkpoint's ``method`` entries under ``encoder.``, prefix removed."""
    method = ckpt.get("method")
    if not isinstance(method, dict):
        raise CheckpointError("the checkpoint has no method state dict")
    state = {k[len(ENCODER_PREFIX):]: v for k, v in method.items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise CheckpointError("the checkpoint's method state holds no encoder.* weights")
    return state


def encoder_from_checkpoint(ckpt: dict, path="checkpoint") -> nn.Module:
    """The checkpoint's backbone rebuilt from its config (encoder, width), weights loaded, in eval mode."""
    cfg = ckpt.get("config")
    try:
        encoder = build_encoder(cfg["encoder"], cfg["width"])
        encoder.load_state_dict(backbone_state(ckpt))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a config or weights that do not match
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: the backbone cannot be rebuilt from the checkpoint ({first[:200]})") from None
    return encoder.eval()


def load_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, int]:
    """The backbone of the checkpoint at ``path`` (a ``checkpoint.pt`` or a run folder) as an
    ``nn.Module`` in eval mode on ``device``, and its feature dimension (512 for ResNet-18 at width
    64, 2048 for ResNet-50, 192 / 384 for ViT-Tiny / Small). Raises ``CheckpointError`` (one line) for anything but a fastssl checkpoint."""
    ckpt = load_checkpoint(path)
    encoder = encoder_from_checkpoint(ckpt, resolve_path(path)).to(device)
    return encoder, encoder.dim


def normalisation(ckpt: dict, data: str | None = None) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) on the 0-255 scale the backbone was trained with: the checkpoint's
    ``norm_mean``/``norm_std`` when it holds them, else computed from the dataset its config names
    (``data`` overrides the location; raises ``data_prep.DataError`` if it cannot be loaded)."""
    if "norm_mean" in ckpt and "norm_std" in ckpt:
        return [float(v) for v in ckpt["norm_mean"]], [float(v) for v in ckpt["norm_std"]]
    ds = load_eval_dataset(ckpt["config"], data, verbose=False)
    return [float(v) for v in ds.mean], [float(v) for v in ds.std]


def load_eval_dataset(cfg: dict, data: str | None = None, verbose: bool = True):
    """The dataset a checkpoint's config names (``data`` overrides where it is read from)."""
    from data_prep import load_dataset
    name, where = cfg.get("dataset") or "cifar10", data or cfg.get("data")
    if name == "images":  # a run on the user's own images: evaluation needs the labelled folder
        where = data or cfg.get("eval_data") or cfg.get("data")
        return load_dataset("images", where, resolution=cfg.get("resolution") or 32)
    return load_dataset(name, where, verbose=verbose)
