r"""Fused contrastive losses (NT-Xent, decoupled cross-view, SupCon) as flash-style Triton kernels.

Maths (docs/losses.md). Z = [z1; z2] has M = 2N rows, u_k = Z_k / ||Z_k||, s_kl = u_k.u_l / tau,
p(k) = (k + N) mod M. Every variant has the form

    l_k = lse_k - sum_l Y_kl s_kl,      lse_k = log sum_{l in A(k)} exp(s_kl),      L = (1/M) sum_k l_k

with an allowed set A(k) and positive weights Y (each row of Y sums to one):

    simclr     A(k) = {l != k}                               Y_kl = [l = p(k)]
    decoupled  A(k) = {l in the other view, l != p(k)}       Y_kl = [l = p(k)]   (the positive is not in A(k))
    supcon     A(k) = {l != k}                               Y_kl = [l != k, y_l = y_k] / |P(k)|

With P_kl = [l in A(k)] exp(s_kl - lse_k) (the row softmax over A(k)), dL/ds_kl = (P_kl - Y_kl) / M.
s_kl depends on u_k and on u_l, so

    dL/du_k = 1/(tau M) sum_l (P_kl + P_lk - Y_kl - Y_lk) u_l = 1/(tau M) sum_l (P_kl + P_lk - 2 Y_kl) u_l

because all three masks are symmetric (l in A(k) <=> k in A(l)) and so is Y (p(p(k)) = k; for SupCon
|P(k)| = 2 #{i : y_i = y_k} - 1 depends only on the label, so |P(k)| = |P(l)| whenever Y_kl != 0).
P_lk = exp(s_kl - lse_l) needs only the saved per-row lse of the column rows: the backward kernel owns
a block of rows k, loops over all columns l, and never writes to another program's rows (no atomics).
Diagonal terms vanish (k is never in A(k) nor a positive of itself).

The L2 normalisation is handled inside the autograd node in PyTorch (O(N d)): u = z r with
r = 1 / max(||z||, 1e-12) as in ``F.normalize``, so dz = r (du - u (u.du)) (and dz = r du where the
clamp is active). The kernels see only u, held in the input dtype (fp32, or bf16/fp16 for tensor
cores) and accumulate in fp32.

The Triton programs (forward, split combine, backward) are in kernels/contrastive_kernels.py; their launch
plans (tiles, warps, stages, column splits, grids for the GPU at hand) in kernels/launch.py.

Column splits (filling the GPU at small batches, in the style of flash-decoding): with few row blocks the
grid would leave most SMs idle (2N = 1024 in row blocks of 64 is 16 CTAs on a 132-SM H100). The launch plan
first shrinks the tiles, then splits each row block's column range into chunks whose partial results a combine
step merges (forward) or sums (backward); deterministic, no atomics; extra memory O(splits x 2N) and
O(splits x 2N x d), splits > 1 only when 2N is small. ``column_splits(k)`` forces k splits (tests, benchmarks).

Local rows (data-parallel): both kernels take ``row_off`` and ``n_local`` and own only the 2 n_local rows
row_off .. row_off + n_local - 1 of each view (global row indices; all 2N rows remain columns). One process
is n_local = N, row_off = 0. ``gathered_contrastive_loss`` uses it: each rank runs its own rows against the
gathered columns, and the backward scales by 1/(2 n_local) (see ``_GatheredContrastive``).

Autograd: ``ssl_kernels::contrastive_fwd`` / ``ssl_kernels::contrastive_bwd`` are ``torch.library.custom_op``s
with fake (meta) implementations; ``register_autograd`` on the forward op plays the role of a
``torch.autograd.Function`` (torch implements it as one), so ``torch.compile`` graphs can contain them.

Precision of ``tl.dot`` on fp32 inputs: "ieee" (true fp32, FMA units, the d reduction in slices of 32 to
keep ptxas from spilling) by default; ``allow_tf32=True`` uses tf32 tensor cores (about 1e-3 relative
error on s). fp16/bf16 inputs always use tensor cores (wgmma on sm_90) with fp32 accumulation; the
backward multiplies the fp32 weight tile, cast to the input dtype, with u_l.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

import triton

from kernels._triton_utils import check_runnable, interpreter_enabled
from kernels.contrastive_kernels import _contrastive_bwd_kernel, _contrastive_combine_kernel, _contrastive_fwd_kernel
from kernels.launch import block_sizes, column_splits, combine_config, launch_plan, precision  # noqa: F401 (API)

VARIANTS = {"simclr": 0, "decoupled": 1, "supcon": 2}
_NORM_EPS = 1e-12  # F.normalize's default eps
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_dtypes_and_temperature(a: torch.Tensor, b: torch.Tensor, temperature: float, what: str) -> None:
    if a.dtype != b.dtype or a.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{what} supports float32/bfloat16/float16 inputs of one dtype, got {a.dtype} and {b.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_inputs(z1, z2, labels, temperature, variant) -> None:
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must be (N, d) of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    _check_dtypes_and_temperature(z1, z2, temperature, "fused contrastive loss")
    n, d = z1.shape
    if n < 1 or d < 1:
        raise ValueError(f"need N >= 1 and d >= 1, got {tuple(z1.shape)}")
    if variant == VARIANTS["decoupled"] and n < 2:
        raise ValueError("the decoupled variant needs N >= 2 (its denominator is empty for N = 1)")
    if variant == VARIANTS["supcon"]:
        if labels is None or labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {None if labels is None else tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if 2 * n * max(d, 16) >= 2**31:
        raise ValueError("2N * d must stay below 2**31 (32-bit offsets)")


# ----------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile) and their autograd
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("ssl_kernels::contrastive_fwd", mutates_args=())
def contrastive_fwd(z1: torch.Tensor, z2: torch.Tensor, labels: Optional[torch.Tensor], temperature: float,
                    variant: int, allow_tf32: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                             torch.Tensor, torch.Tensor]:
    """Returns (loss fp32 scalar, u (2N, d) in the input dtype, rnorm (2N,), lse (2N,), npos (2N,))."""
    _check_inputs(z1, z2, labels, temperature, variant)
    check_runnable(z1, z2, labels)
    n = z1.shape[0]
    u, rnorm = _normalise(z1, z2)
    loss_rows, lse, npos = _launch_fwd(u, labels, n, 0, n, temperature, variant, allow_tf32)
    return loss_rows.mean(), u, rnorm, lse, npos


def _normalise(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u = [z1; z2] / max(||row||, eps) in the input dtype (contiguous) and rnorm = 1 / max(||row||, eps) fp32."""
    z = torch.cat([z1, z2]).float()
    rnorm = 1.0 / torch.linalg.vector_norm(z, dim=1).clamp_min(_NORM_EPS)
    return (z * rnorm[:, None]).to(z1.dtype).contiguous(), rnorm


def _normalise_backward(du: torch.Tensor, u: torch.Tensor, rnorm: torch.Tensor) -> torch.Tensor:
    """dL/dz (fp32) from dL/du through u = z r, r = 1 / max(||z||, eps): r (du - u (u.du)), or r du where the
    clamp is active."""
    uf = u.float()
    clamped = (rnorm >= 1.0 / _NORM_EPS)[:, None]
    return torch.where(clamped, du, du - uf * (uf * du).sum(dim=1, keepdim=True)) * rnorm[:, None]


def _launch_fwd(u, labels, n_half, row_off, n_local, temperature, variant, allow_tf32):
    """Forward kernel on the 2 n_local local rows (see the kernel) of the (2 n_half, d) matrix u; returns their
    (loss, lse, npos), fp32 (2 n_local,)."""
    d = u.shape[1]
    loss_rows = torch.empty(2 * n_local, device=u.device, dtype=torch.float32)
    lse = torch.empty_like(loss_rows)
    npos = torch.ones_like(loss_rows)
    lab = labels.contiguous() if labels is not None else u  # placeholder pointer when unused
    m_local = 2 * n_local
    cfg, splits, grid = launch_plan(m_local, 2 * n_half, d, u.dtype, allow_tf32, interpreter_enabled())
    part = loss_rows  # placeholder pointer when unsplit
    if splits > 1:  # (max, sum-exp[, positive sum, positive count]) per split and row
        part = torch.empty(((4 if variant == VARIANTS["supcon"] else 2) * splits * m_local,), device=u.device,
                           dtype=torch.float32)
    _contrastive_fwd_kernel[grid](u, lab, loss_rows, lse, npos, part, n_half, row_off, n_local, d, u.stride(0),
                                  1.0 / temperature, splits, VARIANT=variant,
                                  PRECISION=precision(u.dtype, allow_tf32), SPLIT=splits > 1, **cfg)
    if splits > 1:
        ccfg = combine_config(splits)
        _contrastive_combine_kernel[(triton.cdiv(m_local, ccfg["BLOCK_R"]),)](
            part, loss_rows, lse, npos, m_local, splits, VARIANT=variant, **ccfg)
    return loss_rows, lse, npos


def _launch_bwd(u, labels, lse, npos, grad, n_half, row_off, n_local, temperature, variant, allow_tf32):
    """Backward kernel: dU (2 n_local, d) fp32 of the local rows; ``lse`` covers all 2 n_half rows of u."""
    d = u.shape[1]
    lab = labels.contiguous() if labels is not None else u
    cfg, splits, grid = launch_plan(2 * n_local, 2 * n_half, d, u.dtype, allow_tf32, interpreter_enabled(),
                                    backward=True)
    # one partial dU per column split, summed below (deterministic, no atomics); unsplit: dU itself
    du = torch.empty((splits, 2 * n_local, d), device=u.device, dtype=torch.float32)
    g = grad.reshape(1).float()
    _contrastive_bwd_kernel[grid](u, lab, lse, npos, g, du, n_half, row_off, n_local, d, u.stride(0), du.stride(1),
                                  du.stride(0), 1.0 / temperature, splits, VARIANT=variant,
                                  PRECISION=precision(u.dtype, allow_tf32), **cfg)
    return du[0] if splits == 1 else du.sum(0)


@contrastive_fwd.register_fake
def _(z1, z2, labels, temperature, variant, allow_tf32):
    m, d = 2 * z1.shape[0], z1.shape[1]
    f32 = dict(device=z1.device, dtype=torch.float32)
    return (z1.new_empty((), dtype=torch.float32), z1.new_empty((m, d)), z1.new_empty((m,), **f32),
            z1.new_empty((m,), **f32), z1.new_empty((m,), **f32))


@torch.library.custom_op("ssl_kernels::contrastive_bwd", mutates_args=())
def contrastive_bwd(u: torch.Tensor, labels: Optional[torch.Tensor], lse: torch.Tensor, npos: torch.Tensor,
                    grad: torch.Tensor, temperature: float, variant: int, allow_tf32: bool) -> torch.Tensor:
    """dL/du (2N, d) fp32 for the loss L given the upstream gradient ``grad`` (a scalar tensor) of L."""
    check_runnable(u, labels, lse, npos, grad)
    n = u.shape[0] // 2
    return _launch_bwd(u, labels, lse, npos, grad, n, 0, n, temperature, variant, allow_tf32)


@contrastive_bwd.register_fake
def _(u, labels, lse, npos, grad, temperature, variant, allow_tf32):
    return u.new_empty(u.shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    z1, z2, labels, temperature, variant, allow_tf32 = inputs
    _, u, rnorm, lse, npos = output
    ctx.save_for_backward(u, rnorm, lse, npos, labels)
    ctx.temperature, ctx.variant, ctx.allow_tf32 = temperature, variant, allow_tf32
    ctx.dtypes = (z1.dtype, z2.dtype)
    ctx.mark_non_differentiable(u, rnorm, lse, npos)


def _backward(ctx, g_loss, g_u, g_rnorm, g_lse, g_npos):
    u, rnorm, lse, npos, labels = ctx.saved_tensors
    m = u.shape[0]
    du = torch.ops.ssl_kernels.contrastive_bwd(u, labels, lse, npos, g_loss, ctx.temperature, ctx.variant,
                                           ctx.allow_tf32)
    dz = _normalise_backward(du, u, rnorm)
    n = m // 2
    return dz[:n].to(ctx.dtypes[0]), dz[n:].to(ctx.dtypes[1]), None, None, None, None


contrastive_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def _variant_code(variant: str, labels) -> int:
    """The kernels' variant code: SupCon when labels are given, else simclr or decoupled."""
    if labels is not None:
        return VARIANTS["supcon"]
    if variant in ("simclr", "decoupled"):
        return VARIANTS[variant]
    raise ValueError(f"variant must be 'simclr' or 'decoupled' (or pass labels for SupCon), got {variant!r}")


def fused_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
                           labels: Optional[torch.Tensor] = None, variant: str = "simclr",
                           allow_tf32: bool = False) -> torch.Tensor:
    """Drop-in fused replacement of ``ntxent_loss`` (variant "simclr"/"decoupled") and ``supcon_loss``
    (``labels`` given; ``variant`` is then ignored). Returns an fp32 scalar; gradients flow to z1, z2.

    ``allow_tf32`` lets an fp32 similarity run on tf32 tensor cores (GPU only; ~1e-3 relative error).
    """
    code = _variant_code(variant, labels)
    return torch.ops.ssl_kernels.contrastive_fwd(z1, z2, labels, float(temperature), code, bool(allow_tf32))[0]


# ----------------------------------------------------------------------------------------------
# Data-parallel: local rows against the gathered columns
# ----------------------------------------------------------------------------------------------

class _GatheredContrastive(torch.autograd.Function):
    """This rank's 2n rows of the global Z (K ranks, B = K n images) against all 2B columns.

    Forward: normalise the local rows, all-gather u (and labels; no autograd), run the forward kernel
    on the local rows only (O(2n x 2B) work), all-gather the rows' lse. Returns this rank's mean
    l = (1/2n) sum_{own k} l_k; the mean over ranks is the global loss L.
    Backward: no collective. With every row's lse at hand the backward kernel computes, for the own
    rows, the complete gradient of the global loss (the symmetric form: P_kl from row k's own loss,
    P_lk from the other rows' losses, wherever they live), scaled by 1/2n instead of 1/2B: that is
    K dL/du_k, which DDP's mean over ranks turns into the single-process gradient. This assumes the
    same upstream gradient g on every rank (``loss.backward()`` and GradScaler give that).
    """

    @staticmethod
    def forward(ctx, z1, z2, labels, temperature, variant, allow_tf32, rank, world, all_gather):
        _check_inputs(z1, z2, labels, temperature, variant)
        n = z1.shape[0]
        u, rnorm = _normalise(z1, z2)
        big_u = torch.cat([all_gather(u[:n]), all_gather(u[n:])]).contiguous()
        big_y = all_gather(labels.contiguous()) if labels is not None else None
        if big_u.numel() >= 2**31:
            raise ValueError("2B * d of the gathered batch must stay below 2**31 (32-bit offsets)")
        loss_rows, lse, npos = _launch_fwd(big_u, big_y, world * n, rank * n, n, temperature, variant, allow_tf32)
        big_lse = torch.cat([all_gather(lse[:n]), all_gather(lse[n:])])
        ctx.save_for_backward(big_u, u, rnorm, big_lse, npos, big_y)
        ctx.args = (world * n, rank * n, n, temperature, variant, allow_tf32, z1.dtype, z2.dtype)
        return loss_rows.mean()

    @staticmethod
    def backward(ctx, g):
        big_u, u, rnorm, big_lse, npos, big_y = ctx.saved_tensors
        n_half, row_off, n, temperature, variant, allow_tf32, dt1, dt2 = ctx.args
        du = _launch_bwd(big_u, big_y, big_lse, npos, g.detach(), n_half, row_off, n, temperature, variant,
                         allow_tf32)
        dz = _normalise_backward(du, u, rnorm)
        return dz[:n].to(dt1), dz[n:].to(dt2), None, None, None, None, None, None, None


def gathered_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
                              labels: Optional[torch.Tensor] = None, variant: str = "simclr",
                              allow_tf32: bool = False, *, rank: int, world_size: int,
                              all_gather: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fused_contrastive_loss`` over the global batch of a data-parallel group of ``world_size`` ranks:
    this rank's (n, d) rows z1, z2 (every rank the same n) against every rank's; returns this rank's mean
    over its 2n rows (see ``_GatheredContrastive``). ``all_gather(t)`` must return the concatenation over
    ranks, in rank order, of every rank's ``t`` along dim 0, without autograd (the caller's collective:
    this package imports no process-group code). With ``world_size == 1`` it is ``fused_contrastive_loss``."""
    if world_size == 1:
        return fused_contrastive_loss(z1, z2, temperature, labels=labels, variant=variant, allow_tf32=allow_tf32)
    code = _variant_code(variant, labels)
    check_runnable(z1, z2, labels)
    return _GatheredContrastive.apply(z1, z2, labels, float(temperature), code, bool(allow_tf32), int(rank),
                                      int(world_size), all_gather)
