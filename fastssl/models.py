"""Encoders (ResNet-18/50 with the CIFAR stem; ViT-Tiny/Small for 32-px images, ``fastssl.vit``) and the
heads the methods put on top of them.

CIFAR stem: a 3x3 convolution with stride 1 and no max-pool, so 32x32 images keep their
resolution through the first stage (the ImageNet 7x7/2 stem + pool would leave 8x8 maps).
``width`` scales every stage (64 is the standard network; 16 trains ~15x faster on a CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vit import VIT_SIZES, VisionTransformer


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet backbone with the CIFAR stem; ``forward`` returns pooled features h of size ``dim``."""

    def __init__(self, block, layers: list[int], width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, blocks in enumerate(layers):
            planes = width * 2 ** i
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(block(cin, planes, stride))
                cin = planes * block.expansion
        self.stages = nn.Sequential(*stages)
        self.dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: every block starts as the identity.
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)


# name -> (block, stage sizes) for the ResNets, (VisionTransformer, its size) for the ViTs.
ENCODERS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    **{name: (VisionTransformer, size) for name, size in VIT_SIZES.items()},
}


def is_vit(name: str) -> bool:
    """Whether encoder ``name`` is a Vision Transformer (tokens, not feature maps: no channels-last, no --width)."""
    return ENCODERS[name][0] is VisionTransformer


def build_encoder(name: str, width: int = 64) -> nn.Module:
    """The backbone ``name`` (its ``dim`` attribute is the feature size); ``width`` scales the ResNets only."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(ENCODERS)}")
    block, spec = ENCODERS[name]
    if is_vit(name):
        return VisionTransformer(**spec)
    return ResNet(block, spec, width)


def mlp(din: int, hidden: int, dout: int, layers: int = 2, last_bn: bool = False,
        activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear-BN-activation blocks then a final Linear (optionally followed by a BN without affine)."""
    mods, d = [], din
    for _ in range(layers - 1):
        act = activation(inplace=True) if activation is nn.ReLU else activation()
        mods += [nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), act]
        d = hidden
    mods.append(nn.Linear(d, dout, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(dout, affine=False))
    return nn.Sequential(*mods)


class GaussianHead(nn.Module):
    """Projection head that outputs a diagonal Gaussian: (mu, logvar), each of size ``dout``.

    A shared Linear-BN-ReLU trunk then two linear outputs. logvar is soft-clamped to
    [-logvar_bound, logvar_bound] with tanh so that exp(logvar) can neither vanish nor explode.
    logvar starts near ``logvar_init`` (-3: sigma ~ 0.22, per-dimension signal-to-noise ~ 2 at init).
    With sigma ~ 1 the samples are mostly noise and a short run barely learns (CPU --fast, lambda 0.1:
    +1.2 kNN points); a small variance instead makes the JSD's (mu1 - mu2)^2 / (8 v) term large, which is
    why the CPU --fast preset lowers lambda (see ``DARe.fast_cpu``).
    """

    def __init__(self, din: int, hidden: int, dout: int, logvar_bound: float = 8.0, logvar_init: float = -3.0):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(din, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.mu = nn.Linear(hidden, dout)
        self.logvar = nn.Linear(hidden, dout)
        nn.init.constant_(self.logvar.bias, logvar_init)
        self.logvar_bound = logvar_bound

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.trunk(h)
        logvar = self.logvar_bound * torch.tanh(self.logvar(t) / self.logvar_bound)
        return self.mu(t), logvar


class PrototypeHead(nn.Module):
    """DINO's head: an MLP (Linear-BN-GELU twice, then Linear) to a bottleneck, L2-normalised, then a
    weight-normalised linear layer to K prototypes whose norm is fixed to 1 (DINO's ``norm_last_layer``):
    logits_k = <x / |x|, w_k / |w_k|>, cosines in [-1, 1]."""

    def __init__(self, din: int, hidden: int, bottleneck: int, prototypes: int):
        super().__init__()
        self.mlp = mlp(din, hidden, bottleneck, layers=3, activation=nn.GELU)
        self.prototypes = nn.Parameter(torch.empty(prototypes, bottleneck))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(h), dim=-1) @ F.normalize(self.prototypes, dim=-1).T
