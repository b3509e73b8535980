"""Run configuration: one flat dataclass, the command line that fills it, and how defaults resolve.

A value is taken from, in order: the command line, the ``--fast`` preset (when asked for), the
method's recipe (``Method.recipe``), then ``DEFAULTS``. Options left unset on the command line are
``None`` until ``resolve`` fills them, so every source can be told apart.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields

import torch


from . import distributed, methods
from .dispatch import BACKENDS
from .augment import POLICY_NAMES
from .loaders import LOADERS
from .models import ENCODERS


@dataclass
class Config:
    method: str = "simclr"
    dataset: str | None = None
    data: str | None = None
    encoder: str | None = None
    width: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr_scaling: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    warmup_epochs: float | None = None
    temperature: float | None = None
    proj_hidden: int | None = None
    proj_dim: int | None = None
    dare_lambda: float | None = None
    dare_variant: str | None = None
    triplet_margin: float | None = None
    triplet_mining: str | None = None
    ema_base: float | None = None
    aug: str | None = None
    amp: str | None = None
    compile: str | None = None
    channels_last: bool | None = None
    kernels: str | None = None
    device: str | None = None
    loader: str | None = None
    seed: int | None = None
    train_subset: int | None = None
    knn_every: int | None = None
    knn_k: int | None = None
    knn_t: float | None = None
    knn_bank: int | None = None
    knn_queries: int | None = None
    linear_eval: bool | None = None
    time_budget: float | None = None
    target_knn: float | None = None
    knn_every_steps: int | None = None
    local_crops: int | None = None
    local_size: int | None = None
    local_scale: tuple | None = None
    res_schedule: str | None = None
    recipe: str | None = None
    log: str | None = None
    eval_data: str | None = None
    resolution: int | None = None
    strict: bool | None = None
    out: str | None = None
    resume: bool = False
    fast: bool = False
    progress: bool = True
    # Filled by resolve(), not options:
    backend: str | None = None


DEFAULTS = dict(
    dataset="cifar10", encoder="resnet18", width=64, epochs=100, batch_size=512, lr_scaling="linear", optimizer="sgd",
    lr=0.4, weight_decay=5e-4,
    momentum=0.9, warmup_epochs=10.0, temperature=0.2, proj_hidden=2048, proj_dim=256, dare_lambda=0.1,
    dare_variant="decoupled", triplet_margin=0.2, triplet_mining="semihard", ema_base=0.99, aug="default",
    amp="auto", compile="auto", channels_last=True, kernels="auto", device="auto", seed=0, train_subset=0,
    knn_every=0, knn_k=200, knn_t=0.1, knn_bank=0, knn_queries=0, linear_eval=True, out=None,
    loader="resident", time_budget=0.0, target_knn=0.0, knn_every_steps=0, local_crops=0, local_size=16,
    local_scale=(0.05, 0.3), res_schedule="", recipe="default", log="none", eval_data=None, resolution=32,
    strict=False,
)

# --recipe: named sets of overrides (below the command line, above --fast and the method's recipe).
# "speedrun" holds the time-to-accuracy choices that won side-by-side runs at equal training seconds
# (DESIGN section 8; bench/time_to_accuracy.py, bench/results/time_to_accuracy-cpu-*.md). Measured on the
# 2-core CPU, --fast model, 240 s training budget, 1 thread pinned to one core, kNN top-1 (%), default ->
# progressive resolution 16,24,32 px, seeds 0 / 1: SimCLR 37.70 -> 44.25 / 38.45 -> 42.10 (+6.55 / +3.65;
# about twice the steps), DARe 35.35 -> 37.25 / 31.95 -> 36.60 (+1.90 / +4.65: short of +3 on seed 0).
# Lost on seed 0 (SimCLR): multi-crop 4 x 16 px 34.75, temperature 0.5 36.75. Only progressive is kept;
# the default recipe is unchanged.
RECIPES = {"default": {}, "speedrun": dict(res_schedule="16,24,32")}

# --fast: a short schedule sized to the hardware. On a CPU (2 cores) full-width networks train at
# ~20 images/s, so the preset narrows ResNet-18 to width 16, trains ~400 steps on a subset and
# evaluates on subsets (sizes are printed); on a GPU it is a short schedule on the full dataset.
FAST_PRESETS = {
    "cpu": dict(width=16, epochs=2, batch_size=128, train_subset=25600, optimizer="sgd", lr=0.5,
                weight_decay=5e-4, warmup_epochs=0.2, proj_hidden=512, proj_dim=128, knn_bank=10000,
                knn_queries=2000),
    "cuda": dict(width=64, epochs=20, batch_size=512, warmup_epochs=2.0),
}

CHOICES = dict(
    encoder=tuple(ENCODERS), dataset=("cifar10", "cifar100", "images"), optimizer=("sgd", "lars"), aug=POLICY_NAMES,
    amp=("auto", "bf16", "fp16", "off"), compile=("auto", "on", "off"), kernels=BACKENDS,
    device=("auto", "cpu", "cuda"), dare_variant=("decoupled", "simclr"),
    loader=LOADERS,
    triplet_mining=("semihard", "batch_hard"),
    lr_scaling=("linear", "sqrt", "none"),
    recipe=tuple(RECIPES), log=("none", "tensorboard"),
)

HELP = dict(
    method="training method", dataset="dataset (images = your own folder or tar of images given by --data: with "
    "class sub-folders it is labelled, without them training runs but kNN and probe need --eval-data)",
    data="dataset archive, image folder or a folder holding one (else $FASTSSL_DATA, else the cache, else download)", encoder="backbone", width="channels of the first "
    "stage (64 = the standard network)", epochs="training epochs", batch_size="global batch: images per "
    "optimiser step over all processes (2 views each); under torchrun each of K processes takes B/K",
    lr_scaling="peak lr from --lr and the global batch B: linear = lr*B/256, sqrt = lr*sqrt(B/256), none = lr",
    optimizer="optimizer", lr="peak learning rate per 256 images (scaled to the global batch by --lr-scaling)",
    weight_decay="weight decay (not on biases and norm parameters)", momentum="SGD/LARS momentum",
    warmup_epochs="linear warmup length, then cosine decay", temperature="contrastive temperature tau",
    proj_hidden="projector hidden width", proj_dim="projector output size", dare_lambda="DARe: weight of "
    "the Gaussian JSD term", dare_variant="DARe: contrastive loss on the samples", triplet_margin="Triplet: "
    "margin m on squared distances of L2-normalised embeddings", triplet_mining="Triplet: negative mining",
    ema_base="BYOL: initial EMA momentum of the target network (cosine schedule to 1.0)",
    aug="augmentation policy pair", amp="mixed precision (auto = bf16 on CUDA, off on CPU)",
    compile="torch.compile the training step (auto = on for CUDA)", channels_last="channels-last memory format",
    kernels="loss kernels (auto = Triton on CUDA, PyTorch elsewhere)", device="training device", seed="random seed",
    train_subset="train on a random subset of this many images (0 = all)", knn_every="kNN monitor every K "
    "epochs (0 = only before and after training)", knn_k="kNN neighbours", knn_t="kNN temperature",
    knn_bank="kNN bank: this many train images (0 = all)", knn_queries="kNN queries: this many test images "
    "(0 = all)", linear_eval="linear probe after training", out="output folder (default runs/METHOD-DATASET"
    "-ENCODER)",
    time_budget="train for this many seconds of training time (evaluation and checkpoint writes not charged); "
    "warmup and cosine decay "
    "run over the fraction of the budget spent (warmup fraction = warmup-epochs/epochs) and the run stops when "
    "it is spent; --epochs then only sets that fraction (0 = off: train --epochs)",
    target_knn="stop as soon as the kNN monitor reaches this top-1 (percent; needs --knn-every-steps or "
    "--knn-every; 0 = off)", knn_every_steps="kNN monitor every K optimiser steps as well (0 = off)",
    local_crops="multi-crop: K extra small local crops per image", local_size="local crop size in pixels",
    local_scale="local crop area range LO,HI as fractions of the image",
    res_schedule="progressive resolution: global crops rendered at these sizes over training, e.g. 16,24,32 "
    "(equal thirds) or 16@0.3,24@0.6,32 (size until that fraction); empty = always full size",
    recipe="named set of overrides; speedrun = the time-to-accuracy choices that win measured comparisons "
    "(none measured yet: same as default)",
    log="also log the scalars to TensorBoard (OUT/tensorboard; needs pip install 'fastssl[tensorboard]')",
    eval_data="labelled image folder or archive for the kNN monitor and linear probe (unset: the training "
    "dataset's own labels and test split)",
    resolution="--dataset images: image size in pixels (images are resized to it)",
    strict="--dataset images: stop at the first unreadable image instead of skipping it",
    loader="training-data loader: resident (uint8 dataset on the device), ffcv, dali, or torch (DataLoader "
    "baseline); ffcv/dali convert the data once into the cache",
)


class CLIError(Exception):
    """A bad command-line value: reported on one line, exit code 2."""


def _non_negative(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}")
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value
    return parse


def _scale_range(text):
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two fractions), got {text!r}")
    if not 0 < lo < hi <= 1:
        raise argparse.ArgumentTypeError(f"need 0 < LO < HI <= 1, got {text}")
    return (lo, hi)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pretrain.py", description="Self-supervised pretraining on CIFAR (fastssl).",
        epilog="Unset options take the --fast preset (with --fast), then the method's recipe, then the "
        "default shown. Methods: " + ", ".join(methods.available()))
    p.add_argument("--method", default="simclr", help="training method: " + ", ".join(methods.available())
                   + " (default: %(default)s)")
    p.add_argument("--fast", action="store_true", help="short preset sized to this hardware (default: off)")
    for f in fields(Config):
        if f.name in ("method", "fast", "resume", "progress", "backend"):
            continue
        flag, default = "--" + f.name.replace("_", "-"), DEFAULTS.get(f.name)
        shown = "auto" if default is None else default
        if f.name in ("channels_last", "linear_eval", "strict"):
            p.add_argument(flag, default=None, action=argparse.BooleanOptionalAction,
                           help=f"{HELP[f.name]} (default: {shown})")
            continue
        if f.name == "local_scale":
            p.add_argument(flag, default=None, type=_scale_range, metavar="LO,HI",
                           help=f"{HELP[f.name]} (default: {','.join(map(str, default))})")
            continue
        kind = {"int": int, "float": float}.get(f.type.split(" ")[0], str)
        p.add_argument(flag, default=None, choices=CHOICES.get(f.name),
                       type=_non_negative(kind) if kind is not str else str,
                       help=f"{HELP[f.name]} (default: {'none' if default == '' else shown})")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (default: off)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars (bars show only when stderr is a terminal; otherwise one plain line "
                   "every ~30 s and at each epoch end)")
    return p


def parse_args(argv=None) -> Config:
    args = build_parser().parse_args(argv)
    return Config(**vars(args))


def resolve(cfg: Config) -> Config:
    """Fill every unset option (command line > --fast preset > method recipe > DEFAULTS) and check values."""
    try:
        method_cls = methods.get_method(cfg.method)
    except KeyError as e:
        raise CLIError(e.args[0])
    cfg = dataclasses.replace(cfg)
    if cfg.device in (None, "auto"):
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: CUDA is not available on this machine")
    preset = FAST_PRESETS["cuda" if cfg.device == "cuda" else "cpu"] if cfg.fast else {}
    if cfg.fast and cfg.device != "cuda":
        preset = {**preset, **method_cls.fast_cpu}  # a method's documented short-CPU-schedule overrides
    recipe = RECIPES[cfg.recipe or "default"]
    for name, default in DEFAULTS.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, recipe.get(name, preset.get(name, method_cls.recipe.get(name, default))))
    cfg.recipe = cfg.recipe or "default"
    if cfg.amp == "auto":
        cfg.amp = "bf16" if cfg.device == "cuda" else "off"
    if cfg.compile == "auto":
        cfg.compile = "on" if cfg.device == "cuda" else "off"
    if cfg.epochs < 1 or cfg.batch_size < 2 or cfg.width < 1 or cfg.temperature <= 0:
        raise CLIError("--epochs and --width must be >= 1, --batch-size >= 2 and --temperature > 0")
    world = distributed.env_world_size()  # torchrun's WORLD_SIZE; 1 for a plain run
    if cfg.batch_size % world:
        raise CLIError(f"--batch-size {cfg.batch_size} is the global batch and must be divisible by the number of "
                       f"processes ({world})")
    _check_time_to_accuracy_options(cfg, method_cls)
    if cfg.out is None:
        cfg.out = f"runs/{cfg.method}-{cfg.dataset}-{cfg.encoder}"
    from .dispatch import resolve_backend
    try:
        cfg.backend = resolve_backend(cfg.kernels, cfg.device)
    except (ValueError, RuntimeError) as e:
        raise CLIError(str(e))
    return cfg


def _check_time_to_accuracy_options(cfg: Config, method_cls) -> None:
    """One-line errors for the budget, target, multi-crop, resolution, logging and image-folder options."""
    from .schedule import parse_res_schedule
    if cfg.dataset != "images" and cfg.resolution != 32:
        raise CLIError(f"--resolution applies to --dataset images only ({cfg.dataset} images are 32 px)")
    if cfg.resolution < 8:
        raise CLIError(f"--resolution must be >= 8 px, got {cfg.resolution}")
    if cfg.dataset == "images" and cfg.data is None:
        raise CLIError("--dataset images needs --data FOLDER_OR_TAR")
    try:
        parse_res_schedule(cfg.res_schedule, full=cfg.resolution)
    except ValueError as e:
        raise CLIError(str(e))
    if not 1 <= cfg.local_size <= cfg.resolution:
        raise CLIError(f"--local-size must be between 1 and {cfg.resolution} px, got {cfg.local_size}")
    cfg.local_scale = tuple(cfg.local_scale)
    if not 0 <= cfg.target_knn <= 100:
        raise CLIError(f"--target-knn is a top-1 accuracy in percent (0-100), got {cfg.target_knn}")
    if cfg.target_knn and not (cfg.knn_every_steps or cfg.knn_every):
        raise CLIError("--target-knn needs a kNN monitor during training: add --knn-every-steps K or --knn-every E")
    if cfg.log == "tensorboard":
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise CLIError("--log tensorboard needs the tensorboard package: pip install 'fastssl[tensorboard]'")


def config_from_checkpoint(saved: dict) -> Config:
    """The Config a checkpoint was trained with; options added since it was written take their defaults.
    Raises ValueError (one line) for a config that is not a fastssl one."""
    if not isinstance(saved, dict):
        raise ValueError("its config is not a dict")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(f"its config has unknown options ({', '.join(unknown[:5])}): another fastssl version?")
    cfg = Config(**saved)
    for name, default in DEFAULTS.items():
        if getattr(cfg, name) is None and name not in ("out", "eval_data"):
            setattr(cfg, name, default)
    if cfg.recipe is None:
        cfg.recipe = "default"
    if cfg.local_scale is not None:
        cfg.local_scale = tuple(cfg.local_scale)
    return cfg
