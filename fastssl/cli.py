"""Command-line front end of scripts/pretrain.py: parse, resolve, train, report errors on one line.

Under torchrun every process runs this; only rank 0 (RANK=0) prints the configuration and the result."""
from __future__ import annotations

import sys

from data_prep import DataError

from .config import CLIError, parse_args, resolve
from .distributed import env_rank

PAUSED = 75  # the exit code of a run stopped by --stop-after, to be continued with --resume


def main(argv=None) -> int:
    cfg = parse_args(argv)  # argparse itself exits with code 2 on a malformed option
    main_rank = env_rank() == 0
    try:
        cfg = resolve(cfg)
    except CLIError as e:
        if main_rank:
            print(f"pretrain.py: error: {e}", file=sys.stderr)
        return 2
    from .checkpoint import CheckpointError
    from .loaders import UnsupportedOption
    from .train import RunError, TrainingDiverged, train
    if main_rank:  # the global options and this method's own (summary.json and the checkpoint keep them all)
        from . import methods
        others = set(methods.method_options()) - {o.name for o in methods.get_method(cfg.method).options}
        print("config: " + ", ".join(f"{k}={v}" for k, v in vars(cfg).items() if k not in others))
    try:
        summary = train(cfg)
    except (DataError, FileNotFoundError, CheckpointError, RunError, UnsupportedOption) as e:
        # bad input or a loader that cannot do what was asked: one line, exit code 2
        print(f"pretrain.py: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with --resume --out {cfg.out}", file=sys.stderr)
        return 130
    if summary is None:  # a data-parallel rank other than 0: rank 0 reports
        return 0
    if summary["stopped_by"] == "paused":  # --stop-after: rerun with --resume (75: "try again", as in sysexits)
        return PAUSED
    lin, knn0, knn = summary["linear_top1"], summary["knn_top1_init"], summary["knn_top1"]
    print(f"done in {summary['wall_s']:.0f} s ({summary['train_s']:.0f} s training, {summary['eval_s']:.0f} s "
          f"evaluation, {summary['steps']} steps)"
          + (f": kNN top-1 {knn0:.2f}% -> {knn:.2f}%" if knn is not None and knn0 is not None else "")
          + (f", linear top-1 {lin:.2f}%" if lin is not None else "") + f"; results in {cfg.out}/summary.json")
    return 0

