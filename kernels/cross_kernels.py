r"""Triton programs of the query-key (cross) contrastive loss (kernels/cross.py has the maths and the API).

Both operate on one row-major matrix W = [u; v]: rows 0 .. n-1 the normalised queries, rows n .. n+m-1 the
normalised keys, so the similarity helpers of the symmetric kernels (kernels/contrastive_kernels.py) serve here
unchanged; query i's positive is key row n + pos_off + i.

Forward: one program per block of query rows; loops over all key rows with an online log-sum-exp (no mask
but the ragged edge: every key is in the denominator, the positive included); writes loss_i = lse_i - s_{i,p(i)}
and lse_i.

Backward: one program per block of "own" rows of W and slice of dU (grid axis 1), looping over the "other" rows:
for queries (KEY_SIDE false) own = queries, others = keys, G_ij = exp(s_ij - lse_i) - [j = p(i)], dU_i = sum_j
G_ij v_j; for keys (KEY_SIDE true) own = keys, others = queries, G_ji = exp(s_ij - lse_i) - [j = p(i)],
dV_j = sum_i G_ji u_i. Each is scaled by g / (tau n). No atomics.
"""
from __future__ import annotations

import triton.language as tl

from kernels._triton_utils import lazy_kernel
from kernels.contrastive_kernels import _positive_similarity, _row_block, _similarity_tile


@lazy_kernel
def _cross_fwd_kernel(
    W, LOSS, LSE, n, m, pos_off, d, stride_w, inv_tau,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    u_k = _row_block(W, rows, row_ok, d, stride_w, BLOCK_D, BLOCK_K)
    s_pos = _positive_similarity(W, u_k, rows, row_ok, rows + n + pos_off, d, stride_w, inv_tau, BLOCK_M, BLOCK_D,
                                 BLOCK_K)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for c0 in range(n, n + m, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n + m
        s = _similarity_tile(W, u_k, rows, row_ok, cols, col_ok, d, stride_w, inv_tau,
                             PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_K)
        s_m = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s_m, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s_m - m_new[:, None]), axis=1)
        m_i = m_new
    lse = m_i + tl.log(tl.where(row_ok, l_i, 1.0))
    tl.store(LOSS + rows, lse - s_pos, mask=row_ok)
    tl.store(LSE + rows, lse, mask=row_ok)


@lazy_kernel
def _cross_bwd_kernel(
    W, LSE, GRAD, DW, own_lo, n_own, oth_lo, n_oth, partner_shift, n, d, stride_w, stride_dw, inv_tau,
    KEY_SIDE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """DW[r - own_lo] = g / (tau n) sum_o G_ro w_o over the other rows o, for own rows r in the program's block;
    o is r's positive when o = r + partner_shift. LSE holds the n query rows' lse."""
    offs_v = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    v_ok = offs_v < d
    loc = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = loc < n_own
    rows = own_lo + loc
    partner = rows + partner_shift
    u_k = _row_block(W, rows, row_ok, d, stride_w, BLOCK_D, BLOCK_K)
    if not KEY_SIDE:
        lse_k = tl.load(LSE + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for c0 in range(oth_lo, oth_lo + n_oth, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < oth_lo + n_oth
        w_l = tl.load(W + cols[:, None] * stride_w + offs_v[None, :], mask=col_ok[:, None] & v_ok[None, :], other=0.0)
        if BLOCK_K == BLOCK_D and BLOCK_DV == BLOCK_D:  # w_l is the whole row: reuse it for s
            s = tl.dot(u_k, tl.trans(w_l), input_precision=PRECISION) * inv_tau
        else:
            s = _similarity_tile(W, u_k, rows, row_ok, cols, col_ok, d, stride_w, inv_tau,
                                 PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_K)
        s_m = tl.where(col_ok[None, :], s, float("-inf"))
        if KEY_SIDE:
            lse_l = tl.load(LSE + cols, mask=col_ok, other=0.0)
            g = tl.exp(s_m - lse_l[None, :])
        else:
            g = tl.exp(s_m - lse_k[:, None])
        g = g - tl.where(cols[None, :] == partner[:, None], 1.0, 0.0)
        acc += tl.dot(g.to(w_l.dtype), w_l, input_precision=PRECISION)
    acc = acc * (tl.load(GRAD).to(tl.float32) * inv_tau / n)  # upstream gradient read on the device
    tl.store(DW + loc[:, None] * stride_dw + offs_v[None, :], acc, mask=row_ok[:, None] & v_ok[None, :])
