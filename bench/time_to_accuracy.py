"""Time to accuracy: today's recipe against each candidate recipe change at equal wall clock.

    python bench/time_to_accuracy.py --dry-run                      # print the commands and the estimate
    python bench/time_to_accuracy.py --resume                       # the CPU sweep (--fast, 240 s per run)
    python bench/time_to_accuracy.py --candidates default multicrop+progressive --seeds 0 1 --resume
    python bench/time_to_accuracy.py --gpu --data .data             # GPU: time to 80% kNN, full CIFAR-10, R18

Every run is ``scripts/pretrain.py`` in a subprocess with the same seed, data subset, evaluation
subsets and ``--time-budget`` (training seconds; evaluation is not charged) and the same pinned thread
count; one run at a time, or with ``--jobs 2`` a method's default and candidate side by side, each pinned
to its own core (they compare at equal wall clock, so each must have its cores to itself).
``CANDIDATES`` below is the whole list of recipe changes; ``a+b`` on the command line combines
two of them. Each run's folder (``--runs-dir``) keeps its log, summary.json and metrics.jsonl; with
``--resume`` finished runs are skipped, so an interrupted sweep continues where it stopped.

Writes bench/results/time_to_accuracy-<device>-<stamp>.{json,md,png}: per run the kNN top-1 at the
budget (the final kNN), training seconds, steps; per method and candidate the mean kNN gain over
``default`` on the same seeds; the PNG plots kNN against training seconds, one line per recipe.

The sweep (candidates, commands, running, reading a run folder) is bench/tta_sweep.py; the gains, tables and
chart are bench/tta_report.py; this file is the command line.

``--gpu`` (bench/run_all.py's piece): full CIFAR-10, ResNet-18 at full width, full kNN bank and
queries, ``--target-knn 80``: time to 80% kNN of ``speedrun`` against ``default`` for SimCLR and
DARe, runs started only while they fit in ``--time-limit``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench import tta_sweep as runs  # noqa: E402
from bench._common import RESULTS, device_tag, stamp  # noqa: E402
from bench.tta_report import write_report  # noqa: E402
from bench.tta_sweep import CANDIDATES, SUMMARY, SWEEP, SweepError, candidate_args  # noqa: E402


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
    p.add_argument("--knn-every-steps", type=int, default=None,
                   help="kNN curve resolution; 0 = kNN only before training and at the budget, the cheapest on a "
                   "CPU (default: 100, --gpu 300)")
    p.add_argument("--target-knn", type=float, default=None,
                   help="stop a run at this kNN top-1 %% (default: off on a CPU, 80 with --gpu; 0 = off)")
    p.add_argument("--target-gain", type=float, default=3.0,
                   help="kNN points over default a recipe must gain on every seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP/MKL threads of every run (default: the cores divided by --jobs)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs side by side, each pinned to its own core (a method's default and candidate "
                   "together) (default: %(default)s, one run at a time, not pinned)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds for the whole sweep: a run starts only if it fits (default: none, --gpu 470)")
    p.add_argument("--data", default=None, help="dataset location for every run (else $FASTSSL_DATA, cache, download)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="run folders (default: runs/time_to_accuracy-<fast|gpu>-<device>)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path; .md and .png beside it "
                   "(default: bench/results/time_to_accuracy-<device>-<stamp>.json)")
    p.add_argument("--note", default=None,
                   help="a sentence for the report on how the runs were made (e.g. several invocations at once)")
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
    args.threads = args.threads if args.threads is not None else max(1, len(os.sched_getaffinity(0)) // max(1, args.jobs))
    args.time_limit = args.time_limit if args.time_limit is not None else (470.0 if gpu else None)
    if args.budget <= 0:
        p.error(f"--budget must be > 0 seconds, got {args.budget:g}")
    if args.knn_every_steps < 0:
        p.error(f"--knn-every-steps must be >= 0, got {args.knn_every_steps}")
    if args.target_knn and not args.knn_every_steps:
        p.error("--target-knn needs a kNN curve: --knn-every-steps K >= 1")
    if not 0 <= args.target_knn <= 100:
        p.error(f"--target-knn is a percentage in [0, 100], got {args.target_knn:g}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    usable = len(os.sched_getaffinity(0))
    if not 1 <= args.jobs <= usable:
        p.error(f"--jobs must be between 1 and the {usable} core(s) this process may use, got {args.jobs}")
    if args.jobs > 1 and args.threads * args.jobs > usable:
        p.error(f"--jobs {args.jobs} x --threads {args.threads} is more threads than the {usable} core(s): "
                f"side-by-side runs would slow each other")
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
    return -(-n_runs // args.jobs) * (args.budget + overhead)  # groups of --jobs runs side by side


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python bench/time_to_accuracy.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.gpu and not torch.cuda.is_available() and not args.dry_run:
        print("time_to_accuracy.py: error: --gpu needs a CUDA device (this machine has none)", file=sys.stderr)
        return 2
    planned = runs.plan(args)
    try:
        for r in planned:
            r["done"] = args.resume and runs.run_status(r) == "done"
        finished = [r for r in planned if (r["folder"] / SUMMARY).exists()]
        if finished and not args.resume and not args.dry_run:
            raise SweepError(f"{args.runs_dir} already holds {len(finished)} finished run(s): pass --resume to keep "
                             f"them, or another --runs-dir")
    except SweepError as e:
        print(f"time_to_accuracy.py: error: {e}", file=sys.stderr)
        return 2
    todo = [r for r in planned if not r["done"]]
    # a first guess of a run's seconds outside the budget (start-up, data, compilation, kNN passes);
    # after the first run the measured mean replaces it
    overhead = 45.0 if args.gpu else 90.0
    parser = runs.pretrain_parser()
    problems = runs.check_commands(todo, parser) if parser is not None else []
    env_line = f"OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads}"
    print(f"time to accuracy ({'gpu' if args.gpu else 'fast'}): {runs.runs_text(len(planned))} ({len(planned) - len(todo)} finished), "
          f"{args.budget:g} s training each; about {estimate_s(args, len(todo), overhead) / 60:.0f} min left "
          f"(~{overhead:.0f} s a run outside the budget); run folders in {args.runs_dir}", flush=True)
    if args.dry_run:
        for r in planned:
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
        runs.sweep(args, todo, overhead)
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun with --resume to continue (finished runs are kept in {args.runs_dir})",
              file=sys.stderr)
        write_report(args, planned, command)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    record = write_report(args, planned, command)
    failed = [r for r in record["runs"] if r["status"] not in ("ok", "not run")]
    return 1 if failed else 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
