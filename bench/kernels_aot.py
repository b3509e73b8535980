"""The matrix of ahead-of-time compiles for a GPU target: every kernel configuration training or the benchmarks
launch there, with registers, spills and shared memory.

    python bench/kernels_aot.py                          # sm_90, full matrix -> bench/results/kernels-aot-sm90-triton3.9.{json,md}
    python bench/kernels_aot.py --target sm_86           # the training matrix for an RTX 3090-class GPU
    python bench/kernels_aot.py --target sm_90 --matrix training --jobs 8 --out /tmp/aot.json

No GPU needed: each kernel goes through Triton's real compiler for ``GPUTarget("cuda", arch, 32)`` (ptxas ships
with triton): ``ptxas -v`` reports spill stores, the bundled cuobjdump registers, stack bytes (spills and local
arrays) and static shared memory; the dynamic shared memory comes from Triton's metadata. Launches are planned for the target's profile
(``kernels.launch.TARGETS``: SM count and shared memory per block) by the same ``launch_plan`` the kernels use on
such a GPU, so the grids below are the grids it gets. Needs only torch, triton and this repository (it runs
under any supported stack, e.g. torch 2.11 + Triton 3.6); the file name carries the target and Triton's
version.

Matrices. ``full`` (sm_90's default): contrastive kernels for inputs fp32 with tf32, fp32 with ieee, bf16 and
fp16; d in {64, 128, 256, 512, 2048}; DARe for fp32, bf16 and fp16 at the same widths. ``training`` (the other
targets' default): what training runs, fp32 with tf32 and bf16, at d in {128, 256}. Both: the three variants;
forward (with its combine kernel when the columns are split) and backward; the whole batch (one process) and
the local-rows mode (2 ranks: each owns 2N/2 rows against all 2N columns; the same kernels, a different grid);
DARe forward and backward with seeded noise (the training path) with N = 2N/2 rows. For each: registers, spills
and shared memory of every binary the launch uses, and the grid (CTAs) at 2N in {1024, 8192, 65536}.

Runtime: 2-20 s per distinct binary (fp32 "ieee" kernels are the slowest); a rerun reuses Triton's cache
(~/.triton/cache) and takes seconds, so ``wall_s`` in the JSON says little about compile cost.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

import torch  # noqa: E402

import triton  # noqa: E402

from data_prep import atomic  # noqa: E402
from kernels import aot, dare, launch  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SIZES = (1024, 8192, 65536)  # 2N
DIMS = (64, 128, 256, 512, 2048)
TRAINING_DIMS = (128, 256)
PRECISIONS = {"fp32-tf32": (torch.float32, True), "fp32-ieee": (torch.float32, False),
              "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False)}
TRAINING_PRECISIONS = ("fp32-tf32", "bf16")  # what training uses (--amp: bf16; fp32 with tf32 matmuls)
DARE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = ("simclr", "decoupled", "supcon")
TRAINING_DARE_DTYPES = ("fp32", "bf16")
LOCAL_WORLD = 2  # the local-rows mode is tabulated for 2 ranks
MATRICES = ("full", "training")


def cta_targets(target: launch.Target) -> dict:
    """Fill the GPU at small batches: one CTA per SM at 2N = 1024, two at 2N = 8192."""
    return {1024: target.sms, 8192: 2 * target.sms}


def default_out(target: launch.Target) -> Path:
    version = ".".join(triton.__version__.split(".")[:2])
    return RESULTS / f"kernels-aot-{target.name.replace('_', '')}-triton{version}.json"


def _key(spec) -> str:
    kernel, signature, const, options = spec
    dtype = next(v for v in signature.values() if v.startswith("*"))[1:]
    consts = ",".join(f"{k}={const[k]}" for k in sorted(const))
    return f"{kernel.__name__}|{dtype}|{consts}|w{options['num_warps']}s{options.get('num_stages', 3)}"


def contrastive_launches(precision: str, d: int, variant: str, pass_: str, mode: str, two_n: int,
                         target: launch.Target = launch.DEFAULT_TARGET):
    """(launch record, [specs]) of one contrastive configuration at batch 2N = two_n on ``target``."""
    dtype, tf32 = PRECISIONS[precision]
    rows = two_n // LOCAL_WORLD if mode == "local" else two_n
    backward = pass_ == "bwd"
    cfg, splits, grid = launch.launch_plan(rows, two_n, d, dtype, tf32, interpret=False, backward=backward,
                                           target=target)
    specs = [("contrastive", pass_, precision, variant, cfg, splits)]
    ctas = 1
    for g in grid:
        ctas *= g
    record = dict(blocks={k: v for k, v in cfg.items() if k.startswith("BLOCK_")}, num_warps=cfg["num_warps"],
                  num_stages=cfg["num_stages"], splits=splits, grid=list(grid), ctas=ctas)
    if not backward and splits > 1:
        ccfg = launch.combine_config(splits)
        specs.append(("contrastive", "combine", precision, variant, ccfg, 1))
        record["combine_ctas"] = -(-rows // ccfg["BLOCK_R"])
    return record, specs


def dare_launches(dtype_name: str, d: int, pass_: str, two_n: int):
    n = two_n // 2
    cfg = dare.launch_config(n, d, interpret=False)
    grid = [-(-n // cfg["BLOCK_R"])]
    record = dict(blocks=dict(BLOCK_R=cfg["BLOCK_R"], BLOCK_D=cfg["BLOCK_D"]), num_warps=cfg["num_warps"],
                  splits=1, grid=grid, ctas=grid[0])
    return record, [("dare", pass_, dtype_name, d, n)]


def build_spec(desc):
    """(kernel, signature, constexprs, options) from a picklable description (for worker processes)."""
    if desc[0] == "contrastive":
        _, which, precision, variant, cfg, splits = desc
        dtype, tf32 = PRECISIONS[precision]
        return aot.contrastive_kernel_spec(which, dtype, variant, tf32, cfg, splits)
    _, which, dtype_name, d, n = desc
    fwd, bwd = aot.dare_specs(DARE_DTYPES[dtype_name], d=d, n=n, has_eps=False)
    return fwd if which == "fwd" else bwd


def configurations(target: launch.Target = launch.DEFAULT_TARGET, matrix: str = "full"):
    """Every row of the table: (name fields, function of 2N -> (launch record, specs))."""
    training = matrix == "training"
    dims = TRAINING_DIMS if training else DIMS
    for precision in (TRAINING_PRECISIONS if training else PRECISIONS):
        for d in dims:
            for variant in VARIANTS:
                for pass_ in ("fwd", "bwd"):
                    for mode in ("whole", "local"):
                        yield (dict(kind="contrastive", precision=precision, d=d, variant=variant, pass_=pass_,
                                    mode=mode),
                               lambda two_n, a=(precision, d, variant, pass_, mode): contrastive_launches(
                                   *a, two_n, target=target))
    for dtype_name in (TRAINING_DARE_DTYPES if training else DARE_DTYPES):
        for d in dims:
            for pass_ in ("fwd", "bwd"):
                yield (dict(kind="dare", precision=dtype_name, d=d, variant="-", pass_=pass_, mode="whole"),
                       lambda two_n, a=(dtype_name, d, pass_): dare_launches(*a, two_n))


def compile_one(desc, arch: int = 90) -> dict:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton >= 3.9 warns when unset; 3.6 fuses by default
    info = aot.compile_spec(*build_spec(desc), arch=arch)
    keep = ("kernel", "dtype", "registers", "stack_bytes", "local_bytes", "spill_stores", "spill_loads",
            "stack_frame", "ptxas_registers", "static_shared", "dynamic_shared", "wgmma", "mma_sync", "ptx_bytes", "cubin_bytes",
            "options")
    out = {k: info[k] for k in keep if k in info}
    out["constexprs"] = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                         for k, v in info["constexprs"].items()}
    return out


def build(target: launch.Target = launch.DEFAULT_TARGET, matrix: str = "full", jobs: int = 1, only=None,
          log=print) -> dict:
    """The whole record (``only``: a predicate on a row's name fields, to build a subset)."""
    rows, specs = [], {}
    for name, launches in configurations(target, matrix):
        if only is not None and not only(name):
            continue
        row = dict(name, launches={})
        for two_n in SIZES:
            record, row_specs = launches(two_n)
            keys = [_key(build_spec(s)) for s in row_specs]
            record["binaries"] = keys
            for k, s in zip(keys, row_specs):
                specs.setdefault(k, s)
            row["launches"][str(two_n)] = record
        rows.append(row)
    log(f"{len(rows)} configurations, {len(specs)} distinct binaries to compile with {jobs} job(s)")
    compiles = {}
    t0 = time.perf_counter()
    if jobs > 1:
        with cf.ProcessPoolExecutor(jobs) as pool:
            futures = {pool.submit(compile_one, s, target.arch): k for k, s in specs.items()}
            for i, fut in enumerate(cf.as_completed(futures)):
                compiles[futures[fut]] = _result_or_error(fut.result)
                log(f"  [{i + 1}/{len(specs)}] {time.perf_counter() - t0:.0f} s {futures[fut]}")
    else:
        for i, (k, s) in enumerate(specs.items()):
            compiles[k] = _result_or_error(lambda s=s: compile_one(s, target.arch))
            log(f"  [{i + 1}/{len(specs)}] {time.perf_counter() - t0:.0f} s {k}")
    for row in rows:
        used = [compiles[b] for rec in row["launches"].values() for b in rec["binaries"]]
        ok = [c for c in used if "error" not in c]
        row["registers"] = max((c.get("registers", -1) for c in ok), default=None)
        # ptxas's spill stores; cuobjdump's stack (spills and local arrays) where ptxas gave no report
        row["spill_bytes"] = max((c.get("spill_stores", c.get("stack_bytes", -1)) for c in ok), default=None)
        row["stack_bytes"] = max((c.get("stack_bytes", -1) for c in ok), default=None)
        row["shared_bytes"] = max((c.get("dynamic_shared", 0) + c.get("static_shared", 0) for c in ok), default=None)
        row["errors"] = sorted({c["error"] for c in used if "error" in c})
    return dict(target=target.name, arch=target.arch, sm_count=target.sms, smem_per_block=target.smem_per_block,
                matrix=matrix, sizes=list(SIZES), local_world=LOCAL_WORLD,
                cta_targets={str(k): v for k, v in cta_targets(target).items()}, triton=triton.__version__,
                torch=torch.__version__, wall_s=round(time.perf_counter() - t0, 1),
                rows=rows, compiles=compiles)


def _result_or_error(call) -> dict:
    try:
        return call()
    except Exception as e:  # a configuration the compiler rejects is a finding, recorded in its row
        return dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")


def markdown(record: dict) -> str:
    sizes = record["sizes"]
    ok = [r for r in record["rows"] if r["registers"] is not None]
    lines = [f"# AOT compiles for {record['target']} ({record['sm_count']} SMs, "
             f"{record['smem_per_block'] / 1024:.0f} KB shared memory per block assumed; {record['matrix']} matrix)", "",
             f"Generated by `{record['command']}` (triton {record['triton']}, torch {record['torch']}; "
             "no GPU: Triton's compiler and the bundled ptxas/cuobjdump). Do not edit by hand.", "",
             f"Summary: {len(record['rows'])} configurations, {len(record['compiles'])} binaries; at most "
             f"{max((r['registers'] for r in ok), default=0)} registers, "
             f"{max((r['spill_bytes'] for r in ok), default=0)} spill bytes, "
             f"{max((r['shared_bytes'] for r in ok), default=0) / 1024:.1f} KB shared memory; "
             f"{sum(bool(r['errors']) for r in record['rows'])} configurations with errors.", "",
             "Per configuration: the most registers / spill bytes (ptxas's spill stores) / stack bytes (cuobjdump: "
             "spills and local arrays) / shared memory over the binaries its "
             f"launches use at 2N in {{{', '.join(map(str, sizes))}}}, and the CTAs each launch has (`s` = column "
             f"splits, combined by a small extra kernel in the forward). `local` = the local-rows mode with "
             f"{record['local_world']} ranks (2N/{record['local_world']} rows against all 2N columns). Targets: "
             + ", ".join(f"2N = {k}: >= {v} CTAs" for k, v in record["cta_targets"].items()) + ".", ""]
    head = ["kernel", "input", "d", "variant", "pass", "mode"] + [f"CTAs 2N={s}" for s in sizes] \
        + ["blocks M x N x D x K [x DV], warps, stages (2N=65536)", "regs", "spill B", "stack B", "smem KB",
           "errors"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in record["rows"]:
        cells = [r["kind"], r["precision"], str(r["d"]), r["variant"], r["pass_"], r["mode"]]
        for s in sizes:
            rec = r["launches"][str(s)]
            cells.append(f"{rec['ctas']}" + (f" (s {rec['splits']})" if rec["splits"] > 1 else ""))
        big = r["launches"][str(sizes[-1])]
        cells.append(" x ".join(str(v) for v in big["blocks"].values()) + f", {big['num_warps']}w"
                     + (f", {big['num_stages']}s" if "num_stages" in big else ""))
        cells += [str(r["registers"]), str(r["spill_bytes"]), str(r.get("stack_bytes", "?")),
                  f"{r['shared_bytes'] / 1024:.0f}" if r["shared_bytes"] is not None else "?",
                  "; ".join(r["errors"]) or ""]
        lines.append("| " + " | ".join(cells) + " |")
    spilling = [r for r in record["rows"] if r["spill_bytes"]]
    lines += ["", f"{len(record['compiles'])} binaries; {len(spilling)} of {len(record['rows'])} configurations "
              "spill: " + (", ".join(f"{r['kind']} {r['precision']} d={r['d']} {r['variant']} {r['pass_']} "
                                    f"{r['mode']} ({r['spill_bytes']} B)" for r in spilling) or "none") + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=sorted(launch.TARGETS), default="sm_90",
                   help="the GPU profile to plan and compile for (default: %(default)s)")
    p.add_argument("--matrix", choices=MATRICES, default=None,
                   help="full (every precision and width) or training (fp32+tf32 and bf16 at d in {128, 256}); "
                        "default: full for sm_90, training for the others")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compiles")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path; the markdown goes beside it (default: bench/results/"
                        "kernels-aot-<target>-triton<major.minor>.json)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    target = launch.TARGETS[args.target]
    matrix = args.matrix or ("full" if args.target == "sm_90" else "training")
    out = args.out or default_out(target)
    record = build(target, matrix, jobs=args.jobs, log=lambda m: print(m, flush=True))
    record["command"] = " ".join(["python bench/kernels_aot.py", "--target", args.target, "--matrix", matrix])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, json.dumps(record, indent=1) + "\n")
    atomic.write_text(out.with_suffix(".md"), markdown(record))
    args.out = out
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {record['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
