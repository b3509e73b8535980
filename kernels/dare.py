r"""Fused DARe step: reparameterise both views and compute their Gaussian JSD in one pass.

Per element (a = logvar1, b = logvar2, s = exp(logvar), delta = mu1 - mu2)::

    z1 = mu1 + exp(a/2) eps1,   z2 = mu2 + exp(b/2) eps2
    lv = ln((s1 + s2)/2) = max(a, b) + ln(1 + exp(-|a - b|)) - ln 2
    J  = delta^2 exp(-lv) / 8 + lv / 2 - (a + b) / 4          jsd = (1/N) sum_rows sum_dims J

Gradients, with w1 = s1/(s1 + s2) = dlv/da, w2 = 1 - w1 = dlv/db and gJ = dL/djsd / N::

    dmu1 = gz1 + gJ delta exp(-lv) / 4                    dmu2 = gz2 - gJ delta exp(-lv) / 4
    da   = gz1 eps1 exp(a/2) / 2 + gJ ((1/2 - delta^2 exp(-lv)/8) w1 - 1/4)
    db   = gz2 eps2 exp(b/2) / 2 + gJ ((1/2 - delta^2 exp(-lv)/8) w2 - 1/4)

Noise: with a ``seed`` the kernel draws eps from Triton's counter-based Philox generator
(``tl.randn(seed, offset)``, offset = flat element index for view 1 and N d + index for view 2); the
backward kernel regenerates exactly the same eps from (seed, offset), so eps is never stored. The seed is
a 0-dim int64 tensor that the kernels read from memory (``tl.load``): ``draw_seed(device)`` draws it with
torch's generator of that device, so a training step needs no host synchronisation (no ``.item()``) and
``torch.manual_seed`` still makes the noise reproducible. With
explicit ``eps1``/``eps2`` the kernel reads them instead (for exact comparison with ``reparameterize``).
Inputs may be fp32/bf16/fp16; all arithmetic is fp32; z has the input dtype, jsd is an fp32 scalar.
"""
from __future__ import annotations

from typing import Optional

import torch

import triton
import triton.language as tl

from kernels._triton_utils import check_runnable, interpreter_enabled, lazy_kernel, next_pow2

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _tile(rows, row_ok, c0, d, BLOCK_D: tl.constexpr):
    """Flat offsets and mask of the (rows, c0 .. c0 + BLOCK_D) tile of an (n, d) row-major tensor."""
    cols = c0 + tl.arange(0, BLOCK_D)
    return rows[:, None] * d + cols[None, :], row_ok[:, None] & (cols < d)[None, :]


@triton.jit
def _load_f32(P, offs, mask):
    return tl.load(P + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_gaussians(MU1, LV1, MU2, LV2, offs, mask):
    return _load_f32(MU1, offs, mask), _load_f32(LV1, offs, mask), _load_f32(MU2, offs, mask), \
        _load_f32(LV2, offs, mask)


@triton.jit
def _seed(SEED, HAS_EPS: tl.constexpr):
    """The int64 Philox key, read on the device (unused with explicit eps)."""
    if HAS_EPS:
        seed = 0
    else:
        seed = tl.load(SEED)
    return seed


@triton.jit
def _noise(EPS1, EPS2, seed, offs, mask, nd, HAS_EPS: tl.constexpr):
    """(eps1, eps2) of the tile: read, or Philox(seed) at the element's offset (view 2 at nd + offset)."""
    if HAS_EPS:
        e1 = _load_f32(EPS1, offs, mask)
        e2 = _load_f32(EPS2, offs, mask)
    else:
        e1 = tl.randn(seed, offs)
        e2 = tl.randn(seed, offs + nd)
    return e1, e2


@triton.jit
def _log_mean_var(lv1, lv2):
    """ln((exp(lv1) + exp(lv2)) / 2) without overflow."""
    return tl.maximum(lv1, lv2) + tl.log(1.0 + tl.exp(-tl.abs(lv1 - lv2))) - _LN2


@lazy_kernel
def _reparam_jsd_fwd_kernel(
    MU1, LV1, MU2, LV2, EPS1, EPS2, Z1, Z2, JSD_ROWS,
    n, d, SEED,
    HAS_EPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seed = _seed(SEED, HAS_EPS)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, d, BLOCK_D):
        offs, mask = _tile(rows, row_ok, c0, d, BLOCK_D)
        mu1, lv1, mu2, lv2 = _load_gaussians(MU1, LV1, MU2, LV2, offs, mask)
        e1, e2 = _noise(EPS1, EPS2, seed, offs, mask, n * d, HAS_EPS)
        z1 = mu1 + tl.exp(0.5 * lv1) * e1
        z2 = mu2 + tl.exp(0.5 * lv2) * e2
        tl.store(Z1 + offs, z1.to(Z1.dtype.element_ty), mask=mask)
        tl.store(Z2 + offs, z2.to(Z2.dtype.element_ty), mask=mask)
        delta = mu1 - mu2
        log_v = _log_mean_var(lv1, lv2)
        per_dim = delta * delta * tl.exp(-log_v) * 0.125 + 0.5 * log_v - 0.25 * (lv1 + lv2)
        acc += tl.sum(tl.where(mask, per_dim, 0.0), axis=1)
    tl.store(JSD_ROWS + rows, acc, mask=row_ok)


@lazy_kernel
def _reparam_jsd_bwd_kernel(
    MU1, LV1, MU2, LV2, EPS1, EPS2, GZ1, GZ2, GJSD,
    DMU1, DLV1, DMU2, DLV2,
    n, d, SEED,
    HAS_EPS: tl.constexpr, HAS_GZ1: tl.constexpr, HAS_GZ2: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seed = _seed(SEED, HAS_EPS)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n
    g_j = tl.load(GJSD).to(tl.float32)  # dL/djsd / N, read on the device: no host sync
    for c0 in range(0, d, BLOCK_D):
        offs, mask = _tile(rows, row_ok, c0, d, BLOCK_D)
        mu1, lv1, mu2, lv2 = _load_gaussians(MU1, LV1, MU2, LV2, offs, mask)
        delta = mu1 - mu2
        log_v = _log_mean_var(lv1, lv2)
        inv_v = tl.exp(-log_v)
        w1 = 1.0 / (1.0 + tl.exp(-(lv1 - lv2)))  # s1 / (s1 + s2)
        common = 0.5 - delta * delta * inv_v * 0.125
        dmu1 = g_j * (0.25 * delta * inv_v)
        dmu2 = -dmu1
        dlv1 = g_j * (common * w1 - 0.25)
        dlv2 = g_j * (common * (1.0 - w1) - 0.25)
        if HAS_GZ1 or HAS_GZ2:
            e1, e2 = _noise(EPS1, EPS2, seed, offs, mask, n * d, HAS_EPS)
        if HAS_GZ1:
            gz1 = _load_f32(GZ1, offs, mask)
            dmu1 += gz1
            dlv1 += 0.5 * gz1 * e1 * tl.exp(0.5 * lv1)
        if HAS_GZ2:
            gz2 = _load_f32(GZ2, offs, mask)
            dmu2 += gz2
            dlv2 += 0.5 * gz2 * e2 * tl.exp(0.5 * lv2)
        tl.store(DMU1 + offs, dmu1.to(DMU1.dtype.element_ty), mask=mask)
        tl.store(DLV1 + offs, dlv1.to(DLV1.dtype.element_ty), mask=mask)
        tl.store(DMU2 + offs, dmu2.to(DMU2.dtype.element_ty), mask=mask)
        tl.store(DLV2 + offs, dlv2.to(DLV2.dtype.element_ty), mask=mask)


def launch_config(n: int, d: int, interpret: bool) -> dict:
    """Elementwise kernel: ~512 elements per program on a GPU (enough programs to fill 132 SMs at DARe's
    batch sizes); in the interpreter, whose cost is per operation, up to 32K elements per program."""
    if interpret:
        block_d = min(max(16, next_pow2(d)), 1024)
        block_r = max(1, 32768 // block_d)
    else:
        block_d = min(max(16, next_pow2(d)), 256)
        block_r = max(1, 512 // block_d)
    block_r = min(block_r, max(1, next_pow2(n)))
    return dict(BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4)


def _check(mu1, logvar1, mu2, logvar2, eps1, eps2):
    shape = mu1.shape
    if mu1.dim() != 2 or any(t.shape != shape for t in (logvar1, mu2, logvar2)):
        raise ValueError("mu1, logvar1, mu2, logvar2 must all be (N, d) of one shape, got "
                         f"{[tuple(t.shape) for t in (mu1, logvar1, mu2, logvar2)]}")
    if any(t.dtype != mu1.dtype for t in (logvar1, mu2, logvar2)) or mu1.dtype not in _SUPPORTED_DTYPES:
        raise TypeError("fused_reparam_jsd supports float32/bfloat16/float16 inputs of one dtype")
    if (eps1 is None) != (eps2 is None):
        raise ValueError("pass both eps1 and eps2, or neither")
    if eps1 is not None and (eps1.shape != shape or eps2.shape != shape):
        raise ValueError("eps1 and eps2 must have the shape of mu1")
    if 2 * mu1.numel() >= 2**31:
        raise ValueError("2 N d must stay below 2**31 (32-bit Philox offsets)")


def _seed_on(seed: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The seed as a one-element int64 tensor on ``device`` (a no-op for ``draw_seed(device)``'s tensors;
    a CPU seed with CUDA inputs costs one small host-to-device copy)."""
    if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype == torch.bool:
        raise ValueError(f"seed must be a one-element integer tensor, got {seed.dtype} of shape {tuple(seed.shape)}")
    return seed.reshape(1).to(device=device, dtype=torch.int64, non_blocking=True)


@torch.library.custom_op("ssl_kernels::reparam_jsd_fwd", mutates_args=())
def reparam_jsd_fwd(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor,
                    eps1: Optional[torch.Tensor], eps2: Optional[torch.Tensor],
                    seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z1, z2, jsd): eps from (eps1, eps2) when given, else from Philox(seed).

    ``seed`` is a one-element integer tensor, best on the inputs' device (``draw_seed(mu1.device)``): the
    kernel reads it from memory, so neither the draw nor the launch synchronises with the host, and the
    draw stays inside a ``torch.compile`` graph (no graph break on ``.item()``).
    """
    _check(mu1, logvar1, mu2, logvar2, eps1, eps2)
    check_runnable(mu1, logvar1, mu2, logvar2, eps1, eps2)
    seed = _seed_on(seed, mu1.device)
    mu1, logvar1, mu2, logvar2 = (t.contiguous() for t in (mu1, logvar1, mu2, logvar2))
    has_eps = eps1 is not None
    e1, e2 = (eps1.contiguous(), eps2.contiguous()) if has_eps else (mu1, mu2)
    n, d = mu1.shape
    z1, z2 = torch.empty_like(mu1), torch.empty_like(mu2)
    rows = torch.empty(n, device=mu1.device, dtype=torch.float32)
    cfg = launch_config(n, d, interpreter_enabled())
    grid = (triton.cdiv(n, cfg["BLOCK_R"]),)
    _reparam_jsd_fwd_kernel[grid](mu1, logvar1, mu2, logvar2, e1, e2, z1, z2, rows, n, d,
                                  seed, HAS_EPS=has_eps, **cfg)
    return z1, z2, rows.mean()


@reparam_jsd_fwd.register_fake
def _(mu1, logvar1, mu2, logvar2, eps1, eps2, seed):
    return torch.empty_like(mu1), torch.empty_like(mu2), mu1.new_empty((), dtype=torch.float32)


@torch.library.custom_op("ssl_kernels::reparam_jsd_bwd", mutates_args=())
def reparam_jsd_bwd(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor,
                    eps1: Optional[torch.Tensor], eps2: Optional[torch.Tensor], seed: torch.Tensor,
                    g_z1: Optional[torch.Tensor], g_z2: Optional[torch.Tensor],
                    g_jsd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dmu1, dlogvar1, dmu2, dlogvar2); eps regenerated from seed unless given."""
    check_runnable(mu1, logvar1, mu2, logvar2, eps1, eps2, g_z1, g_z2, g_jsd)
    seed = _seed_on(seed, mu1.device)
    mu1, logvar1, mu2, logvar2 = (t.contiguous() for t in (mu1, logvar1, mu2, logvar2))
    has_eps = eps1 is not None
    e1, e2 = (eps1.contiguous(), eps2.contiguous()) if has_eps else (mu1, mu2)
    n, d = mu1.shape
    gz1 = g_z1.contiguous() if g_z1 is not None else mu1
    gz2 = g_z2.contiguous() if g_z2 is not None else mu2
    g_j = (g_jsd.float() / n).reshape(1)
    outs = [torch.empty_like(t) for t in (mu1, logvar1, mu2, logvar2)]
    cfg = launch_config(n, d, interpreter_enabled())
    grid = (triton.cdiv(n, cfg["BLOCK_R"]),)
    _reparam_jsd_bwd_kernel[grid](mu1, logvar1, mu2, logvar2, e1, e2, gz1, gz2, g_j, *outs, n, d,
                                  seed, HAS_EPS=has_eps, HAS_GZ1=g_z1 is not None,
                                  HAS_GZ2=g_z2 is not None, **cfg)
    return tuple(outs)


@reparam_jsd_bwd.register_fake
def _(mu1, logvar1, mu2, logvar2, eps1, eps2, seed, g_z1, g_z2, g_jsd):
    return tuple(torch.empty_like(t) for t in (mu1, logvar1, mu2, logvar2))


def _setup_context(ctx, inputs, output):
    mu1, logvar1, mu2, logvar2, eps1, eps2, seed = inputs
    ctx.save_for_backward(mu1, logvar1, mu2, logvar2, eps1, eps2, seed)


def _backward(ctx, g_z1, g_z2, g_jsd):
    mu1, logvar1, mu2, logvar2, eps1, eps2, seed = ctx.saved_tensors
    if g_jsd is None:
        g_jsd = torch.zeros((), device=mu1.device, dtype=torch.float32)
    dmu1, dlv1, dmu2, dlv2 = torch.ops.ssl_kernels.reparam_jsd_bwd(mu1, logvar1, mu2, logvar2, eps1, eps2, seed,
                                                               g_z1, g_z2, g_jsd)
    return dmu1, dlv1, dmu2, dlv2, None, None, None


reparam_jsd_fwd.register_autograd(_backward, setup_context=_setup_context)


def draw_seed(device: torch.device | str | None = None) -> torch.Tensor:
    """A kernel seed drawn from torch's default generator of ``device`` (default: the CPU, as before), a
    0-dim int64 tensor on that device. ``draw_seed(mu1.device)`` keeps a CUDA training step free of host
    synchronisation (the kernel loads the seed); ``torch.manual_seed`` makes runs reproducible, and under
    ``torch.compile`` the draw is part of the graph."""
    return torch.randint(0, 2**31 - 1, (), dtype=torch.int64, device=device)


def fused_reparam_jsd(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor,
                      seed: int | torch.Tensor | None = None, eps1: Optional[torch.Tensor] = None,
                      eps2: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused ``(reparameterize(mu1, logvar1), reparameterize(mu2, logvar2), gaussian_jsd(...))``.

    Give explicit ``eps1``/``eps2`` for a deterministic match with the reference, or a ``seed`` (an int, or
    a one-element integer tensor, ideally on the inputs' device) for in-kernel Philox noise (same seed ->
    same noise); with neither, a seed is drawn from torch's generator of the inputs' device. The eps
    tensors get no gradient. jsd is an fp32 scalar.
    """
    if eps1 is None and eps2 is None:
        if seed is None:
            seed = draw_seed(mu1.device)
        elif not isinstance(seed, torch.Tensor):
            if not 0 <= int(seed) < 2**63:
                raise ValueError(f"seed must be in [0, 2**63), got {seed}")
            seed = torch.tensor(int(seed), dtype=torch.int64, device=mu1.device)
    else:
        seed = torch.zeros((), dtype=torch.int64, device=mu1.device)  # unused with explicit eps
    return torch.ops.ssl_kernels.reparam_jsd_fwd(mu1, logvar1, mu2, logvar2, eps1, eps2, seed)
