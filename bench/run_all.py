"""Everything worth measuring on a GPU lease, in one command that fits a 10-minute call (about 9 min on an H100).

    FASTSSL_DATA=.data python bench/run_all.py            # on the GPU machine (.data holds cifar10-jpeg-q75.tar.gz)
    python bench/run_all.py --cpu-smoke --data DIR        # the same orchestration, tiny sizes, on a CPU

Runs, each as a subprocess with its own time limit (a piece that overruns is stopped and what it had
written is kept): data decode/cache, the CUDA kernel tests, bench/kernels.py, bench/loaders.py
(FFCV/DALI only where installed, else skipped with the reason), bench/train_step.py, a timed
``scripts/pretrain.py --method dare --fast`` and a few epochs of SimCLR ResNet-18 on CIFAR-10
(seconds per epoch). Everything goes to bench/results/<device>-<stamp>/: each piece's log and JSON,
and index.json / index.md (device, versions, per piece: command, status, wall time, key numbers).
Without CUDA it refuses, unless ``--cpu-smoke`` asks for the tiny CPU variant (it tests the plumbing).

What each piece's figure must show to count, with the targets of DESIGN.md section 7, is listed in
bench/README.md ("Benchmarks: what each figure must show"); index.md points there. In short: kernels: at
2N = 8192, d = 128, fused forward+backward >= 3x eager and >= 1.5x torch.compile, 2N = 65536 within 1 GiB
of extra memory, and "fused vs unsplit" >= 1 where the launch plan splits columns; loaders: the data path
delivers at least the training step's images/s; train-step and simclr-r18-cifar10: ResNet-18 at <= 2 s
per CIFAR-10 epoch (>= 25,000 images/s); pretrain-dare-fast: a complete run whose kNN beats its
initialisation; kernel-tests: 0 failed. To add a piece: an entry in ``pieces()`` and a row in bench/README.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench._common import RESULTS, device_tag, environment, stamp  # noqa: E402

KERNEL_TESTS = ["tests/test_kernels_contrastive.py", "tests/test_kernels_dare.py", "tests/test_kernels_compile.py"]
TINY = ["--width", "8", "--batch-size", "16", "--proj-hidden", "32", "--proj-dim", "16", "--knn-k", "10",
        "--device", "cpu"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="no CUDA: run every piece at tiny sizes on the CPU")
    p.add_argument("--data", default=None, help="dataset location (default: $FASTSSL_DATA, cache, download)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results/<device>-<stamp>)")
    p.add_argument("--only", nargs="+", default=None, help="run only these pieces (names as in index.json)")
    p.add_argument("--deadline", type=float, default=530.0,
                   help="seconds for the whole run; a piece gets min(its limit, what is left) (default: %(default)s)")
    return p.parse_args(argv)


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def pieces(args, out: Path) -> list[dict]:
    """name, argv (or skip reason), time limit (s), and what it writes."""
    py, smoke = sys.executable, args.cpu_smoke
    data = ["--data", args.data] if args.data else []
    loaders = ["resident", "torch"]
    loader_skips = {}
    for name, module, extra in (("ffcv", "ffcv", ["ffcv", "ffcv-jpg", "ffcv-crops"]), ("dali", "nvidia.dali", ["dali"])):
        if smoke:
            loader_skips[name] = "--cpu-smoke times only the resident and torch loaders"
        elif module_available(module):
            loaders += extra
        else:
            loader_skips[name] = f"{module} is not installed on this machine (pip install -e '.[{name}]')"
    out_of = lambda name: str(out / name)  # noqa: E731
    ps = [
        dict(name="data", limit=45, argv=[py, "-m", "data_prep", "--dataset", "cifar10", *data]),
        dict(name="kernel-tests", limit=40,
             argv=[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "gpu or cuda", *KERNEL_TESTS],
             skip=("--cpu-smoke: the kernel tests need CUDA here (the CPU suite covers them in the interpreter)"
                   if smoke else None if module_available("pytest") else "pytest is not installed on this machine")),
        dict(name="kernels", limit=60, json="kernels.json",
             argv=[py, "bench/kernels.py", "--out", out_of("kernels.json")]
             # the training precisions (tf32, bf16), split vs unsplit; rows are saved one by one, so a timeout
             # keeps the sizes measured first
             + ([] if smoke else ["--sizes", "1024", "8192", "65536", "--dims", "128", "--rep", "25", "--no-dare"])),
        dict(name="loaders", limit=45, json="loaders.json", skipped_loaders=loader_skips,
             argv=[py, "bench/loaders.py", "--loaders", *loaders, "--out", out_of("loaders.json"), *data]
             + (["--subset", "64", "--batch-size", "16", "--workers", "0"] if smoke else ["--subset", "20480"])),
        dict(name="train-step", limit=160, json="train_step.json",
             argv=[py, "bench/train_step.py", "--out", out_of("train_step.json"), *data]
             + (["--encoders", "resnet18", "--width", "8", "--batch-size", "16", "--steps", "2", "--warmup", "1"]
                if smoke else ["--steps", "20", "--warmup", "3"])),
        dict(name="pretrain-dare-fast", limit=110, run_dir="pretrain-dare-fast",
             argv=[py, "scripts/pretrain.py", "--method", "dare", "--fast", "--no-progress",
                   "--out", out_of("pretrain-dare-fast"), *data] + (TINY + ["--epochs", "1"] if smoke else [])),
        dict(name="simclr-r18-cifar10", limit=60, run_dir="simclr-r18-cifar10",
             argv=[py, "scripts/pretrain.py", "--method", "simclr", "--encoder", "resnet18", "--dataset", "cifar10",
                   "--epochs", "3", "--no-linear-eval", "--no-progress", "--out", out_of("simclr-r18-cifar10"), *data]
             + (TINY if smoke else [])),
        # a lease of its own (python bench/run_all.py --only time-to-accuracy): time to 80% kNN, speedrun
        # against default, SimCLR and DARe, ResNet-18 on full CIFAR-10; runs start only while they fit
        dict(name="time-to-accuracy", limit=500, json="time_to_accuracy.json", optional=True,
             argv=[py, "bench/time_to_accuracy.py", "--out", out_of("time_to_accuracy.json"),
                   "--runs-dir", out_of("time-to-accuracy-runs"), *data]
             + (["--methods", "simclr", "--candidates", "default", "--seeds", "0", "--budget", "3",
                 "--knn-every-steps", "2", "--", *TINY] if smoke else ["--gpu", "--time-limit", "470"])),
    ]
    if args.only:
        unknown = set(args.only) - {p["name"] for p in ps}
        if unknown:
            raise ValueError(f"--only: unknown piece(s) {', '.join(sorted(unknown))}; pieces: "
                             + ", ".join(p["name"] for p in ps))
        ps = [p for p in ps if p["name"] in args.only]
    else:
        ps = [p for p in ps if not p.get("optional")]  # optional pieces run only when --only names them
    return ps


def run_piece(piece: dict, limit: float, log: Path) -> dict:
    """Run one piece in its own process group; stop the group when it overruns ``limit``."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(piece["argv"]) + "\n")
        f.flush()
        proc = subprocess.Popen(piece["argv"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, status = proc.returncode, "timeout"
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    return dict(status=status, rc=rc, wall_s=time.perf_counter() - t0)


def pretrain_summary(folder: Path) -> dict:
    """Seconds per epoch (the first epoch, compilation included, apart) and results of a pretrain run."""
    out = {}
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        rows = [r for r in (json.loads(line) for line in metrics.read_text().splitlines() if line.strip())
                if r.get("event", "epoch") == "epoch"]  # kNN rows are points, not epochs
        epochs = [r["epoch_s"] for r in rows]
        out.update(epochs_done=len(rows), epoch_s=epochs, first_epoch_s=epochs[0] if epochs else None,
                   s_per_epoch=statistics.median(epochs[1:]) if len(epochs) > 1 else (epochs[0] if epochs else None),
                   images_per_s=rows[-1]["images_per_s"] if rows else None,
                   knn_top1=next((r["knn_top1"] for r in reversed(rows) if r.get("knn_top1") is not None), None))
    summary = folder / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        out.update({k: s[k] for k in ("epochs", "steps", "wall_s", "device", "knn_top1_init", "knn_top1",
                                       "linear_top1")})
        out.update(batch_size=s["config"]["batch_size"], width=s["config"]["width"])
    return out


def tail(path: Path, lines: int = 3) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:])[-400:]


def index_markdown(index: dict) -> str:
    env = index["environment"]
    lines = [f"# bench/run_all.py ({index['mode']})", "",
             f"Device {env['device']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
             f"python {env['python']}; {env['time']}; total {index['wall_s']:.0f} s.", "",
             "What each figure must show to count, with its target: bench/README.md.", "",
             "| piece | status | wall (s) | limit (s) | result |", "|---|---|---:|---:|---|"]
    for p in index["pieces"]:
        res = p.get("skip") or ""
        if "pretrain" in p:
            r = p["pretrain"]
            if r.get("s_per_epoch") is not None:
                res = (f"{r['epochs_done']} epochs, {r['s_per_epoch']:.2f} s/epoch (first {r['first_epoch_s']:.1f} s)"
                       + (f", kNN {r['knn_top1']:.2f}" if r.get("knn_top1") is not None else "")
                       + (f", linear {r['linear_top1']:.2f}" if r.get("linear_top1") is not None else ""))
        elif p.get("json"):
            res = p["json"] if p["status"] != "skipped" else res
        if p["status"] in ("failed", "timeout") and not res:
            res = p.get("log_tail", "")
        wall = f"{p['wall_s']:.1f}" if p.get("wall_s") is not None else ""
        lines.append(f"| {p['name']} | {p['status']} | {wall} | {p['limit']} | {res} |")
    for name, why in index.get("skipped_loaders", {}).items():
        lines.append(f"\nLoader {name} skipped: {why}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("run_all.py: error: no CUDA device on this machine; this is the GPU-lease command "
              "(--cpu-smoke runs its tiny CPU variant to test the orchestration)", file=sys.stderr)
        return 2
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    out = args.out or RESULTS / f"{'cpu-smoke' if args.cpu_smoke else device_tag()}-{stamp()}"
    try:
        todo = pieces(args, out)
    except ValueError as e:
        print(f"run_all.py: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/run_all.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    env = environment(command)
    print(f"run_all ({mode}): {env['device']} | torch {env['torch']} | triton {env['triton']} -> {out}", flush=True)
    t_start = time.perf_counter()
    index = dict(mode=mode, environment=env, folder=str(out), pieces=[], wall_s=0.0,
                 skipped_loaders=next((p["skipped_loaders"] for p in todo if "skipped_loaders" in p), {}))

    def save():
        index["wall_s"] = time.perf_counter() - t_start
        (out / "index.json").write_text(json.dumps(index, indent=2, default=str) + "\n")
        (out / "index.md").write_text(index_markdown(index))

    for piece in todo:
        rec = dict(name=piece["name"], limit=piece["limit"], command=shlex.join(piece["argv"]), json=piece.get("json"))
        left = args.deadline - (time.perf_counter() - t_start)
        if piece.get("skip"):
            rec.update(status="skipped", skip=piece["skip"])
        elif left < 5:
            rec.update(status="skipped", skip=f"no time left of the {args.deadline:.0f} s deadline")
        else:
            limit = min(piece["limit"], left)
            print(f"[{time.perf_counter() - t_start:5.0f} s] {piece['name']} (limit {limit:.0f} s) ...", flush=True)
            log = out / f"{piece['name']}.log"
            rec.update(run_piece(piece, limit, log), log=log.name)
            if rec["status"] != "ok":
                rec["log_tail"] = tail(log)
            if piece.get("run_dir"):
                rec["pretrain"] = pretrain_summary(out / piece["run_dir"])
            print(f"        {rec['status']} in {rec['wall_s']:.1f} s"
                  + (f": {rec['log_tail']}" if rec.get("log_tail") else ""), flush=True)
        index["pieces"].append(rec)
        save()
    save()
    print("\n" + index_markdown(index))
    print(f"wrote {out}/index.json and index.md")
    return 0 if all(p["status"] in ("ok", "skipped") for p in index["pieces"]) else 1


if __name__ == "__main__":
    sys.exit(main())
