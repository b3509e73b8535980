"""Reference losses in plain PyTorch: the normative maths of DESIGN.md section 3.

Notation: a batch of N images, two views, embeddings z1, z2 of shape (N, d); Z = [z1; z2] has 2N
rows; u_k = Z_k / ||Z_k||; s_kl = u_k . u_l / tau; p(k) = (k + N) mod 2N is row k's positive.

These functions are the ground truth that the fused Triton kernels in ``kernels/`` are tested
against, so they favour clarity over speed (the 2N x 2N similarity matrix is materialised).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CONTRASTIVE_VARIANTS = ("simclr", "decoupled")


def _similarities(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """S = U U^T / tau for U = normalise([z1; z2]); shape (2N, 2N)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must be (N, d) of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    return u @ u.T / temperature


def _positive_index(n: int, device) -> torch.Tensor:
    return (torch.arange(2 * n, device=device) + n) % (2 * n)


def ntxent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2,
                variant: str = "simclr") -> torch.Tensor:
    r"""Normalised-temperature cross-entropy over the 2N rows of Z = [z1; z2].

    variant="simclr" (NT-Xent, SimCLR)::

        l_k = -s_{k,p(k)} + log \sum_{l != k} exp(s_kl)

    variant="decoupled" (the seed paper's cross-view L_con, DARe's default): the denominator runs
    over the other view only and leaves the positive out, D(k) = {l in other view, l != p(k)}::

        l_k = -s_{k,p(k)} + log \sum_{l in D(k)} exp(s_kl)        (needs N >= 2)

    Returns L = mean_k l_k over all 2N rows (both directions: the symmetric mean).
    """
    if variant not in CONTRASTIVE_VARIANTS:
        raise ValueError(f"variant must be one of {CONTRASTIVE_VARIANTS}, got {variant!r}")
    n = z1.shape[0]
    if variant == "decoupled" and n < 2:
        raise ValueError("the decoupled variant needs N >= 2 (its denominator is empty for N = 1)")
    s = _similarities(z1, z2, temperature)
    rows = torch.arange(2 * n, device=s.device)
    pos = _positive_index(n, s.device)
    if variant == "simclr":
        excluded = rows[:, None] == rows[None, :]
    else:
        view = rows // n
        excluded = (view[:, None] == view[None, :]) | (rows[None, :] == pos[:, None])
    lse = torch.logsumexp(s.masked_fill(excluded, float("-inf")), dim=1)
    return (lse - s[rows, pos]).mean()


def supcon_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor,
                temperature: float = 0.1) -> torch.Tensor:
    r"""Supervised contrastive loss (Khosla et al., "L_out" form) over Z = [z1; z2].

    With P(k) = {l != k : y_l = y_k} (the other view of the same image is always in P(k))::

        l_k = -(1/|P(k)|) \sum_{p in P(k)} s_kp + log \sum_{l != k} exp(s_kl)

    Returns mean_k l_k. Images that share a label are positives of each other, whatever their
    index: duplicated labels (two copies of one image, say) simply enlarge P(k).
    """
    n = z1.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    s = _similarities(z1, z2, temperature)
    y = torch.cat([labels, labels])
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=s.device)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1)
    mean_pos = (s * positives).sum(1) / positives.sum(1)
    return (lse - mean_pos).mean()


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I) (drawn here when not given)."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_jsd(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor,
                 logvar2: torch.Tensor) -> torch.Tensor:
    r"""Jensen-Shannon divergence between N(mu1, diag s1) and N(mu2, diag s2), s = exp(logvar),
    with the mixture replaced by the moment-matched Gaussian M = N((mu1 + mu2)/2, v),
    v = (s1 + s2)/2. Per dimension::

        JSD = 1/2 KL(P||M) + 1/2 KL(Q||M) = (mu1 - mu2)^2 / (8 v) + 1/2 ln v - 1/4 (ln s1 + ln s2)

    summed over dimensions and averaged over the batch. It is >= 0 and 0 iff the Gaussians are equal.
    """
    log_v = torch.logaddexp(logvar1, logvar2) - math.log(2.0)  # ln((s1 + s2) / 2), stable
    per_dim = (mu1 - mu2).pow(2) * torch.exp(-log_v) / 8 + 0.5 * log_v - 0.25 * (logvar1 + logvar2)
    return per_dim.sum(dim=-1).mean()
