"""Microbenchmark of the fused loss kernels against the PyTorch reference (eager and torch.compile).

    python bench/kernels.py                      # NT-Xent fp32, 2N in {1024..65536}, d in {128, 256}
    python bench/kernels.py --variant decoupled --dtype bf16
    python bench/kernels.py --sizes 1024 8192 --dims 128 --no-compile

For each (2N, d): median time (triton.testing.do_bench) of the forward alone and of forward+backward, and
the peak extra GPU memory of forward+backward above the inputs, for: the eager reference
(fastssl.losses), torch.compile of the same reference, and the fused Triton op (kernels/). Also the DARe
reparameterisation + JSD (reference vs fused). Prints markdown tables and writes JSON (device, versions,
command, every measurement) to bench/results/.

Without CUDA there is nothing meaningful to time for the fused kernels (the Triton interpreter is a
correctness tool, thousands of times slower than a GPU), so the script says so, times only the eager
reference on the CPU at small sizes (labelled as such), and exits 0.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench._common import environment  # noqa: E402  (shared by the bench scripts)
from fastssl import losses  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=("simclr", "decoupled", "supcon"), default="simclr")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--tf32", action="store_true",
                   help="fp32 only: tf32 tensor cores for the reference matmul and the fused similarity "
                        "(default: true fp32 for both)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192, 32768, 65536], help="2N values")
    p.add_argument("--dims", type=int, nargs="+", default=[128, 256])
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--no-dare", action="store_true", help="skip the DARe reparam + JSD benchmark")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetition time in ms")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/kernels-<stamp>.json)")
    return p.parse_args(argv)


# ---- the three implementations -------------------------------------------------------------------

def reference_loss(variant, temperature):
    if variant == "supcon":
        return lambda z1, z2, labels: losses.supcon_loss(z1, z2, labels, temperature)
    return lambda z1, z2, labels: losses.ntxent_loss(z1, z2, temperature, variant=variant)


def fused_loss(variant, temperature, allow_tf32):
    from kernels.contrastive import fused_contrastive_loss
    if variant == "supcon":
        return lambda z1, z2, labels: fused_contrastive_loss(z1, z2, temperature, labels=labels,
                                                             allow_tf32=allow_tf32)
    return lambda z1, z2, labels: fused_contrastive_loss(z1, z2, temperature, variant=variant,
                                                         allow_tf32=allow_tf32)


def _oom_types():
    return (torch.cuda.OutOfMemoryError, RuntimeError)


def measure_gpu(fn, z1, z2, labels, rep):
    """(forward ms, forward+backward ms, peak extra MiB of forward+backward) or strings on failure."""
    from triton.testing import do_bench

    out = {}
    try:
        with torch.no_grad():
            fn(z1, z2, labels)  # compile / warm up outside the timed region
            out["fwd_ms"] = do_bench(lambda: fn(z1, z2, labels), warmup=25, rep=rep, return_mode="median")
    except _oom_types() as e:
        out["fwd_ms"] = _failure(e)
    torch.cuda.empty_cache()

    a, b = z1.detach().requires_grad_(), z2.detach().requires_grad_()

    def step():
        fn(a, b, labels).backward()

    try:
        step()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        out["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out["fwd_bwd_ms"] = do_bench(step, warmup=25, rep=rep, grad_to_none=[a, b], return_mode="median")
    except _oom_types() as e:
        out.setdefault("peak_extra_mib", _failure(e))
        out["fwd_bwd_ms"] = _failure(e)
    a.grad = b.grad = None
    torch.cuda.empty_cache()
    return out


def _failure(e: Exception) -> str:
    msg = str(e)
    return "OOM" if ("out of memory" in msg.lower() or isinstance(e, torch.cuda.OutOfMemoryError)) else f"error: {msg[:80]}"


def _fmt(x, digits=3):
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _ratio(a, b):
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) and b > 0 else "-"


def bench_contrastive_gpu(args) -> list[dict]:
    dtype = DTYPES[args.dtype]
    impls = {"eager": reference_loss(args.variant, args.temperature)}
    if not args.no_compile:
        impls["compile"] = None  # compiled per shape below (a fresh torch.compile per size)
    impls["fused"] = fused_loss(args.variant, args.temperature, args.tf32)
    rows = []
    for d in args.dims:
        for two_n in args.sizes:
            n = two_n // 2
            gen = torch.Generator(device="cuda").manual_seed(0)
            z1 = torch.randn(n, d, device="cuda", generator=gen).to(dtype)
            z2 = torch.randn(n, d, device="cuda", generator=gen).to(dtype)
            labels = (torch.randint(0, 100, (n,), device="cuda", generator=gen) if args.variant == "supcon"
                      else None)
            row = dict(two_n=two_n, d=d)
            for name, fn in impls.items():
                if name == "compile":
                    torch._dynamo.reset()
                    fn = torch.compile(reference_loss(args.variant, args.temperature), dynamic=False)
                row[name] = measure_gpu(fn, z1, z2, labels, args.rep)
                print(f"  2N={two_n:6d} d={d:4d} {name:8s} {row[name]}", file=sys.stderr, flush=True)
            rows.append(row)
            del z1, z2, labels
            torch.cuda.empty_cache()
    return rows


def contrastive_table(rows, impls) -> str:
    head = ["2N", "d"] + [f"{i} fwd ms" for i in impls] + [f"{i} fwd+bwd ms" for i in impls] \
        + [f"{i} peak MiB" for i in impls] + ["fused vs eager (f+b)"] \
        + (["fused vs compile (f+b)"] if "compile" in impls else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["two_n"]), str(r["d"])]
        cells += [_fmt(r[i].get("fwd_ms")) for i in impls]
        cells += [_fmt(r[i].get("fwd_bwd_ms")) for i in impls]
        cells += [_fmt(r[i].get("peak_extra_mib"), 1) for i in impls]
        cells.append(_ratio(r["eager"].get("fwd_bwd_ms"), r["fused"].get("fwd_bwd_ms")))
        if "compile" in impls:
            cells.append(_ratio(r["compile"].get("fwd_bwd_ms"), r["fused"].get("fwd_bwd_ms")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_dare_gpu(args) -> list[dict]:
    from kernels.dare import fused_reparam_jsd

    def eager(mu1, lv1, mu2, lv2):
        return (losses.reparameterize(mu1, lv1), losses.reparameterize(mu2, lv2),
                losses.gaussian_jsd(mu1, lv1, mu2, lv2))

    def fused(mu1, lv1, mu2, lv2):
        return fused_reparam_jsd(mu1, lv1, mu2, lv2, seed=1234)

    impls = {"eager": eager}
    if not args.no_compile:
        impls["compile"] = torch.compile(eager, dynamic=False)
    impls["fused"] = fused
    dtype = DTYPES[args.dtype]
    rows = []
    for n in (256, 1024, 4096):
        d = 128
        xs = [torch.randn(n, d, device="cuda").to(dtype) for _ in range(4)]
        row = dict(n=n, d=d)
        for name, fn in impls.items():
            def loss_of(a, b, c, e, fn=fn):
                z1, z2, jsd = fn(a, b, c, e)
                return z1.float().sum() + z2.float().sum() + jsd
            row[name] = _measure_dare(loss_of, xs, args.rep)
            print(f"  DARe N={n:5d} d={d} {name:8s} {row[name]}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _measure_dare(loss_of, xs, rep):
    from triton.testing import do_bench
    out = {}
    with torch.no_grad():
        loss_of(*xs)
        out["fwd_ms"] = do_bench(lambda: loss_of(*xs), warmup=25, rep=rep, return_mode="median")
    leaves = [x.detach().requires_grad_() for x in xs]
    loss_of(*leaves).backward()
    out["fwd_bwd_ms"] = do_bench(lambda: loss_of(*leaves).backward(), warmup=25, rep=rep,
                                 grad_to_none=leaves, return_mode="median")
    return out


def dare_table(rows, impls) -> str:
    head = ["N", "d"] + [f"{i} fwd ms" for i in impls] + [f"{i} fwd+bwd ms" for i in impls] + ["fused vs eager (f+b)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["n"]), str(r["d"])] + [_fmt(r[i]["fwd_ms"], 4) for i in impls] \
            + [_fmt(r[i]["fwd_bwd_ms"], 4) for i in impls] + [_ratio(r["eager"]["fwd_bwd_ms"], r["fused"]["fwd_bwd_ms"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_cpu_reference(args) -> list[dict]:
    """Eager reference only, on the CPU, small sizes (a calibration point, not a kernel benchmark)."""
    rows = []
    fn = reference_loss(args.variant, args.temperature)
    for two_n in (256, 1024):
        for d in (128,):
            n = two_n // 2
            z1, z2 = torch.randn(n, d), torch.randn(n, d)
            labels = torch.randint(0, 100, (n,)) if args.variant == "supcon" else None
            a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
            times = {"fwd": [], "fwd_bwd": []}
            for _ in range(7):
                t = time.perf_counter()
                with torch.no_grad():
                    fn(z1, z2, labels)
                times["fwd"].append(time.perf_counter() - t)
                t = time.perf_counter()
                fn(a, b, labels).backward()
                times["fwd_bwd"].append(time.perf_counter() - t)
            rows.append(dict(two_n=two_n, d=d, eager_cpu={k + "_ms": 1e3 * statistics.median(v[1:])
                                                           for k, v in times.items()}))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    command = " ".join([Path(sys.executable).name] + sys.argv) if argv is None else "main(" + " ".join(argv) + ")"
    env = environment(command)
    result = dict(environment=env, config=dict(variant=args.variant, dtype=args.dtype, tf32=args.tf32,
                                               temperature=args.temperature))
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | cuda {env['cuda']}")
    print(f"command: {command}\n")

    if not torch.cuda.is_available():
        print("No CUDA device: the fused Triton kernels can only be timed on a GPU (the Triton interpreter is a "
              "correctness tool, not a performance path), so no fused or torch.compile timings are reported.\n"
              "As a calibration point only, the eager PyTorch reference on this CPU (fp32, "
              f"variant={args.variant}):\n")
        rows = bench_cpu_reference(args)
        print("| 2N | d | eager CPU fwd ms | eager CPU fwd+bwd ms |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['two_n']} | {r['d']} | {r['eager_cpu']['fwd_ms']:.2f} | {r['eager_cpu']['fwd_bwd_ms']:.2f} |")
        result.update(cuda=False, cpu_reference=rows)
    else:
        if args.dtype != "fp32" and args.tf32:
            print("--tf32 only affects fp32 inputs; ignored")
        if args.dtype == "fp32":  # the same matmul precision for the reference as for the fused kernel
            try:
                torch.backends.cuda.matmul.fp32_precision = "tf32" if args.tf32 else "ieee"
            except AttributeError:  # torch < 2.9
                torch.backends.cuda.matmul.allow_tf32 = args.tf32
        impls = ["eager"] + ([] if args.no_compile else ["compile"]) + ["fused"]
        rows = bench_contrastive_gpu(args)
        print(f"### Contrastive loss ({args.variant}, {args.dtype}"
              f"{', tf32' if args.tf32 and args.dtype == 'fp32' else ''}, tau={args.temperature}), "
              f"median ms (do_bench), peak extra memory of fwd+bwd\n")
        print(contrastive_table(rows, impls))
        result.update(cuda=True, contrastive=rows)
        if not args.no_dare:
            dare_rows = bench_dare_gpu(args)
            print(f"\n### DARe reparameterisation + Gaussian JSD ({args.dtype}), median ms\n")
            print(dare_table(dare_rows, impls))
            result["dare"] = dare_rows

    out = args.out
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        tag = "cuda" if torch.cuda.is_available() else "cpu"
        out = RESULTS / f"kernels-{tag}-{args.variant}-{args.dtype}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
