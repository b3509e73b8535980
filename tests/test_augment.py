"""Tests for fastssl.augment (CPU; the CUDA test skips without a GPU)."""
import colorsys
import math
import random

import pytest
import torch
import torch.nn.functional as F

from fastssl.augment import (
    POLICY_NAMES, AugmentPolicy, TwoViewAugment, augment_view, normalize, policy_pair, resized_crop_flip,
    sample_crop_boxes,
)
from fastssl.colour import (adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, gaussian_blur,
                            rgb_to_gray, solarize)

MEAN = (125.3, 123.0, 113.9)
STD = (63.0, 62.1, 66.7)
# Geometry only / nothing at all.
NO_COLOUR = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)
IDENTITY = AugmentPolicy(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, **NO_COLOUR)


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def rand_images(b=8, h=32, w=32, seed=0):
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=gen(seed))


def norm_bounds():
    lo = torch.tensor([(0 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    hi = torch.tensor([(255 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    return lo, hi


# ------------------------------------------------------------------ policies


def test_policy_pair_names_and_contents():
    assert POLICY_NAMES == ("default", "symmetric", "asymmetric")
    d1, d2 = policy_pair("default")
    assert d1 == d2 == AugmentPolicy()
    assert (d1.crop_scale, d1.flip_p, d1.jitter_p, d1.gray_p) == ((0.08, 1.0), 0.5, 0.8, 0.2)
    assert (d1.brightness, d1.contrast, d1.saturation, d1.hue) == (0.4, 0.4, 0.2, 0.1)
    assert d1.blur_p == d1.solarize_p == 0.0
    s1, s2 = policy_pair("symmetric")
    assert s1 == s2 and (s1.brightness, s1.contrast, s1.saturation, s1.hue) == (0.8, 0.8, 0.8, 0.2)
    assert s1.blur_p == 0.5 and s1.jitter_p == 0.8 and s1.gray_p == 0.2
    a1, a2 = policy_pair("asymmetric")
    assert a1.solarize_p == 0.0 and a2.solarize_p == 0.2
    assert a1.blur_p == a2.blur_p == 0.0  # CIFAR choice, see policy_pair's docstring
    with pytest.raises(ValueError, match="default, symmetric, asymmetric"):
        policy_pair("nope")


@pytest.mark.parametrize("kwargs", [dict(crop_scale=(0.0, 1.0)), dict(crop_scale=(0.5, 0.2)),
                                    dict(crop_ratio=(2.0, 1.0)), dict(flip_p=1.5),
                                    dict(brightness=-0.1), dict(hue=0.6)])
def test_policy_validation(kwargs):
    with pytest.raises(ValueError):
        AugmentPolicy(**kwargs)


# ------------------------------------------------------------------ output contract


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_shapes_dtype_range(name):
    x = rand_images(16)
    v1, v2 = TwoViewAugment(*policy_pair(name), MEAN, STD)(x, gen(1))
    lo, hi = norm_bounds()
    for v in (v1, v2):
        assert v.shape == (16, 3, 32, 32) and v.dtype == torch.float32
        assert v.is_contiguous(memory_format=torch.channels_last)
        assert torch.isfinite(v).all()
        assert (v >= lo - 1e-4).all() and (v <= hi + 1e-4).all()


def test_out_dtype_and_contiguous_layout():
    aug = TwoViewAugment(*policy_pair("default"), MEAN, STD, out_dtype=torch.bfloat16,
                         channels_last=False)
    v1, v2 = aug(rand_images(4), gen(0))
    assert v1.dtype == v2.dtype == torch.bfloat16 and v1.is_contiguous()


def test_input_validation():
    aug = TwoViewAugment(*policy_pair("default"), MEAN, STD)
    with pytest.raises(TypeError):
        aug(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError):
        TwoViewAugment(*policy_pair("default"), MEAN[:2], STD)


def test_seed_determinism():
    x = rand_images(16)
    aug = TwoViewAugment(*policy_pair("symmetric"), MEAN, STD)
    a1, a2 = aug(x, gen(123))
    b1, b2 = aug(x, gen(123))
    c1, c2 = aug(x, gen(124))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, c1) and not torch.equal(a2, c2)


def test_per_sample_variation_and_views_differ():
    x = rand_images(1).expand(16, -1, -1, -1).contiguous()  # 16 copies of one image
    v1, v2 = TwoViewAugment(*policy_pair("default"), MEAN, STD)(x, gen(5))
    flat = v1.flatten(1)
    n_distinct = len({tuple(r) for r in flat[:, :64].tolist()})
    assert n_distinct == 16  # every copy got its own crop/colour parameters
    assert not torch.allclose(v1, v2)
    # Geometry alone also varies per sample.
    g = augment_view(x.float() / 255, AugmentPolicy(**NO_COLOUR), 32, gen(6))
    assert len({tuple(r) for r in g.flatten(1)[:, :64].tolist()}) == 16


def test_identity_policy_returns_normalised_input():
    x = rand_images(8)
    v1, v2 = TwoViewAugment(IDENTITY, IDENTITY, MEAN, STD)(x, gen(0))
    ref = normalize(x, MEAN, STD)
    torch.testing.assert_close(v1, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v2, ref, rtol=1e-5, atol=1e-5)


def test_normalize_formula():
    x = rand_images(4)
    out = normalize(x, MEAN, STD)
    ref = (x.double() - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float())
    assert normalize(x, MEAN, STD, out_dtype=torch.float16).dtype == torch.float16


def test_batch_size_one_and_non_square_inputs():
    aug = TwoViewAugment(*policy_pair("symmetric"), MEAN, STD)
    v1, v2 = aug(rand_images(1), gen(0))
    assert v1.shape == v2.shape == (1, 3, 32, 32)
    x = rand_images(3, 40, 24)
    v1, v2 = aug.replace(size=32)(x, gen(0))
    assert v1.shape == v2.shape == (3, 3, 32, 32) and torch.isfinite(v1).all()
    v1, v2 = aug(x, gen(0))  # size None: the input's shorter side
    assert v1.shape == v2.shape == (3, 3, 24, 24)
    small = TwoViewAugment(IDENTITY, IDENTITY, MEAN, STD, size=16)
    v1, _ = small(x, gen(0))  # identity policy on a non-square input: centre square, resized
    assert v1.shape == (3, 3, 16, 16)


# ------------------------------------------------------------------ probabilities


def _rate(policy, x, applied, seed=0):
    out = augment_view(x, policy, x.shape[-1], gen(seed))
    return applied(out, x).float().mean().item()


def test_flip_rate():
    n = 4000
    ramp = torch.linspace(0, 1, 8).expand(n, 3, 8, 8).contiguous()  # left dark, right bright
    policy = AugmentPolicy(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.5, **NO_COLOUR)
    out = augment_view(ramp, policy, 8, gen(0))
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert torch.equal(out[flipped], ramp[flipped].flip(-1)) and torch.equal(out[~flipped], ramp[~flipped])
    assert abs(flipped.float().mean().item() - 0.5) < 0.04  # ~5 sigma


def test_flip_in_affine_path_mirrors_the_crop():
    x = torch.rand(64, 3, 32, 32, generator=gen(0))
    base = dict(crop_scale=(0.2, 1.0), **NO_COLOUR)
    plain = augment_view(x, AugmentPolicy(flip_p=0.0, **base), 32, gen(9))
    mirrored = augment_view(x, AugmentPolicy(flip_p=1.0, **base), 32, gen(9))  # same boxes
    torch.testing.assert_close(mirrored, plain.flip(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("op,p,applied", [
    ("gray_p", 0.2, lambda out, x: (out[:, 0] == out[:, 1]).all(-1).all(-1)),
    ("solarize_p", 0.3, lambda out, x: (out != x).any(-1).any(-1).any(-1)),
    ("jitter_p", 0.8, lambda out, x: (out != x).any(-1).any(-1).any(-1)),
])
def test_op_rates(op, p, applied):
    n = 4000
    x = torch.rand(n, 3, 4, 4, generator=gen(1)) * 0.5 + 0.5  # colourful, >= 0.5 (solarize)
    kwargs = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, **NO_COLOUR)
    kwargs[op] = p
    rate = _rate(AugmentPolicy(**kwargs), x, applied)
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n) + 0.005


@pytest.mark.parametrize("strength", [0.4, 1.5])
def test_jitter_factor_range(strength):
    # Brightness only, always applied, on a flat 0.2 image: out / 0.2 is the factor itself,
    # uniform in [max(0, 1 - s), 1 + s].
    x = torch.full((2000, 3, 2, 2), 0.2)
    policy = AugmentPolicy(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=1.0,
                           brightness=strength, contrast=0.0, saturation=0.0, hue=0.0, gray_p=0.0)
    f = augment_view(x, policy, 2, gen(0))[:, 0, 0, 0] / 0.2
    lo, hi = max(0.0, 1 - strength), 1 + strength
    assert f.min() >= lo - 1e-5 and f.max() <= hi + 1e-5
    assert f.min() < lo + 0.02 * (hi - lo) and f.max() > hi - 0.02 * (hi - lo)
    assert abs(f.mean() - (lo + hi) / 2) < 0.03 * (hi - lo)


def test_hue_shift_range():
    red = torch.zeros(2000, 3, 1, 1)
    red[:, 0] = 1.0
    policy = AugmentPolicy(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=1.0,
                           brightness=0.0, contrast=0.0, saturation=0.0, hue=0.1, gray_p=0.0)
    out = augment_view(red, policy, 1, gen(0))[:, :, 0, 0]
    hues = torch.tensor([(colorsys.rgb_to_hsv(*p)[0] + 0.5) % 1 - 0.5 for p in out.tolist()])
    assert hues.abs().max() <= 0.1 + 1e-5 and hues.min() < -0.09 and hues.max() > 0.09


# ------------------------------------------------------------------ crop boxes


def _torchvision_style_box(rng, height, width, scale, ratio):
    """Scalar reference of RandomResizedCrop.get_params, written from its documented semantics."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return (height - height) // 2, 0, height, width  # square images only in this test


def test_crop_box_sampler_ranges_and_distribution():
    n, scale, ratio = 20000, (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = sample_crop_boxes(n, 32, 32, scale, ratio, generator=gen(0))
    top, left, h, w = boxes.unbind(1)
    assert boxes.dtype == torch.float32 and torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    frac = h * w / 1024
    # Rounding w and h to integers moves the area by at most ~(w + h) / 2 pixels.
    assert frac.min() >= 0.08 - (w + h).max() / 2048 and frac.max() <= 1.0
    assert ((w / h) >= 3 / 4 * (1 - 2 / 9)).all() and ((w / h) <= 4 / 3 * (1 + 2 / 9)).all()
    assert frac.min() < 0.1 and frac.max() > 0.95  # spans the range
    # Same distribution as the scalar reference algorithm (mean and quartiles of the area).
    rng = random.Random(0)
    ref = torch.tensor([_torchvision_style_box(rng, 32, 32, scale, ratio) for _ in range(n)],
                       dtype=torch.float32)
    ref_frac = ref[:, 2] * ref[:, 3] / 1024
    q = torch.tensor([0.25, 0.5, 0.75])
    assert abs(frac.mean() - ref_frac.mean()) < 0.015
    torch.testing.assert_close(frac.quantile(q), ref_frac.quantile(q), atol=0.03, rtol=0)
    # Corners are uniform over the valid positions: mean of top / (32 - h) is ~1/2.
    slack = 32 - h
    assert abs((top[slack > 0] / slack[slack > 0]).mean() - 0.5) < 0.02


def test_crop_box_fallback_is_centre_crop():
    # No candidate can have area >= 0.9 and w/h >= 2 inside a square: always the fallback.
    boxes = sample_crop_boxes(5, 32, 32, (0.9, 1.0), (2.0, 3.0), generator=gen(0))
    assert torch.equal(boxes, torch.tensor([[8.0, 0.0, 16.0, 32.0]]).expand(5, 4))
    boxes = sample_crop_boxes(3, 40, 24, (1.0, 1.0), (1.0, 1.0), generator=gen(0))
    assert torch.equal(boxes, torch.tensor([[8.0, 0.0, 24.0, 24.0]]).expand(3, 4))


@pytest.mark.parametrize("shape,size", [((6, 3, 32, 32), 32), ((4, 3, 20, 28), 16)])
def test_resized_crop_flip_equals_crop_then_interpolate(shape, size):
    x = torch.rand(shape, generator=gen(2))
    n, _, height, width = shape
    boxes = sample_crop_boxes(n, height, width, generator=gen(3))
    flip = torch.arange(n) % 2 == 1
    out = resized_crop_flip(x, boxes, flip, size)
    for k in range(n):
        t, l, h, w = (int(v) for v in boxes[k])
        ref = F.interpolate(x[k:k + 1, :, t:t + h, l:l + w], size=(size, size), mode="bilinear",
                            align_corners=False)
        ref = ref.flip(-1) if flip[k] else ref
        torch.testing.assert_close(out[k:k + 1], ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ colour ops


def test_brightness_contrast_saturation_formulas():
    x = torch.rand(3, 3, 5, 5, generator=gen(4))
    f = torch.tensor([0.6, 1.0, 1.4])
    fv = f.view(3, 1, 1, 1)
    gray = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]
    torch.testing.assert_close(rgb_to_gray(x), gray)
    torch.testing.assert_close(adjust_brightness(x, f), (x * fv).clamp(0, 1))
    m = gray.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(adjust_contrast(x, f), (fv * x + (1 - fv) * m).clamp(0, 1))
    torch.testing.assert_close(adjust_saturation(x, f), (fv * x + (1 - fv) * gray).clamp(0, 1))
    torch.testing.assert_close(solarize(x), torch.where(x >= 0.5, 1 - x, x))


def test_hue_matches_colorsys():
    x = torch.rand(4, 3, 6, 6, generator=gen(5))
    x[0, :, 0, 0] = 0.5  # grey pixel: hue undefined, must stay grey
    shift = torch.tensor([0.0, 0.1, -0.25, 0.5])
    out = adjust_hue(x, shift)
    ref = torch.empty_like(x)
    for b in range(4):
        for i in range(6):
            for j in range(6):
                h, s, v = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
                ref[b, :, i, j] = torch.tensor(colorsys.hsv_to_rgb((h + shift[b].item()) % 1, s, v))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0], x[0], atol=1e-6, rtol=0)


def test_gaussian_blur_matches_direct_convolution():
    x = torch.rand(3, 3, 12, 12, generator=gen(6))
    sigma = torch.tensor([0.1, 1.0, 2.0])
    out = gaussian_blur(x, sigma, radius=4)
    t = torch.arange(-4, 5, dtype=torch.float32)
    for b in range(3):
        k = torch.exp(-t ** 2 / (2 * sigma[b] ** 2))
        k2 = torch.outer(k, k) / k.sum() ** 2
        xp = F.pad(x[b:b + 1], (4, 4, 4, 4), mode="reflect")
        ref = F.conv2d(xp, k2.expand(3, 1, 9, 9), groups=3)
        torch.testing.assert_close(out[b:b + 1], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0], x[0], atol=1e-4, rtol=0)  # sigma 0.1 ~ identity
    const = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(const, torch.tensor([0.5, 2.0])), const)


# ------------------------------------------------------------------ CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_is_deterministic():
    dev = torch.device("cuda")
    x = rand_images(16)
    xc = x.to(dev)
    # Deterministic pieces agree across devices.
    x01 = x.float() / 255
    boxes = sample_crop_boxes(16, 32, 32, generator=gen(0))
    flip = torch.arange(16) % 2 == 0
    torch.testing.assert_close(resized_crop_flip(x01.to(dev), boxes.to(dev), flip.to(dev), 32).cpu(),
                               resized_crop_flip(x01, boxes, flip, 32), atol=1e-5, rtol=0)
    shift = torch.linspace(-0.2, 0.2, 16)
    torch.testing.assert_close(adjust_hue(x01.to(dev), shift.to(dev)).cpu(), adjust_hue(x01, shift),
                               atol=1e-5, rtol=0)
    sigma = torch.linspace(0.1, 2.0, 16)
    torch.testing.assert_close(gaussian_blur(x01.to(dev), sigma.to(dev)).cpu(),
                               gaussian_blur(x01, sigma), atol=1e-5, rtol=0)
    ident = TwoViewAugment(IDENTITY, IDENTITY, MEAN, STD)
    torch.testing.assert_close(ident(xc, gen(0, dev))[0].cpu(), ident(x, gen(0))[0], atol=1e-5, rtol=0)
    # Full pipeline on the device: seeded, in range, on the right device.
    aug = TwoViewAugment(*policy_pair("symmetric"), MEAN, STD, out_dtype=torch.bfloat16)
    a1, a2 = aug(xc, gen(7, dev))
    b1, b2 = aug(xc, gen(7, dev))
    assert a1.device.type == "cuda" and a1.dtype == torch.bfloat16
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.isfinite(a1.float()).all()
    with pytest.raises(ValueError):
        aug(xc, gen(0))  # CPU generator for a CUDA batch
    # Multi-crop: the grouped crops agree across devices; seeded on the device; shapes.
    from fastssl.augment import resized_crops_flip
    boxes = sample_crop_boxes(48, 32, 32, scale=(0.05, 0.3), generator=gen(1))
    flip = torch.arange(48) % 3 == 0
    torch.testing.assert_close(resized_crops_flip(x01.to(dev), boxes.to(dev), flip.to(dev), 16).cpu(),
                               resized_crops_flip(x01, boxes, flip, 16), atol=1e-5, rtol=0)
    multi = aug.replace(local_crops=6, size=24)
    a, b = multi(xc, gen(7, dev)), multi(xc, gen(7, dev))
    assert [tuple(v.shape) for v in a] == [(16, 3, 24, 24)] * 2 + [(16, 3, 16, 16)] * 6
    assert all(torch.equal(u, v) and u.device.type == "cuda" for u, v in zip(a, b))


# ------------------------------------------------------------------ multi-crop and global size

FLAT_STATS = dict(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0))  # output = pixel values in [0, 1]


def ramp_images(n):
    """R = 8 x + 4, G = 8 y + 4 (uint8): a crop's R/G range gives its box, its R slope the flip."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    ramp = torch.stack((xx * 8 + 4, yy * 8 + 4, torch.full_like(xx, 128))).to(torch.uint8)
    return ramp.expand(n, 3, 32, 32).contiguous()


def ramp_geometry(v):
    """Crop area fraction and flip of views of ``ramp_images`` (pixel values in [0, 1]). Exact while
    the crop is not wider/taller than the output (no sample point falls inside the edge pixels)."""
    r, g = v[:, 0] * 255, v[:, 1] * 255
    w = (r.amax((1, 2)) - r.amin((1, 2))) / 8 + 1
    h = (g.amax((1, 2)) - g.amin((1, 2))) / 8 + 1
    return w * h / 1024, (r[:, :, -1] - r[:, :, 0]).mean(1) < 0


@pytest.mark.parametrize("k", [0, 2, 6])
@pytest.mark.parametrize("local_size", [8, 16])
def test_multicrop_view_shapes(k, local_size):
    aug = TwoViewAugment(*policy_pair("symmetric"), MEAN, STD, local_crops=k, local_size=local_size)
    assert aug.num_views == 2 + k
    views = aug(rand_images(5), gen(0))
    assert isinstance(views, list) and len(views) == 2 + k
    assert [tuple(v.shape) for v in views] == [(5, 3, 32, 32)] * 2 + [(5, 3, local_size, local_size)] * k
    lo, hi = norm_bounds()
    for v in views:
        assert v.dtype == torch.float32 and v.is_contiguous(memory_format=torch.channels_last)
        assert torch.isfinite(v).all() and (v >= lo - 1e-4).all() and (v <= hi + 1e-4).all()
    for a in range(len(views)):  # every view its own parameters
        for b in range(a + 1, len(views)):
            assert views[a].shape != views[b].shape or not torch.equal(views[a], views[b])


def test_local_crops_leave_the_global_views_unchanged_and_are_seeded():
    x = rand_images(12)
    two = TwoViewAugment(*policy_pair("asymmetric"), MEAN, STD)
    many = two.replace(local_crops=6)
    g1, g2 = two(x, gen(7))
    views = many(x, gen(7))
    assert torch.equal(views[0], g1) and torch.equal(views[1], g2)  # K = 0 is the plain two-view run
    again = many(x, gen(7))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    other = many(x, gen(8))
    assert all(not torch.equal(a, b) for a, b in zip(views, other))
    # The rendering size of the global views changes no random parameter: the same local crops.
    small = many.replace(size=16)(x, gen(7))
    assert all(torch.equal(a, b) for a, b in zip(views[2:], small[2:]))


def test_resized_crops_flip_equals_crop_then_interpolate():
    x = torch.rand(3, 3, 32, 32, generator=gen(2))
    groups, size = 4, 16
    boxes = sample_crop_boxes(groups * 3, 32, 32, scale=(0.05, 0.6), generator=gen(3))
    flip = torch.arange(groups * 3) % 3 == 1
    from fastssl.augment import resized_crops_flip
    out = resized_crops_flip(x, boxes, flip, size)
    assert out.shape == (groups * 3, 3, size, size)
    for row in range(groups * 3):
        b = row % 3  # group-major: row g * B + b is crop g of image b
        t, l, h, w = (int(v) for v in boxes[row])
        ref = F.interpolate(x[b:b + 1, :, t:t + h, l:l + w], size=(size, size), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[row:row + 1], ref.flip(-1) if flip[row] else ref, atol=1e-5, rtol=0)


def test_local_crop_scale_and_flip_statistics():
    """Local crops (here 32 px, so the ramp measures boxes exactly) have the area fractions of the
    requested scale range (against the scalar RandomResizedCrop reference) and flip at p = 0.5."""
    n, k, scale = 1000, 4, (0.05, 0.3)
    geo = AugmentPolicy(**NO_COLOUR)
    aug = TwoViewAugment(geo, geo, **FLAT_STATS, local_crops=k, local_size=32, local_scale=scale)
    views = aug(ramp_images(n), gen(0))
    frac, flipped = ramp_geometry(torch.cat(views[2:]))
    w_max = math.sqrt(scale[1] * 1024 * 4 / 3) + 1
    assert frac.min() >= scale[0] - w_max / 1024 and frac.max() <= scale[1] + w_max / 1024
    assert frac.min() < scale[0] + 0.02 and frac.max() > scale[1] - 0.03  # spans the range
    rng = random.Random(0)
    ref = [_torchvision_style_box(rng, 32, 32, scale, (3 / 4, 4 / 3)) for _ in range(4000)]
    ref_frac = torch.tensor([h * w / 1024 for _, _, h, w in ref])
    assert abs(frac.mean() - ref_frac.mean()) < 0.006  # s.e. of each mean ~0.0012
    assert abs(flipped.float().mean() - 0.5) < 0.04  # 4000 crops, s.e. 0.008
    # The global views keep their own (0.08, 1) range: much larger on average.
    g_frac, _ = ramp_geometry(torch.cat(views[:2]))
    assert g_frac.mean() > 0.4


@pytest.mark.parametrize("op,p", [("jitter_p", 0.8), ("gray_p", 0.2)])
def test_local_crops_colour_rates_follow_view1(op, p):
    """Flat colourful images: a crop is the same flat colour, so any change is the colour op's.
    The local crops use view 1's policy (view 2 here does nothing)."""
    n, k = 1000, 4
    colour = torch.rand(n, 3, 1, 1, generator=gen(1)) * 0.4 + 0.3
    x = (colour.expand(n, 3, 32, 32) * 255).round().to(torch.uint8)
    colour = x[:, :, :1, :1].float() / 255
    kwargs = dict(NO_COLOUR)
    kwargs[op] = p
    aug = TwoViewAugment(AugmentPolicy(**kwargs), IDENTITY, **FLAT_STATS, local_crops=k, local_size=8)
    views = aug(x, gen(2))
    local = torch.cat(views[2:])
    if op == "jitter_p":
        applied = (local - colour.repeat(k, 1, 1, 1)).abs().amax((1, 2, 3)) > 1e-4
    else:
        applied = (local[:, 0] == local[:, 1]).all(-1).all(-1) & (local[:, 1] == local[:, 2]).all(-1).all(-1)
    rate = applied.float().mean().item()
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / (n * k)) + 0.005
    # Per image, the k crops draw their coins independently: not all the same decision.
    per_image = applied.view(k, n).float().mean(0)
    assert ((per_image > 0) & (per_image < 1)).float().mean() > 0.3


def test_asymmetric_recipe_local_crops_have_no_solarisation():
    aug = TwoViewAugment(*policy_pair("asymmetric"), MEAN, STD, local_crops=2)
    assert aug.local_policy.solarize_p == 0.0 and aug.local_policy.crop_scale == (0.05, 0.3)
    assert aug.local_policy == AugmentPolicy(crop_scale=(0.05, 0.3))


def test_local_crops_per_sample_parameters():
    x = rand_images(1).expand(16, -1, -1, -1).contiguous()  # 16 copies of one image
    views = TwoViewAugment(*policy_pair("default"), MEAN, STD, local_crops=3)(x, gen(5))
    crops = torch.cat(views[2:]).flatten(1)
    assert len({tuple(r) for r in crops[:, :64].tolist()}) == 3 * 16  # every copy, every crop its own


def test_local_crops_of_a_shard_are_rows_of_the_whole_batch():
    x = rand_images(12)
    aug = TwoViewAugment(*policy_pair("symmetric"), MEAN, STD, local_crops=3, local_size=8)
    whole = aug(x, gen(4))
    parts = [aug(x[lo:hi], gen(4), rows=(lo, 12)) for lo, hi in ((0, 5), (5, 12))]
    for j in range(5):
        torch.testing.assert_close(torch.cat([p[j] for p in parts]), whole[j], atol=1e-6, rtol=0)


@pytest.mark.parametrize("px", [16, 24, 32])
def test_global_size(px):
    aug = TwoViewAugment(*policy_pair("default"), MEAN, STD, local_crops=2, local_size=8).replace(size=px)
    views = aug(rand_images(4), gen(0))
    assert [v.shape[-1] for v in views] == [px, px, 8, 8]
    # The same boxes at another resolution: a ramp's crop spans the same box (to within one pixel).
    geo = AugmentPolicy(**NO_COLOUR)
    full = TwoViewAugment(geo, geo, **FLAT_STATS)
    a, b = full(ramp_images(64), gen(3)), full.replace(size=px)(ramp_images(64), gen(3))
    r_full, r_px = a[0][:, 0] * 255, b[0][:, 0] * 255
    assert (r_full.amin((1, 2)) - r_px.amin((1, 2))).abs().max() <= 8 + 1e-3


def test_default_size_is_the_input_size():
    aug = TwoViewAugment(*policy_pair("default"), MEAN, STD)
    assert aug(rand_images(2, 48, 48), gen(0))[0].shape == (2, 3, 48, 48)
    assert aug.replace(size=32)(rand_images(2, 48, 48), gen(0))[0].shape == (2, 3, 32, 32)


@pytest.mark.parametrize("kwargs", [dict(local_crops=-1), dict(local_crops=1.5), dict(local_size=0),
                                    dict(local_scale=(0.5, 0.2)), dict(local_scale=(0.0, 0.3)),
                                    dict(local_scale=(0.1,)), dict(size=0)])
def test_multicrop_validation(kwargs):
    with pytest.raises(ValueError):
        TwoViewAugment(*policy_pair("default"), MEAN, STD, **kwargs)
