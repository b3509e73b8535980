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

Every row catches its own exceptions (out of memory, Triton compilation errors, anything) and records them in
the row; the JSON (device, versions, command, every row so far) is rewritten after every row, so a run that
is stopped keeps what it measured. Markdown tables are printed at the end and written beside the JSON.

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
from fastssl import losses  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PRECISIONS = {"tf32": (torch.float32, True), "ieee": (torch.float32, False), "bf16": (torch.bfloat16, False),
              "fp16": (torch.float16, False)}
TRAINING_PRECISIONS = ["tf32", "bf16"]
VARIANTS = ("simclr", "decoupled", "supcon")
IMPLS = ("eager", "compile", "fused", "fused-unsplit", "lightly")


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


def unsplit():
    """Forces one column split for every launch inside (forward and backward alike)."""
    from kernels.contrastive import column_splits
    return column_splits(1)


def import_lightly_ntxent():
    """(lightly's NTXentLoss class, None) or (None, why not). On a CPU-only torch, lightly's torchvision import
    needs the schema workaround of TOOLCHAIN.md (no torchvision C++ op is used by the loss)."""
    try:
        from lightly.loss import NTXentLoss
        return NTXentLoss, None
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "lightly":
            return None, "lightly is not installed (pip install -e '.[peers]')"
        return None, f"lightly does not import: {e}"
    except Exception as e:  # noqa: BLE001 - torchvision's C++ ops missing next to a CPU torch
        if "torchvision" not in str(e) or torch.version.cuda is not None:
            return None, f"lightly does not import: {type(e).__name__}: {e}"
    for name in [m for m in sys.modules if m.split(".")[0] in ("lightly", "torchvision")]:
        del sys.modules[name]
    global _torchvision_stub
    _torchvision_stub = torch.library.Library("torchvision", "DEF")
    _torchvision_stub.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_stub.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    try:
        from lightly.loss import NTXentLoss
        return NTXentLoss, None
    except Exception as e:  # noqa: BLE001
        return None, f"lightly does not import (even with the CPU torchvision workaround): {type(e).__name__}: {e}"


_torchvision_stub = None


def lightly_loss(variant, temperature):
    """lightly's NTXentLoss as a loss of (z1, z2, labels), or a string saying why there is none."""
    if variant != "simclr":
        return f"lightly's NTXentLoss is the simclr variant only (not {variant})"
    cls, why = import_lightly_ntxent()
    if cls is None:
        return why
    module = cls(temperature=temperature, memory_bank_size=0)
    return lambda z1, z2, labels: module(z1, z2)


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str) + "\n")
        tmp.replace(self.path)

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


def contrastive_rows(args, writer: RowWriter, measure=measure_loss) -> None:
    """One row per (precision, variant, 2N, d, implementation)."""
    for precision in args.precisions:
        dtype, tf32 = PRECISIONS[precision]
        set_matmul_precision(precision)
        for variant in args.variants:
            impls = {"eager": reference_loss(variant, args.temperature)}
            if not args.no_compile:
                impls["compile"] = "per-shape"
            impls["fused"] = fused_loss(variant, args.temperature, tf32)
            if not args.no_unsplit:
                impls["fused-unsplit"] = impls["fused"]  # measured under unsplit()
            if not args.no_peers:
                impls["lightly"] = lightly_loss(variant, args.temperature)
            for d in args.dims:
                for two_n in args.sizes:
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

                    for name, fn in impls.items():
                        row = dict(bench="contrastive", precision=precision, variant=variant, two_n=two_n, d=d,
                                   impl=name)
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
                                result["splits"] = _planned_splits(two_n, d, dtype, tf32, name)
                            return result
                        writer.run(row, run)
                        print(f"  {precision} {variant} 2N={two_n:6d} d={d:4d} {name:13s} "
                              f"{ {k: v for k, v in row.items() if k in ('fwd_ms', 'fwd_bwd_ms', 'error')} }",
                              file=sys.stderr, flush=True)
                    inputs.clear()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()


def _planned_splits(two_n, d, dtype, tf32, name) -> list:
    """Column splits of the (forward, backward) launches on this device."""
    if name == "fused-unsplit":
        return [1, 1]
    from kernels.contrastive import launch_plan
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


# ---- tables ----------------------------------------------------------------------------------------

def _fmt(x, digits=3):
    return f"{x:.{digits}f}" if isinstance(x, float) else ("-" if x is None else str(x))


def _cell(row, key, digits=3):
    if row is None:
        return ""
    if "error" in row:
        return "OOM" if row["error"] == "OOM" else "error"
    if "skipped" in row:
        return "skipped"
    return _fmt(row.get(key), digits)


def _ratio(a, b):
    ok = all(r is not None and isinstance(r.get("fwd_bwd_ms"), float) for r in (a, b))
    return f"{a['fwd_bwd_ms'] / b['fwd_bwd_ms']:.2f}x" if ok and b["fwd_bwd_ms"] > 0 else "-"


def contrastive_table(rows: list[dict]) -> str:
    """One markdown table per (precision, variant): per (2N, d) every implementation's fwd, fwd+bwd, peak MiB."""
    out = []
    rows = [r for r in rows if r.get("bench") == "contrastive"]
    groups = sorted({(r["precision"], r["variant"]) for r in rows}, key=lambda g: (list(PRECISIONS).index(g[0]),
                                                                                   VARIANTS.index(g[1])))
    for precision, variant in groups:
        mine = [r for r in rows if (r["precision"], r["variant"]) == (precision, variant)]
        impls = [i for i in IMPLS if any(r["impl"] == i for r in mine)]
        head = ["2N", "d", "splits f/b"] + [f"{i} fwd ms" for i in impls] + [f"{i} f+b ms" for i in impls] \
            + [f"{i} peak MiB" for i in impls] + ["fused vs eager (f+b)"] \
            + (["fused vs unsplit (f+b)"] if "fused-unsplit" in impls else []) \
            + (["fused vs compile (f+b)"] if "compile" in impls else [])
        lines = [f"#### {variant}, {precision}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for two_n, d in sorted({(r["two_n"], r["d"]) for r in mine}, key=lambda k: (k[1], k[0])):
            by = {r["impl"]: r for r in mine if (r["two_n"], r["d"]) == (two_n, d)}
            splits = (by.get("fused") or {}).get("splits")
            cells = [str(two_n), str(d), "/".join(map(str, splits)) if splits else "-"]
            cells += [_cell(by.get(i), "fwd_ms") for i in impls] + [_cell(by.get(i), "fwd_bwd_ms") for i in impls]
            cells += [_cell(by.get(i), "peak_extra_mib", 1) for i in impls]
            cells.append(_ratio(by.get("eager"), by.get("fused")))
            if "fused-unsplit" in impls:
                cells.append(_ratio(by.get("fused-unsplit"), by.get("fused")))
            if "compile" in impls:
                cells.append(_ratio(by.get("compile"), by.get("fused")))
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def dare_table(rows: list[dict]) -> str:
    rows = [r for r in rows if r.get("bench") == "dare"]
    impls = [i for i in ("eager", "compile", "fused") if any(r["impl"] == i for r in rows)]
    head = ["precision", "N", "d"] + [f"{i} fwd ms" for i in impls] + [f"{i} f+b ms" for i in impls] \
        + [f"{i} peak MiB" for i in impls] + ["fused vs eager (f+b)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for precision, n, d in sorted({(r["precision"], r["n"], r["d"]) for r in rows},
                                  key=lambda k: (list(PRECISIONS).index(k[0]), k[1])):
        by = {r["impl"]: r for r in rows if (r["precision"], r["n"], r["d"]) == (precision, n, d)}
        cells = [precision, str(n), str(d)] + [_cell(by.get(i), "fwd_ms", 4) for i in impls] \
            + [_cell(by.get(i), "fwd_bwd_ms", 4) for i in impls] \
            + [_cell(by.get(i), "peak_extra_mib", 1) for i in impls] \
            + [_ratio(by.get("eager"), by.get("fused"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def errors_list(rows: list[dict]) -> str:
    bad = [r for r in rows if "error" in r or "skipped" in r]
    if not bad:
        return ""
    keys = ("bench", "precision", "variant", "two_n", "n", "d", "impl")
    return "\n".join(["Rows that failed or were skipped:", ""] + [
        "- " + " ".join(f"{k}={r[k]}" for k in keys if k in r) + ": " + (r.get("error") or r.get("skipped"))
        for r in bad])


def markdown(record: dict) -> str:
    env = record["environment"]
    parts = [f"`{env['command']}` on {env['device']}, {env['time']}, torch {env['torch']}, triton {env['triton']}, "
             f"tau {record['config']['temperature']}; median ms (do_bench), peak extra MiB of forward+backward."]
    if record.get("cuda"):
        parts += ["### Contrastive losses", contrastive_table(record["rows"])]
        if any(r.get("bench") == "dare" for r in record["rows"]):
            parts += ["### DARe reparameterisation + Gaussian JSD", dare_table(record["rows"])]
        parts.append(errors_list(record["rows"]))
    else:
        parts.append("No CUDA: eager reference on the CPU only (a calibration point, not a kernel benchmark).")
    return "\n\n".join(p for p in parts if p) + "\n"


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
        if not args.no_dare:
            dare_rows(args, writer)
        writer.record["complete"] = True
        writer.save()
        print("\n" + markdown(record))
    out.with_suffix(".md").write_text(markdown(record))
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} and its .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
