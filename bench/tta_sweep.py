"""bench/time_to_accuracy.py's sweep: the candidate recipes, the command of every run, running them one at a
time in their own process groups (a run that overruns is stopped), and reading a finished run folder back.

Every run is ``scripts/pretrain.py`` in a subprocess with the same seed, data subset, evaluation subsets and
``--time-budget``, and the same pinned thread count; its folder keeps run.json (the command, status, commit),
its log, summary.json and metrics.jsonl. The report is bench/tta_report.py's.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench._common import stop_group  # noqa: E402

PRETRAIN = "scripts/pretrain.py"

# The recipe changes under test: name -> extra scripts/pretrain.py arguments (on top of --fast on a
# CPU, or the --gpu settings). "default" is the method's own recipe; "speedrun" is the method's
# --recipe speedrun. A candidate that names no recipe gets --recipe default (candidate_args): --fast
# alone would take a method's fast_recipe, and a change is measured against the default recipe.
CANDIDATES = {
    "default": [],
    "multicrop": ["--local-crops", "4", "--local-size", "16"],   # 2 global + 4 local 16 px crops
    "progressive": ["--res-schedule", "16,24,32"],              # global crops at 16, 24, 32 px, thirds
    "progressive-long": ["--res-schedule", "16@0.5,24@0.8,32"],  # half the budget at 16 px, a fifth at 32
    "warmup-short": ["--warmup-epochs", "0.05"],                # schedule shape: --fast warms up 0.2 epochs
    "lr-x2": ["--lr", "1.0"],                                   # --fast: 0.5 per 256 images
    "temp-0.5": ["--temperature", "0.5"],                       # default: 0.2
    "speedrun": ["--recipe", "speedrun"],
}
SWEEP = ["default", "multicrop", "progressive", "warmup-short", "lr-x2", "temp-0.5"]  # the CPU screening set

# --gpu: the whole dataset and network, kNN on the full train bank and test set (no linear probe).
GPU_ARGS = ["--dataset", "cifar10", "--encoder", "resnet18", "--width", "64", "--train-subset", "0",
            "--knn-bank", "0", "--knn-queries", "0", "--device", "cuda"]

RUN_INFO, SUMMARY, METRICS, LOG = "run.json", "summary.json", "metrics.jsonl", "run.log"


class SweepError(Exception):
    """A bad option or run folder: one line, exit code 2."""

# ---- what to run --------------------------------------------------------------------------------

def candidate_args(name: str) -> list[str]:
    """Extra arguments of a candidate; ``a+b`` joins candidates that set different options."""
    args, owner = [], {}
    for part in name.split("+"):
        if part not in CANDIDATES:
            raise SweepError(f"unknown candidate {part!r}; candidates: {', '.join(CANDIDATES)} (join with +)")
        extra = CANDIDATES[part]
        for flag in (a for a in extra if a.startswith("--")):
            if flag in owner:
                raise SweepError(f"candidate {name!r}: {owner[flag]} and {part} both set {flag}")
            owner[flag] = part
        args += extra
    return args if "--recipe" in owner else args + ["--recipe", "default"]


def run_name(method: str, candidate: str, seed: int) -> str:
    return f"{method}-{candidate}-s{seed}"


def plan(args) -> list[dict]:
    """One entry per run, seeds outermost: a sweep stopped half way holds complete comparisons."""
    common = ["--no-progress", "--no-linear-eval", "--time-budget", f"{args.budget:g}",
              "--knn-every-steps", str(args.knn_every_steps)]
    common += GPU_ARGS if args.gpu else ["--fast"]
    if args.target_knn:
        common += ["--target-knn", f"{args.target_knn:g}"]
    if args.data:
        common += ["--data", args.data]
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            for cand in args.candidates:
                folder = args.runs_dir / run_name(method, cand, seed)
                argv = [PRETRAIN, "--method", method, "--seed", str(seed), "--out", str(folder), *common,
                        *candidate_args(cand), *args.pretrain_args]
                runs.append(dict(method=method, candidate=cand, seed=seed, folder=folder, argv=argv))
    return runs


def check_commands(runs: list[dict], parser: argparse.ArgumentParser) -> list[str]:
    """Parse every command with scripts/pretrain.py's own parser; the one-line complaints (empty if all parse)."""
    problems = []
    for run in runs:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parser.parse_args(run["argv"][1:])
        except SystemExit:
            last = err.getvalue().strip().splitlines()[-1:] or ["cannot parse"]
            problems.append(f"{run_name(run['method'], run['candidate'], run['seed'])}: {last[0]}")
    return problems


def pretrain_parser() -> argparse.ArgumentParser | None:
    try:
        from fastssl.config import build_parser
        return build_parser()
    except Exception:  # pragma: no cover - a broken checkout: the first run will say why
        return None


def child_env(threads: int) -> dict:
    """The same pinned thread count for every run (OpenMP on a shared CPU degrades badly otherwise)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    if env.get("FASTSSL_DATA"):  # the runs start in the repository root
        env["FASTSSL_DATA"] = os.path.abspath(env["FASTSSL_DATA"])
    return env

# ---- running --------------------------------------------------------------------------------------

def run_status(run: dict) -> str:
    """'done' (summary.json from this very command), 'new', or raises when the folder holds something else."""
    folder = run["folder"]
    if not (folder / SUMMARY).exists():
        return "new"
    info = folder / RUN_INFO
    recorded = json.loads(info.read_text()).get("argv") if info.exists() else None
    if recorded != run["argv"]:
        raise SweepError(f"{folder} holds a finished run of another command; use another --runs-dir "
                         f"(or delete that folder)")
    return "done"


def execute(run: dict, threads: int, timeout: float) -> dict:
    """Run one pretraining job in its own process group; stop the group if it overruns ``timeout``."""
    folder = run["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (SUMMARY, METRICS):  # a run is only ever restarted from scratch, never mixed with an old one
        (folder / stale).unlink(missing_ok=True)
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    extra = run["extra"] if "extra" in run else candidate_args(run["candidate"])  # a run of another tool: its own
    info = dict(argv=run["argv"], candidate=run["candidate"], candidate_args=extra, threads=threads,
                core=run.get("core"), load_average_start=load, commit=git_commit(), status="running")
    (folder / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    t0 = time.perf_counter()
    with open(folder / LOG, "w") as log:
        log.write("$ " + shlex.join(run["argv"]) + "\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, *run["argv"]], cwd=ROOT, env=child_env(threads), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        if run.get("core") is not None:  # set before the child has imported torch: its threads inherit it
            os.sched_setaffinity(proc.pid, {run["core"]})
        _RUNNING.add(proc)
        try:
            rc = proc.wait(timeout=timeout)
            status = ("interrupted" if _STOPPING.is_set() else
                      "ok" if rc == 0 and (folder / SUMMARY).exists() else "failed")
        except subprocess.TimeoutExpired:
            stop_group(proc, grace_s=15)
            rc, status = proc.returncode, "timeout"
        except KeyboardInterrupt:
            stop_group(proc, grace_s=15)
            info.update(status="interrupted")
            (folder / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
            raise
        finally:
            _RUNNING.discard(proc)
    info.update(status=status, rc=rc, job_s=round(time.perf_counter() - t0, 1))
    (folder / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


def git_commit() -> str | None:
    """The checkout's commit (+ "-dirty"), so that a figure can be traced to the code that made it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")) if head.returncode == 0 else None

def cell(x, fmt="{:.2f}", missing="-") -> str:
    """A number for a table or a log line, ``missing`` when there is none."""
    return missing if x is None else fmt.format(x)


def runs_text(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


# ---- reading the runs -----------------------------------------------------------------------------

def read_run(run: dict, target: float | None = None) -> dict:
    """One run folder as a flat record: final kNN, seconds, steps, and the kNN curve over training seconds."""
    folder = Path(run["folder"])
    rec = dict(method=run["method"], candidate=run["candidate"], seed=run["seed"], folder=str(folder),
               status="not run", curve=[])
    info = folder / RUN_INFO
    if info.exists():
        i = json.loads(info.read_text())
        rec.update(status=i.get("status", "?"), command="python " + shlex.join(i["argv"]),
                   load_average_start=i.get("load_average_start"), threads=i.get("threads"), commit=i.get("commit"))
    if (folder / METRICS).exists():
        rows = [json.loads(line) for line in (folder / METRICS).read_text().splitlines() if line.strip()]
        knn_rows = [r for r in rows if r.get("event") == "knn"]
        if not knn_rows:  # a trainer without kNN rows: the epoch rows that carry a kNN
            knn_rows = [r for r in rows if r.get("event", "epoch") == "epoch" and r.get("knn_top1") is not None
                        and r.get("train_s") is not None]
        rec["curve"] = [[float(r["train_s"]), float(r["knn_top1"])] for r in knn_rows if r.get("knn_top1") is not None]
    if (folder / SUMMARY).exists():
        s = json.loads((folder / SUMMARY).read_text())
        if rec["status"] in ("not run", "?", "running"):
            rec["status"] = "ok"
        rec.update({k: s.get(k) for k in ("knn_top1", "knn_top1_init", "train_s", "eval_s", "wall_s", "steps",
                                          "images_seen", "time_budget_s", "time_to_target_s", "target_knn",
                                          "device")})
        cfg = s.get("config") or {}
        rec.update({k: cfg.get(k) for k in ("width", "batch_size", "train_subset", "knn_bank", "knn_queries")})
        if rec["knn_top1_init"] is not None and (not rec["curve"] or rec["curve"][0][0] > 0):
            rec["curve"].insert(0, [0.0, float(rec["knn_top1_init"])])
    if rec["status"] in ("running", "interrupted") and not (folder / SUMMARY).exists():
        rec["status"] = "incomplete"  # stopped by a kill or Ctrl-C: rerun with --resume
    if target is not None and rec.get("time_to_target_s") is None:
        rec["time_to_target_s"] = next((t for t, k in rec["curve"] if k >= target), None)
    rec["stopped_early"] = bool(rec.get("time_budget_s") and rec.get("train_s") is not None
                                and rec["train_s"] < 0.95 * rec["time_budget_s"]
                                and rec.get("time_to_target_s") is None)
    return rec


# ---- the sweep ----------------------------------------------------------------------------------

def sweep(args, todo: list[dict], overhead: float) -> None:
    """Run ``todo`` in groups of ``args.jobs`` side by side (a method's default and candidate together, each
    pinned to its own core); with a time limit, start a group only if it is expected to fit."""
    t_start = time.perf_counter()
    cores = run_cores(args.jobs)
    for first in range(0, len(todo), len(cores)):
        group = todo[first:first + len(cores)]
        timeout = 2 * args.budget + 4 * overhead  # a stuck run, not a slow one
        if args.time_limit is not None:
            left = args.time_limit - (time.perf_counter() - t_start)
            if left < args.budget + overhead:
                print(f"time limit: {len(todo) - first} run(s) not started ({left:.0f} s left of "
                      f"{args.time_limit:g} s, a run needs ~{args.budget + overhead:.0f} s)", flush=True)
                return
            timeout = min(timeout, left)
        for i, (run, core) in enumerate(zip(group, cores), start=first):
            run["core"] = core
            where = "" if core is None else f" on core {core}"
            print(f"[{time.perf_counter() - t_start:6.0f} s] run {i + 1}/{len(todo)} "
                  f"{run_name(run['method'], run['candidate'], run['seed'])}{where} ...", flush=True)
        infos = run_group(group, args.threads, timeout)
        for run, info in zip(group, infos):
            rec = read_run(run, args.target_knn or None)
            if rec.get("train_s") is not None:  # the latest run predicts the next best (compile caches warm up)
                overhead = max(0.0, info["job_s"] - rec["train_s"])
            print(f"         {run_name(run['method'], run['candidate'], run['seed'])}: {info['status']} in "
                  f"{info['job_s']:.0f} s: kNN {cell(rec.get('knn_top1_init'))} -> {cell(rec.get('knn_top1'))}, "
                  f"{cell(rec.get('steps'), '{}')} steps in {cell(rec.get('train_s'), '{:.0f}')} s of training"
                  + ("" if info["status"] == "ok" else f"; see {run['folder'] / LOG}"), flush=True)


def run_cores(jobs: int) -> list:
    """The core each of ``jobs`` side-by-side runs is pinned to ([None]: one run at a time, not pinned)."""
    if jobs == 1:
        return [None]
    usable = sorted(os.sched_getaffinity(0))
    if jobs > len(usable):
        raise SweepError(f"--jobs {jobs}: this process may use {len(usable)} core(s)")
    return usable[:jobs]


# processes of the runs under way, and whether the sweep is being stopped (Ctrl-C, SIGTERM)
_RUNNING: set = set()
_STOPPING = threading.Event()


def run_group(group: list[dict], threads: int, timeout: float) -> list[dict]:
    """``execute`` every run of ``group`` at once (one thread each); on Ctrl-C stop them all."""
    if len(group) == 1:
        return [execute(group[0], threads, timeout)]
    infos = [None] * len(group)

    def one(k):
        try:
            infos[k] = execute(group[k], threads, timeout)
        except Exception as e:  # a run that could not even start is reported, not lost with its thread
            infos[k] = dict(status="failed", rc=None, job_s=0.0, error=f"{type(e).__name__}: {e}")

    workers = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(len(group))]
    for w in workers:
        w.start()
    try:
        for w in workers:
            while w.is_alive():
                w.join(timeout=1.0)  # a short wait keeps Ctrl-C (and SIGTERM) responsive
    except KeyboardInterrupt:
        _STOPPING.set()
        for proc in list(_RUNNING):
            stop_group(proc, grace_s=15)
        for w in workers:
            w.join()
        _STOPPING.clear()
        raise
    return infos
