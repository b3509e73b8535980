"""Ahead-of-time compilation of every kernel for a GPU target, without a GPU.

The Triton interpreter accepts programs that the GPU compiler rejects (shapes under 16 for ``tl.dot``,
some dtype mixes, ...), so CPU-only tests also compile each kernel for a target (``kernels.launch.TARGETS``:
sm_80, sm_86, sm_89, sm_90) through the real compiler pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the
bundled ptxas) and inspect the result.

    python -m kernels.aot [sm_90]    # prints a table: PTX/cubin sizes, registers, spills, wgmma use
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

import sys

import torch

from kernels import contrastive_kernels, dare, launch
from kernels.contrastive import VARIANTS

_DTYPE_STR = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _signature(kernel, pointers: dict, scalars: dict) -> dict:
    sig = {}
    for name in kernel.jit.arg_names:
        sig[name] = pointers.get(name) or scalars.get(name) or "constexpr"
    return sig


_CONTRASTIVE_SCALARS = dict(n_half="i32", row_off="i32", n_local="i32", d="i32", stride_u="i32", stride_du="i32",
                            stride_split="i32", inv_tau="fp32", num_splits="i32", n_loc="i32")


def contrastive_kernel_spec(which: str, dtype: torch.dtype, variant: str, allow_tf32: bool, cfg: dict,
                            splits: int = 1):
    """(kernel, signature, constexprs, options) of one contrastive kernel ("fwd", "bwd" or "combine") with the
    launch configuration ``cfg`` (``launch_plan``'s, or ``combine_config``'s for "combine")."""
    t = _DTYPE_STR[dtype]
    pointers = dict(U=f"*{t}", LABELS="*i64", LOSS="*fp32", LSE="*fp32", NPOS="*fp32", GRAD="*fp32", DU="*fp32",
                    PART="*fp32")
    kernel = dict(fwd=contrastive_kernels._contrastive_fwd_kernel, bwd=contrastive_kernels._contrastive_bwd_kernel,
                  combine=contrastive_kernels._contrastive_combine_kernel)[which]
    const = dict(VARIANT=VARIANTS[variant], **{k: v for k, v in cfg.items() if k.startswith("BLOCK_")})
    if which != "combine":
        const["PRECISION"] = launch.precision(dtype, allow_tf32)
    if which == "fwd":
        const["SPLIT"] = splits > 1
    options = dict(num_warps=cfg["num_warps"], num_stages=cfg.get("num_stages", 2))
    return kernel, _signature(kernel, pointers, _CONTRASTIVE_SCALARS), const, options


def contrastive_specs(dtype: torch.dtype, d: int = 128, variant: str = "simclr", allow_tf32: bool = False,
                      two_n: int = 65536, target: launch.Target = launch.DEFAULT_TARGET):
    """Specs of every kernel the forward and backward launch for inputs of ``dtype``, width ``d`` and batch
    2N = ``two_n`` on ``target`` (the combine kernel too when the forward splits its columns)."""
    specs = []
    for backward in (False, True):
        cfg, splits, _ = launch.launch_plan(two_n, two_n, d, dtype, allow_tf32, interpret=False,
                                            backward=backward, target=target)
        specs.append(contrastive_kernel_spec("bwd" if backward else "fwd", dtype, variant, allow_tf32, cfg, splits))
        if not backward and splits > 1:
            specs.append(contrastive_kernel_spec("combine", dtype, variant, allow_tf32,
                                                 launch.combine_config(splits)))
    return specs


def cross_specs(dtype: torch.dtype, d: int = 256, allow_tf32: bool = False, n: int = 512, m: int = 512,
                target: launch.Target = launch.DEFAULT_TARGET):
    """Specs of the cross (query-key) forward and backward (one binary serves queries and keys per KEY_SIDE) for
    n queries against m keys on ``target``."""
    from kernels import cross_kernels
    t = _DTYPE_STR[dtype]
    pointers = dict(W=f"*{t}", LOSS="*fp32", LSE="*fp32", GRAD="*fp32", DW="*fp32")
    scalars = dict(n="i32", m="i32", pos_off="i32", d="i32", stride_w="i32", inv_tau="fp32", own_lo="i32",
                   n_own="i32", oth_lo="i32", n_oth="i32", partner_shift="i32", stride_dw="i32")
    specs = []
    for kernel, key_side, rows, cols in ((cross_kernels._cross_fwd_kernel, None, n, m),
                                         (cross_kernels._cross_bwd_kernel, False, n, m),
                                         (cross_kernels._cross_bwd_kernel, True, m, n)):
        backward = key_side is not None
        cfg = launch.launch_plan(rows, cols, d, dtype, allow_tf32, interpret=False, backward=backward, target=target,
                                 splittable=False)[0]
        const = dict(PRECISION=launch.precision(dtype, allow_tf32), **{k: v for k, v in cfg.items()
                                                                       if k.startswith("BLOCK_")})
        if backward:
            const["KEY_SIDE"] = key_side
        options = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        specs.append((kernel, _signature(kernel, pointers, scalars), const, options))
    return specs


def dare_specs(dtype: torch.dtype, d: int = 128, n: int = 512, has_eps: bool = False):
    cfg = dare.launch_config(n, d, interpret=False)
    t = _DTYPE_STR[dtype]
    const = dict(BLOCK_R=cfg["BLOCK_R"], BLOCK_D=cfg["BLOCK_D"], HAS_EPS=has_eps)
    options = dict(num_warps=cfg["num_warps"])
    scalars = dict(n="i32", d="i32")
    fwd_ptrs = {k: f"*{t}" for k in ("MU1", "LV1", "MU2", "LV2", "EPS1", "EPS2", "Z1", "Z2")}
    fwd_ptrs.update(JSD_ROWS="*fp32", SEED="*i64")
    bwd_ptrs = {k: f"*{t}" for k in ("MU1", "LV1", "MU2", "LV2", "EPS1", "EPS2", "GZ1", "GZ2",
                                     "DMU1", "DLV1", "DMU2", "DLV2")}
    bwd_ptrs.update(GJSD="*fp32", SEED="*i64")
    fwd = dare._reparam_jsd_fwd_kernel
    bwd = dare._reparam_jsd_bwd_kernel
    return [(fwd, _signature(fwd, fwd_ptrs, scalars), const, options),
            (bwd, _signature(bwd, bwd_ptrs, scalars), dict(const, HAS_GZ1=True, HAS_GZ2=True), options)]


def _resource_usage(cubin: bytes) -> dict:
    """Registers / stack bytes (local memory: spills and local arrays) per thread from the bundled cuobjdump;
    {} when unavailable."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not found:
        return {}
    reg, stack, shared, local = map(int, found.groups())
    return dict(registers=reg, stack_bytes=stack, static_shared=shared, local_bytes=local)


def _ptxas_report(ptx: str, arch: int) -> dict:
    """Registers, spill stores / loads and the stack frame (bytes per thread) from ``ptxas -v`` run on the PTX the
    way this Triton runs it (its ptxas for the arch, -lineinfo, and --regAllocOptLevel=2 where Triton passes it),
    so ``ptxas_registers`` equals the cubin's registers; {} when ptxas cannot be run. cuobjdump's STACK counts
    every local array too, e.g. the 28-byte buffer of libdevice's sin/cos range reduction that ``tl.randn``
    brings in under Triton 3.6 (a slow path its angles never take): spills are read from ptxas itself."""
    import inspect

    from triton.backends.nvidia import compiler as nv
    try:
        tool = nv.get_ptxas(arch).path
        flags = ["-lineinfo", "-v"]
        if "regAllocOptLevel" in inspect.getsource(nv.CUDABackend.make_cubin):
            flags.append("--regAllocOptLevel=2")
        gpu = nv.sm_arch_from_capability(arch)
    except Exception:  # noqa: BLE001 - another Triton layout: no report rather than a wrong one
        return {}
    with tempfile.TemporaryDirectory() as folder:
        src = os.path.join(folder, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run([tool, *flags, f"--gpu-name={gpu}", src, "-o", os.path.join(folder, "k.o")],
                             capture_output=True, text=True)
    found = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", run.stderr)
    regs = re.search(r"Used (\d+) registers", run.stderr)
    if run.returncode != 0 or not found or not regs:
        return {}
    stack, stores, loads = map(int, found.groups())
    return dict(stack_frame=stack, spill_stores=stores, spill_loads=loads, ptxas_registers=int(regs.group(1)))


def compile_spec(kernel, signature, constexprs, options, arch: int = 90) -> dict:
    """Compile one kernel for ``sm_{arch}`` and summarise the result."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compiled = triton.compile(ASTSource(kernel.jit, signature, constexprs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    ptx = compiled.asm["ptx"]
    info = dict(kernel=kernel.__name__, arch=f"sm_{arch}",
                dtype=next(v for k, v in signature.items() if v.startswith("*"))[1:],
                constexprs={k: v for k, v in constexprs.items()}, options=options,
                ptx_target=(re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE) or [None, "?"])[1],
                ptx_bytes=len(ptx), cubin_bytes=len(compiled.asm["cubin"]),
                wgmma="wgmma" in ptx, mma_sync="mma.sync" in ptx,
                dynamic_shared=compiled.metadata.shared)
    info.update(_resource_usage(compiled.asm["cubin"]))
    info.update(_ptxas_report(ptx, arch))
    return info


def all_specs(target: launch.Target = launch.DEFAULT_TARGET):
    specs = []
    for dtype in (torch.float32, torch.bfloat16):
        for d in (128, 256):
            specs += contrastive_specs(dtype, d=d, variant="supcon", target=target)
        specs += dare_specs(dtype)
    specs += contrastive_specs(torch.float32, d=128, variant="simclr", allow_tf32=True, target=target)
    return specs


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    target = launch.TARGETS[argv[0]] if argv else launch.DEFAULT_TARGET
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    print("| kernel | dtype | fp32 dot precision | BLOCK_M x BLOCK_N x BLOCK_D | warps | PTX KB | cubin KB | regs | spill B "
          "| smem KB | wgmma |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for spec in all_specs(target):
        r = compile_spec(*spec, arch=target.arch)
        c = r["constexprs"]
        blocks = (f"{c.get('BLOCK_M')} x {c.get('BLOCK_N')} x {c.get('BLOCK_D')} (k {c.get('BLOCK_K')})" if "BLOCK_M" in c
                  else f"{c.get('BLOCK_R')} rows x {c.get('BLOCK_D')}")
        precision = c.get("PRECISION", "-") if r["dtype"] == "fp32" else "-"
        print(f"| {r['kernel']} | {r['dtype']} | {precision} | {blocks} | {r['options']['num_warps']} "
              f"| {r['ptx_bytes'] / 1024:.0f} | {r['cubin_bytes'] / 1024:.0f} | {r.get('registers', '?')} "
              f"| {r.get('stack_bytes', '?')} | {r['dynamic_shared'] / 1024:.0f} | {r['wgmma']} |")


if __name__ == "__main__":
    main()
