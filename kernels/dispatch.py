"""Choose between the fused Triton kernels and the PyTorch reference losses.

Methods call these functions, never a kernel directly. ``backend`` is "torch" or "triton";
``resolve_backend("auto", device)`` gives Triton on CUDA and the reference elsewhere.
"""
from __future__ import annotations

import torch

from fastssl import losses

BACKENDS = ("auto", "triton", "torch")


def resolve_backend(mode: str, device: torch.device | str) -> str:
    if mode not in BACKENDS:
        raise ValueError(f"--kernels must be one of {BACKENDS}, got {mode!r}")
    device = torch.device(device)
    if mode == "auto":
        return "torch"  # the Triton backend is wired in by the kernels work (issue 4)
    if mode == "triton":
        raise RuntimeError("--kernels triton is not available yet; use --kernels torch")
    return "torch"


def contrastive_loss(z1, z2, temperature, labels=None, variant="simclr", backend="torch"):
    """NT-Xent ("simclr"), decoupled cross-view ("decoupled") or SupCon (``labels`` given)."""
    if labels is not None:
        return losses.supcon_loss(z1, z2, labels, temperature)
    return losses.ntxent_loss(z1, z2, temperature, variant=variant)


def reparam_jsd(mu1, logvar1, mu2, logvar2, backend="torch"):
    """(z1, z2, jsd): both views reparameterised with fresh N(0, I) noise, and their Gaussian JSD."""
    z1 = losses.reparameterize(mu1, logvar1)
    z2 = losses.reparameterize(mu2, logvar2)
    return z1, z2, losses.gaussian_jsd(mu1, logvar1, mu2, logvar2)
