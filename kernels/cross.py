r"""Fused query-key (cross) contrastive loss, MoCo v3's: rows are queries, columns keys, positives on the diagonal.

Queries q (n, d), keys k (m, d), m >= n (keys gathered across ranks: this rank's queries are rows pos_off ..
pos_off + n - 1 of the key batch). u = q / ||q||, v = k / ||k|| (``F.normalize``), s_ij = u_i . v_j / tau,
p(i) = pos_off + i:

    l_i = lse_i - s_{i,p(i)},     lse_i = log sum_j exp(s_ij)   (all keys, the positive included; no self-mask)
    L = (1/n) sum_i l_i = cross_entropy(u v^T / tau, p)

With P_ij = exp(s_ij - lse_i) and Y_ij = [j = p(i)]: dL/du_i = 1/(tau n) sum_j (P_ij - Y_ij) v_j and
dL/dv_j = 1/(tau n) sum_i (P_ij - Y_ij) u_i. The second is computed only when k requires a gradient (MoCo v3's
keys come from the momentum encoder and have none). The normalisation's backward runs in PyTorch as for the
symmetric losses (``kernels.contrastive._normalise_backward``). MoCo v3 scales the loss by 2 tau; the caller does.

The kernels (kernels/cross_kernels.py) see W = [u; v] in the input dtype (fp32, or bf16/fp16 on tensor cores),
accumulate in fp32 and never store the n x m logits; launch plans come from kernels/launch.py (no column splits).
"""
from __future__ import annotations

import torch

from kernels._triton_utils import check_runnable, interpreter_enabled
from kernels.contrastive import _NORM_EPS, _check_dtypes_and_temperature, _normalise_backward
from kernels.cross_kernels import _cross_bwd_kernel, _cross_fwd_kernel
from kernels.launch import launch_plan, precision


def _check(q, k, temperature, pos_offset) -> None:
    if q.dim() != 2 or k.dim() != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must be (n, d) and (m, d), got {tuple(q.shape)} and {tuple(k.shape)}")
    _check_dtypes_and_temperature(q, k, temperature, "fused cross contrastive loss")
    if q.shape[0] < 1 or not 0 <= pos_offset <= k.shape[0] - q.shape[0]:
        raise ValueError(f"need n >= 1 and 0 <= pos_offset <= m - n (query i's key is row pos_offset + i), got "
                         f"n = {q.shape[0]}, m = {k.shape[0]}, pos_offset = {pos_offset}")
    if (q.shape[0] + k.shape[0]) * max(q.shape[1], 16) >= 2**31:
        raise ValueError("(n + m) * d must stay below 2**31 (32-bit offsets)")


def _normalise_pair(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W = [q; k] row-normalised in the input dtype (contiguous) and its fp32 inverse norms."""
    w = torch.cat([q, k]).float()
    rnorm = 1.0 / torch.linalg.vector_norm(w, dim=1).clamp_min(_NORM_EPS)
    return (w * rnorm[:, None]).to(q.dtype).contiguous(), rnorm


@torch.library.custom_op("ssl_kernels::cross_contrastive_fwd", mutates_args=())
def cross_contrastive_fwd(q: torch.Tensor, k: torch.Tensor, temperature: float, pos_offset: int,
                          allow_tf32: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss fp32 scalar, W = [u; v] in the input dtype, rnorm (n + m,), lse (n,))."""
    _check(q, k, temperature, pos_offset)
    check_runnable(q, k)
    n, m, d = q.shape[0], k.shape[0], q.shape[1]
    w, rnorm = _normalise_pair(q, k)
    loss_rows = torch.empty(n, device=q.device, dtype=torch.float32)
    lse = torch.empty_like(loss_rows)
    cfg, _, grid = launch_plan(n, m, d, w.dtype, allow_tf32, interpreter_enabled(), splittable=False)
    _cross_fwd_kernel[grid[:1]](w, loss_rows, lse, n, m, pos_offset, d, w.stride(0), 1.0 / temperature,
                                PRECISION=precision(w.dtype, allow_tf32), **cfg)
    return loss_rows.mean(), w, rnorm, lse


@cross_contrastive_fwd.register_fake
def _(q, k, temperature, pos_offset, allow_tf32):
    rows = q.shape[0] + k.shape[0]
    f32 = dict(device=q.device, dtype=torch.float32)
    return (q.new_empty((), dtype=torch.float32), q.new_empty((rows, q.shape[1])), q.new_empty((rows,), **f32),
            q.new_empty((q.shape[0],), **f32))


def _launch_bwd(w, lse, grad, n, own_lo, n_own, oth_lo, n_oth, partner_shift, temperature, key_side, allow_tf32):
    d = w.shape[1]
    cfg, _, grid = launch_plan(n_own, n_oth, d, w.dtype, allow_tf32, interpreter_enabled(), backward=True,
                               splittable=False)
    dw = torch.empty((n_own, d), device=w.device, dtype=torch.float32)
    _cross_bwd_kernel[grid[:2]](w, lse, grad.reshape(1).float(), dw, own_lo, n_own, oth_lo, n_oth, partner_shift, n,
                                d, w.stride(0), dw.stride(0), 1.0 / temperature, KEY_SIDE=key_side,
                                PRECISION=precision(w.dtype, allow_tf32), **cfg)
    return dw


@torch.library.custom_op("ssl_kernels::cross_contrastive_bwd", mutates_args=())
def cross_contrastive_bwd(w: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor, n: int, temperature: float,
                          pos_offset: int, allow_tf32: bool, key_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/du (n, d), dL/dv (m, d), or (0, d) without ``key_grad``), fp32, for the upstream gradient ``grad``."""
    check_runnable(w, lse, grad)
    m = w.shape[0] - n
    shift = n + pos_offset
    du = _launch_bwd(w, lse, grad, n, 0, n, n, m, shift, temperature, False, allow_tf32)
    dv = (_launch_bwd(w, lse, grad, n, n, m, 0, n, -shift, temperature, True, allow_tf32) if key_grad
          else w.new_empty((0, w.shape[1]), dtype=torch.float32))
    return du, dv


@cross_contrastive_bwd.register_fake
def _(w, lse, grad, n, temperature, pos_offset, allow_tf32, key_grad):
    m = w.shape[0] - n
    f32 = dict(device=w.device, dtype=torch.float32)
    return w.new_empty((n, w.shape[1]), **f32), w.new_empty((m if key_grad else 0, w.shape[1]), **f32)


def _setup_context(ctx, inputs, output):
    q, k, temperature, pos_offset, allow_tf32 = inputs
    _, w, rnorm, lse = output
    ctx.save_for_backward(w, rnorm, lse)
    ctx.args = (q.shape[0], temperature, pos_offset, allow_tf32, q.dtype)
    ctx.mark_non_differentiable(w, rnorm, lse)


def _backward(ctx, g_loss, g_w, g_rnorm, g_lse):
    w, rnorm, lse = ctx.saved_tensors
    n, temperature, pos_offset, allow_tf32, dtype = ctx.args
    key_grad = bool(ctx.needs_input_grad[1])
    du, dv = torch.ops.ssl_kernels.cross_contrastive_bwd(w, lse, g_loss, n, temperature, pos_offset, allow_tf32,
                                                         key_grad)
    dq = _normalise_backward(du, w[:n], rnorm[:n]).to(dtype)
    dk = _normalise_backward(dv, w[n:], rnorm[n:]).to(dtype) if key_grad else None
    return dq, dk, None, None, None


cross_contrastive_fwd.register_autograd(_backward, setup_context=_setup_context)


def fused_cross_contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float, pos_offset: int = 0,
                                 allow_tf32: bool = False) -> torch.Tensor:
    """cross_entropy(normalize(q) normalize(k)^T / tau, pos_offset + arange(n)), fp32 scalar, without the n x m
    logits. Gradients flow to q, and to k when k requires them (MoCo v3's keys: ``k.detach()``)."""
    return torch.ops.ssl_kernels.cross_contrastive_fwd(q, k, float(temperature), int(pos_offset),
                                                       bool(allow_tf32))[0]

