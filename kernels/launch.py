"""Launch planning of the contrastive kernels: tile sizes, warps, pipeline stages, column splits and grids,
chosen for the GPU the kernels meet (its SM count and its shared memory per block), or for a named target when
there is no GPU (ahead-of-time tables, CPU tests).

A :class:`Target` is what the plan needs to know about a GPU. ``device_target()`` reads it from the device
(``multi_processor_count`` from torch; the opt-in shared memory per block, the limit a launch is checked
against, from Triton's driver: CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN); ``TARGETS`` names the
profiles the AOT tables are made for. Without a GPU the plan is made for ``DEFAULT_TARGET`` (H100/H200).

Plan = the base tiles of ``_BASE_CONFIGS`` (chosen from sm_90 AOT compiles: the largest tiles ptxas fits in 255
registers without spilling), shrunk until the estimated shared memory fits the target (``fit_shared_memory``),
then, for batches too small to give every SM two CTAs, smaller tiles and column splits (``launch_plan``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Optional

import torch

import triton

from kernels._triton_utils import next_pow2


@dataclasses.dataclass(frozen=True)
class Target:
    """A GPU as the launch plan sees it. ``smem_per_block``: the opt-in maximum of shared memory one CTA may
    use, in bytes (what Triton checks a launch against)."""
    name: str
    arch: int  # compute capability as major * 10 + minor
    sms: int
    smem_per_block: int


# Public figures (NVIDIA's CUDA C programming guide, compute capabilities table; the products' SM counts).
# sm_89 is planned for an RTX 4090 (128 SMs); an L4 (58 SMs) or L40 (142) differs only in the SM count, which
# only changes how small batches are split, never the tiles' resources.
TARGETS = {
    "sm_80": Target("sm_80", 80, 108, 163 * 1024),  # A100
    "sm_86": Target("sm_86", 86, 82, 99 * 1024),    # RTX 3090 (A40: 84 SMs, A10: 72)
    "sm_89": Target("sm_89", 89, 128, 99 * 1024),   # RTX 4090 (L4: 58 SMs, L40: 142)
    "sm_90": Target("sm_90", 90, 132, 227 * 1024),  # H100 SXM / H200
}
DEFAULT_TARGET = TARGETS["sm_90"]
INTERPRETER_TARGET = Target("interpreter", 0, 2, 1 << 30)  # a pretend 2-SM device: small batches split too
# Shared memory a launch uses beyond the operand buffers the estimate counts (barriers, reduction scratch; the
# sm_90 AOT table shows 0.5-1 KB); planned configurations keep this much headroom below the limit.
_SMEM_HEADROOM = 2048


@functools.lru_cache(maxsize=None)
def _cuda_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    try:
        from triton.runtime import driver
        smem = int(driver.active.utils.get_device_properties(index)["max_shared_mem"])
    except Exception:  # noqa: BLE001 - no Triton driver: the per-SM capacity less the 1 KB the CUDA runtime reserves per block
        smem = int(props.shared_memory_per_multiprocessor) - 1024
    return Target(f"sm_{props.major}{props.minor}", props.major * 10 + props.minor, props.multi_processor_count, smem)


def device_target(device=None) -> Target:
    """The target of the CUDA device (default: the current one); ``DEFAULT_TARGET`` without CUDA."""
    if torch.cuda.is_available():
        dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
        if dev.type == "cuda":
            return _cuda_target(dev.index if dev.index is not None else torch.cuda.current_device())
    return DEFAULT_TARGET


def sm_count(device=None) -> int:
    return device_target(device).sms


# ---- overrides (tests, benchmarks) ---------------------------------------------------------------------------

_block_override: Optional[tuple] = None
_split_override: Optional[int] = None


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


# ---- tiles ----------------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, num_warps) for (forward, backward) by operand kind and padded width BLOCK_D (keys: the
# largest BLOCK_D a row applies to; None: d > 256, sliced). From sm_90 AOT compiles (bench/kernels_aot.py), not
# autotuned on hardware; the d = 256 backward of tensor-core paths computes dU in two 128-wide halves.
_BASE_CONFIGS = {
    "half": {64: ((128, 64, 8), (128, 64, 8)), 128: ((128, 64, 8), (128, 32, 8)),
             256: ((64, 32, 8), (64, 32, 8)), None: ((64, 64, 8), (64, 32, 8))},
    "tf32": {64: ((64, 32, 4), (64, 32, 4)), 128: ((128, 32, 8), (64, 32, 4)),
             256: ((64, 32, 8), (64, 32, 8)), None: ((64, 32, 8), (64, 32, 4))},
    "ieee": {64: ((64, 32, 8), (64, 32, 8)), 128: ((64, 32, 8), (64, 32, 8)),
             256: ((32, 16, 4), (64, 16, 8)), None: ((64, 16, 8), (64, 16, 8))},
}


def operand_kind(dtype: torch.dtype, allow_tf32: bool) -> str:
    return "half" if dtype != torch.float32 else ("tf32" if allow_tf32 else "ieee")


def precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """``tl.dot``'s input precision: tensor cores unless fp32 inputs without tf32."""
    return "tf32" if (allow_tf32 or dtype != torch.float32) else "ieee"


def shared_bytes(cfg: dict, dtype: torch.dtype, backward: bool) -> int:
    """Upper estimate of a launch's shared memory: the row block u_k held as a dot operand (BLOCK_K = BLOCK_D),
    ``num_stages`` buffers of every column tile the loop loads (u_l^T for s, u_l for dU), and the backward's
    weight tile G staged for its dot. A model of Triton's allocation checked against
    the AOT tables (bench/results/kernels-aot-*.md: every binary there uses at most this)."""
    e = torch.finfo(dtype).bits // 8
    bm, bn, bd, bk, st = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"], cfg["BLOCK_K"], cfg["num_stages"]
    if bk == bd:
        total = bm * bd * e + st * bn * bd * e
    elif bd <= 256:  # sliced and unrolled (_similarity_tile): every slice of rows and columns is buffered once
        total = (bm + bn) * bd * e
    else:  # sliced in a loop: ``num_stages`` buffers of one BLOCK_K slice
        total = st * (bm + bn) * bk * e
    if backward:  # u_l as the dU dot's operand (its own buffers even when it is the tile of s), and G
        total += st * bn * cfg["BLOCK_DV"] * e + bm * bn * e
    return total


def fits(cfg: dict, dtype: torch.dtype, backward: bool, target: Target) -> bool:
    return shared_bytes(cfg, dtype, backward) + _SMEM_HEADROOM <= target.smem_per_block


def fit_shared_memory(cfg: dict, dtype: torch.dtype, backward: bool, target: Target) -> dict:
    """``cfg`` with smaller tiles / fewer stages until its shared memory fits ``target``: first narrower column
    tiles (BLOCK_N down to 16), then shorter row blocks (BLOCK_M down to 64 on sm_90, where wgmma wants 64 rows,
    else 32), then a single stage, then narrower dU slices (backward), then the sliced similarity (BLOCK_K)."""
    cfg = dict(cfg)
    min_m = 64 if target.arch >= 90 else 32
    steps = (("BLOCK_N", 16), ("BLOCK_M", min_m), ("num_stages", 1), ("BLOCK_DV", 32), ("BLOCK_K", 32))
    for key, floor in steps:
        while key in cfg and cfg[key] > floor and not fits(cfg, dtype, backward, target):
            cfg[key] = cfg[key] - 1 if key == "num_stages" else cfg[key] // 2
    if not fits(cfg, dtype, backward, target):
        raise ValueError(f"no launch configuration of the contrastive kernel fits {target.smem_per_block} bytes of "
                         f"shared memory ({target.name})")
    return cfg


def launch_config(d: int, dtype: torch.dtype, allow_tf32: bool, interpret: bool, backward: bool = False,
                  target: Optional[Target] = None) -> dict:
    """Block sizes, warps and stages for the forward (or backward) kernel on ``target`` (default: this device's).

    BLOCK_K: slice of d per tl.dot in the similarity (BLOCK_D = one dot on a row block held in registers).
    BLOCK_DV (backward): slice of d of dU per program (the backward grid's second axis).
    """
    block_d = max(16, next_pow2(d))
    kind = operand_kind(dtype, allow_tf32)
    block_dv = block_d
    if interpret:
        bm, bn, warps = 64, 64, 4  # few, large programs: the interpreter's cost is per op, not per element
        block_k = block_d
    else:
        table = _BASE_CONFIGS[kind]
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
    if not interpret and _block_override is None:
        target = target or device_target()
        if target.arch >= 90 and kind == "half" and block_d == 128 and not backward:
            cfg["BLOCK_N"] = 32  # 128 x 64 made Triton 3.6 spill 24 bytes (SupCon forward at 255 registers)
        if target.arch < 90 and block_k == block_d:
            # before Hopper tl.dot's row-block operand lives in registers (mma.sync; wgmma reads it from shared
            # memory): at most 64 x 128 elements of it (AOT tables: 128 x 128 spilled on sm_86, 64 x 256 in the
            # split bf16 forward on sm_80; 32 x 256 leaves ~40 registers to spare)
            cfg["BLOCK_M"] = min(cfg["BLOCK_M"], max(16, 8192 // block_d))
        cfg = fit_shared_memory(cfg, dtype, backward, target)
    return cfg


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
                backward: bool = False, target: Optional[Target] = None,
                splittable: bool = True) -> tuple[dict, int, tuple]:
    """(config, splits, grid) of the forward (or backward) launch over ``m_local`` rows and ``n_cols`` columns.

    On a GPU, a batch too small to fill the target's SMs twice first gets smaller row blocks (BLOCK_M down to
    64, still a full wgmma tile) and column tiles (BLOCK_N down to 32), then column splits (``num_splits``).
    Forward grid (row blocks, splits); backward grid (row blocks, d slices, splits). ``splittable=False``: kernels
    without column splits (the cross variant) get 1 split whatever ``column_splits`` says.
    """
    if target is None:
        target = INTERPRETER_TARGET if interpret else device_target()
    sms = target.sms
    cfg = launch_config(d, dtype, allow_tf32, interpret, backward, target=target)
    dv_programs = triton.cdiv(cfg["BLOCK_D"], cfg["BLOCK_DV"]) if backward else 1
    if not interpret and _block_override is None:
        def most_programs():  # with one split per column tile
            return triton.cdiv(m_local, cfg["BLOCK_M"]) * dv_programs * triton.cdiv(n_cols, cfg["BLOCK_N"])
        while cfg["BLOCK_M"] > 64 and most_programs() < 2 * sms:
            cfg["BLOCK_M"] //= 2
        while cfg["BLOCK_N"] > 32 and most_programs() < 2 * sms:
            cfg["BLOCK_N"] //= 2
    row_blocks = triton.cdiv(m_local, cfg["BLOCK_M"])
    splits = (_split_override or num_splits(row_blocks * dv_programs, n_cols, cfg["BLOCK_N"], sms)) if splittable else 1
    grid = (row_blocks, dv_programs, splits) if backward else (row_blocks, splits)
    return cfg, splits, grid


def combine_config(splits: int) -> dict:
    block_s = max(2, next_pow2(splits))
    return dict(BLOCK_S=block_s, BLOCK_R=max(16, min(128, 4096 // block_s)), num_warps=4)
