"""``scripts/reproduce_table1.py``: parse the options, plan (with measured estimates), run the cells
still to run, write the results."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from data_prep.atomic import write_json

from ..runtime import device_name
from . import __doc__ as _package_doc
from .plan import fmt_s, plan, plan_text, probe
from .report import results_markdown, write_results
from .run import run_cell
from .table import BUDGETS, DATASETS, ENCODERS, EXTRA_METHODS, METHODS, grid


class ReproduceError(Exception):
    """A bad option or an unusable output folder: reported on one line."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="reproduce_table1.py", description=_package_doc.split("\n\n")[0])
    p.add_argument("--budget", required=True, choices=tuple(BUDGETS),
                   help="smoke: the machinery on CPU in minutes; quick: one GPU, a few hours; full: public long recipes")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + EXTRA_METHODS,
                   help="the paper's methods by default; vicreg, mocov3 and dino are extra rows beyond the paper's "
                   "table, with solo-learn's published ResNet-18 numbers as their reference")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/table1-BUDGET)")
    p.add_argument("--data", default=None, help="dataset location for every cell (else $FASTSSL_DATA, cache, download)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--probe-steps", type=int, default=None, help="timed steps per probe (default: 10 on CUDA, 2 on CPU)")
    p.add_argument("--plan-only", action="store_true", help="print the plan and the estimates, run nothing")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = p.parse_args(argv)
    if args.probe_steps is not None and args.probe_steps < 1:
        p.error(f"--probe-steps must be >= 1, got {args.probe_steps}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python scripts/reproduce_table1.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = args.out or Path("runs") / f"table1-{args.budget}"
    from data_prep import DataError

    from ..checkpoint import CheckpointError
    from ..config import CLIError
    from ..train import TrainingDiverged
    try:
        out.mkdir(parents=True, exist_ok=True)
        meta = out / "budget.json"
        if meta.exists() and json.loads(meta.read_text())["budget"] != args.budget:
            raise ReproduceError(f"{out} holds a --budget {json.loads(meta.read_text())['budget']} run; "
                                 f"use another --out for --budget {args.budget}")
        write_json(meta, dict(budget=args.budget))
        planned = plan(grid(args.methods, args.datasets, args.encoders), args.budget, out, args.device, args.data,
                       args.progress)
    except (ReproduceError, CLIError, CheckpointError, OSError) as e:
        print(f"reproduce_table1.py: error: {e}", file=sys.stderr)
        return 2
    device = torch.device(planned[0].cfg.device)
    cuda = device.type == "cuda"
    steps = args.probe_steps or (10 if cuda else 2)
    try:
        probes = probe(planned, steps=steps, warmup=3 if cuda else 1)
    except KeyboardInterrupt:
        print("\ninterrupted while measuring; nothing was trained", file=sys.stderr)
        return 130
    print(plan_text(planned, args.budget, out, device_name(device), probes), flush=True)
    write_json(out / "plan.json", dict(budget=args.budget, command=command, device=device_name(device), probes=probes,
                                       cells=[dict(cell=p.cell.name, status=p.status, epochs=p.cfg.epochs,
                                                   steps=p.steps, estimate_s=p.estimate_s) for p in planned]))
    if args.plan_only:
        return 0
    failed = []
    for i, p in enumerate(planned):
        if p.status == "done":
            continue
        print(f"\n=== cell {i + 1}/{len(planned)}: {p.cell.name} ({'resuming' if p.status == 'resume' else 'new'}, "
              f"estimated {fmt_s(p.estimate_s)}) ===", flush=True)
        try:
            r = run_cell(p, args.budget)
        except KeyboardInterrupt:
            print(f"\ninterrupted; rerun the same command to resume (finished cells are kept in {out}/cells)",
                  file=sys.stderr)
            write_results(out, args.budget, command)
            return 130
        except (DataError, FileNotFoundError, TrainingDiverged) as e:
            print(f"cell {p.cell.name} failed: {e}", file=sys.stderr)
            failed.append(p.cell.name)
            continue
        versus = ("no reference" if r["diff"] is None else
                  f"{'paper' if r['paper_top1'] is not None else 'solo-learn'} {r['paper_top1'] or r['reference_top1']}, "
                  f"{r['diff']:+.2f}")
        print(f"cell {p.cell.name}: linear top-1 {r['linear_top1']:.2f}% ({r['linear_protocol']} protocol; {versus}) "
              f"in {fmt_s(r['wall_s'])} (estimated {fmt_s(p.estimate_s)})", flush=True)
    results = write_results(out, args.budget, command)
    print("\n" + results_markdown(results))
    print(f"wrote {out}/results.json, results.csv, results.md, results.png")
    if failed:
        print(f"reproduce_table1.py: {len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
