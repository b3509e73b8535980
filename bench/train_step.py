"""Training throughput as speed features are added one at a time, each row over the first, one run.

    python bench/train_step.py                                     # CUDA: ResNet-18 and -50, the full ladder
    python bench/train_step.py --encoders resnet18 --width 16 --batch-size 64 --steps 5   # a CPU-sized run

Rows (cumulative): eager fp32 -> + channels-last -> + AMP bf16 -> + torch.compile -> + fused Triton
kernels. Each row builds the method afresh (``--method``, default simclr) on the ``resident`` loader
(the uint8 dataset on the device, batched device-side two-view augmentation), runs ``--warmup`` steps
(compilation happens there, reported as first-steps time); then the rows are timed round-robin,
``--repeats`` passes of ``--steps`` steps of training's own step (``fastssl.step.Step``: forward, loss,
backward, optimiser step, with training's lr schedule and tf32 on, as ``train`` builds it),
and each row reports its median pass. Images/s counts images per second (each gives two views).

On a CPU a row that cannot say anything useful is skipped with its reason rather than run: bf16
autocast (20-30x slower than fp32 on AVX2-only CPUs; ``--cpu-bf16`` runs it), torch.compile (about a
minute to compile ResNet-18 on 2 cores; ``--cpu-compile`` runs it) and the fused kernels (CUDA only).
A skipped row's feature is not carried into the later rows; each row lists what it has on.
Writes bench/results/train_step-<device>-<stamp>.{json,md}.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench._common import RESULTS, device_tag, environment, stamp, write_result  # noqa: E402

LADDER = (  # (row name, the option it adds)
    ("eager fp32", {}),
    ("+ channels-last", dict(channels_last=True)),
    ("+ AMP bf16", dict(amp="bf16")),
    ("+ torch.compile", dict(compile="on")),
    ("+ fused kernels", dict(kernels="triton")),
)
BASE = dict(channels_last=False, amp="off", compile="off", kernels="torch")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="simclr", help="method whose step is timed (default: %(default)s)")
    p.add_argument("--encoders", nargs="+", default=["resnet18", "resnet50"], choices=("resnet18", "resnet50"))
    p.add_argument("--width", type=int, default=64, help="first-stage channels (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: 512 on CUDA, 64 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default: 30 on CUDA, 5 on CPU)")
    p.add_argument("--repeats", type=int, default=3, help="round-robin timing passes over the rows; the median "
                   "is reported (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first steps per row (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100"))
    p.add_argument("--data", default=None, help="dataset location (default: $FASTSSL_DATA, cache, download)")
    p.add_argument("--synthetic", action="store_true", help="random uint8 images instead of the dataset")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--cpu-bf16", action="store_true", help="on CPU, time the AMP bf16 row anyway")
    p.add_argument("--cpu-compile", action="store_true", help="on CPU, time the torch.compile row anyway")
    p.add_argument("--note", default="", help="free text stored with the result (e.g. 'machine shared')")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/train_step-<device>-<stamp>.json)")
    args = p.parse_args(argv)
    for name in ("width", "batch_size", "steps", "warmup", "repeats"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}, got {value}")
    return args


def skip_reason(feature: dict, device: torch.device, args) -> str | None:
    if device.type == "cuda":
        return None
    if "amp" in feature and not args.cpu_bf16:
        return "CPU: bf16 autocast is 20-30x slower than fp32 on AVX2-only CPUs (docs/toolchain.md); --cpu-bf16 times it"
    if "compile" in feature and not args.cpu_compile:
        return "CPU: torch.compile takes ~1 min per network on 2 cores; --cpu-compile times it"
    if "kernels" in feature:
        return "CPU: the fused Triton kernels need CUDA (the interpreter is a correctness tool, not a fast path)"
    return None


def row_config(args, encoder: str, device, options: dict, with_data: bool):
    """The resolved Config of one row: training's defaults and the method's recipe, with the row's options;
    on a dataset, the first ``8 x batch`` images of a fixed random subset (training's ``--train-subset``)."""
    from fastssl.config import Config, resolve
    return resolve(Config(method=args.method, encoder=encoder, width=args.width, batch_size=args.batch_size,
                          device=device.type, progress=False, train_subset=args.batch_size * 8 if with_data else 0,
                          **options))


def build_timer(cfg, device, ds):
    """The row's training step (``fastssl.step.Step``, as ``train`` builds it) over training's loader on
    ``ds`` (None: random uint8 images)."""
    from fastssl.step import StepTimer, synthetic_loader
    from fastssl.train import training_loader
    loader = synthetic_loader(cfg, device, images=cfg.batch_size * 4) if ds is None else training_loader(cfg, ds, device)
    return StepTimer(cfg, loader)


def bench_encoder(encoder: str, args, device, ds, save=lambda rows: None) -> list[dict]:
    """Build and warm up every row, then time them round-robin ``--repeats`` times (median per row), so
    that a slow spell of a shared machine falls on every row alike rather than on one."""
    rows, timers, active = [], {}, dict(BASE)
    torch._dynamo.reset()
    for name, feature in LADDER:
        reason = skip_reason(feature, device, args)
        if reason:
            rows.append(dict(encoder=encoder, row=name, skipped=reason))
            print(f"  {encoder} {name}: skipped ({reason})", flush=True)
            continue
        active.update(feature)
        cfg = row_config(args, encoder, device, active, with_data=ds is not None)
        timers[name] = build_timer(cfg, device, ds)
        warmup_s = timers[name].run(args.warmup) if args.warmup else 0.0
        rows.append(dict(encoder=encoder, row=name, channels_last=cfg.channels_last, amp=cfg.amp,
                         compile=cfg.compile, kernels=cfg.backend, tf32=torch.backends.cuda.matmul.allow_tf32,
                         batch_size=args.batch_size, warmup_s=warmup_s, step_s_repeats=[]))
        print(f"  {encoder} {name}: built, first {args.warmup} steps {warmup_s:.1f} s", flush=True)
    measured = [r for r in rows if "skipped" not in r]
    for rep in range(args.repeats):
        for r in measured:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            r["step_s_repeats"].append(timers[r["row"]].run(args.steps) / args.steps)
            if device.type == "cuda":
                r["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            r["step_s"] = statistics.median(r["step_s_repeats"])
            r["images_per_s"] = args.batch_size / r["step_s"]
            r["speedup"] = r["images_per_s"] / measured[0]["images_per_s"] if "step_s" in measured[0] else 1.0
            save(rows)  # after every row: a run cut short keeps what it measured
        print(f"  {encoder} repeat {rep + 1}/{args.repeats}: "
              + ", ".join(f"{r['row']} {r['images_per_s']:.0f}/s" for r in measured), flush=True)
    timers.clear()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| encoder | features | images/s | speed-up | ms/step | first steps (s) | on |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['encoder']} | {r['row']} | skipped | | | | {r['skipped']} |")
            continue
        if "step_s" not in r:  # saved while an earlier row was being timed
            lines.append(f"| {r['encoder']} | {r['row']} | not timed yet | | | {r['warmup_s']:.1f} | |")
            continue
        on = ", ".join(k for k, v in (("channels-last", r["channels_last"]), ("bf16", r["amp"] == "bf16"),
                                      ("compile", r["compile"] == "on"), ("triton", r["kernels"] == "triton")) if v)
        lines.append(f"| {r['encoder']} | {r['row']} | {r['images_per_s']:.0f} | {r['speedup']:.2f}x | "
                     f"{r['step_s'] * 1e3:.1f} | {r['warmup_s']:.1f} | {on or 'fp32 eager'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_step.py: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (512 if cuda else 64)
    args.steps = args.steps or (30 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    from fastssl import methods
    if args.method not in methods.available():
        print(f"train_step.py: error: unknown method {args.method!r}; available: {', '.join(methods.available())}",
              file=sys.stderr)
        return 2
    ds = None
    if not args.synthetic:
        from data_prep import DataError, load_dataset
        try:
            ds = load_dataset(args.dataset, args.data, verbose=False)
        except DataError as e:
            print(f"train_step.py: error: {e} (or pass --synthetic)", file=sys.stderr)
            return 1
    command = "python bench/train_step.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    env = environment(command)
    data = "synthetic uint8 images" if ds is None else f"{ds.name} ({ds.source})"
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | {args.method}, width "
          f"{args.width}, batch {args.batch_size}, {args.warmup} warm-up + {args.repeats} x {args.steps} steps per row, data: {data}", flush=True)
    header = (f"Training step throughput, {args.method}, width {args.width}, batch {args.batch_size} (two views "
              f"each), resident loader on {data}; per row the median of {args.repeats} round-robin passes of "
              f"{args.steps} steps, after {args.warmup} warm-up steps; device {env['device']}; torch {env['torch']}, triton {env['triton']}; {env['time']}"
              + (f". Note: {args.note}" if args.note else ""))
    out = args.out or RESULTS / f"train_step-{device_tag()}-{stamp()}.json"

    def save(rows, complete=False):  # after every row: a run cut short by a time limit keeps what it measured
        record = dict(environment=env, benchmark="train_step", method=args.method, width=args.width,
                      batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                      data=data,
                      torch_threads=torch.get_num_threads(), note=args.note, complete=complete, results=rows)
        write_result(record, f"`{command}`\n\n{header}\n\n{table(rows)}\n", out, quiet=not complete)

    rows = []
    for encoder in args.encoders:
        rows += bench_encoder(encoder, args, device, ds, save=lambda new: save(rows + new))
    print("\n" + header + "\n\n" + table(rows))
    save(rows, complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
