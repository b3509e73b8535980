"""Loader throughput: two-view image pairs per second of each ``--loader`` on the same policy and
batch size, the plain DataLoader baseline (``torch``) measured in the same run.

    python bench/loaders.py                                  # every loader whose package is installed
    python bench/loaders.py --loaders resident torch dali --batch-size 512 --aug symmetric
    python bench/loaders.py --subset 10240 --threads 1       # a CPU-sized run

Per loader: build it (FFCV/DALI files are converted beforehand, so conversion is not timed; the
build time is reported), run a few warm-up batches of epoch 0 and stop (FFCV compiles its pipeline
then), then time one whole epoch 1, so per-epoch costs (DALI builds a pipeline per epoch, FFCV starts
its thread) are included. Views are consumed on the training device (a CUDA sync ends the timing).
Prints a markdown table and writes it with a JSON record (device, versions, command, numbers) to
bench/results/loaders-<device>-<stamp>.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench._common import RESULTS, stamp  # noqa: E402
from data_prep import DataError, load_dataset  # noqa: E402
from data_prep.atomic import write_json, write_text  # noqa: E402
from data_prep.formats import MissingPackage, ensure_formats  # noqa: E402
from fastssl.augment import POLICY_NAMES, TwoViewAugment, policy_pair  # noqa: E402
from fastssl.loaders import make_loader  # noqa: E402
from fastssl.runtime import device_name  # noqa: E402

# variant -> (loader name, options, format to convert beforehand)
VARIANTS = {
    "resident": ("resident", {}, None),
    "torch": ("torch", {}, None),
    "ffcv": ("ffcv", {}, "ffcv-raw"),
    "ffcv-jpg": ("ffcv", {"mode": "jpg"}, "ffcv-jpg"),
    "ffcv-crops": ("ffcv", {"crops": "ffcv"}, "ffcv-raw"),
    "dali": ("dali", {}, "dali"),
}
NOTES = {
    "resident": "uint8 dataset on the device, batched device-side augmentation",
    "torch": "DataLoader, per-sample augmentation in worker processes (baseline)",
    "ffcv": "FFCV raw .beton, decode on CPU threads, device-side views",
    "ffcv-jpg": "FFCV JPEG .beton (q90), decode on CPU threads, device-side views",
    "ffcv-crops": "FFCV raw .beton, both crops+flips by a numba FFCV Operation, colour on the device",
    "dali": "DALI webdataset JPEGs (q90), mixed/nvJPEG decode on GPU (CPU ops without one)",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100"))
    p.add_argument("--data", default=None, help="dataset location (default: as load_dataset: $FASTSSL_DATA, cache, ...)")
    p.add_argument("--loaders", nargs="+", default=list(VARIANTS), choices=tuple(VARIANTS))
    p.add_argument("--batch-size", type=int, default=None, help="default: 512 on CUDA, 256 on CPU")
    p.add_argument("--aug", default="default", choices=POLICY_NAMES)
    p.add_argument("--subset", type=int, default=None,
                   help="train images per epoch (default: all on CUDA, 10240 on CPU)")
    p.add_argument("--warmup-batches", type=int, default=3)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads, the same for every loader (default: torch's default)")
    p.add_argument("--workers", type=int, default=None,
                   help="torch DataLoader workers / FFCV threads / DALI threads (default: each loader's)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/loaders-<device>-<stamp>.json)")
    return p.parse_args(argv)


def versions() -> dict:
    """Installed distributions (ffcv 1.0.2's own __version__ says 0.0.3rc1: ask the metadata)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("ffcv", "nvidia-dali-cuda120", "nvidia-dali-cuda130", "numba", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(variant, ds, idx, args, device, augment) -> dict:
    name, opts, fmt = VARIANTS[variant]
    opts = dict(opts)
    if args.workers is not None and name in ("torch", "ffcv"):
        opts["workers"] = args.workers
    if args.workers is not None and name == "dali":
        opts["threads"] = args.workers
    try:
        if fmt:
            ensure_formats(ds, [fmt], splits=("train",), verbose=True)  # not timed
        t0 = time.perf_counter()
        loader = make_loader(name, ds, idx, args.batch_size, augment, device, seed=0, verbose=False, **opts)
        setup_s = time.perf_counter() - t0
    except MissingPackage as e:
        return dict(loader=variant, skipped=str(e))
    torch.set_num_threads(args.threads)  # the same for every loader (importing ffcv changes it)
    loader.set_epoch(0)
    t0 = time.perf_counter()
    for i, _ in enumerate(loader):
        if i + 1 >= args.warmup_batches:
            break
    sync(device)
    warmup_s = time.perf_counter() - t0
    loader.set_epoch(1)
    batches, checksum = 0, torch.zeros((), device=device)
    t0 = time.perf_counter()
    for views, y in loader:
        checksum += views[0][0, 0, 0, 0] + views[1][-1, -1, -1, -1]  # touch both views on the device
        batches += 1
    sync(device)
    epoch_s = time.perf_counter() - t0
    if hasattr(loader, "close"):
        loader.close()
    pairs = batches * args.batch_size
    return dict(loader=variant, pairs=pairs, batches=batches, epoch_s=epoch_s, pairs_per_s=pairs / epoch_s,
                setup_s=setup_s, warmup_s=warmup_s, options=opts, note=NOTES[variant])


def table(rows, baseline) -> str:
    lines = ["| loader | pairs/s | vs torch | epoch (s) | setup (s) | first batches (s) | what |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['loader']} | skipped | | | | | {r['skipped'][:90]} |")
            continue
        ratio = f"{r['pairs_per_s'] / baseline:.2f}x" if baseline else "n/a"
        lines.append(f"| {r['loader']} | {r['pairs_per_s']:.0f} | {ratio} | {r['epoch_s']:.2f} | {r['setup_s']:.2f} "
                     f"| {r['warmup_s']:.2f} | {r['note']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("loaders.py: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    args.batch_size = args.batch_size or (512 if device.type == "cuda" else 256)
    try:
        ds = load_dataset(args.dataset, args.data, verbose=False)
    except DataError as e:
        print(f"loaders.py: error: {e}", file=sys.stderr)
        return 1
    n = len(ds.train_y)
    subset = args.subset if args.subset is not None else (n if device.type == "cuda" else 10240)
    idx = np.arange(min(subset, n)) if subset < n else None
    images = min(subset, n)
    augment = TwoViewAugment(*policy_pair(args.aug), ds.mean, ds.std)
    command = "python bench/loaders.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"device: {device_name(device)}; {ds.name} ({ds.source}), {images} images/epoch, batch {args.batch_size}, "
          f"policy {args.aug}", flush=True)
    rows = []
    for variant in (["torch"] if "torch" in args.loaders else []) + [v for v in args.loaders if v != "torch"]:
        print(f"  {variant} ...", flush=True)
        rows.append(bench_one(variant, ds, idx, args, device, augment))
        r = rows[-1]
        print(f"  {variant}: " + (f"{r['pairs_per_s']:.0f} pairs/s" if "skipped" not in r else r["skipped"]), flush=True)
    base = next((r["pairs_per_s"] for r in rows if r["loader"] == "torch" and "skipped" not in r), None)
    md = table(rows, base)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    header = (f"Loader throughput, {ds.name} ({images} images/epoch), batch {args.batch_size}, policy {args.aug}, "
              f"device {device_name(device)}; one timed epoch after {args.warmup_batches} warm-up batches; "
              f"load average at the end {load[0]:.1f}" if load else "")
    print("\n" + header + "\n\n" + md)
    tag = "cuda" if device.type == "cuda" else "cpu"
    out = args.out or RESULTS / f"loaders-{tag}-{stamp()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = dict(command=command, device=device_name(device), versions=versions(), platform=platform.platform(),
                  time=_dt.datetime.now().isoformat(timespec="seconds"), dataset=ds.name, source=ds.source,
                  images_per_epoch=images, batch_size=args.batch_size, policy=args.aug, torch_threads=torch.get_num_threads(),
                  load_average=load, results=rows)
    write_json(out, record, default=str)
    write_text(out.with_suffix(".md"), f"`{command}`\n\n{header}\n\n{md}\n")
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
