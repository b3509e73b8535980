"""The command for a GPU lease: every piece worth measuring, each in its own time limit, results brought home.

    python bench/run_all.py --quick --data .data          # first light: at most 300 s (bench/README.md)
    python bench/run_all.py --data .data                  # the full plan, one 10-minute call
    python bench/run_all.py --quick --dry-run             # the plan and its per-piece limits, runs nothing
    python bench/run_all.py --cpu-smoke --data DIR        # the same orchestration, tiny sizes, on a CPU

The data comes from ``--data`` or ``$FASTSSL_DATA`` and is never downloaded: without it, one line and exit 2.
Each piece (bench/run_plan.py) runs as a subprocess with unbuffered output and its own limit; one that
overruns is stopped and what it wrote is kept. The run folder (``--out``; default bench/results/<device>-<stamp>,
or a temporary folder when ``$OUT`` is set) gets each piece's log, JSON and markdown as it goes, and
index.json / index.md (device, versions, per piece: command, status, wall time, key numbers) after every piece.
When ``$OUT`` is set, it receives after every piece exactly three files that a lease can bring back (names of
letters, digits, ``._-``, each at most 16 MiB, no folders): index.md, index.json and one .tar.gz of every
piece's logs, JSON, markdown and charts (no checkpoints). What each piece's figure must show to count, with
its target, is listed in bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

import torch  # noqa: E402

from bench._common import RESULTS, device_tag, environment, stamp, stop_group  # noqa: E402
from bench.run_plan import FULL_BUDGET_S, QUICK_BUDGET_S, SMOKE_SLACK, pieces  # noqa: E402
from data_prep import DataError  # noqa: E402
from data_prep.atomic import atomic_path, write_json, write_text  # noqa: E402
from data_prep.load import DATA_ENV  # noqa: E402
from data_prep.sources import find_source  # noqa: E402
from data_prep.specs import get_spec  # noqa: E402

OUT_ENV = "OUT"
MAX_FILE_BYTES = 16 * 2**20  # what a lease brings back from $OUT: at most 8 files of 16 MiB
BUNDLED = {".log", ".json", ".jsonl", ".md", ".txt", ".png", ".csv", ".xml"}  # never checkpoints (.pt) or caches


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"first light: the subset that fits {QUICK_BUDGET_S:.0f} s")
    p.add_argument("--cpu-smoke", action="store_true",
                   help=f"no CUDA: run the plan's pieces at tiny sizes on the CPU (limits x{SMOKE_SLACK})")
    p.add_argument("--dry-run", action="store_true", help="print the plan, its limits and commands; run nothing")
    p.add_argument("--data", default=None, help=f"where CIFAR-10 is (default: ${DATA_ENV}); never downloaded")
    p.add_argument("--out", type=Path, default=None,
                   help=f"run folder (default: bench/results/<device>-<stamp>, or a temporary one when ${OUT_ENV} "
                   "is set)")
    p.add_argument("--only", nargs="+", default=None, help="run only these pieces (names as in index.json); "
                   "'time-to-accuracy' is a lease of its own")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds for the whole run; a piece gets min(its limit, what is left) "
                   f"(default: {QUICK_BUDGET_S:.0f} with --quick, else {FULL_BUDGET_S:.0f}; x{SMOKE_SLACK} with "
                   "--cpu-smoke)")
    args = p.parse_args(argv)
    args.plan = "quick" if args.quick else "full"
    if args.deadline is None:
        args.deadline = (QUICK_BUDGET_S if args.quick else FULL_BUDGET_S) * (SMOKE_SLACK if args.cpu_smoke else 1)
    if args.deadline <= 0:
        p.error(f"--deadline must be > 0 seconds, got {args.deadline:g}")
    return args


def select(args, out: Path) -> list[dict]:
    """The pieces to run: the plan's, or those ``--only`` names (then from every plan)."""
    data = str(Path(args.data).resolve()) if args.data else None
    todo = pieces(args.plan, args.cpu_smoke, data, out)
    if not args.only:
        return todo
    known = {p["name"]: p for plan in ("full", "quick", "time-to-accuracy")
             for p in pieces(plan, args.cpu_smoke, data, out)}
    unknown = sorted(set(args.only) - set(known))
    if unknown:
        raise ValueError(f"--only: unknown piece(s) {', '.join(unknown)}; pieces: {', '.join(known)}")
    return [known[name] for name in dict.fromkeys(args.only)]


def check_data(data: str | None) -> str:
    """The CIFAR-10 location, or a one-line DataError: this command never downloads."""
    if not data:
        raise DataError(f"no dataset given: pass --data DIR or set {DATA_ENV} (a folder holding "
                        "cifar10-jpeg-q75.tar.gz or the official archive); this command never downloads")
    find_source(Path(data).expanduser(), get_spec("cifar10"))
    return str(Path(data).expanduser().resolve())


def child_env(data: str | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # a piece stopped at its limit has flushed what it printed
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    if data:
        env[DATA_ENV] = data
    return env


def run_piece(piece: dict, limit: float, log: Path, env: dict | None = None) -> dict:
    """Run one piece in its own process group; stop the group when it overruns ``limit``."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(piece["argv"]) + "\n")
        f.flush()
        proc = subprocess.Popen(piece["argv"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env or child_env(None))
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            stop_group(proc)
            rc, status = proc.returncode, "timeout"
        except KeyboardInterrupt:
            stop_group(proc)
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
        out.update({k: s.get(k) for k in ("epochs", "steps", "wall_s", "device", "knn_top1_init", "knn_top1",
                                          "linear_top1")})
        out.update(batch_size=s["config"]["batch_size"], width=s["config"]["width"])
    return out


def tail(path: Path, lines: int = 3) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:])[-400:]


def index_markdown(index: dict) -> str:
    env = index["environment"]
    lines = [f"# bench/run_all.py ({index['mode']}, {index['plan']} plan)", "",
             f"Device {env['device']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
             f"python {env['python']}; {env['time']}; total {index['wall_s']:.0f} s of the {index['deadline']:.0f} s "
             f"deadline.", "", f"`{env['command']}`", "",
             "What each figure must show to count, with its target: bench/README.md. Logs and JSON of every piece: "
             + (f"`{index['bundle']}`." if index.get("bundle") else f"`{index['folder']}`."), "",
             "| piece | status | wall (s) | limit (s) | result |", "|---|---|---:|---:|---|"]
    for p in index["pieces"]:
        res = p.get("skip") or ""
        if p.get("pretrain", {}).get("s_per_epoch") is not None:
            r = p["pretrain"]
            res = (f"{r['epochs_done']} epochs, {r['s_per_epoch']:.2f} s/epoch (first {r['first_epoch_s']:.1f} s)"
                   + (f", kNN {r['knn_top1']:.2f}" if r.get("knn_top1") is not None else "")
                   + (f", linear {r['linear_top1']:.2f}" if r.get("linear_top1") is not None else ""))
        elif p.get("json") and p["status"] != "skipped":
            res = p["json"]
        if p["status"] in ("failed", "timeout"):
            res = (res + "; " if res else "") + p.get("log_tail", "")
        wall = f"{p['wall_s']:.1f}" if p.get("wall_s") is not None else ""
        lines.append(f"| {p['name']} | {p['status']} | {wall} | {p['limit']:.0f} | {res.replace('|', '/')} |")
    for name, why in index.get("skipped_loaders", {}).items():
        lines.append(f"\nLoader {name} skipped: {why}")
    if index.get("left_out"):
        lines.append("\nLeft out of the bundle (over the size limit): " + ", ".join(index["left_out"]))
    return "\n".join(lines) + "\n"


def bundle(folder: Path, dest: Path) -> list[str]:
    """``dest`` (.tar.gz) of the logs, JSON, markdown and charts under ``folder``, at most 16 MiB: the largest
    files are left out until it fits. Returns what was left out."""
    files = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix in BUNDLED), key=lambda p: str(p))
    left_out = []
    while True:
        with atomic_path(dest, suffix=".tar.gz") as tmp:
            with tarfile.open(tmp, "w:gz") as tar:
                for path in files:
                    tar.add(path, arcname=str(path.relative_to(folder)))
        if dest.stat().st_size <= MAX_FILE_BYTES or not files:
            return left_out
        largest = max(files, key=lambda p: p.stat().st_size)
        files.remove(largest)
        left_out.append(str(largest.relative_to(folder)))


def out_problems(folder: Path) -> list[str]:
    """What in ``folder`` a lease would not bring back: more than 8 files, names outside [A-Za-z0-9._-],
    files over 16 MiB, anything more than 2 folders deep, links."""
    entries = list(folder.rglob("*"))
    files = [p for p in entries if p.is_file() and not p.is_symlink()]
    problems = [f"{len(files)} files (at most 8)"] if len(files) > 8 else []
    for p in entries:
        rel = p.relative_to(folder)
        if not re.fullmatch(r"[A-Za-z0-9._-]+", p.name):
            problems.append(f"{rel}: name outside [A-Za-z0-9._-]")
        if p.is_symlink():
            problems.append(f"{rel}: a link")
        elif p.is_file() and p.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{rel}: {p.stat().st_size} bytes (at most 16 MiB)")
        if len(rel.parts) > 3:
            problems.append(f"{rel}: more than 2 folders deep")
    return problems


def dry_run(args, todo: list[dict]) -> int:
    total = sum(p["limit"] for p in todo if not p.get("skip"))
    print(f"run_all plan {args.plan}{' (cpu-smoke)' if args.cpu_smoke else ''}: {len(todo)} pieces, limits sum to "
          f"{total:.0f} s (deadline {args.deadline:.0f} s)")
    for p in todo:
        what = f"skipped: {p['skip']}" if p.get("skip") else shlex.join(p["argv"])
        print(f"  {p['name']:<20} {p['limit']:>4.0f} s  {what}")
    print(f"limits total: {total:.0f} s")
    return 0


def main(argv=None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # a piece of output printed is a piece of output seen
        sys.stdout.reconfigure(line_buffering=True)
    args = parse_args(argv)
    export = Path(os.environ[OUT_ENV]) if os.environ.get(OUT_ENV) else None
    out = args.out or RESULTS / f"{'cpu-smoke' if args.cpu_smoke else device_tag()}-{stamp()}"
    try:
        if args.dry_run:
            return dry_run(args, select(args, out))
        if not torch.cuda.is_available() and not args.cpu_smoke:
            raise ValueError("no CUDA device on this machine; this is the GPU-lease command (--cpu-smoke runs its "
                             "tiny CPU variant to test the orchestration)")
        if export and args.out and args.out.resolve().is_relative_to(export.resolve()):
            raise ValueError(f"--out {args.out} lies inside ${OUT_ENV}; only the bundle goes there")
        select(args, out)  # --only names pieces that exist
        args.data = data = check_data(args.data or os.environ.get(DATA_ENV))
    except (ValueError, DataError) as e:
        print(f"run_all.py: error: {e}", file=sys.stderr)
        return 2
    if export and not args.out:  # the run folder is scratch: $OUT gets the bundle
        out = Path(tempfile.mkdtemp(prefix="run_all-"))
    todo = select(args, out)
    out.mkdir(parents=True, exist_ok=True)
    if export:
        export.mkdir(parents=True, exist_ok=True)
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    env = environment("python bench/run_all.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    print(f"run_all ({mode}, {args.plan}): {env['device']} | torch {env['torch']} | triton {env['triton']} | "
          f"data {data} -> {out}" + (f" (bundled into {export})" if export else ""))
    t_start = time.perf_counter()
    tarball = f"run_all-{mode}-{args.plan}.tar.gz"
    index = dict(mode=mode, plan=args.plan, deadline=args.deadline, environment=env, folder=str(out), data=data,
                 bundle=tarball if export else None, pieces=[], wall_s=0.0,
                 skipped_loaders=next((p["skipped_loaders"] for p in todo if "skipped_loaders" in p), {}))

    def save():
        index["wall_s"] = time.perf_counter() - t_start
        write_json(out / "index.json", index, default=str)
        write_text(out / "index.md", index_markdown(index))
        if export:  # after every piece: a call cut short still brings back what finished
            index["left_out"] = bundle(out, export / tarball)
            write_json(export / "index.json", index, default=str)
            write_text(export / "index.md", index_markdown(index))

    penv = child_env(data)
    for piece in todo:
        rec = dict(name=piece["name"], limit=piece["limit"], command=shlex.join(piece["argv"]), json=piece.get("json"))
        left = args.deadline - (time.perf_counter() - t_start)
        if piece.get("skip"):
            rec.update(status="skipped", skip=piece["skip"])
        elif left < 5:
            rec.update(status="skipped", skip=f"no time left of the {args.deadline:.0f} s deadline")
        else:
            limit = min(piece["limit"], left)
            print(f"[{time.perf_counter() - t_start:5.0f} s] {piece['name']} (limit {limit:.0f} s) ...")
            log = out / f"{piece['name']}.log"
            rec.update(run_piece(piece, limit, log, penv), log=log.name)
            if rec["status"] != "ok":
                rec["log_tail"] = tail(log)
            if piece.get("run_dir"):
                rec["pretrain"] = pretrain_summary(out / piece["run_dir"])
            print(f"        {rec['status']} in {rec['wall_s']:.1f} s" + (f": {rec['log_tail']}" if rec.get("log_tail")
                                                                        else ""))
        index["pieces"].append(rec)
        save()
    print("\n" + index_markdown(index))
    print(f"{export}: index.md, index.json, {tarball}" if export else f"wrote {out}/index.json and index.md")
    if export and out_problems(export):
        print("run_all.py: warning: " + "; ".join(out_problems(export)), file=sys.stderr)
    if export and not args.out:  # scratch (checkpoints included): everything worth keeping is in the bundle
        shutil.rmtree(out, ignore_errors=True)
    return 0 if all(p["status"] in ("ok", "skipped") for p in index["pieces"]) else 1


if __name__ == "__main__":
    sys.exit(main())
