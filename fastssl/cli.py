"""Command-line front end of scripts/pretrain.py: parse, resolve, train, report errors on one line.

Under torchrun every process runs this; only rank 0 (RANK=0) prints the configuration and the result."""
from __future__ import annotations

import sys

from data_prep import DataError

from .config import CLIError, parse_args, resolve
from .distributed import env_rank


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
    if main_rank:
        print("config: " + ", ".join(f"{k}={v}" for k, v in vars(cfg).items()))
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
    lin, knn0, knn = summary["linear_top1"], summary["knn_top1_init"], summary["knn_top1"]
    print(f"done in {summary['wall_s']:.0f} s ({summary['train_s']:.0f} s training, {summary['eval_s']:.0f} s "
          f"evaluation, {summary['steps']} steps)"
          + (f": kNN top-1 {knn0:.2f}% -> {knn:.2f}%" if knn is not None and knn0 is not None else "")
          + (f", linear top-1 {lin:.2f}%" if lin is not None else "") + f"; results in {cfg.out}/summary.json")
    return 0


def linear_eval_main(argv=None) -> int:
    """scripts/linear_eval.py: linear probe of a pretrained checkpoint's frozen backbone."""
    import argparse
    import dataclasses
    import json
    import torch

    p = argparse.ArgumentParser(prog="linear_eval.py", description="Linear probe on frozen, precomputed features.")
    p.add_argument("--ckpt", required=True, help="checkpoint.pt written by pretrain.py")
    p.add_argument("--data", default=None, help="dataset location (default: the one the checkpoint was trained on)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device (default: %(default)s)")
    p.add_argument("--train-subset", type=int, default=0, help="train images for the probe, 0 = all (default: 0)")
    p.add_argument("--test-subset", type=int, default=0, help="test images, 0 = all (default: 0)")
    args = p.parse_args(argv)
    from .checkpoint import CheckpointError, load_checkpoint, resolve_path
    from .config import config_from_checkpoint
    from .models import build_encoder
    from .train import Evaluator, RunError, _load_data

    try:
        path = resolve_path(args.ckpt)
        ckpt = load_checkpoint(path)  # weights_only: a shared file never runs code
        cfg = config_from_checkpoint(ckpt["config"])
    except (CheckpointError, TypeError, ValueError) as e:  # missing, truncated, foreign or unsafe
        print(f"linear_eval.py: error: {e}", file=sys.stderr)
        return 2
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device
    cfg = dataclasses.replace(cfg, device=device, data=args.data or cfg.data, knn_bank=args.train_subset,
                              knn_queries=args.test_subset, amp="bf16" if device == "cuda" else "off")
    encoder = build_encoder(cfg.encoder, cfg.width)
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in ckpt["method"].items() if k.startswith("encoder.")})
    encoder.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    try:  # the training set (its normalisation) and the labelled set to probe on (--eval-data of the run)
        ds, eval_ds = _load_data(dataclasses.replace(cfg, target_knn=0.0), False, print)
    except (DataError, RunError) as e:
        print(f"linear_eval.py: error: {e}", file=sys.stderr)
        return 2
    if eval_ds is None:
        print(f"linear_eval.py: error: {cfg.data} has no class labels and the run named no --eval-data",
              file=sys.stderr)
        return 2
    evaluator = Evaluator(eval_ds, cfg, torch.device(device), mean=ckpt.get("norm_mean", ds.mean),
                          std=ckpt.get("norm_std", ds.std))
    print(f"linear probe: {len(evaluator.bank_y)} train / {len(evaluator.query_y)} test images of {ds.name}")
    top1 = evaluator.linear(encoder)
    print(f"linear top-1: {top1:.2f}%")
    result = dict(ckpt=str(path), dataset=cfg.dataset, train_images=len(evaluator.bank_y),
                  test_images=len(evaluator.query_y), linear_top1=top1)
    (path.parent / "linear_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0
