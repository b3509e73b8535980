"""Microbenchmark of the fused loss kernels against the PyTorch reference (eager, torch.compile) and peers.

    python bench/kernels.py                      # simclr, fp32 with tf32 and bf16, 2N in {1024..65536}, d in {128, 256}
    python bench/kernels.py --precisions ieee fp16 --variants decoupled supcon
    python bench/kernels.py --sizes 1024 8192 --dims 128 --no-compile

Precisions: ``tf32`` (fp32 inputs, tf32 tensor-core matmuls for the reference and the fused similarity),
``ieee`` (fp32, true fp32 matmuls), ``bf16``, ``fp16`` (half inputs). The default is what training uses: fp32
with tf32 and bf16.

For each (precision, variant, 2N, d) and implementation, one row: median time (``triton.testing.do_bench``)
of the forward alone and of forward+backward, and the peak extra GPU memory of forward+backward above the
inputs (``torch.cuda.max_memory_allocated`` delta). Implementations: ``eager`` (fastssl.losses), ``compile``
(torch.compile of the same reference), ``fused`` (the Triton op with its launch plan: column splits when 2N
is small), ``fused-unsplit`` (the same op forced to one column split, so that the first GPU run decides the
split heuristic from measurements; its ``splits`` field says what the plan chose), and ``lightly`` (lightly's
``NTXentLoss``, the eager peer baseline, simclr only, when the optional ``[peers]`` extra is installed).
DARe reparameterisation + JSD: eager vs compile vs fused.

The training configuration (``TRAINING_CONFIG``: d = 256, decoupled and simclr, fp32 inputs with tf32, 2N = 1024)
is measured first, in a table of its own; ``--training-config`` measures only it.

Every row catches its own exceptions (out of memory, Triton compilation errors, anything) and records them in
the row; the JSON (device, versions, command, every row so far) and its markdown tables are rewritten, atomically,
after every row, so a run that is stopped keeps what it measured.

Without CUDA there is nothing meaningful to time for the fused kernels (the Triton interpreter is a
correctness tool, thousands of times slower than a GPU), so the script says so, times only the eager
reference on the CPU at small sizes (labelled as such), and exits 0.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench._common import environment, stamp  # noqa: E402  (shared by the bench scripts)
from bench.kernels_peers import lightly_loss  # noqa: E402
from bench.kernels_tables import markdown  # noqa: E402
from data_prep import atomic  # noqa: E402
from fastssl import losses  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PRECISIONS = {"tf32": (torch.float32, True), "ieee": (torch.float32, False), "bf16": (torch.bfloat16, False),
              "fp16": (torch.float16, False)}
TRAINING_PRECISIONS = ["tf32", "bf16"]
VARIANTS = ("simclr", "decoupled", "supcon", "cross")  # cross: MoCo v3's query-key loss, 2N/2 queries vs as many keys
# What training runs (fastssl's defaults on a GPU: projector output d = 256, batch 512 -> 2N = 1024, fp32 embeddings
# with tf32 matmuls; DARe uses the decoupled variant, SimCLR NT-Xent): measured first, and alone with
# --training-config. (precision, variant, d, 2N)
TRAINING_SHAPE = ("tf32", 256, 1024)  # (precision, d, 2N)
TRAINING_CONFIG = [("tf32", "decoupled", 256, 1024), ("tf32", "simclr", 256, 1024)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", "--variant", dest="variants", nargs="+", choices=VARIANTS, default=["simclr"])
    p.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=TRAINING_PRECISIONS,
                   help="tf32: fp32 inputs with tf32 matmuls; ieee: true fp32; bf16/fp16 inputs "
                        "(default: %(default)s, what training uses)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192, 32768, 65536], help="2N values")
    p.add_argument("--dims", type=int, nargs="+", default=[128, 256])
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--no-unsplit", action="store_true", help="skip the fused kernel forced to one column split")
    p.add_argument("--no-peers", action="store_true", help="skip lightly's NTXentLoss even when installed")
    p.add_argument("--no-dare", action="store_true", help="skip the DARe reparam + JSD benchmark")
    p.add_argument("--training-config", action="store_true",
                   help="only the training configuration (d = 256, decoupled and simclr, fp32 with tf32, 2N = 1024; "
                        "no DARe rows); a full run measures these rows first")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetition time in ms")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/kernels-<stamp>.json)")
    args = p.parse_args(argv)
    if any(s < 2 or s % 2 for s in args.sizes):
        p.error("--sizes are 2N values: even and >= 2")
    if any(d < 1 for d in args.dims):
        p.error("--dims must be >= 1")
    if args.rep < 1:
        p.error("--rep must be >= 1")
    return args


# ---- implementations -----------------------------------------------------------------------------

def reference_loss(variant, temperature):
    if variant == "cross":  # the keys are momentum features without gradient, as in MoCo v3
        from fastssl.dispatch import cross_contrastive_reference
        return lambda q, k, labels: cross_contrastive_reference(q, k.detach(), temperature)
    if variant == "supcon":
        return lambda z1, z2, labels: losses.supcon_loss(z1, z2, labels, temperature)
    return lambda z1, z2, labels: losses.ntxent_loss(z1, z2, temperature, variant=variant)


def fused_loss(variant, temperature, allow_tf32):
    from kernels.contrastive import fused_contrastive_loss
    if variant == "cross":
        from kernels.cross import fused_cross_contrastive_loss
        return lambda q, k, labels: fused_cross_contrastive_loss(q, k.detach(), temperature, allow_tf32=allow_tf32)
    if variant == "supcon":
        return lambda z1, z2, labels: fused_contrastive_loss(z1, z2, temperature, labels=labels,
                                                             allow_tf32=allow_tf32)
    return lambda z1, z2, labels: fused_contrastive_loss(z1, z2, temperature, variant=variant,
                                                         allow_tf32=allow_tf32)


def unsplit():
    """Forces one column split for every launch inside (forward and backward alike)."""
    from kernels.contrastive import column_splits
    return column_splits(1)


# ---- measuring, one row at a time ------------------------------------------------------------------

def error_text(e: BaseException) -> str:
    """One line for a row: OOM, or the exception's type and first line (Triton's compiler errors included)."""
    msg = str(e).strip()
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in msg.lower():
        return "OOM"
    first = msg.splitlines()[0] if msg else ""
    return f"{type(e).__name__}: {first[:300]}"


class RowWriter:
    """Holds the record; ``run(row, measure)`` fills one row from ``measure(row) -> dict``, catching any exception
    into row["error"] (and its traceback tail), then rewrites the JSON, so a stopped run keeps every finished row."""

    def __init__(self, record: dict, path: Path):
        self.record, self.path = record, path
        record.setdefault("rows", [])
        self.save()

    def save(self) -> None:
        """The JSON and its markdown beside it, each replaced atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.path, json.dumps(self.record, indent=2, default=str) + "\n")
        atomic.write_text(self.path.with_suffix(".md"), markdown(self.record))

    def run(self, row: dict, measure) -> dict:
        t0 = time.perf_counter()
        try:
            row.update(measure(row))
        except Exception as e:  # noqa: BLE001 - every failure belongs to its row, the run goes on
            row["error"] = error_text(e)
            row["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
            if torch.cuda.is_available():
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
        row["wall_s"] = round(time.perf_counter() - t0, 3)
        self.record["rows"].append(row)
        self.save()
        return row


def _peak_extra_mib(step) -> float:
    """Peak memory allocated during ``step()`` above what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure_loss(fn, z1, z2, labels, rep) -> dict:
    """Forward ms, forward+backward ms (medians of do_bench) and the peak extra MiB of forward+backward."""
    from triton.testing import do_bench

    out = {}
    with torch.no_grad():
        fn(z1, z2, labels)  # compile / warm up outside the timed region
        out["fwd_ms"] = do_bench(lambda: fn(z1, z2, labels), warmup=25, rep=rep, return_mode="median")
    a, b = z1.detach().requires_grad_(), z2.detach().requires_grad_()

    def step():
        fn(a, b, labels).backward()

    step()
    a.grad = b.grad = None
    out["peak_extra_mib"] = _peak_extra_mib(step)
    out["fwd_bwd_ms"] = do_bench(step, warmup=25, rep=rep, grad_to_none=[a, b], return_mode="median")
    return out


def contrastive_cases(args) -> list[tuple]:
    """(precision, variant, d, 2N) in measuring order: when the sweep covers the training shape (tf32, d = 256,
    2N = 1024), the training configuration (both its variants) first, then the rest of the sweep."""
    sweep = [(p, v, d, n) for p in args.precisions for v in args.variants for d in args.dims for n in args.sizes]
    if args.training_config:
        return list(TRAINING_CONFIG)
    if not any((p, d, n) == TRAINING_SHAPE for p, _, d, n in sweep):
        return sweep  # a sweep that does not cover the training shape (e.g. tests' tiny sizes)
    return TRAINING_CONFIG + [c for c in sweep if c not in TRAINING_CONFIG]


def implementations(args, variant: str, tf32: bool) -> dict:
    impls = {"eager": reference_loss(variant, args.temperature)}
    if not args.no_compile:
        impls["compile"] = "per-shape"
    impls["fused"] = fused_loss(variant, args.temperature, tf32)
    if not args.no_unsplit and variant != "cross":  # the cross kernels do not split columns
        impls["fused-unsplit"] = impls["fused"]  # measured under unsplit()
    if not args.no_peers:
        impls["lightly"] = lightly_loss(variant, args.temperature)
    return impls


def contrastive_rows(args, writer: RowWriter, measure=measure_loss) -> None:
    """One row per (precision, variant, 2N, d, implementation)."""
    for precision, variant, d, two_n in contrastive_cases(args):
        dtype, tf32 = PRECISIONS[precision]
        set_matmul_precision(precision)
        inputs = {}

        def make_inputs():
            if not inputs:
                n = two_n // 2
                dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: tests with a fake measure
                gen = torch.Generator(device=dev).manual_seed(0)
                inputs["z"] = (torch.randn(n, d, device=dev, generator=gen).to(dtype),
                               torch.randn(n, d, device=dev, generator=gen).to(dtype),
                               torch.randint(0, 100, (n,), device=dev, generator=gen)
                               if variant == "supcon" else None)
            return inputs["z"]

        for name, fn in implementations(args, variant, tf32).items():
            row = dict(bench="contrastive", precision=precision, variant=variant, two_n=two_n, d=d, impl=name)
            if (precision, variant, d, two_n) in TRAINING_CONFIG:
                row["training_config"] = True
            if isinstance(fn, str) and name != "compile":
                row["skipped"] = fn
                writer.record["rows"].append(row)
                writer.save()
                continue

            def run(row, fn=fn, name=name):
                if name == "compile":
                    torch._dynamo.reset()
                    fn = torch.compile(reference_loss(variant, args.temperature), dynamic=False)
                with unsplit() if name == "fused-unsplit" else contextlib.nullcontext():
                    result = measure(fn, *make_inputs(), args.rep)
                if name.startswith("fused"):
                    result["splits"] = _planned_splits(two_n, d, dtype, tf32, name, variant)
                return result
            writer.run(row, run)
            print(f"  {precision} {variant} 2N={two_n:6d} d={d:4d} {name:13s} "
                  f"{ {k: v for k, v in row.items() if k in ('fwd_ms', 'fwd_bwd_ms', 'error')} }",
                  file=sys.stderr, flush=True)
        inputs.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _planned_splits(two_n, d, dtype, tf32, name, variant) -> list:
    """Column splits of the (forward, backward) launches on this device."""
    if name == "fused-unsplit" or variant == "cross":
        return [1, 1]
    from kernels.launch import launch_plan
    return [launch_plan(two_n, two_n, d, dtype, tf32, interpret=False, backward=b)[1] for b in (False, True)]


def set_matmul_precision(precision: str) -> None:
    """The reference's fp32 matmuls at the fused kernel's precision (tf32 or ieee)."""
    if not torch.cuda.is_available():
        return
    tf32 = precision == "tf32"
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
    except AttributeError:  # torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = tf32


def dare_rows(args, writer: RowWriter, measure=None) -> None:
    from kernels.dare import draw_seed, fused_reparam_jsd

    def eager(mu1, lv1, mu2, lv2):
        return (losses.reparameterize(mu1, lv1), losses.reparameterize(mu2, lv2),
                losses.gaussian_jsd(mu1, lv1, mu2, lv2))

    def fused(mu1, lv1, mu2, lv2):
        return fused_reparam_jsd(mu1, lv1, mu2, lv2, seed=draw_seed(mu1.device))

    impls = {"eager": eager}
    if not args.no_compile:
        impls["compile"] = torch.compile(eager, dynamic=False)
    impls["fused"] = fused
    for precision in args.precisions:
        dtype = PRECISIONS[precision][0]
        for n in (256, 1024, 4096):
            d = 128
            for name, fn in impls.items():
                row = dict(bench="dare", precision=precision, n=n, d=d, impl=name)

                def run(row, fn=fn):
                    xs = [torch.randn(n, d, device="cuda").to(dtype) for _ in range(4)]

                    def loss_of(a, b, c, e):
                        z1, z2, jsd = fn(a, b, c, e)
                        return z1.float().sum() + z2.float().sum() + jsd
                    return (measure or _measure_dare)(loss_of, xs, args.rep)
                writer.run(row, run)
                print(f"  DARe {precision} N={n:5d} d={d} {name:8s} "
                      f"{ {k: v for k, v in row.items() if k in ('fwd_ms', 'fwd_bwd_ms', 'error')} }",
                      file=sys.stderr, flush=True)


def _measure_dare(loss_of, xs, rep):
    from triton.testing import do_bench
    out = {}
    with torch.no_grad():
        loss_of(*xs)
        out["fwd_ms"] = do_bench(lambda: loss_of(*xs), warmup=25, rep=rep, return_mode="median")
    leaves = [x.detach().requires_grad_() for x in xs]

    def step():
        loss_of(*leaves).backward()
    step()
    for t in leaves:
        t.grad = None
    out["peak_extra_mib"] = _peak_extra_mib(step)
    out["fwd_bwd_ms"] = do_bench(step, warmup=25, rep=rep, grad_to_none=leaves, return_mode="median")
    return out


def bench_cpu_reference(args) -> list[dict]:
    """Eager reference only, on the CPU, small sizes (a calibration point, not a kernel benchmark)."""
    rows = []
    for variant in args.variants:
        fn = reference_loss(variant, args.temperature)
        for two_n in (256, 1024):
            n, d = two_n // 2, 128
            z1, z2 = torch.randn(n, d), torch.randn(n, d)
            labels = torch.randint(0, 100, (n,)) if variant == "supcon" else None
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
            rows.append(dict(variant=variant, two_n=two_n, d=d,
                             eager_cpu={k + "_ms": 1e3 * statistics.median(v[1:]) for k, v in times.items()}))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    command = " ".join([Path(sys.executable).name] + sys.argv) if argv is None else "main(" + " ".join(argv) + ")"
    env = environment(command)
    record = dict(environment=env, config=dict(variants=args.variants, precisions=args.precisions,
                                               temperature=args.temperature, sizes=args.sizes, dims=args.dims),
                  cuda=torch.cuda.is_available())
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | cuda {env['cuda']}")
    print(f"command: {command}\n")
    out = args.out or RESULTS / f"kernels-{'cuda' if torch.cuda.is_available() else 'cpu'}-{stamp()}.json"

    if not torch.cuda.is_available():
        print("No CUDA device: the fused Triton kernels can only be timed on a GPU (the Triton interpreter is a "
              "correctness tool, not a performance path), so no fused or torch.compile timings are reported.\n"
              "As a calibration point only, the eager PyTorch reference on this CPU (fp32):\n")
        rows = bench_cpu_reference(args)
        print("| variant | 2N | d | eager CPU fwd ms | eager CPU fwd+bwd ms |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['two_n']} | {r['d']} | {r['eager_cpu']['fwd_ms']:.2f} "
                  f"| {r['eager_cpu']['fwd_bwd_ms']:.2f} |")
        record["cpu_reference"] = rows
        RowWriter(record, out)
    else:
        writer = RowWriter(record, out)
        contrastive_rows(args, writer)
        if not (args.no_dare or args.training_config):
            dare_rows(args, writer)
        writer.record["complete"] = True
        writer.save()
        print("\n" + markdown(record))
    atomic.write_text(out.with_suffix(".md"), markdown(record))
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} and its .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
