r"""The Triton programs of the fused contrastive losses (the maths, the autograd and the API: kernels/contrastive.py;
launch planning: kernels/launch.py).

Forward kernel: one program per block of BLOCK_M rows; loops over column blocks computing s = u_k u_l^T
with ``tl.dot``, masks it per variant and keeps an online max / sum-exp; SupCon also accumulates the
sum and count of positive similarities. Writes per-row loss, lse and (SupCon) |P(k)|. The M x M matrix
is never stored: extra memory is O(M) besides u (O(M d)). The decoupled variant visits only the other
view's columns when a row block lies in one view (half the work).

Backward kernel: one program per block of rows k; recomputes each tile s_kl, forms
G = P_kl + P_lk - 2 Y_kl from lse_k and lse_l, accumulates G u_l with ``tl.dot`` and scales by
g / (tau M), reading the upstream gradient g from device memory (no host sync).

Column splits (filling the GPU at small batches, in the style of flash-decoding): program (i, j) of the forward
runs the online softmax over the j-th chunk of its row block's columns only and writes its partial max m_j and
sum-exp l_j (SupCon: also the positive sum and count) per row; ``_contrastive_combine_kernel`` merges them,
lse = M + log sum_j l_j exp(m_j - M) with M = max_j m_j. Backward: program (i, v, j) accumulates sum_l G_kl u_l
over chunk j into its own (split, row, d) slice of a partial dU, and one ``sum`` over the splits finishes it.
Both are free of atomics (deterministic).

Local rows (data-parallel): both kernels take ``row_off`` and ``n_local`` and own only the 2 n_local rows
row_off .. row_off + n_local - 1 of each view (global row indices; all 2N rows remain columns). One process
is n_local = N, row_off = 0.

The forward and the backward share their row mapping, column range, masks and label tests through the
``@triton.jit`` helpers below (Triton inlines them).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels._triton_utils import lazy_kernel


@triton.jit
def _local_rows(pid, n_half, row_off, n_local, BLOCK_M: tl.constexpr):
    """Program ``pid``'s local rows ``loc`` (indices into LOSS/LSE/NPOS/DU), their global rows in U (view 1:
    row_off + loc; view 2: n_half + row_off + loc - n_local), each row's view and its positive p(k)."""
    loc = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = loc < 2 * n_local
    rows = loc + row_off + (loc >= n_local).to(tl.int32) * (n_half - n_local)
    row_view = (rows >= n_half).to(tl.int32)
    partner = tl.where(rows < n_half, rows + n_half, rows - n_half)
    return loc, row_ok, rows, row_view, partner


@triton.jit
def _column_range(pid, pid_s, n_half, n_local, num_splits,
                  VARIANT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr):
    """[col_lo, col_hi) of program (pid, pid_s). The decoupled variant only looks at the other view: when the
    whole row block lies in one view, that half only (a block straddling the views visits all columns, masked).
    SPLIT: the pid_s-th of ``num_splits`` chunks of whole BLOCK_N tiles (the last chunks may be empty)."""
    col_lo = n_half * 0
    col_hi = 2 * n_half
    if VARIANT == 1:
        first = pid * BLOCK_M
        last = tl.minimum(first + BLOCK_M, 2 * n_local) - 1
        v_first = (first >= n_local).to(tl.int32)
        v_last = (last >= n_local).to(tl.int32)
        same = 1 - (v_last - v_first)  # 1 when the block lies in one view
        col_lo = same * (1 - v_first) * n_half
        col_hi = col_lo + n_half + (1 - same) * n_half
    if SPLIT:
        chunk = tl.cdiv(tl.cdiv(col_hi - col_lo, num_splits), BLOCK_N) * BLOCK_N
        col_lo = col_lo + pid_s * chunk
        col_hi = tl.minimum(col_lo + chunk, col_hi)
    return col_lo, col_hi


@triton.jit
def _row_block(U, rows, row_ok, d, stride_u, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """The rows' u (BLOCK_M, BLOCK_D), held for the whole column loop when the similarity is one dot
    (BLOCK_K == BLOCK_D); 0.0 when it is sliced over d (rows re-read per slice: wide d, or the FMA path)."""
    if BLOCK_K == BLOCK_D:
        offs_d = tl.arange(0, BLOCK_D)
        u_k = tl.load(U + rows[:, None] * stride_u + offs_d[None, :],
                      mask=row_ok[:, None] & (offs_d < d)[None, :], other=0.0)
    else:
        u_k = 0.0
    return u_k


@triton.jit
def _allowed(rows, cols, col_ok, row_view, partner, n_half, VARIANT: tl.constexpr):
    """[l in A(k)] for the tile: every other column; the decoupled variant: the other view's, but p(k)."""
    allowed = col_ok[None, :] & (rows[:, None] != cols[None, :])
    if VARIANT == 1:
        col_view = (cols >= n_half).to(tl.int32)
        allowed = allowed & (row_view[:, None] != col_view[None, :]) & (cols[None, :] != partner[:, None])
    return allowed


@triton.jit
def _same_label(LABELS, cols, col_ok, allowed, y_k, n_half):
    """SupCon's positives in the tile: allowed columns with the row's label (rows k and k + N share one)."""
    y_l = tl.load(LABELS + (cols % n_half), mask=col_ok, other=0)
    return allowed & (y_l[None, :] == y_k[:, None])


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


@triton.jit
def _positive_similarity(U, u_k, rows, row_ok, partner, d, stride_u, inv_tau,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """s_{k,p(k)} per row, computed directly (the decoupled positive is not in the allowed set)."""
    if BLOCK_D <= 256:
        offs_d = tl.arange(0, BLOCK_D)
        full_mask = row_ok[:, None] & (offs_d < d)[None, :]
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
    return s_pos * inv_tau


@lazy_kernel
def _contrastive_fwd_kernel(
    U, LABELS, LOSS, LSE, NPOS, PART,
    n_half, row_off, n_local, d, stride_u, inv_tau, num_splits,
    VARIANT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """LOSS/LSE/NPOS are indexed by the local row (see ``_local_rows``).

    SPLIT: program (i, j) covers only the j-th of ``num_splits`` column chunks and writes its partial max,
    sum-exp (and SupCon positive sum/count) to PART[q, j, row] (q = 0..3); split 0 stores s_{k,p(k)} in
    LOSS; ``_contrastive_combine_kernel`` then writes loss, lse and |P|."""
    pid = tl.program_id(0)
    pid_s = tl.program_id(1) if SPLIT else 0
    loc, row_ok, rows, row_view, partner = _local_rows(pid, n_half, row_off, n_local, BLOCK_M)
    u_k = _row_block(U, rows, row_ok, d, stride_u, BLOCK_D, BLOCK_K)
    col_lo, col_hi = _column_range(pid, pid_s, n_half, n_local, num_splits, VARIANT, BLOCK_M, BLOCK_N, SPLIT)

    if VARIANT == 2:
        y_k = tl.load(LABELS + (rows % n_half), mask=row_ok, other=0)
        pos_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        pos_cnt = tl.zeros([BLOCK_M], dtype=tl.float32)
    else:
        # before the loop, so that an elementwise copy of u_k is dead while the loop holds it as a dot operand
        # (keeping both alive made ptxas spill for fp32)
        s_pos = _positive_similarity(U, u_k, rows, row_ok, partner, d, stride_u, inv_tau, BLOCK_M, BLOCK_D,
                                     BLOCK_K)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for c0 in range(col_lo, col_hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < col_hi
        s = _similarity_tile(U, u_k, rows, row_ok, cols, col_ok, d, stride_u, inv_tau,
                             PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_K)
        allowed = _allowed(rows, cols, col_ok, row_view, partner, n_half, VARIANT)
        if VARIANT == 2:
            pos = _same_label(LABELS, cols, col_ok, allowed, y_k, n_half)
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
    loc, row_ok, rows, row_view, partner = _local_rows(pid, n_half, row_off, n_local, BLOCK_M)
    u_k = _row_block(U, rows, row_ok, d, stride_u, BLOCK_D, BLOCK_K)
    lse_k = tl.load(LSE + rows, mask=row_ok, other=0.0)
    # the whole range when unsplit (num_splits = 1)
    col_lo, col_hi = _column_range(pid, pid_s, n_half, n_local, num_splits, VARIANT, BLOCK_M, BLOCK_N, True)

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
        allowed = _allowed(rows, cols, col_ok, row_view, partner, n_half, VARIANT)
        s_m = tl.where(allowed, s, float("-inf"))
        g = tl.exp(s_m - lse_k[:, None]) + tl.exp(s_m - lse_l[None, :])
        if VARIANT == 2:
            pos = _same_label(LABELS, cols, col_ok, allowed, y_k, n_half)
            g = g - tl.where(pos, two_over_cnt[:, None], 0.0)
        else:
            g = g - tl.where(cols[None, :] == partner[:, None], 2.0, 0.0)
        acc += tl.dot(g.to(u_l.dtype), u_l, input_precision=PRECISION)

    scale = tl.load(GRAD).to(tl.float32) * inv_tau / (2 * n_local)  # upstream gradient read on the device
    acc = acc * scale
    tl.store(DU + pid_s * stride_split + loc[:, None] * stride_du + offs_v[None, :], acc,
             mask=row_ok[:, None] & v_ok[None, :])
