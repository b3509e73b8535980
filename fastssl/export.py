"""Export a checkpoint's backbone in three formats that load without fastssl's training code.

- ``safetensors``: the weights (fastssl's key names) and a JSON sidecar with the encoder, width,
  feature dimension, dataset and the normalisation mean/std;
- ``torchvision``: a state dict with torchvision's ResNet key names (``conv1``, ``bn1``,
  ``layer1.0.conv1``, ..., ``layerN.0.downsample.0/1``; no ``fc``). Our ResNets use the CIFAR stem,
  a 3x3 stride-1 ``conv1`` and no max-pool, so torchvision's model needs two changes first::

      m = torchvision.models.resnet18()   # or resnet50
      m.conv1, m.maxpool, m.fc = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity(), nn.Identity()
      m.load_state_dict(torch.load("encoder-torchvision.pt", weights_only=True), strict=True)

  (torchvision's networks are width 64: other widths are refused);
- ``torchscript``: a ``torch.export`` program (``torch.export.load(path).module()`` runs it).

Each writes ``<file>.json`` beside the weights with the same description, and every format maps a
normalised image batch to the same features as ``fastssl.load_encoder``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from data_prep.atomic import atomic_path, write_json

from .encoder import encoder_from_checkpoint, normalisation
from .models import ENCODERS

FORMATS = ("safetensors", "torchvision", "torchscript")
SUFFIX = {"safetensors": ".safetensors", "torchvision": "-torchvision.pt", "torchscript": ".pt2"}
TORCHVISION_WIDTH = 64
TORCHVISION_ENCODERS = ("resnet18", "resnet50")  # ours whose layout matches a torchvision model of that name


class ExportError(ValueError):
    """An export that cannot be done (the message is one line)."""


def torchvision_key(key: str, layers: list[int]) -> str:
    """torchvision's name for one of our backbone keys; ``layers`` = blocks per stage ([2, 2, 2, 2] for R18).

    stem.0 -> conv1, stem.1 -> bn1, stages.<i> -> layer<s>.<b> (i counts blocks over all stages),
    shortcut.0/1 -> downsample.0/1; the names inside a block (conv1, bn1, ...) are the same.
    """
    parts = key.split(".")
    if parts[0] == "stem":
        return {"0": "conv1", "1": "bn1"}[parts[1]] + "." + ".".join(parts[2:])
    if parts[0] != "stages":
        raise ExportError(f"unexpected backbone key {key!r}")
    index, stage = int(parts[1]), 0
    while index >= layers[stage]:
        index -= layers[stage]
        stage += 1
    rest = parts[2:]
    if rest[0] == "shortcut":
        rest = ["downsample"] + rest[1:]
    return ".".join([f"layer{stage + 1}", str(index)] + rest)


def torchvision_state_dict(state: dict[str, torch.Tensor], encoder: str, width: int) -> dict[str, torch.Tensor]:
    """Our backbone state dict renamed to torchvision's ResNet keys (refused for other encoders and for widths
    other than 64)."""
    if encoder not in TORCHVISION_ENCODERS:
        raise ExportError(f"--to torchvision applies to the ResNets ({', '.join(TORCHVISION_ENCODERS)}) only, not "
                          f"{encoder}; use --to safetensors or --to torchscript")
    if width != TORCHVISION_WIDTH:
        raise ExportError(f"width {width} cannot load into torchvision's {encoder} (width {TORCHVISION_WIDTH} only); "
                          "use --to safetensors or --to torchscript")
    layers = ENCODERS[encoder][1]
    return {torchvision_key(k, layers): v.clone() for k, v in state.items()}


def description(ckpt: dict, encoder: nn.Module, fmt: str, source, data: str | None = None) -> dict:
    """The sidecar: what the weights are and how to feed them."""
    cfg = ckpt["config"]
    mean, std = normalisation(ckpt, data)
    return dict(format=fmt, encoder=cfg["encoder"], width=cfg["width"], feature_dim=encoder.dim,
                dataset=cfg.get("dataset"), method=cfg.get("method"), epochs_trained=ckpt.get("epoch"),
                norm_mean=mean, norm_std=std, input="RGB float tensor (B, 3, H, W): (pixel - norm_mean) / norm_std, "
                "pixels and norm_* on the 0-255 scale", stem="CIFAR: 3x3 stride-1 conv1, no max-pool",
                source=str(source))


def export(ckpt: dict, fmt: str, out: str | os.PathLike, source="checkpoint", data: str | None = None) -> list[Path]:
    """Write the checkpoint's backbone to ``out`` in ``fmt`` and its JSON sidecar; returns both paths."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    encoder = encoder_from_checkpoint(ckpt, source)
    cfg, out = ckpt["config"], Path(out)
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    if fmt == "torchvision":  # checked before anything is written
        state = torchvision_state_dict(state, cfg["encoder"], cfg["width"])
    info = description(ckpt, encoder, fmt, source, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=out.suffix) as tmp:  # an interrupted export leaves no half-written file
        if fmt == "safetensors":
            from safetensors.torch import save_file
            save_file(state, str(tmp), metadata={"encoder": cfg["encoder"], "width": str(cfg["width"])})
        elif fmt == "torchvision":
            torch.save(state, tmp)
        else:
            example = torch.randn(2, 3, 32, 32)
            batch = torch.export.Dim("batch", min=1)
            program = torch.export.export(encoder, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, tmp)
    sidecar = sidecar_path(out)
    write_json(sidecar, info)
    return [out, sidecar]


def sidecar_path(weights: str | os.PathLike) -> Path:
    """``<weights file name>.json`` (e.g. ``encoder.safetensors.json``): one per export, no clashes."""
    weights = Path(weights)
    return weights.with_name(weights.name + ".json")


def default_output(checkpoint: Path, fmt: str) -> Path:
    """``encoder.safetensors`` / ``encoder-torchvision.pt`` / ``encoder.pt2`` beside the checkpoint."""
    return checkpoint.parent / ("encoder" + SUFFIX[fmt])


def load_safetensors_encoder(path: str | os.PathLike) -> nn.Module:
    """Rebuild the backbone from a safetensors export and its sidecar (in eval mode)."""
    from safetensors.torch import load_file

    from .models import build_encoder
    info = json.loads(sidecar_path(path).read_text())
    encoder = build_encoder(info["encoder"], info["width"])
    encoder.load_state_dict(load_file(str(path)))
    return encoder.eval()
