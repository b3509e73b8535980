"""Building VICReg, MoCo v3 and DINO (and the ViT) for their tests: a resolved Config (each method's
options at their defaults unless given), and a small method on a width-8 ResNet-18."""
from __future__ import annotations

import dataclasses

import torch

from fastssl import methods
from fastssl.config import parse_args, resolve
from fastssl.models import build_encoder

SMALL = ["--device", "cpu", "--width", "8", "--proj-hidden", "16", "--proj-dim", "8", "--kernels", "torch"]


def config(name: str, *args: str, **options):
    """resolve(parse_args(...)) for ``name``, with some of its options replaced by ``options``."""
    return dataclasses.replace(resolve(parse_args(["--method", name, *args])), **options)


def build(name: str, *args: str, encoder: str = "resnet18", seed: int = 0, **options):
    cfg = config(name, *SMALL, *args, **options)
    torch.manual_seed(seed)
    return methods.get_method(name)(build_encoder(encoder, 8), cfg)


def views(n=8, px=16, local=0, local_px=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(n, 3, px, px, generator=g) for _ in range(2)]
    return out + [torch.randn(n, 3, local_px, local_px, generator=g) for _ in range(local)]


def loss_goes_down(model, steps=25, lr=0.05, local=0):
    """SGD on one fixed batch; returns the losses (on_step after every step, as training calls it)."""
    opt = torch.optim.SGD([p for g in model.param_groups() for p in g["params"]], lr=lr, momentum=0.9)
    batch = views(local=local)
    out = []
    for step in range(steps):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_step(step, steps)
        out.append(loss.item())
    return out
