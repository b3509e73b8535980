"""Command-line front ends of scripts/linear_eval.py, scripts/finetune.py and scripts/export.py.

Each reads a checkpoint with ``fastssl.checkpoint.load_checkpoint`` (never unpickling code); a file
that is not a fastssl checkpoint, data that cannot be loaded or an export that cannot be done is
reported as one line ``<script>: error: ...`` with exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from data_prep.atomic import write_json

from .config import _non_negative  # the command line's own check: one message for the same mistake

PROTOCOLS = ("probe", "standard")
PROTOCOL_HELP = ("probe: the fast proxy, a linear classifier on features precomputed once (AdamW, standardised "
                 "features; seconds on a GPU); standard: the protocol behind published tables (solo-learn's CIFAR "
                 "linear evaluation), a linear head on the frozen backbone in eval mode with random crop + flip "
                 "every epoch, SGD with momentum 0.9, cosine schedule, 100 epochs (--epochs)")


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


_non_negative_int = _non_negative(int)


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], e.g. 0.01 or 0.1; got {text}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint.pt written by pretrain.py, or its run folder")
    p.add_argument("--data", default=None, help="dataset location (default: the one the checkpoint was trained on, "
                   "else $FASTSSL_DATA, the cache or a download)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device (default: %(default)s)")
    p.add_argument("--test-subset", type=_non_negative_int, default=0,
                   help="evaluate on a fixed random subset of this many test images, 0 = all (default: 0)")
    p.add_argument("--seed", type=_non_negative_int, default=None,
                   help="seed of the subsets and the training (default: the checkpoint's)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default: beside the checkpoint)")


def _device(name: str):
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def _setup(args):
    """(checkpoint path, checkpoint, encoder on the device, dataset, device, seed)."""
    from .checkpoint import load_checkpoint, resolve_path
    from .encoder import encoder_from_checkpoint, load_eval_dataset
    path = resolve_path(args.ckpt)
    ckpt = load_checkpoint(path)
    encoder = encoder_from_checkpoint(ckpt, path)
    device = _device(args.device)
    ds = load_eval_dataset(ckpt["config"], args.data)
    seed = args.seed if args.seed is not None else int(ckpt["config"].get("seed") or 0)
    channels_last = ckpt["config"].get("channels_last", True) is not False
    import torch
    encoder = encoder.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return path, ckpt, encoder, ds, device, seed, channels_last


def _run(prog: str, body, argv) -> int:
    """Run ``body``; the errors a user can cause become one line and exit code 2."""
    from data_prep import DataError

    from .checkpoint import CheckpointError
    from .export import ExportError
    try:
        return body()
    except (CheckpointError, DataError, ExportError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2


def _write(result: dict, out: Path) -> int:
    """The result as JSON at ``out`` (said on stdout); the exit code 0."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"wrote {out}")
    return 0


# ---- linear_eval.py --------------------------------------------------------------------------------

def linear_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="linear_eval.py", description="Evaluate a pretrained backbone: kNN (k = 20 and 200) and a linear "
        "classifier by one of two protocols.", epilog=PROTOCOL_HELP)
    _common(p)
    p.add_argument("--protocol", choices=PROTOCOLS, default="probe",
                   help="probe (fast proxy) or standard (published-table protocol) (default: %(default)s)")
    p.add_argument("--train-subset", type=_non_negative_int, default=0,
                   help="train on a fixed random subset of this many train images (also the kNN bank), 0 = all "
                   "(default: 0)")
    p.add_argument("--epochs", type=_positive(int), default=100, help="training epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive(int), default=None,
                   help="batch size (default: 256 standard, 1024 probe)")
    p.add_argument("--lr", type=_positive(float), default=None,
                   help="learning rate (default: 0.1 SGD standard, 0.001 AdamW probe)")
    return p


def linear_eval_main(argv=None) -> int:
    args = linear_eval_parser().parse_args(argv)

    def body():
        from .eval import (KNN_KS, STANDARD_LINEAR, LabelledSplits, extract_features, fixed_subset, knn_accuracies,
                           linear_probe, standard_linear_eval)
        from .runtime import device_name
        t0 = time.perf_counter()
        path, ckpt, encoder, ds, device, seed, channels_last = _setup(args)
        bank = fixed_subset(len(ds.train_y), args.train_subset, seed + 1)
        queries = fixed_subset(len(ds.test_y), args.test_subset, seed + 2)
        data = LabelledSplits.of(ds, device, bank, queries)
        train_y, test_y = data.train_y, data.test_y
        print(f"{path}: {ckpt['config'].get('method')} {ckpt['config']['encoder']} width {ckpt['config']['width']}; "
              f"{ds.name}: {len(train_y)} train / {len(test_y)} test images; device {device}", flush=True)
        t_feat = time.perf_counter()
        kw = dict(channels_last=channels_last)
        train_h = extract_features(encoder, data.train_x, ds.mean, ds.std, **kw)
        test_h = extract_features(encoder, data.test_x, ds.mean, ds.std, **kw)
        knn = knn_accuracies(train_h, train_y, test_h, test_y, ds.num_classes, KNN_KS,
                             ckpt["config"].get("knn_t") or 0.1)
        print("kNN top-1: " + ", ".join(f"k={k} {v:.2f}%" for k, v in knn.items()), flush=True)
        knn_s = time.perf_counter() - t_feat
        t_lin = time.perf_counter()
        if args.protocol == "probe":
            top1 = linear_probe(train_h, train_y, test_h, test_y, ds.num_classes, epochs=args.epochs,
                                batch_size=args.batch_size or 1024, lr=args.lr or 1e-3, seed=seed)
            settings = dict(optimizer="adamw", lr=args.lr or 1e-3, batch_size=args.batch_size or 1024)
        else:
            schedule = dataclasses.replace(STANDARD_LINEAR, epochs=args.epochs, batch_size=args.batch_size or 256,
                                           lr=args.lr or 0.1, seed=seed, channels_last=channels_last)
            top1 = standard_linear_eval(encoder, data, schedule, log=lambda line: print(line, flush=True))
            settings = dict(optimizer="sgd", momentum=schedule.momentum, weight_decay=schedule.weight_decay,
                            lr=schedule.lr, batch_size=schedule.batch_size, augmentation="random crop (4-px padding) + flip",
                            backbone="frozen, BatchNorm in eval mode", schedule="cosine")
        linear_s = time.perf_counter() - t_lin
        print(f"linear top-1 ({args.protocol} protocol, {args.epochs} epochs): {top1:.2f}% in {linear_s:.0f} s",
              flush=True)
        result = dict(ckpt=str(path), protocol=args.protocol, linear_top1=top1, epochs=args.epochs,
                      **{f"knn_top1_k{k}": v for k, v in knn.items()}, dataset=ds.name,
                      train_images=len(train_y), test_images=len(test_y), seed=seed, device=device_name(device),
                      settings=settings, linear_s=linear_s, knn_s=knn_s, wall_s=time.perf_counter() - t0)
        return _write(result, args.out or path.parent / f"linear_eval-{args.protocol}.json")

    return _run("linear_eval.py", body, argv)


# ---- finetune.py -----------------------------------------------------------------------------------

def finetune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetune.py", description="Fine-tune a pretrained backbone and a linear head end to end (crop + flip, "
        "SGD, cosine); with --labels-fraction, on a class-balanced seeded subset of the labels (semi-supervised "
        "evaluation).")
    _common(p)
    p.add_argument("--labels-fraction", type=_fraction, default=1.0,
                   help="fraction of the train labels to use, class-balanced and seeded: 0.01 or 0.1 for the "
                   "semi-supervised protocol, 1 = all (default: %(default)s)")
    p.add_argument("--epochs", type=_positive(int), default=30, help="training epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive(int), default=256, help="batch size (default: %(default)s)")
    p.add_argument("--lr", type=_positive(float), default=0.05, help="SGD learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default: %(default)s)")
    return p


def finetune_main(argv=None) -> int:
    args = finetune_parser().parse_args(argv)

    def body():
        from .eval import FINETUNE, LabelledSplits, balanced_subset, finetune, fixed_subset
        from .runtime import device_name
        t0 = time.perf_counter()
        path, ckpt, encoder, ds, device, seed, channels_last = _setup(args)
        labelled = balanced_subset(ds.train_y, args.labels_fraction, seed)
        queries = fixed_subset(len(ds.test_y), args.test_subset, seed + 2)
        data = LabelledSplits.of(ds, device, labelled, queries)
        train_y, test_y = data.train_y, data.test_y
        print(f"{path}: fine-tuning on {len(train_y)} labelled images ({args.labels_fraction:g} of {len(ds.train_y)}, "
              f"class-balanced, seed {seed}); {len(test_y)} test images; device {device}", flush=True)
        schedule = dataclasses.replace(FINETUNE, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                       weight_decay=args.weight_decay, seed=seed, channels_last=channels_last)
        top1 = finetune(encoder, data, schedule, log=lambda line: print(line, flush=True))
        wall = time.perf_counter() - t0
        print(f"fine-tuned top-1: {top1:.2f}% in {wall:.0f} s")
        result = dict(ckpt=str(path), protocol="finetune", labels_fraction=args.labels_fraction, top1=top1,
                      train_images=len(train_y), test_images=len(test_y), epochs=args.epochs, seed=seed,
                      lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay, dataset=ds.name,
                      device=device_name(device), wall_s=wall)
        return _write(result, args.out or path.parent / f"finetune-{args.labels_fraction:g}.json")

    return _run("finetune.py", body, argv)


# ---- export.py -------------------------------------------------------------------------------------

def export_parser() -> argparse.ArgumentParser:
    from .export import FORMATS
    p = argparse.ArgumentParser(
        prog="export.py", description="Export a checkpoint's backbone: safetensors (+ JSON sidecar), torchvision "
        "ResNet key names, or a torch.export program.",
        epilog="torchvision: m = torchvision.models.resnet18(); m.conv1, m.maxpool, m.fc = nn.Conv2d(3, 64, 3, 1, 1, "
        "bias=False), nn.Identity(), nn.Identity(); m.load_state_dict(torch.load(PATH, weights_only=True))")
    p.add_argument("--ckpt", required=True, help="checkpoint.pt written by pretrain.py, or its run folder")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format")
    p.add_argument("--out", type=Path, default=None, help="output file (default: encoder.safetensors, "
                   "encoder-torchvision.pt or encoder.pt2 beside the checkpoint); a JSON sidecar goes beside it")
    p.add_argument("--data", default=None, help="dataset location, to compute the normalisation when the checkpoint "
                   "does not hold it (default: the checkpoint's)")
    return p


def export_main(argv=None) -> int:
    args = export_parser().parse_args(argv)

    def body():
        from .checkpoint import load_checkpoint, resolve_path
        from .export import default_output, export
        path = resolve_path(args.ckpt)
        ckpt = load_checkpoint(path)
        written = export(ckpt, args.to, args.out or default_output(path, args.to), source=path, data=args.data)
        print("wrote " + ", ".join(str(p) for p in written))
        return 0

    return _run("export.py", body, argv)
