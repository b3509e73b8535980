"""The race to 90% kNN: ResNet-18 on the whole of CIFAR-10 with ``--recipe speedrun`` until kNN top-1
(k = 200, the full train set as bank, the full test set as queries) reaches the target; reports the
training seconds to 80, 85 and 90% and the kNN curve.

    python bench/speedrun.py --dry-run          # the plan: the command and the calls it should take
    python bench/speedrun.py                    # one call; run the same command again until it says done

A call trains for at most ``--call-limit`` seconds (``scripts/pretrain.py --stop-after``: a checkpoint,
then exit code 75) so that the race fits machines lent in 10-minute calls; the next call resumes it
exactly. The clock is pretrain.py's training clock: start-up, evaluation, checkpoints and the
recompilation after a resume are not charged, so the seconds to the target do not depend on how many
calls it took. Each call appends a line to OUT/race-calls.jsonl. When the run ends (target reached or
schedule done) OUT/race.json and race.md hold the result, and ``--results`` copies them to
bench/results/speedrun-<device>-<stamp>.{json,md}.

The reference: the fastest public SimCLR ResNet-18 we know of reaches 90.3% kNN after 500 epochs in
99 minutes on an A100 (11.9 s an epoch), so the schedule is 500 epochs unless ``--epochs`` says
otherwise; the run stops as soon as the target is reached.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench._common import RESULTS, device_tag, environment, stamp, write_result  # noqa: E402
from bench.tta_sweep import GPU_ARGS, PRETRAIN  # noqa: E402
from data_prep.atomic import write_text  # noqa: E402

PAUSED = 75  # scripts/pretrain.py's exit code after --stop-after (fastssl.cli.PAUSED)
MILESTONES = (80.0, 85.0, 90.0)
# Until this run has measured its own: seconds an epoch (the public reference's A100 epoch) and seconds a
# call spends outside training (start-up, data, compilation, kNN passes).
GUESS_EPOCH_S, GUESS_CALL_OVERHEAD_S = 11.9, 90.0


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # passed unchanged to scripts/pretrain.py
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="speedrun.py", description=__doc__.split("\n\n")[0],
                                epilog="Arguments after -- go to scripts/pretrain.py unchanged (they come last, so "
                                "they override the race's settings).")
    p.add_argument("--method", default="simclr", help="(default: %(default)s)")
    p.add_argument("--target", type=float, default=90.0, help="kNN top-1 %% that ends the race (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=500, help="length of the lr schedule (default: %(default)s)")
    p.add_argument("--knn-every", type=int, default=10,
                   help="kNN every E epochs: the resolution of the times to 80/85/90%% (default: %(default)s)")
    p.add_argument("--call-limit", type=float, default=540.0,
                   help="seconds a call may train before it checkpoints and exits (default: %(default)s, a "
                   "10-minute device call less a minute for start-up and copies; 0 = no limit)")
    p.add_argument("--data", default=None, help="dataset location (else $FASTSSL_DATA, cache, download)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/speedrun-METHOD)")
    p.add_argument("--results", action="store_true",
                   help="when the race ends, also write bench/results/speedrun-<device>-<stamp>.{json,md}")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the command, train nothing")
    args = p.parse_args(argv)
    from fastssl import methods
    if args.method not in methods.available():
        p.error(f"unknown method {args.method!r}; methods: {', '.join(methods.available())}")
    if not 0 < args.target <= 100:
        p.error(f"--target is a kNN top-1 in percent (0-100], got {args.target:g}")
    if args.epochs < 1 or args.knn_every < 1:
        p.error("--epochs and --knn-every must be >= 1")
    if args.call_limit < 0:
        p.error(f"--call-limit must be >= 0 seconds (0 = no limit), got {args.call_limit:g}")
    args.out = (args.out or ROOT / "runs" / f"speedrun-{args.method}").resolve()
    args.data = os.path.abspath(args.data) if args.data else None
    args.pretrain_args = extra
    return args


def pretrain_argv(args, resume: bool) -> list[str]:
    argv = [PRETRAIN, "--method", args.method, "--recipe", "speedrun", *GPU_ARGS, "--epochs", str(args.epochs),
            "--knn-k", "200", "--knn-every", str(args.knn_every), "--target-knn", f"{args.target:g}",
            "--no-linear-eval", "--no-progress", "--stop-after", f"{args.call_limit:g}", "--out", str(args.out)]
    if args.data:
        argv += ["--data", args.data]
    return argv + (["--resume"] if resume else []) + args.pretrain_args


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file of the run folder (none before the file exists)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def read_rows(out: Path) -> list[dict]:
    return read_jsonl(out / "metrics.jsonl")


def read_calls(out: Path) -> list[dict]:
    return read_jsonl(out / "race-calls.jsonl")


def estimate(args, rows: list[dict], calls: list[dict]) -> dict:
    """Training seconds left (the whole schedule: the target may come earlier) and the calls they take."""
    epochs = [r for r in rows if r.get("event") == "epoch" and float(r["epoch"]).is_integer()]
    epoch_s = sum(r["epoch_s"] for r in epochs[-10:]) / len(epochs[-10:]) if epochs else GUESS_EPOCH_S
    overheads = [c["wall_s"] - c["train_s_added"] for c in calls if c.get("train_s_added") is not None]
    overhead = sum(overheads) / len(overheads) if overheads else GUESS_CALL_OVERHEAD_S
    left_s = max(0.0, args.epochs - (epochs[-1]["epoch"] if epochs else 0)) * epoch_s
    per_call = args.call_limit - overhead if args.call_limit else math.inf
    calls_left = 1 if per_call == math.inf else max(1, math.ceil(left_s / max(per_call, 1.0)))
    return dict(epoch_s=epoch_s, measured=bool(epochs), overhead_s=overhead, train_s_left=left_s, calls_left=calls_left)


def first_reached(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, knn in curve if knn >= target), None)


def race_record(args, summary: dict, rows: list[dict], calls: list[dict]) -> dict:
    curve = [(r["train_s"], r["knn_top1"]) for r in rows if r.get("event") == "knn" and r.get("knn_top1") is not None]
    milestones = sorted({*MILESTONES, args.target} - {m for m in MILESTONES if m > args.target})
    return dict(benchmark="speedrun", method=args.method, target=args.target, epochs_schedule=args.epochs,
                reached=summary.get("time_to_target_s") is not None, stopped_by=summary.get("stopped_by"),
                seconds_to={f"{m:g}": first_reached(curve, m) for m in milestones},
                train_s=summary.get("train_s"), wall_s=summary.get("wall_s"), steps=summary.get("steps"),
                epochs=summary.get("epochs"), knn_top1=summary.get("knn_top1"), device=summary.get("device"),
                calls=len(calls), knn_curve=[[round(t, 1), k] for t, k in curve],
                call_log=calls, config=summary.get("config"))


def race_markdown(record: dict, command: str) -> str:
    reached = ", ".join(f"{m}%: " + (f"{s:.0f} s" if s is not None else "not reached")
                        for m, s in record["seconds_to"].items())
    lines = [f"# Speedrun: {record['method']} to {record['target']:g}% kNN", "",
             f"`{command}` on {record['device']}: {record['stopped_by']} after {record['train_s']:.0f} training "
             f"seconds ({record['epochs']} epochs, {record['steps']} steps) over {record['calls']} call(s); "
             f"final kNN top-1 {record['knn_top1']:.2f}%.", "", f"Training seconds to {reached}.", "",
             "| training s | kNN top-1 (%) |", "|---:|---:|"]
    lines += [f"| {t:.0f} | {k:.2f} |" for t, k in record["knn_curve"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python bench/speedrun.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    summary_path, rows, calls = args.out / "summary.json", read_rows(args.out), read_calls(args.out)
    if summary_path.exists() and not args.dry_run:
        print(f"speedrun: finished earlier; the result is {args.out / 'race.md'}")
        return 0
    resume = (args.out / "checkpoint.pt").exists()
    argv = pretrain_argv(args, resume)
    est = estimate(args, rows, calls)
    source = "measured by this run" if est["measured"] else "a guess until the first epoch"
    print(f"speedrun plan: {args.method}, --recipe speedrun, ResNet-18 on CIFAR-10, {args.epochs} epochs at most, "
          f"stop at {args.target:g}% kNN (k = 200, full bank and test set, every {args.knn_every} epochs); "
          f"call {len(calls) + 1}, {'resuming' if resume else 'starting'}: about {est['train_s_left'] / 60:.0f} min "
          f"of training left ({est['epoch_s']:.1f} s an epoch, {source}), so about {est['calls_left']} more call(s) of "
          + (f"{args.call_limit:g} s" if args.call_limit else "any length") + "; the target may come sooner",
          flush=True)
    print("$ " + shlex.join(["python", *argv]), flush=True)
    if args.dry_run:
        return 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    train_s_before = max((r.get("train_s", 0.0) for r in rows), default=0.0)
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env).returncode
    rows = read_rows(args.out)
    train_s_after = max((r.get("train_s", 0.0) for r in rows), default=0.0)
    call = dict(call=len(calls) + 1, started=time.strftime("%Y-%m-%dT%H:%M:%S"), rc=rc,
                wall_s=round(time.perf_counter() - t0, 1), train_s_added=round(train_s_after - train_s_before, 1))
    if rc in (0, PAUSED):
        write_text(args.out / "race-calls.jsonl", "".join(json.dumps(c) + "\n" for c in [*calls, call]))
        calls.append(call)
    if rc == PAUSED:
        est = estimate(args, rows, calls)
        print(f"speedrun: call {call['call']} paused after {call['wall_s']:.0f} s; run the same command again "
              f"(about {est['calls_left']} more call(s))", flush=True)
        return PAUSED
    if rc != 0:
        print(f"speedrun: scripts/pretrain.py failed (exit code {rc}); its folder is {args.out}", file=sys.stderr)
        return rc
    record = race_record(args, json.loads(summary_path.read_text()), rows, calls)
    record["environment"] = environment(command)
    write_result(record, race_markdown(record, command), args.out / "race.json", quiet=True)
    if args.results:
        write_result(record, race_markdown(record, command), RESULTS / f"speedrun-{device_tag()}-{stamp()}.json")
    print(f"speedrun: {record['stopped_by']}; training seconds to " + ", ".join(
        f"{m}%: " + (f"{s:.0f}" if s is not None else "not reached") for m, s in record["seconds_to"].items())
        + f"; {args.out / 'race.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
