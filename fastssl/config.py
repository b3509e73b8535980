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
    loader="resident",
)

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
    encoder=tuple(ENCODERS), dataset=("cifar10", "cifar100"), optimizer=("sgd", "lars"), aug=POLICY_NAMES,
    amp=("auto", "bf16", "fp16", "off"), compile=("auto", "on", "off"), kernels=BACKENDS,
    device=("auto", "cpu", "cuda"), dare_variant=("decoupled", "simclr"),
    loader=LOADERS,
    triplet_mining=("semihard", "batch_hard"),
    lr_scaling=("linear", "sqrt", "none"),
)

HELP = dict(
    method="training method", dataset="dataset", data="dataset archive, image folder or a folder holding one "
    "(else $FASTSSL_DATA, else the cache, else download)", encoder="backbone", width="channels of the first "
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
        if f.name in ("channels_last", "linear_eval"):
            p.add_argument(flag, default=None, action=argparse.BooleanOptionalAction,
                           help=f"{HELP[f.name]} (default: {shown})")
            continue
        kind = {"int": int, "float": float}.get(f.type.split(" ")[0], str)
        p.add_argument(flag, default=None, choices=CHOICES.get(f.name),
                       type=_non_negative(kind) if kind is not str else str,
                       help=f"{HELP[f.name]} (default: {shown})")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (default: off)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
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
    for name, default in DEFAULTS.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, preset.get(name, method_cls.recipe.get(name, default)))
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
    if cfg.out is None:
        cfg.out = f"runs/{cfg.method}-{cfg.dataset}-{cfg.encoder}"
    from .dispatch import resolve_backend
    try:
        cfg.backend = resolve_backend(cfg.kernels, cfg.device)
    except (ValueError, RuntimeError) as e:
        raise CLIError(str(e))
    return cfg
