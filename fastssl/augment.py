"""Device-side, batched two-view augmentation for self-supervised learning on CIFAR.

Input is a uint8 NCHW batch on any device (CPU or CUDA); output is two normalised float views.
Every per-sample random parameter is drawn as a tensor from one ``torch.Generator`` (which must
live on the batch's device), so a seeded generator reproduces a batch exactly and nothing loops
over samples in Python. Probabilistic ops use per-sample Bernoulli masks and ``torch.where``.
Ops whose probability is 0 are skipped statically (per policy, never per sample); skipping an op
changes which random numbers later ops draw, which is fine because a policy is fixed for a run.

One view (``augment_view``) applies, in this fixed order (the BYOL/SimCLR order, as in solo-learn):

1. random resized crop + horizontal flip, fused into one per-sample affine ``grid_sample``;
2. colour jitter with probability ``jitter_p``: brightness, contrast, saturation, hue, in that
   fixed order (torchvision's ColorJitter shuffles the order per call; we do not);
3. grayscale with probability ``gray_p`` (ITU-R 601 luma);
4. Gaussian blur with probability ``blur_p`` (sigma ~ U[0.1, 2.0]);
5. solarisation with probability ``solarize_p``.

Multi-crop (``TwoViewAugment(local_crops=K)``): besides the two global views, K local crops of
``local_size`` px per image, drawn for the whole batch at once (``augment_view(crops=K)``: one
``grid_sample`` for all K * B crops, then the colour ops on the K * B crops as one batch). Global
views are rendered at ``size`` px (None: the input's side); changing it (progressive resolution,
``replace(size=px)``) changes no random parameter, only the rendering.

Values are floats in [0, 1] throughout (uint8 -> float happens once per batch) and are clamped
to [0, 1] after every colour op; normalisation with the dataset mean/std happens at the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F

from .colour import (BLUR_SIGMA, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, gaussian_blur,
                     rgb_to_gray, solarize)

__all__ = [
    "AugmentPolicy", "POLICY_NAMES", "policy_pair", "TwoViewAugment", "normalize", "augment_view",
    "sample_crop_boxes", "resized_crop_flip", "resized_crops_flip",
]


@dataclass(frozen=True)
class AugmentPolicy:
    """Parameters of one view. Defaults: the solo-learn CIFAR recipe (view of BYOL/SimCLR)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)   # RandomResizedCrop area fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio w/h (sampled log-uniform)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0       # Gaussian blur, sigma ~ U[0.1, 2.0], 13-tap separable kernel
    solarize_p: float = 0.0   # x -> 1 - x where x >= 0.5

    def __post_init__(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")


POLICY_NAMES = ("default", "symmetric", "asymmetric")


def policy_pair(name: str) -> tuple[AugmentPolicy, AugmentPolicy]:
    """The two view policies of a named recipe.

    - ``default``: solo-learn's CIFAR recipe on both views: crop (0.08, 1), flip 0.5, jitter 0.8
      with 0.4/0.4/0.2/0.1, grayscale 0.2, no blur, no solarisation.
    - ``symmetric``: SimCLR-style stronger jitter 0.8/0.8/0.8/0.2 (p=0.8), grayscale 0.2 and
      Gaussian blur p=0.5, the same on both views.
    - ``asymmetric``: BYOL / Barlow Twins: the default view, and a second view that adds
      solarisation p=0.2. The ImageNet recipe also blurs asymmetrically (p=1.0 / p=0.1); on
      32 px CIFAR images blur destroys most of the signal, so (like solo-learn's CIFAR configs)
      blur stays off on both views.
    """
    if name == "default":
        return AugmentPolicy(), AugmentPolicy()
    if name == "symmetric":
        p = AugmentPolicy(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5)
        return p, p
    if name == "asymmetric":
        return AugmentPolicy(), AugmentPolicy(solarize_p=0.2)
    raise ValueError(f"unknown augmentation policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")


# --------------------------------------------------------------------------------------------
# Geometry: random resized crop + flip
# --------------------------------------------------------------------------------------------

def _rand(shape, generator, device, rows: tuple[int, int] | None = None, groups: int = 1) -> torch.Tensor:
    """U[0, 1) of ``shape`` (first dim: the samples). With ``rows = (start, total)`` the draw is made
    for ``total`` samples and rows start .. start + shape[0] are returned: a slice of a larger batch
    gets exactly the parameters those samples get in the whole batch (data-parallel shards).

    ``groups`` > 1: shape[0] = groups * n samples, group-major (several crops of each of n images);
    with ``rows`` the draw is made for groups * total and each group's slice is kept."""
    if rows is None:
        return torch.rand(shape, generator=generator, device=device)
    start, total = rows
    n, rest = shape[0] // groups, tuple(shape[1:])
    if n * groups != shape[0] or not 0 <= start <= start + n <= total:
        raise ValueError(f"rows {rows} do not hold a slice of {n} samples")
    u = torch.rand((groups * total, *rest), generator=generator, device=device)
    if groups == 1:
        return u[start:start + n]
    return u.view(groups, total, *rest)[:, start:start + n].reshape(shape[0], *rest)


def sample_crop_boxes(n: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      generator: torch.Generator | None = None, device=None,
                      tries: int = 10, rows: tuple[int, int] | None = None, groups: int = 1) -> torch.Tensor:
    """Crop boxes with torchvision ``RandomResizedCrop.get_params`` semantics, vectorised.

    Per sample: up to ``tries`` candidates with area ~ U[scale] * H * W and aspect ratio w/h
    log-uniform in ``ratio``; w = round(sqrt(area * r)), h = round(sqrt(area / r)); the first
    candidate that fits the image wins and its top-left corner is uniform over valid positions.
    If none fits, fall back to the centre crop clipped to the ratio range. Here all candidates
    are drawn at once and the first valid one is selected with a min over indices.

    Returns a float32 (n, 4) tensor of integer-valued (top, left, height, width). ``rows``,
    ``groups``: see ``_rand``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    u = _rand((n, 2 * tries + 2), generator, device, rows, groups)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, :tries])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, tries:2 * tries])
    cw = torch.round(torch.sqrt(target * aspect))  # round-half-even, like Python's round()
    ch = torch.round(torch.sqrt(target / aspect))
    ok = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    idx = torch.arange(tries, device=device).expand(n, tries)
    first = torch.where(ok, idx, tries).min(dim=1, keepdim=True).values.clamp_max(tries - 1)
    found = ok.any(dim=1)
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)

    # Centre-crop fallback (static: depends only on the image shape and the ratio range).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    cw, ch = torch.where(found, cw, float(fw)), torch.where(found, ch, float(fh))

    # Uniform integer corner in [0, H - h]; the clamp guards float rounding of u * (H - h + 1).
    top = torch.minimum(torch.floor(u[:, -2] * (height - ch + 1)), height - ch)
    left = torch.minimum(torch.floor(u[:, -1] * (width - cw + 1)), width - cw)
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    return torch.stack((top, left, ch, cw), dim=1)


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor,
                      size: int) -> torch.Tensor:
    """Crop each image to its box, resize it to ``size`` x ``size`` (bilinear) and mirror it
    horizontally where ``flip`` is true, as one affine ``grid_sample``.

    With align_corners=False a box [left, left + w) spans normalised x in
    [2 left / W - 1, 2 (left + w) / W - 1], so theta = [[+-w/W, 0, cx], [0, h/H, cy]] with the
    box centre cx = (2 left + w) / W - 1 (likewise y); a negative x scale mirrors the output.
    The grid is then clamped to the box's outermost pixel centres so that interpolation never
    reads pixels outside the crop: this equals crop-then-``F.interpolate(bilinear,
    align_corners=False)`` (no antialiasing; CIFAR crops are never downscaled).
    """
    n, c, height, width = x.shape
    top, left, ch, cw = boxes.to(x.dtype).unbind(1)
    sign = 1.0 - 2.0 * flip.to(x.dtype)
    zero = torch.zeros_like(cw)
    theta = torch.stack((
        torch.stack((sign * cw / width, zero, (2 * left + cw) / width - 1), dim=1),
        torch.stack((zero, ch / height, (2 * top + ch) / height - 1), dim=1),
    ), dim=1)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    v = lambda t: t.view(n, 1, 1)  # noqa: E731
    gx = grid[..., 0].clamp(v((2 * left + 1) / width - 1), v((2 * (left + cw) - 1) / width - 1))
    gy = grid[..., 1].clamp(v((2 * top + 1) / height - 1), v((2 * (top + ch) - 1) / height - 1))
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resized_crops_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """``groups = len(boxes) // len(x)`` crops of every image (boxes and flips group-major: row
    g * B + b is crop g of image b) in one ``grid_sample`` over the un-repeated batch: the G grids
    of an image are stacked along the output height, (B, C, G * size, size), then regrouped to
    (G * B, C, size, size). Same sampling as ``resized_crop_flip`` (pixel centres, clamped to the
    box), with the grid written out directly: x = sign w/W xs + cx, xs = (2 j + 1)/size - 1."""
    n, c, height, width = x.shape
    groups = boxes.shape[0] // n
    top, left, ch, cw = (t.view(groups, n).t().reshape(n, groups, 1, 1) for t in boxes.to(x.dtype).unbind(1))
    sign = (1.0 - 2.0 * flip.to(x.dtype)).view(groups, n).t().reshape(n, groups, 1, 1)
    base = (2 * torch.arange(size, device=x.device, dtype=x.dtype) + 1) / size - 1
    gx = sign * cw / width * base.view(1, 1, 1, size) + (2 * left + cw) / width - 1
    gy = ch / height * base.view(1, 1, size, 1) + (2 * top + ch) / height - 1
    gx = torch.minimum(torch.maximum(gx, (2 * left + 1) / width - 1), (2 * (left + cw) - 1) / width - 1)
    gy = torch.minimum(torch.maximum(gy, (2 * top + 1) / height - 1), (2 * (top + ch) - 1) / height - 1)
    grid = torch.stack((gx.expand(n, groups, size, size), gy.expand(n, groups, size, size)), dim=-1)
    out = F.grid_sample(x, grid.view(n, groups * size, size, 2), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.view(n, c, groups, size, size).transpose(0, 2).transpose(1, 2).reshape(groups * n, c, size, size)


def _factor(u: torch.Tensor, strength: float) -> torch.Tensor:
    """Map U[0,1) to a jitter factor uniform in [max(0, 1 - s), 1 + s]."""
    lo = max(0.0, 1.0 - strength)
    return lo + (1.0 + strength - lo) * u


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------

def augment_view(x_float01: torch.Tensor, policy: AugmentPolicy, size: int,
                 generator: torch.Generator | None = None, rows: tuple[int, int] | None = None,
                 crops: int = 1) -> torch.Tensor:
    """One augmented view of a float (B, 3, H, W) batch in [0, 1]; returns (B, 3, size, size)
    floats in [0, 1]. Does not modify its input (it may return it when the policy is identity).

    ``rows = (start, total)``: the batch is rows start .. start + B of a batch of ``total`` samples
    (a data-parallel shard); every random parameter is drawn for ``total`` samples and sliced, so
    the shard is augmented exactly as those rows of the whole batch would be.

    ``crops`` > 1: that many independent views of every image in one batched pass (multi-crop),
    returned group-major as (crops * B, 3, size, size): rows k * B .. (k + 1) * B are crop k."""
    x = x_float01
    n, _, height, width = x.shape
    dev = x.device
    rand = lambda *shape: _rand(shape, generator, dev, rows, crops)  # noqa: E731
    if crops > 1:
        boxes = sample_crop_boxes(crops * n, height, width, policy.crop_scale, policy.crop_ratio,
                                  generator=generator, device=dev, rows=rows, groups=crops)
        flip = rand(crops * n) < policy.flip_p
        return _colour(resized_crops_flip(x, boxes, flip, size), policy, rand)

    # 1. Crop + flip. A full-image, size-preserving crop is skipped (exact, and cheaper).
    identity_crop = (tuple(policy.crop_scale) == (1.0, 1.0) and tuple(policy.crop_ratio) == (1.0, 1.0)
                     and height == width == size)
    if identity_crop:
        if policy.flip_p > 0:
            x = _where(rand(n) < policy.flip_p, x.flip(-1), x)
    else:
        boxes = sample_crop_boxes(n, height, width, policy.crop_scale, policy.crop_ratio,
                                  generator=generator, device=dev, rows=rows)
        flip = rand(n) < policy.flip_p
        x = resized_crop_flip(x, boxes, flip, size)
    return _colour(x, policy, rand)


def _colour(x: torch.Tensor, policy: AugmentPolicy, rand) -> torch.Tensor:
    """Steps 2-5 of ``augment_view`` on the cropped batch; ``rand(*shape)`` draws U[0, 1) per sample."""
    n = x.shape[0]
    # 2. Colour jitter (fixed order B, C, S, H), all factors drawn even if a strength is 0.
    if policy.jitter_p > 0 and (policy.brightness or policy.contrast or policy.saturation or policy.hue):
        u = rand(n, 5)
        y = x
        if policy.brightness:
            y = adjust_brightness(y, _factor(u[:, 0], policy.brightness))
        if policy.contrast:
            y = adjust_contrast(y, _factor(u[:, 1], policy.contrast))
        if policy.saturation:
            y = adjust_saturation(y, _factor(u[:, 2], policy.saturation))
        if policy.hue:
            y = adjust_hue(y, (2 * u[:, 3] - 1) * policy.hue)
        x = _where(u[:, 4] < policy.jitter_p, y, x)

    # 3. Grayscale (3 equal channels).
    if policy.gray_p > 0:
        x = _where(rand(n) < policy.gray_p, rgb_to_gray(x).expand_as(x), x)

    # 4. Gaussian blur.
    if policy.blur_p > 0:
        u = rand(n, 2)
        sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, 0]
        x = _where(u[:, 1] < policy.blur_p, gaussian_blur(x, sigma), x)

    # 5. Solarisation.
    if policy.solarize_p > 0:
        x = _where(rand(n) < policy.solarize_p, solarize(x), x)
    return x


def _channel_stats(values, name: str) -> tuple[float, ...]:
    vals = tuple(float(v) for v in torch.as_tensor(values, dtype=torch.float64).flatten())
    if len(vals) != 3:
        raise ValueError(f"{name} must have 3 per-channel values, got {len(vals)}")
    if name == "std" and min(vals) <= 0:
        raise ValueError(f"std must be positive, got {vals}")
    return vals


def _check_batch(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise TypeError(f"expected a uint8 (B, 3, H, W) batch, got {x.dtype} {tuple(x.shape)}")


def normalize(x: torch.Tensor, mean, std, out_dtype=torch.float32) -> torch.Tensor:
    """Evaluation transform: uint8 (B, 3, H, W) -> (x - mean) / std, mean/std per channel on
    the 0-255 scale. Computed in float32, returned as ``out_dtype``."""
    _check_batch(x)
    m = torch.tensor(_channel_stats(mean, "mean"), dtype=torch.float32, device=x.device)
    s = torch.tensor(_channel_stats(std, "std"), dtype=torch.float32, device=x.device)
    return ((x.to(torch.float32) - m.view(1, 3, 1, 1)) / s.view(1, 3, 1, 1)).to(out_dtype)


class TwoViewAugment:
    """Callable producing the views of a uint8 batch on its own device: two global views (policies
    ``view1``, ``view2``) and ``local_crops`` smaller local crops, all normalised.

    ``mean``/``std`` are per-channel, on the 0-255 scale. ``size`` is the side of the global views
    (None: the input's side, min(H, W)). Views are (B, 3, side, side) tensors of ``out_dtype``,
    channels_last if asked, returned as a list [global1, global2, local1, ..., localK]. Pass a
    ``generator`` on the batch's device for reproducible output (None uses torch's default
    generator of that device).

    Multi-crop: the K local crops are ``local_size`` px with crop area fraction in ``local_scale``
    and view 1's policy otherwise (aspect ratio, flip and colour; as DINO/SwAV's local crops, which
    follow the first view's colour recipe, so the asymmetric recipe's solarisation stays on view 2
    only). All K crops of the batch come from one batched pass (``augment_view(crops=K)``) whose
    parameters are drawn after the global views', so ``local_crops=0`` gives exactly the two views
    of the plain two-view augmentation and adds no work.
    """

    def __init__(self, view1: AugmentPolicy, view2: AugmentPolicy, mean, std, size: int | None = None,
                 out_dtype=torch.float32, channels_last: bool = True, local_crops: int = 0,
                 local_size: int = 16, local_scale: Sequence[float] = (0.05, 0.3)):
        self.view1, self.view2 = view1, view2
        self.mean = _channel_stats(mean, "mean")
        self.std = _channel_stats(std, "std")
        self.size = _side(size, "size") if size is not None else None
        self.out_dtype = out_dtype
        self.channels_last = channels_last
        if isinstance(local_crops, bool) or int(local_crops) != local_crops or local_crops < 0:
            raise ValueError(f"local crops must be an integer >= 0, got {local_crops!r}")
        self.local_crops = int(local_crops)
        self.local_size = _side(local_size, "local crop size")
        scale = tuple(float(v) for v in local_scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"local crop scale must be LO,HI with 0 < LO <= HI <= 1, got {tuple(local_scale)}")
        self.local_scale = scale
        self.local_policy = replace(view1, crop_scale=scale)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def replace(self, **changes) -> "TwoViewAugment":
        """A copy with some constructor arguments changed, e.g. ``replace(size=16)``, ``replace(local_crops=6)``."""
        args = dict(view1=self.view1, view2=self.view2, mean=self.mean, std=self.std, size=self.size,
                    out_dtype=self.out_dtype, channels_last=self.channels_last, local_crops=self.local_crops,
                    local_size=self.local_size, local_scale=self.local_scale)
        unknown = set(changes) - set(args)
        if unknown:
            raise TypeError(f"unknown augmentation settings: {', '.join(sorted(unknown))}")
        args.update(changes)
        return TwoViewAugment(**args)

    @property
    def num_views(self) -> int:
        return 2 + self.local_crops

    def global_side(self, height: int, width: int) -> int:
        """The side of the global views of an (H, W) input."""
        return self.size if self.size is not None else min(height, width)

    def _finish(self, v: torch.Tensor) -> torch.Tensor:
        # (v - mean/255) / (std/255), i.e. the same map as normalize() on the 0-1 scale.
        if v.device not in self._stats:
            m = torch.tensor([a / 255 for a in self.mean], device=v.device).view(1, 3, 1, 1)
            s = torch.tensor([a / 255 for a in self.std], device=v.device).view(1, 3, 1, 1)
            self._stats[v.device] = (m, s)
        m, s = self._stats[v.device]
        v = ((v - m) / s).to(self.out_dtype)
        return v.contiguous(memory_format=torch.channels_last) if self.channels_last else v

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 rows: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """All views of ``x``; ``rows = (start, total)`` marks ``x`` as a slice of a larger batch
        (see ``augment_view``): the slice's views equal those rows of the whole batch's views."""
        _check_batch(x)
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(f"generator is on {generator.device}, batch on {x.device}")
        x01 = x.to(torch.float32).div_(255)  # the only uint8 -> float conversion
        side = self.global_side(x.shape[2], x.shape[3])
        views = [self._finish(augment_view(x01, self.view1, side, generator, rows)),
                 self._finish(augment_view(x01, self.view2, side, generator, rows))]
        if self.local_crops:
            local = augment_view(x01, self.local_policy, self.local_size, generator, rows, crops=self.local_crops)
            views += list(self._finish(local).chunk(self.local_crops))  # group-major: chunk k is crop k
        return views

    def __repr__(self) -> str:
        local = (f", local_crops={self.local_crops}, local_size={self.local_size}, local_scale={self.local_scale}"
                 if self.local_crops else "")
        return (f"TwoViewAugment(view1={self.view1}, view2={self.view2}, size={self.size}{local}, "
                f"out_dtype={self.out_dtype}, channels_last={self.channels_last})")


def _side(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")
    return int(value)
