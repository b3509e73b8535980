"""What the multi-process (gloo) tests share: a free local port for the process group, and BatchNorm layers
that are not at their zero-initialised defaults (so every branch, and its running statistics, gets gradient)."""
from __future__ import annotations

import socket

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@torch.no_grad()
def randomise_batchnorm(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Affine BatchNorm weights in [0.5, 1.5) and small biases, drawn from ``generator``."""
    for bn in model.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) and bn.affine:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
            bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=generator))
