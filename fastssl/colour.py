"""Batched colour ops of the augmentation: x is float (B, 3, H, W) in [0, 1]; per-sample factors are
(B,) tensors. ``fastssl.augment`` draws the factors and applies these in a fixed order."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BLUR_SIGMA = (0.1, 2.0)
# Kernel radius ceil(3 * sigma_max) = 6 (13 taps): covers +-3 sigma for the largest sigma, and
# is still well below a 32 px side (the ImageNet recipe's 23 taps are ~10% of 224 px).
_BLUR_RADIUS = math.ceil(3 * BLUR_SIGMA[1])
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma weights (as PIL / torchvision grayscale)


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """Luma Y = 0.299 R + 0.587 G + 0.114 B (ITU-R 601), shape (B, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x * f: blend with black."""
    return (x * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """f x + (1 - f) m, m = mean luma of the image: blend with its mean grey."""
    f = _per_sample(factor)
    mean = rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """f x + (1 - f) Y: blend each pixel with its own luma."""
    f = _per_sample(factor)
    return (f * x + (1 - f) * rgb_to_gray(x)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns through an exact vectorised RGB -> HSV -> RGB round trip
    (torchvision's ``adjust_hue`` semantics; S and V are kept).

    RGB -> HSV: V = max, S = (max - min) / max, H (in sextants, [0, 6)) = (G - B)/d mod 6 if
    R is the max, (B - R)/d + 2 if G is, (R - G)/d + 4 otherwise, d = max - min (H = 0 if d = 0).
    HSV -> RGB, branch-free: channel_n = V (1 - S clamp(min(k, 4 - k), 0, 1)),
    k = (n + H) mod 6 with n = 5, 3, 1 for R, G, B.
    """
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, torch.remainder((g - b) / d, 6),
                    torch.where(maxc == g, (b - r) / d + 2, (r - g) / d + 4))
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    h = torch.remainder(h + 6 * shift.view(-1, 1, 1), 6)
    chans = [maxc * (1 - s * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
             for k in (torch.remainder(h + n, 6) for n in (5, 3, 1))]
    return torch.stack(chans, dim=1).clamp_(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = _BLUR_RADIUS) -> torch.Tensor:
    """Per-sample separable Gaussian blur: weights exp(-t^2 / (2 sigma^2)), t = -r..r, summing
    to 1, applied along W then H as depthwise (grouped) convolutions over all B*C planes at once,
    with reflect padding (as torchvision's GaussianBlur)."""
    n, c, height, width = x.shape
    radius = min(radius, height - 1, width - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma.to(x.dtype).view(-1, 1)) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, 2r+1)
    y = F.pad(x.reshape(1, n * c, height, width), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, height, width)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert bright pixels: x -> 1 - x where x >= 0.5."""
    return torch.where(x >= 0.5, 1 - x, x)
