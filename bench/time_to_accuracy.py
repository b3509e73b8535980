"""Time to accuracy: today's recipe against each candidate recipe change at equal wall clock.

    python bench/time_to_accuracy.py --dry-run                      # print the commands and the estimate
    python bench/time_to_accuracy.py --resume                       # the CPU sweep (--fast, 240 s per run)
    python bench/time_to_accuracy.py --candidates default multicrop+progressive --seeds 0 1 --resume
    python bench/time_to_accuracy.py --gpu --data .data             # GPU: time to 80% kNN, full CIFAR-10, R18

Every run is ``scripts/pretrain.py`` in a subprocess with the same seed, data subset, evaluation
subsets and ``--time-budget`` (training seconds; evaluation is not charged), one run at a time
(they compare at equal wall clock, so they must never overlap) with the same pinned thread count.
``CANDIDATES`` below is the whole list of recipe changes; ``a+b`` on the command line combines
two of them. Each run's folder (``--runs-dir``) keeps its log, summary.json and metrics.jsonl; with
``--resume`` finished runs are skipped, so an interrupted sweep continues where it stopped.

Writes bench/results/time_to_accuracy-<device>-<stamp>.{json,md,png}: per run the kNN top-1 at the
budget (the final kNN), training seconds, steps; per method and candidate the mean kNN gain over
``default`` on the same seeds; the PNG plots kNN against training seconds, one line per recipe.

``--gpu`` (bench/run_all.py's piece): full CIFAR-10, ResNet-18 at full width, full kNN bank and
queries, ``--target-knn 80``: time to 80% kNN of ``speedrun`` against ``default`` for SimCLR and
DARe, runs started only while they fit in ``--time-limit``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
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

from bench._common import RESULTS, device_tag, environment, stamp, write_result  # noqa: E402

PRETRAIN = "scripts/pretrain.py"

# The recipe changes under test: name -> extra scripts/pretrain.py arguments (on top of --fast on a
# CPU, or the --gpu settings). "default" is today's recipe; "speedrun" is whatever --recipe speedrun
# holds (until it is set from these measurements it equals default).
CANDIDATES = {
    "default": [],
    "multicrop": ["--local-crops", "4", "--local-size", "16"],   # 2 global + 4 local 16 px crops
    "progressive": ["--res-schedule", "16,24,32"],              # global crops at 16, 24, 32 px, thirds
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
    return args


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
    info = dict(argv=run["argv"], candidate=run["candidate"], candidate_args=candidate_args(run["candidate"]),
                threads=threads, load_average_start=load, commit=git_commit(), status="running")
    (folder / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    t0 = time.perf_counter()
    with open(folder / LOG, "w") as log:
        log.write("$ " + shlex.join(run["argv"]) + "\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, *run["argv"]], cwd=ROOT, env=child_env(threads), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 and (folder / SUMMARY).exists() else "failed"
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc, status = proc.returncode, "timeout"
        except KeyboardInterrupt:
            _stop(proc)
            info.update(status="interrupted")
            (folder / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
            raise
    info.update(status=status, rc=rc, job_s=round(time.perf_counter() - t0, 1))
    (folder / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already ended
        pass
    proc.wait()


def git_commit() -> str | None:
    """The checkout's commit (+ "-dirty"), so that a figure can be traced to the code that made it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")) if head.returncode == 0 else None


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


def gains(records: list[dict], baseline: str = "default", target_gain: float = 3.0) -> list[dict]:
    """Per method and candidate: kNN minus the baseline's on the same seed, over the seeds both finished;
    and, where both reached the target on a seed, the baseline's time to target over the candidate's."""
    final = {(r["method"], r["candidate"], r["seed"]): r["knn_top1"] for r in records
             if r["status"] == "ok" and r.get("knn_top1") is not None}
    reached = {(r["method"], r["candidate"], r["seed"]): r["time_to_target_s"] for r in records
               if r["status"] == "ok" and r.get("time_to_target_s")}
    out = []
    methods = list(dict.fromkeys(r["method"] for r in records))
    candidates = list(dict.fromkeys(r["candidate"] for r in records))
    for method in methods:
        for cand in candidates:
            if cand == baseline:
                continue
            per_seed = {seed: round(k - final[(method, baseline, seed)], 2) for (m, c, seed), k in final.items()
                        if m == method and c == cand and (method, baseline, seed) in final}
            if not per_seed:
                continue
            seeds = sorted(per_seed)
            speedups = [reached[(method, baseline, s)] / reached[(method, cand, s)] for s in seeds
                        if (method, baseline, s) in reached and (method, cand, s) in reached]
            out.append(dict(method=method, candidate=cand, seeds=seeds, gain_per_seed=[per_seed[s] for s in seeds],
                            mean_gain=round(statistics.fmean(per_seed.values()), 2), min_gain=min(per_seed.values()),
                            target_gain=target_gain,
                            meets_target=len(seeds) >= 2 and min(per_seed.values()) >= target_gain,
                            time_to_target_speedup=round(statistics.fmean(speedups), 3) if speedups else None))
    return out


def winners(gain_rows: list[dict], methods: list[str]) -> list[str]:
    """Single candidates (not combinations, not speedrun) whose mean gain is positive for every method."""
    by_cand = {}
    for g in gain_rows:
        by_cand.setdefault(g["candidate"], {})[g["method"]] = g["mean_gain"]
    return [c for c, per in by_cand.items() if "+" not in c and c != "speedrun"
            and set(methods) <= set(per) and all(v > 0 for v in per.values())]


# ---- the report -----------------------------------------------------------------------------------

def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _f(x, fmt="{:.2f}", missing="-"):
    return missing if x is None else fmt.format(x)


def summary_markdown(record: dict) -> str:
    """The results table, the gains over default and the candidate table (scripts/render_results.py may reuse it)."""
    env, s = record["environment"], record["settings"]
    target = s.get("target_knn")
    lines = [f"`{env['command']}` on {env['device']}, {env['time'][:10]}, torch {env['torch']}; {s['mode']} mode, "
             f"time budget {s['budget']:g} s of training per run (evaluation not charged), kNN every "
             f"{s['knn_every_steps']} steps, {s['threads']} threads, runs one at a time"
             + (f", target {target:g}% kNN" if target else "") + "."
             + (f" Note: {record['note']}" if record.get("note") else ""), "",
             "| recipe | method | seed | kNN at budget | kNN before | train_s | steps | images | "
             + ("time to target (s) | " if target else "") + "status |",
             "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if target else "") + "---|"]
    methods = list(dict.fromkeys(r["method"] for r in record["runs"]))
    recipes = list(dict.fromkeys(r["candidate"] for r in record["runs"]))
    order = lambda r: (methods.index(r["method"]), recipes.index(r["candidate"]), r["seed"])  # noqa: E731
    for r in sorted(record["runs"], key=order):
        note = r["status"] + (" (stopped before the budget)" if r.get("stopped_early") else "")
        lines.append(f"| {r['candidate']} | {r['method']} | {r['seed']} | {_f(r.get('knn_top1'))} | "
                     f"{_f(r.get('knn_top1_init'))} | {_f(r.get('train_s'), '{:.0f}')} | {_f(r.get('steps'), '{}')} | "
                     f"{_f(r.get('images_seen'), '{:,}')} | "
                     + (f"{_f(r.get('time_to_target_s'), '{:.0f}', 'not reached')} | " if target else "")
                     + f"{note} |")
    if record["gains"]:
        lines += ["", "kNN gain over `default` at the same budget, paired by seed (same data and evaluation "
                  "subsets)" + (f"; a run stops when it reaches {target:g}%, so there the gain compares final kNN "
                                f"and speedup = default's time to {target:g}% over the recipe's, where both reached it"
                                if target else "") + ":", "",
                  "| recipe | method | seeds | mean gain | per seed | >= "
                  f"{record['gains'][0]['target_gain']:g} on >= 2 seeds |" + (" speedup |" if target else ""),
                  "|---|---|---|---:|---|---|" + ("---:|" if target else "")]
        for g in record["gains"]:
            lines.append(f"| {g['candidate']} | {g['method']} | {', '.join(map(str, g['seeds']))} | "
                         f"{g['mean_gain']:+.2f} | {', '.join(f'{x:+.2f}' for x in g['gain_per_seed'])} | "
                         f"{'yes' if g['meets_target'] else 'no'} |"
                         + (f" {_f(g.get('time_to_target_speedup'), '{:.2f}x')} |" if target else ""))
    commits = [r["commit"][:12] for r in record["runs"] if r.get("commit")]
    if len(set(commits)) > 1:  # e.g. speedrun measured after it was set: say so next to the numbers
        lines += ["", f"The runs come from {len(set(commits))} commits: "
                  + ", ".join(f"{c} ({_runs(commits.count(c))})" for c in dict.fromkeys(commits)) + "."]
    if record.get("winners") is not None:
        lines += ["", "Single changes with a positive mean gain for every method: "
                  + (", ".join(record["winners"]) if record["winners"] else "none") + "."
                  + (f" Their combination (measure it before adopting it): `--candidates default "
                     f"{'+'.join(record['winners'])}`." if len(record["winners"]) > 1 else "")]
    lines += ["", "Candidates (extra `scripts/pretrain.py` arguments):", "", "| recipe | arguments |", "|---|---|"]
    for name in dict.fromkeys(r["candidate"] for r in record["runs"]):
        lines.append(f"| {name} | `{shlex.join(candidate_args(name))}` |" if candidate_args(name)
                     else f"| {name} | (none: today's recipe) |")
    return "\n".join(lines) + "\n"


def chart(record: dict, path: Path) -> None:
    """kNN top-1 against training seconds: one panel per method, one colour per recipe, one line per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in record["runs"] if r["curve"]]
    methods = list(dict.fromkeys(r["method"] for r in record["runs"]))
    recipes = list(dict.fromkeys(r["candidate"] for r in record["runs"]))
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(recipes)}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(5.0 * max(1, len(methods)), 4.0), squeeze=False)
    budget, target = record["settings"]["budget"], record["settings"].get("target_knn")
    for ax, method in zip(axes[0], methods):
        seeds = sorted({r["seed"] for r in record["runs"] if r["method"] == method})
        for r in (r for r in runs if r["method"] == method):
            t, k = zip(*r["curve"])
            ax.plot(t, k, styles[seeds.index(r["seed"]) % len(styles)], color=colours[r["candidate"]], marker=".",
                    label=f"{r['candidate']} (seed {r['seed']})")
        ax.axvline(budget, color="grey", lw=0.8, ls=":")
        if target:
            ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("training seconds (evaluation excluded)")
        ax.set_ylabel("kNN top-1 (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"Time to accuracy, {record['environment']['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_record(args, runs: list[dict], command: str) -> dict:
    target = args.target_knn or None
    records = [read_run(r, target) for r in runs]
    gain_rows = gains(records, target_gain=args.target_gain)
    settings = dict(mode="gpu" if args.gpu else "fast", budget=args.budget, knn_every_steps=args.knn_every_steps,
                    target_knn=target, threads=args.threads, methods=args.methods, seeds=args.seeds,
                    candidates=args.candidates, runs_dir=str(args.runs_dir), pretrain_args=args.pretrain_args,
                    time_limit=args.time_limit, commit=git_commit())
    return dict(benchmark="time_to_accuracy", environment=environment(command), settings=settings,
                candidate_args={c: candidate_args(c) for c in args.candidates}, runs=records, gains=gain_rows,
                winners=winners(gain_rows, args.methods))


def write_report(args, runs: list[dict], command: str) -> dict:
    record = build_record(args, runs, command)
    md = f"# Time to accuracy ({record['settings']['mode']})\n\n" + summary_markdown(record)
    write_result(record, md, args.out)
    chart(record, args.out.with_suffix(".png"))
    print(md)
    return record


# ---- command line ---------------------------------------------------------------------------------

def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # passed unchanged to every pretrain.py
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="time_to_accuracy.py", description=__doc__.split("\n\n")[0],
                                epilog="Arguments after -- go to every scripts/pretrain.py run unchanged. "
                                "Candidates: " + "; ".join(f"{k}: {shlex.join(v) or '(none)'}"
                                                           for k, v in CANDIDATES.items()))
    p.add_argument("--gpu", action="store_true",
                   help="full CIFAR-10, ResNet-18 width 64, full kNN, target 80%% kNN, speedrun vs default "
                   "(needs CUDA)")
    p.add_argument("--methods", nargs="+", default=["simclr", "dare"], help="(default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="(default: 0 1 on a CPU, 0 with --gpu)")
    p.add_argument("--candidates", nargs="+", default=None,
                   help=f"recipes to run, a+b combines two (default: {' '.join(SWEEP)}; with --gpu: default speedrun)")
    p.add_argument("--budget", type=float, default=None,
                   help="training seconds per run, --time-budget of pretrain.py (default: 240, with --gpu 75)")
    p.add_argument("--knn-every-steps", type=int, default=None, help="kNN curve resolution (default: 100, --gpu 300)")
    p.add_argument("--target-knn", type=float, default=None,
                   help="stop a run at this kNN top-1 %% (default: off on a CPU, 80 with --gpu; 0 = off)")
    p.add_argument("--target-gain", type=float, default=3.0,
                   help="kNN points over default a recipe must gain on every seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP/MKL threads of every run (default: all %d cores)" % (os.cpu_count() or 1))
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds for the whole sweep: a run starts only if it fits (default: none, --gpu 470)")
    p.add_argument("--data", default=None, help="dataset location for every run (else $FASTSSL_DATA, cache, download)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="run folders (default: runs/time_to_accuracy-<fast|gpu>-<device>)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path; .md and .png beside it "
                   "(default: bench/results/time_to_accuracy-<device>-<stamp>.json)")
    p.add_argument("--resume", action="store_true", help="skip runs whose summary.json exists (same command)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and the estimated duration, run nothing")
    args = p.parse_args(argv)
    args.pretrain_args = extra
    gpu = args.gpu
    args.seeds = args.seeds if args.seeds is not None else ([0] if gpu else [0, 1])
    args.candidates = args.candidates or (["default", "speedrun"] if gpu else list(SWEEP))
    args.budget = args.budget if args.budget is not None else (75.0 if gpu else 240.0)
    args.knn_every_steps = args.knn_every_steps if args.knn_every_steps is not None else (300 if gpu else 100)
    args.target_knn = args.target_knn if args.target_knn is not None else (80.0 if gpu else 0.0)
    args.threads = args.threads if args.threads is not None else os.cpu_count() or 1
    args.time_limit = args.time_limit if args.time_limit is not None else (470.0 if gpu else None)
    if args.budget <= 0:
        p.error(f"--budget must be > 0 seconds, got {args.budget:g}")
    if args.knn_every_steps < 1:
        p.error(f"--knn-every-steps must be >= 1, got {args.knn_every_steps}")
    if not 0 <= args.target_knn <= 100:
        p.error(f"--target-knn is a percentage in [0, 100], got {args.target_knn:g}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    from fastssl import methods
    unknown = [m for m in args.methods if m not in methods.available()]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; methods: {', '.join(methods.available())}")
    if "default" not in args.candidates:
        p.error("--candidates must include default: every gain is measured against it")
    if len(set(args.candidates)) != len(args.candidates) or len(set(args.seeds)) != len(args.seeds):
        p.error("--candidates and --seeds must not repeat")
    try:
        for c in args.candidates:
            candidate_args(c)
    except SweepError as e:
        p.error(str(e))
    tag = device_tag()
    # runs start in the repository root: paths given relative to where this script was started are made absolute
    args.runs_dir = (args.runs_dir or ROOT / "runs" / f"time_to_accuracy-{'gpu' if gpu else 'fast'}-{tag}").resolve()
    args.data = os.path.abspath(args.data) if args.data else None
    args.out = args.out or RESULTS / f"time_to_accuracy-{tag}-{stamp()}.json"
    return args


def estimate_s(args, n_runs: int, overhead: float) -> float:
    return n_runs * (args.budget + overhead)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python bench/time_to_accuracy.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.gpu and not torch.cuda.is_available() and not args.dry_run:
        print("time_to_accuracy.py: error: --gpu needs a CUDA device (this machine has none)", file=sys.stderr)
        return 2
    runs = plan(args)
    try:
        for r in runs:
            r["done"] = args.resume and run_status(r) == "done"
        finished = [r for r in runs if (r["folder"] / SUMMARY).exists()]
        if finished and not args.resume and not args.dry_run:
            raise SweepError(f"{args.runs_dir} already holds {len(finished)} finished run(s): pass --resume to keep "
                             f"them, or another --runs-dir")
    except SweepError as e:
        print(f"time_to_accuracy.py: error: {e}", file=sys.stderr)
        return 2
    todo = [r for r in runs if not r["done"]]
    # a first guess of a run's seconds outside the budget (start-up, data, compilation, kNN passes);
    # after the first run the measured mean replaces it
    overhead = 45.0 if args.gpu else 90.0
    parser = pretrain_parser()
    problems = check_commands(todo, parser) if parser is not None else []
    env_line = f"OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads}"
    print(f"time to accuracy ({'gpu' if args.gpu else 'fast'}): {_runs(len(runs))} ({len(runs) - len(todo)} finished), "
          f"{args.budget:g} s training each; about {estimate_s(args, len(todo), overhead) / 60:.0f} min left "
          f"(~{overhead:.0f} s a run outside the budget); run folders in {args.runs_dir}", flush=True)
    if args.dry_run:
        for r in runs:
            done = "  # finished: skipped" if r["done"] else ""
            print(f"{env_line} {shlex.quote(sys.executable)} {shlex.join(r['argv'])}{done}")
        for p in problems:
            print(f"warning: pretrain.py would refuse {p}", file=sys.stderr)
        return 0
    if problems:
        print(f"time_to_accuracy.py: error: pretrain.py refuses {problems[0]}"
              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)  # the recorded environment names the threads every run used
    # bench/run_all.py stops an overrunning piece with SIGTERM: write the report of what finished, as on Ctrl-C
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        sweep(args, todo, overhead)
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun with --resume to continue (finished runs are kept in {args.runs_dir})",
              file=sys.stderr)
        write_report(args, runs, command)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    record = write_report(args, runs, command)
    failed = [r for r in record["runs"] if r["status"] not in ("ok", "not run")]
    return 1 if failed else 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


def sweep(args, todo: list[dict], overhead: float) -> None:
    """Run ``todo`` one after the other; with a time limit, start a run only if it is expected to fit."""
    t_start = time.perf_counter()
    for i, run in enumerate(todo):
        timeout = 2 * args.budget + 4 * overhead  # a stuck run, not a slow one
        if args.time_limit is not None:
            left = args.time_limit - (time.perf_counter() - t_start)
            if left < args.budget + overhead:
                print(f"time limit: {len(todo) - i} run(s) not started ({left:.0f} s left of "
                      f"{args.time_limit:g} s, a run needs ~{args.budget + overhead:.0f} s)", flush=True)
                return
            timeout = min(timeout, left)
        name = run_name(run["method"], run["candidate"], run["seed"])
        print(f"[{time.perf_counter() - t_start:6.0f} s] run {i + 1}/{len(todo)} {name} ...", flush=True)
        info = execute(run, args.threads, timeout)
        rec = read_run(run, args.target_knn or None)
        if rec.get("train_s") is not None:  # the latest run predicts the next best (compile caches warm up)
            overhead = max(0.0, info["job_s"] - rec["train_s"])
        print(f"         {info['status']} in {info['job_s']:.0f} s: kNN {_f(rec.get('knn_top1_init'))} -> "
              f"{_f(rec.get('knn_top1'))}, {_f(rec.get('steps'), '{}')} steps in "
              f"{_f(rec.get('train_s'), '{:.0f}')} s of training"
              + ("" if info["status"] == "ok" else f"; see {run['folder'] / LOG}"), flush=True)

if __name__ == "__main__":
    sys.exit(main())
