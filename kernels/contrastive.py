r"""Fused contrastive losses (NT-Xent, decoupled cross-view, SupCon) as flash-style Triton kernels.

Maths (DESIGN.md section 3). Z = [z1; z2] has M = 2N rows, u_k = Z_k / ||Z_k||, s_kl = u_k.u_l / tau,
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

Forward kernel: one program per block of BLOCK_M rows; loops over column blocks computing s = u_k u_l^T
with ``tl.dot``, masks it per variant and keeps an online max / sum-exp; SupCon also accumulates the
sum and count of positive similarities. Writes per-row loss, lse and (SupCon) |P(k)|. The M x M matrix
is never stored: extra memory is O(M) besides u (O(M d)). The decoupled variant visits only the other
view's columns when a row block lies in one view (half the work).

Backward kernel: one program per block of rows k; recomputes each tile s_kl, forms
G = P_kl + P_lk - 2 Y_kl from lse_k and lse_l, accumulates G u_l with ``tl.dot`` and scales by
g / (tau M), reading the upstream gradient g from device memory (no host sync).

Column splits (filling the GPU at small batches, in the style of flash-decoding): with few row blocks the
grid would leave most SMs idle (2N = 1024 in row blocks of 64 is 16 CTAs on a 132-SM H100). ``launch_plan``
first shrinks the tiles (BLOCK_M to 64, BLOCK_N to 32), then splits each row block's column range into
``num_splits`` chunks of whole BLOCK_N tiles, chosen from the SM count (the device's, or 132 without a GPU) so
that the grid reaches about 2 CTAs per SM; 1 split when the row blocks alone do. Forward: program (i, j)
runs the online softmax over chunk j only and writes its partial max m_j and sum-exp l_j (SupCon: also the
positive sum and count) per row; ``_contrastive_combine_kernel`` merges them, lse = M + log sum_j l_j
exp(m_j - M) with M = max_j m_j. Backward: program (i, v, j) accumulates sum_l G_kl u_l over chunk j into its
own (split, row, d) slice of a partial dU, and one ``sum`` over the splits finishes it. Both are free of
atomics (deterministic); the extra memory is O(splits x 2N) and O(splits x 2N x d), and splits > 1 only
when 2N is small. ``column_splits(k)`` forces k splits (tests, and the split-vs-unsplit benchmark).

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

import contextlib
from typing import Callable, Optional

import torch

import triton
import triton.language as tl

from kernels._triton_utils import check_runnable, interpreter_enabled, lazy_kernel, next_pow2

VARIANTS = {"simclr": 0, "decoupled": 1, "supcon": 2}
_NORM_EPS = 1e-12  # F.normalize's default eps
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------

@triton.jit
def _similarity_slice(U, rows, row_ok, cols, col_ok, k0, d, stride_u,
                      PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_ok = offs_k < d
    a = tl.load(U + rows[:, None] * stride_u + offs_k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
    b = tl.load(U + cols[None, :] * stride_u + offs_k[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _similarity_tile(U, u_k, rows, row_ok, cols, col_ok, d, stride_u, inv_tau,
                     PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """s = u_rows . u_cols^T / tau for one (BLOCK_M, BLOCK_N) tile, fp32.

    BLOCK_K == BLOCK_D: one tl.dot with the row block u_k held by the caller (tensor-core paths, d <= 256).
    BLOCK_K < BLOCK_D: the reduction over d runs in BLOCK_K slices re-read from memory (L1/L2 hits): the
    "ieee" fp32 path lowers tl.dot to FMAs, and one full-width dot made ptxas spill heavily at d >= 128;
    wide rows (d > 256) would not fit registers / shared memory otherwise. Unrolled up to BLOCK_D = 256
    (fewer registers for the FMA path), a loop beyond (shared memory independent of d).
    """
    if BLOCK_K == BLOCK_D:
        offs_d = tl.arange(0, BLOCK_D)
        u_lt = tl.load(U + cols[None, :] * stride_u + offs_d[:, None],
                       mask=(offs_d < d)[:, None] & col_ok[None, :], other=0.0)
        s = tl.dot(u_k, u_lt, input_precision=PRECISION)
    else:
        s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if BLOCK_D <= 256:
            for k0 in tl.static_range(0, BLOCK_D, BLOCK_K):
                s += _similarity_slice(U, rows, row_ok, cols, col_ok, k0, d, stride_u, PRECISION, BLOCK_K)
        else:
            for k0 in range(0, BLOCK_D, BLOCK_K):
                s += _similarity_slice(U, rows, row_ok, cols, col_ok, k0, d, stride_u, PRECISION, BLOCK_K)
    return s * inv_tau


@lazy_kernel
def _contrastive_fwd_kernel(
    U, LABELS, LOSS, LSE, NPOS, PART,
    n_half, row_off, n_local, d, stride_u, inv_tau, num_splits,
    VARIANT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Rows: the 2 n_local local rows i -> global rows row_off + i (view 1) and n_half + row_off + i - n_local
    (view 2); columns: all 2 n_half rows of U. LOSS/LSE/NPOS are indexed by the local row.

    SPLIT: program (i, j) covers only the j-th of ``num_splits`` column chunks and writes its partial max,
    sum-exp (and SupCon positive sum/count) to PART[q, j, row] (q = 0..3); split 0 stores s_{k,p(k)} in
    LOSS; ``_contrastive_combine_kernel`` then writes loss, lse and |P|."""
    pid = tl.program_id(0)
    n_rows = 2 * n_half
    loc = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = loc < 2 * n_local
    rows = loc + row_off + (loc >= n_local).to(tl.int32) * (n_half - n_local)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < d
    row_view = (rows >= n_half).to(tl.int32)
    partner = tl.where(rows < n_half, rows + n_half, rows - n_half)

    if BLOCK_K == BLOCK_D:  # the row block stays in registers for the whole column loop
        u_k = tl.load(U + rows[:, None] * stride_u + offs_d[None, :],
                      mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    else:  # sliced similarity: rows are re-read per slice (wide d, or the FMA path)
        u_k = 0.0

    # Column range. The decoupled variant only looks at the other view: when the whole row block lies
    # in one view, visit that half only (a block straddling the views visits all columns, masked).
    col_lo = 0
    col_hi = n_rows
    if VARIANT == 1:
        first = pid * BLOCK_M
        last = tl.minimum(first + BLOCK_M, 2 * n_local) - 1
        v_first = (first >= n_local).to(tl.int32)
        v_last = (last >= n_local).to(tl.int32)
        same = 1 - (v_last - v_first)  # 1 when the block lies in one view
        col_lo = same * (1 - v_first) * n_half
        col_hi = col_lo + n_half + (1 - same) * n_half
    pid_s = 0
    if SPLIT:  # this program's chunk of the column range (whole BLOCK_N tiles; the last chunks may be empty)
        pid_s = tl.program_id(1)
        chunk = tl.cdiv(tl.cdiv(col_hi - col_lo, num_splits), BLOCK_N) * BLOCK_N
        col_lo = col_lo + pid_s * chunk
        col_hi = tl.minimum(col_lo + chunk, col_hi)

    if VARIANT == 2:
        y_k = tl.load(LABELS + (rows % n_half), mask=row_ok, other=0)
        pos_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        pos_cnt = tl.zeros([BLOCK_M], dtype=tl.float32)
    else:
        # s_{k,p(k)} directly (the decoupled positive is not in the allowed set), before the loop so that
        # an elementwise copy of u_k is dead while the loop holds it as a dot operand (keeping both alive
        # made ptxas spill for fp32).
        if BLOCK_D <= 256:
            full_mask = row_ok[:, None] & d_ok[None, :]
            if BLOCK_K == BLOCK_D:
                a = u_k
            else:
                a = tl.load(U + rows[:, None] * stride_u + offs_d[None, :], mask=full_mask, other=0.0)
            b = tl.load(U + partner[:, None] * stride_u + offs_d[None, :], mask=full_mask, other=0.0)
            s_pos = tl.sum(a.to(tl.float32) * b.to(tl.float32), axis=1)
        else:  # wide rows: in slices
            s_pos = tl.zeros([BLOCK_M], dtype=tl.float32)
            for k0 in range(0, BLOCK_D, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                pk_mask = row_ok[:, None] & (offs_k < d)[None, :]
                a = tl.load(U + rows[:, None] * stride_u + offs_k[None, :], mask=pk_mask, other=0.0)
                b = tl.load(U + partner[:, None] * stride_u + offs_k[None, :], mask=pk_mask, other=0.0)
                s_pos += tl.sum(a.to(tl.float32) * b.to(tl.float32), axis=1)
        s_pos = s_pos * inv_tau

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for c0 in range(col_lo, col_hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < col_hi
        s = _similarity_tile(U, u_k, rows, row_ok, cols, col_ok, d, stride_u, inv_tau,
                             PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_K)
        allowed = col_ok[None, :] & (rows[:, None] != cols[None, :])
        if VARIANT == 1:
            col_view = (cols >= n_half).to(tl.int32)
            allowed = allowed & (row_view[:, None] != col_view[None, :]) & (cols[None, :] != partner[:, None])
        if VARIANT == 2:
            y_l = tl.load(LABELS + (cols % n_half), mask=col_ok, other=0)
            pos = allowed & (y_l[None, :] == y_k[:, None])
            pos_sum += tl.sum(tl.where(pos, s, 0.0), axis=1)
            pos_cnt += tl.sum(pos.to(tl.float32), axis=1)
        s_m = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s_m, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s_m - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new

    if SPLIT:
        n_loc = 2 * n_local
        part = PART + pid_s * n_loc + loc
        tl.store(part, m_i, mask=row_ok)
        tl.store(part + num_splits * n_loc, l_i, mask=row_ok)
        if VARIANT == 2:
            tl.store(part + 2 * num_splits * n_loc, pos_sum, mask=row_ok)
            tl.store(part + 3 * num_splits * n_loc, pos_cnt, mask=row_ok)
        else:
            tl.store(LOSS + loc, s_pos, mask=loc + pid_s * n_loc < n_loc)  # split 0's rows only
    else:
        l_i = tl.where(row_ok, l_i, 1.0)
        lse = m_i + tl.log(l_i)
        if VARIANT == 2:
            pos_cnt = tl.where(row_ok, pos_cnt, 1.0)
            loss = lse - pos_sum / pos_cnt
            tl.store(NPOS + loc, pos_cnt, mask=row_ok)
        else:
            loss = lse - s_pos
        tl.store(LOSS + loc, loss, mask=row_ok)
        tl.store(LSE + loc, lse, mask=row_ok)


@lazy_kernel
def _contrastive_combine_kernel(
    PART, LOSS, LSE, NPOS, n_loc, num_splits,
    VARIANT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Merges the split forward's partials of BLOCK_R rows: lse = M + log sum_j l_j exp(m_j - M), M = max_j m_j
    (flash-decoding's combine); loss = lse - s_pos (s_pos from LOSS) or lse - sum_j pos_sum_j / sum_j pos_cnt_j."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_loc
    splits = tl.arange(0, BLOCK_S)
    mask = (splits < num_splits)[:, None] & row_ok[None, :]
    idx = splits[:, None] * n_loc + rows[None, :]
    m = tl.load(PART + idx, mask=mask, other=-1.0e30)
    l = tl.load(PART + num_splits * n_loc + idx, mask=mask, other=0.0)
    m_max = tl.max(m, axis=0)
    l_sum = tl.sum(l * tl.exp(m - m_max[None, :]), axis=0)
    lse = m_max + tl.log(tl.where(row_ok, l_sum, 1.0))
    if VARIANT == 2:
        pos_sum = tl.sum(tl.load(PART + 2 * num_splits * n_loc + idx, mask=mask, other=0.0), axis=0)
        pos_cnt = tl.sum(tl.load(PART + 3 * num_splits * n_loc + idx, mask=mask, other=0.0), axis=0)
        pos_cnt = tl.where(row_ok, pos_cnt, 1.0)
        loss = lse - pos_sum / pos_cnt
        tl.store(NPOS + rows, pos_cnt, mask=row_ok)
    else:
        loss = lse - tl.load(LOSS + rows, mask=row_ok, other=0.0)
    tl.store(LOSS + rows, loss, mask=row_ok)
    tl.store(LSE + rows, lse, mask=row_ok)


@lazy_kernel
def _contrastive_bwd_kernel(
    U, LABELS, LSE, NPOS, GRAD, DU,
    n_half, row_off, n_local, d, stride_u, stride_du, stride_split, inv_tau, num_splits,
    VARIANT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """DU_k = g / (tau 2 n_local) sum_l (P_kl + P_lk - 2 Y_kl) u_l for this program's rows k, g = dL_out/dL.

    Local rows as in the forward (single process: n_local = n_half, row_off = 0, so 2 n_local = M); LSE
    holds all 2 n_half rows (P_lk needs every column's lse), NPOS and DU the local rows.
    Grid (row blocks, d slices of BLOCK_DV, column splits): for wide embeddings each program accumulates only
    its slice of dU (recomputing the similarity tiles over the full d), which bounds registers and shared
    memory; with num_splits > 1 program (i, v, j) sums over the j-th column chunk only and writes its partial
    dU to DU[j] (stride_split apart), which the caller sums over j (no atomics).
    """
    pid = tl.program_id(0)
    pid_v = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    v_ok = offs_v < d
    n_rows = 2 * n_half
    loc = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = loc < 2 * n_local
    rows = loc + row_off + (loc >= n_local).to(tl.int32) * (n_half - n_local)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < d
    row_view = (rows >= n_half).to(tl.int32)
    partner = tl.where(rows < n_half, rows + n_half, rows - n_half)

    if BLOCK_K == BLOCK_D:
        u_k = tl.load(U + rows[:, None] * stride_u + offs_d[None, :],
                      mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        u_k = 0.0
    lse_k = tl.load(LSE + rows, mask=row_ok, other=0.0)

    col_lo = 0
    col_hi = n_rows
    if VARIANT == 1:
        first = pid * BLOCK_M
        last = tl.minimum(first + BLOCK_M, 2 * n_local) - 1
        v_first = (first >= n_local).to(tl.int32)
        v_last = (last >= n_local).to(tl.int32)
        same = 1 - (v_last - v_first)
        col_lo = same * (1 - v_first) * n_half
        col_hi = col_lo + n_half + (1 - same) * n_half
    chunk = tl.cdiv(tl.cdiv(col_hi - col_lo, num_splits), BLOCK_N) * BLOCK_N  # the whole range when unsplit
    col_lo = col_lo + pid_s * chunk
    col_hi = tl.minimum(col_lo + chunk, col_hi)

    if VARIANT == 2:
        y_k = tl.load(LABELS + (rows % n_half), mask=row_ok, other=0)
        two_over_cnt = 2.0 / tl.load(NPOS + loc, mask=row_ok, other=1.0)

    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for c0 in range(col_lo, col_hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < col_hi
        u_l = tl.load(U + cols[:, None] * stride_u + offs_v[None, :],
                      mask=col_ok[:, None] & v_ok[None, :], other=0.0)
        if BLOCK_K == BLOCK_D and BLOCK_DV == BLOCK_D:  # u_l is the whole row: reuse it for s
            s = tl.dot(u_k, tl.trans(u_l), input_precision=PRECISION) * inv_tau
        else:
            s = _similarity_tile(U, u_k, rows, row_ok, cols, col_ok, d, stride_u, inv_tau,
                                 PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_K)
        lse_l = tl.load(LSE + cols, mask=col_ok, other=0.0)
        allowed = col_ok[None, :] & (rows[:, None] != cols[None, :])
        if VARIANT == 1:
            col_view = (cols >= n_half).to(tl.int32)
            allowed = allowed & (row_view[:, None] != col_view[None, :]) & (cols[None, :] != partner[:, None])
        s_m = tl.where(allowed, s, float("-inf"))
        g = tl.exp(s_m - lse_k[:, None]) + tl.exp(s_m - lse_l[None, :])
        if VARIANT == 2:
            y_l = tl.load(LABELS + (cols % n_half), mask=col_ok, other=0)
            pos = allowed & (y_l[None, :] == y_k[:, None])
            g = g - tl.where(pos, two_over_cnt[:, None], 0.0)
        else:
            g = g - tl.where(cols[None, :] == partner[:, None], 2.0, 0.0)
        acc += tl.dot(g.to(u_l.dtype), u_l, input_precision=PRECISION)

    scale = tl.load(GRAD).to(tl.float32) * inv_tau / (2 * n_local)  # upstream gradient read on the device
    acc = acc * scale
    tl.store(DU + pid_s * stride_split + loc[:, None] * stride_du + offs_v[None, :], acc,
             mask=row_ok[:, None] & v_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------

_block_override: Optional[tuple] = None


@contextlib.contextmanager
def block_sizes(block_m: int, block_n: int, block_k: Optional[int] = None, block_dv: Optional[int] = None):
    """Force (BLOCK_M, BLOCK_N[, BLOCK_K[, BLOCK_DV]]) for launches inside the context (tests use it to
    exercise the tiling, the sliced-d similarity and the sliced-d backward in the interpreter)."""
    global _block_override
    previous, _block_override = _block_override, (int(block_m), int(block_n), block_k, block_dv)
    try:
        yield
    finally:
        _block_override = previous


# (BLOCK_M, BLOCK_N, num_warps) for (forward, backward) by operand kind and padded width BLOCK_D (keys: the
# largest BLOCK_D a row applies to). Chosen without a GPU from ahead-of-time sm_90 compiles (bench/kernels_aot.py,
# table in bench/results/kernels-aot-sm90.md): large tiles that ptxas fits in 255 registers without spilling
# (the d = 256 backward of tensor-core paths computes dU in two 128-wide halves, BLOCK_DV = 128) and in 227 KB
# of shared memory. Not autotuned on hardware. d > 256: see launch_config (sliced d).
_GPU_CONFIGS = {
    "half": {64: ((128, 64, 8), (128, 64, 8)), 128: ((128, 64, 8), (128, 32, 8)),
             256: ((64, 32, 8), (64, 32, 8)), None: ((64, 64, 8), (64, 32, 8))},
    "tf32": {64: ((64, 32, 4), (64, 32, 4)), 128: ((128, 32, 8), (64, 32, 4)),
             256: ((64, 32, 8), (64, 32, 8)), None: ((64, 32, 8), (64, 32, 4))},
    "ieee": {64: ((64, 32, 8), (64, 32, 8)), 128: ((64, 32, 8), (64, 32, 8)),
             256: ((32, 16, 4), (64, 16, 8)), None: ((64, 16, 8), (64, 16, 8))},
}


def launch_config(d: int, dtype: torch.dtype, allow_tf32: bool, interpret: bool, backward: bool = False) -> dict:
    """Block sizes and warps for the forward (or backward) kernel.

    BLOCK_K: slice of d per tl.dot in the similarity (BLOCK_D = one dot on a row block held in registers).
    BLOCK_DV (backward): slice of d of dU per program (the backward grid's second axis).
    """
    block_d = max(16, next_pow2(d))
    kind = "half" if dtype != torch.float32 else ("tf32" if allow_tf32 else "ieee")
    block_dv = block_d
    if interpret:
        bm, bn, warps = 64, 64, 4  # few, large programs: the interpreter's cost is per op, not per element
        block_k = block_d
    else:
        table = _GPU_CONFIGS[kind]
        if block_d <= 256:
            key = next(k for k in (64, 128, 256) if block_d <= k)
            bm, bn, warps = table[key][1 if backward else 0]
            # the FMA ("ieee") path reduces over d in slices of 32 (see _similarity_tile)
            block_k = min(block_d, 32) if kind == "ieee" else block_d
            if backward and block_d == 256 and kind != "ieee":
                block_dv = 128  # a (BLOCK_M, 256) fp32 accumulator beside the u_k operand spilled
        else:  # wide rows: sliced similarity; the backward also slices dU (BLOCK_DV = 64)
            bm, bn, warps = table[None][1 if backward else 0]
            block_k = 64 if kind == "half" else 32
            block_dv = 64 if backward else block_d
    if _block_override is not None:
        bm, bn = _block_override[:2]
        block_k = _block_override[2] or block_k
        block_dv = _block_override[3] or block_dv
    cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, BLOCK_K=block_k, num_warps=warps, num_stages=2)
    if backward:
        cfg["BLOCK_DV"] = block_dv
    return cfg


AOT_SM_COUNT = 132  # H100 SXM / H200: what launches are planned for without a GPU (AOT tables, CPU)
INTERPRETER_SM_COUNT = 2  # a pretend 2-SM device, so that the interpreter's default plans split small batches too
_split_override: Optional[int] = None


@contextlib.contextmanager
def column_splits(splits: int):
    """Force the number of column splits of the forward and backward launches inside the context (tests, and
    bench/kernels.py's split-vs-unsplit comparison; 1 = the unsplit kernels). More splits than column tiles
    leave some chunks empty, which the kernels handle."""
    global _split_override
    if int(splits) < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    previous, _split_override = _split_override, int(splits)
    try:
        yield
    finally:
        _split_override = previous


def sm_count(device=None) -> int:
    """Streaming multiprocessors of the CUDA device (default: the current one), else AOT_SM_COUNT."""
    if torch.cuda.is_available():
        dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
        if dev.type == "cuda":
            return torch.cuda.get_device_properties(dev).multi_processor_count
    return AOT_SM_COUNT


def num_splits(row_programs: int, n_cols: int, block_n: int, sms: int) -> int:
    """Column splits that bring the grid to about 2 programs per SM when row blocks alone do not (1 when they
    do): at most one split per BLOCK_N column tile, and no split left empty by rounding chunks to tiles."""
    target = 2 * sms
    if row_programs >= target:
        return 1
    want = max(1, min(triton.cdiv(target, row_programs), triton.cdiv(n_cols, block_n)))
    chunk = triton.cdiv(triton.cdiv(n_cols, want), block_n) * block_n
    return triton.cdiv(n_cols, chunk)


def launch_plan(m_local: int, n_cols: int, d: int, dtype: torch.dtype, allow_tf32: bool, interpret: bool,
                backward: bool = False, sms: Optional[int] = None) -> tuple[dict, int, tuple]:
    """(config, splits, grid) of the forward (or backward) launch over ``m_local`` rows and ``n_cols`` columns.

    On a GPU, a batch too small to fill ``sms`` SMs twice first gets smaller row blocks (BLOCK_M down to 64,
    still a full wgmma tile) and column tiles (BLOCK_N down to 32), then column splits (``num_splits``).
    Forward grid (row blocks, splits); backward grid (row blocks, d slices, splits).
    """
    if sms is None:
        sms = INTERPRETER_SM_COUNT if interpret else sm_count()
    cfg = launch_config(d, dtype, allow_tf32, interpret, backward)
    dv_programs = triton.cdiv(cfg["BLOCK_D"], cfg["BLOCK_DV"]) if backward else 1
    if not interpret and _block_override is None:
        def most_programs():  # with one split per column tile
            return triton.cdiv(m_local, cfg["BLOCK_M"]) * dv_programs * triton.cdiv(n_cols, cfg["BLOCK_N"])
        while cfg["BLOCK_M"] > 64 and most_programs() < 2 * sms:
            cfg["BLOCK_M"] //= 2
        while cfg["BLOCK_N"] > 32 and most_programs() < 2 * sms:
            cfg["BLOCK_N"] //= 2
    row_blocks = triton.cdiv(m_local, cfg["BLOCK_M"])
    splits = _split_override or num_splits(row_blocks * dv_programs, n_cols, cfg["BLOCK_N"], sms)
    grid = (row_blocks, dv_programs, splits) if backward else (row_blocks, splits)
    return cfg, splits, grid


def combine_config(splits: int) -> dict:
    block_s = max(2, next_pow2(splits))
    return dict(BLOCK_S=block_s, BLOCK_R=max(16, min(128, 4096 // block_s)), num_warps=4)


def _precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    return "tf32" if (allow_tf32 or dtype != torch.float32) else "ieee"


def _check_inputs(z1, z2, labels, temperature, variant) -> None:
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must be (N, d) of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.dtype != z2.dtype or z1.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"fused contrastive loss supports float32/bfloat16/float16 inputs of one dtype, "
                        f"got {z1.dtype} and {z2.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
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
                                  PRECISION=_precision(u.dtype, allow_tf32), SPLIT=splits > 1, **cfg)
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
                                  PRECISION=_precision(u.dtype, allow_tf32), **cfg)
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
    # back through u = z * rnorm, rnorm = 1 / max(||z||, eps)
    uf = u.float()
    clamped = (rnorm >= 1.0 / _NORM_EPS)[:, None]
    dz = torch.where(clamped, du, du - uf * (uf * du).sum(dim=1, keepdim=True)) * rnorm[:, None]
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
        uf = u.float()
        clamped = (rnorm >= 1.0 / _NORM_EPS)[:, None]
        dz = torch.where(clamped, du, du - uf * (uf * du).sum(dim=1, keepdim=True)) * rnorm[:, None]
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
