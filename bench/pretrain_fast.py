"""``scripts/pretrain.py --method M --fast`` for every method, as a user runs it: the CPU ``--fast`` table of
the README and docs/results.md, from the runs' own summary.json (nothing transcribed).

    python bench/pretrain_fast.py --dry-run              # the commands
    python bench/pretrain_fast.py --jobs 2 --resume      # two runs side by side, one pinned core each

Each run keeps its folder (``--runs-dir``: run.json with the command and commit, the log, summary.json);
``--resume`` skips finished ones. Writes bench/results/pretrain-fast-<device>-<stamp>.{json,md}: per method
the recipe --fast took, kNN top-1 (k = 200) before and after, k = 20, the linear probe, steps and seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench import tta_sweep as sweep  # noqa: E402
from bench._common import RESULTS, device_tag, environment, stamp, write_result  # noqa: E402

# the seven methods of the paper's table, then the three added since
METHODS = ["simclr", "supcon", "triplet", "barlow", "simsiam", "byol", "dare", "vicreg", "mocov3", "dino"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="pretrain_fast.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=METHODS, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, each pinned to its own core (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="OMP/MKL threads a run (default: the cores / --jobs)")
    p.add_argument("--runs-dir", type=Path, default=None, help="run folders (default: runs/pretrain_fast-<device>)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path, .md beside it (default: bench/results/pretrain-fast-<device>-<stamp>.json)")
    p.add_argument("--note", default=None, help="a sentence for the record on how the runs were made")
    p.add_argument("--resume", action="store_true", help="skip runs whose summary.json exists (same command)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    from fastssl import methods
    unknown = [m for m in args.methods if m not in methods.available()]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; methods: {', '.join(methods.available())}")
    usable = len(os.sched_getaffinity(0))
    if not 1 <= args.jobs <= usable:
        p.error(f"--jobs must be between 1 and the {usable} core(s) this process may use, got {args.jobs}")
    args.threads = args.threads or max(1, usable // args.jobs)
    args.runs_dir = (args.runs_dir or ROOT / "runs" / f"pretrain_fast-{device_tag()}").resolve()
    args.out = args.out or RESULTS / f"pretrain-fast-{device_tag()}-{stamp()}.json"
    return args


def plan(args) -> list[dict]:
    return [dict(method=m, candidate="fast", extra=[], seed=args.seed, folder=args.runs_dir / m,
                 argv=[sweep.PRETRAIN, "--method", m, "--fast", "--seed", str(args.seed), "--no-progress",
                       "--out", str(args.runs_dir / m)]) for m in args.methods]


def row(run: dict) -> dict:
    """One method's line of the table, from its run folder."""
    folder = run["folder"]
    out = dict(method=run["method"], status="not run")
    if (folder / sweep.RUN_INFO).exists():
        info = json.loads((folder / sweep.RUN_INFO).read_text())
        out.update(status=info.get("status"), command="python " + shlex.join(info["argv"]), commit=info.get("commit"),
                   threads=info.get("threads"), core=info.get("core"))
    if (folder / sweep.SUMMARY).exists():
        s = json.loads((folder / sweep.SUMMARY).read_text())
        out.update(status="ok", recipe=s["config"].get("recipe"), encoder=s["encoder"], steps=s["steps"],
                   **{k: s.get(k) for k in ("knn_top1_init", "knn_top1", "knn_top1_k20", "linear_top1", "train_s",
                                            "wall_s", "device")})
    return out


def markdown(record: dict) -> str:
    cell = sweep.cell
    lines = [f"`{record['environment']['command']}` on {record['environment']['device']}, "
             f"{record['environment']['time'][:10]}, torch {record['environment']['torch']}; {record['setup']}."
             + (f" Note: {record['note']}" if record.get("note") else ""), "",
             "| method | recipe | kNN before | kNN after | kNN k=20 | linear | steps | train (s) | wall (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["results"]:
        lines.append(f"| {r['method']} | {r.get('recipe') or '-'} | {cell(r.get('knn_top1_init'))} | "
                     f"{cell(r.get('knn_top1'))} | {cell(r.get('knn_top1_k20'))} | {cell(r.get('linear_top1'))} | "
                     f"{cell(r.get('steps'), '{}')} | {cell(r.get('train_s'), '{:.0f}')} | "
                     f"{cell(r.get('wall_s'), '{:.0f}')} |" + ("" if r["status"] == "ok" else f" {r['status']}"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python bench/pretrain_fast.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    runs = plan(args)
    try:
        todo = [r for r in runs if not (args.resume and sweep.run_status(r) == "done")]
        if not args.resume and not args.dry_run and any((r["folder"] / sweep.SUMMARY).exists() for r in runs):
            raise sweep.SweepError(f"{args.runs_dir} holds finished runs: pass --resume to keep them, or another "
                                   f"--runs-dir")
    except sweep.SweepError as e:
        print(f"pretrain_fast.py: error: {e}", file=sys.stderr)
        return 2
    env = f"OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads}"
    print(f"--fast for {len(runs)} method(s), {len(runs) - len(todo)} finished; run folders in {args.runs_dir}")
    if args.dry_run:
        for r in runs:
            print(f"{env} python {shlex.join(r['argv'])}" + ("" if r in todo else "  # finished: skipped"))
        return 0
    cores, t0 = sweep.run_cores(args.jobs), time.perf_counter()
    try:
        for first in range(0, len(todo), len(cores)):
            group = todo[first:first + len(cores)]
            for run, core in zip(group, cores):
                run["core"] = core
                print(f"[{time.perf_counter() - t0:6.0f} s] {run['method']}"
                      + ("" if core is None else f" on core {core}") + " ...", flush=True)
            for run, info in zip(group, sweep.run_group(group, args.threads, timeout=3 * 3600)):
                r = row(run)
                print(f"         {run['method']}: {info['status']} in {info['job_s']:.0f} s: kNN "
                      f"{sweep.cell(r.get('knn_top1_init'))} -> {sweep.cell(r.get('knn_top1'))}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    rows = [row(r) for r in runs]
    setup = (f"seed {args.seed}, {args.threads} thread(s) a run, "
             + ("one run at a time" if args.jobs == 1 else f"{args.jobs} runs side by side, one pinned core each"))
    record = dict(benchmark="pretrain_fast", environment=environment(command), setup=setup, results=rows,
                  **({"note": args.note} if args.note else {}))
    write_result(record, f"# CPU --fast\n\n" + markdown(record), args.out)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
