"""Run configuration: one flat dataclass, the command line that fills it, and how defaults resolve.

``Config`` is built from the global options below plus every registered method's ``options``
(``fastssl.methods.base.Option``), so a method's hyper-parameters live in its own file and still read
as ``cfg.NAME``. A value is taken from, in order: the command line, ``--recipe`` (the method's own
``recipes`` entry, else ``RECIPES``), the ``--fast`` preset (with the method's ``fast_cpu`` on a CPU),
the method's ``recipe``, then the option's default. Options left unset on the command line are
``None`` until ``resolve`` fills them, so every source can be told apart.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import fields

import torch

from data_prep import dataset_names

from . import distributed, methods
from .augment import POLICY_NAMES
from .dispatch import BACKENDS
from .loaders import LOADERS
from .methods import Option
from .models import ENCODERS, is_vit
from .optim import OPTIMIZERS


def _scale_range(text):
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two fractions), got {text!r}")
    if not 0 < lo < hi <= 1:
        raise argparse.ArgumentTypeError(f"need 0 < LO < HI <= 1, got {text}")
    return (lo, hi)


# The options every method shares (a method's own options are declared in its file).
GLOBAL_OPTIONS = (
    Option("dataset", str, "cifar10", "dataset (images = your own folder or tar of images given by --data: with "
           "class sub-folders it is labelled, without them training runs but kNN and probe need --eval-data)",
           choices=dataset_names()),
    Option("data", str, None, "dataset archive, image folder or a folder holding one (else $FASTSSL_DATA, else "
           "the cache, else download)"),
    Option("encoder", str, "resnet18", "backbone", choices=tuple(ENCODERS)),
    Option("width", int, 64, "channels of the first stage (64 = the standard network)"),
    Option("epochs", int, 100, "training epochs"),
    Option("batch_size", int, 512, "global batch: images per optimiser step over all processes (2 views each); "
           "under torchrun each of K processes takes B/K"),
    Option("lr_scaling", str, "linear", "peak lr from --lr and the global batch B: linear = lr*B/256, sqrt = "
           "lr*sqrt(B/256), none = lr", choices=("linear", "sqrt", "none")),
    Option("optimizer", str, "sgd", "optimizer (adamw: the usual ViT choice, with --weight-decay 0.05)", choices=OPTIMIZERS),
    Option("lr", float, 0.4, "peak learning rate per 256 images (scaled to the global batch by --lr-scaling)"),
    Option("weight_decay", float, 5e-4, "weight decay (not on biases and norm parameters)"),
    Option("momentum", float, 0.9, "SGD/LARS momentum"),
    Option("warmup_epochs", float, 10.0, "linear warmup length, then cosine decay"),
    Option("temperature", float, 0.2, "contrastive temperature tau"),
    Option("proj_hidden", int, 2048, "projector hidden width"),
    Option("proj_dim", int, 256, "projector output size"),
    Option("aug", str, "default", "augmentation policy pair", choices=POLICY_NAMES),
    Option("amp", str, "auto", "mixed precision (auto = bf16 on CUDA, off on CPU)",
           choices=("auto", "bf16", "fp16", "off")),
    Option("compile", str, "auto", "torch.compile the training step (auto = on for CUDA)",
           choices=("auto", "on", "off")),
    Option("channels_last", bool, True, "channels-last memory format (ResNets; ignored for ViTs)"),
    Option("kernels", str, "auto", "loss kernels (auto = Triton on CUDA, PyTorch elsewhere)", choices=BACKENDS),
    Option("device", str, "auto", "training device", choices=("auto", "cpu", "cuda")),
    Option("loader", str, "resident", "training-data loader: resident (uint8 dataset on the device), ffcv, dali, "
           "or torch (DataLoader baseline); ffcv/dali convert the data once into the cache", choices=LOADERS),
    Option("seed", int, 0, "random seed"),
    Option("train_subset", int, 0, "train on a random subset of this many images (0 = all)"),
    Option("knn_every", int, 0, "kNN monitor every K epochs (0 = only before and after training)"),
    Option("knn_k", int, 200, "kNN neighbours"),
    Option("knn_t", float, 0.1, "kNN temperature"),
    Option("knn_bank", int, 0, "kNN bank: this many train images (0 = all)"),
    Option("knn_queries", int, 0, "kNN queries: this many test images (0 = all)"),
    Option("linear_eval", bool, True, "linear probe after training"),
    Option("time_budget", float, 0.0, "train for this many seconds of training time (evaluation and checkpoint "
           "writes not charged); warmup and cosine decay run over the fraction of the budget spent (warmup "
           "fraction = warmup-epochs/epochs) and the run stops when it is spent; --epochs then only sets that "
           "fraction (0 = off: train --epochs)"),
    Option("target_knn", float, 0.0, "stop as soon as the kNN monitor reaches this top-1 (percent; needs "
           "--knn-every-steps or --knn-every; 0 = off)"),
    Option("knn_every_steps", int, 0, "kNN monitor every K optimiser steps as well (0 = off)"),
    Option("stop_after", float, 0.0, "wall-clock seconds this call may run (start-up and evaluation included): "
           "once they are spent the run writes a checkpoint and exits with code 75; --resume continues it exactly "
           "and does not charge its recompilation to the training clock (for machines lent in time-limited "
           "calls; 0 = off)", metavar="SECONDS"),
    Option("local_crops", int, 0, "multi-crop: K extra small local crops per image"),
    Option("local_size", int, 16, "local crop size in pixels"),
    Option("local_scale", tuple, (0.05, 0.3), "local crop area range LO,HI as fractions of the image",
           parse=_scale_range, metavar="LO,HI"),
    Option("res_schedule", str, "", "progressive resolution: global crops rendered at these sizes over training, "
           "e.g. 16,24,32 (equal thirds) or 16@0.3,24@0.6,32 (size until that fraction); empty = always full size"),
    Option("recipe", str, "default", "named set of overrides, below the command line and above --fast and the "
           "method's recipe (a method may define its own): default = none; speedrun = progressive resolution "
           "16,24,32 px (global crops at 16, then 24, then 32 px over equal thirds of training), about twice the "
           "steps in the same seconds; each method's file gives its measured gain (with --fast and no --recipe: "
           "the method's fast_recipe)"),
    Option("log", str, "none", "also log the scalars to TensorBoard (OUT/tensorboard; needs pip install "
           "'fastssl[tensorboard]')", choices=("none", "tensorboard")),
    Option("eval_data", str, None, "labelled image folder or archive for the kNN monitor and linear probe (unset: "
           "the training dataset's own labels and test split)"),
    Option("resolution", int, 32, "--dataset images: image size in pixels (images are resized to it)"),
    Option("strict", bool, False, "--dataset images: stop at the first unreadable image instead of skipping it"),
    Option("out", str, None, "output folder (default runs/METHOD-DATASET-ENCODER)"),
)

# --recipe: named sets of overrides (below the command line, above --fast and the method's recipe). A
# method's own ``recipes`` entry of the same name replaces these for that method. "speedrun" holds the
# time-to-accuracy choice that won side-by-side runs at equal training seconds (bench/time_to_accuracy.py;
# bench/results/time_to_accuracy-cpu-*.md): progressive resolution, about twice the steps in the same seconds.
# Each method's file records its own gain per seed and sets ``fast_recipe`` where it reached +3 kNN on every
# seed. Lost on seed 0 for SimCLR (2026-11-30): multi-crop 4 x 16 px, temperature 0.5.
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


# Fields that are not options with a default: how the run is driven, or filled by resolve().
_CONTROL_FIELDS = dict(method=(str, "simclr"), resume=(bool, False), fast=(bool, False), progress=(bool, True),
                       backend=(str | None, None))


def _all_options() -> dict[str, Option]:
    """The global options, then every method's (a method option may not reuse a global name)."""
    table = {o.name: o for o in GLOBAL_OPTIONS}
    for name, (opt, method) in methods.method_options().items():
        if name in table or name in _CONTROL_FIELDS:
            raise ValueError(f"method {method!r} declares option {name!r}, which is a global option of "
                             "fastssl/config.py; set it in the method's recipe instead")
        table[name] = opt
    return table


OPTIONS = _all_options()
DEFAULTS = {name: opt.default for name, opt in OPTIONS.items()}
RECIPE_NAMES = tuple(dict.fromkeys([*RECIPES, *(r for m in methods.available()
                                                  for r in methods.get_method(m).recipes)]))

Config = dataclasses.make_dataclass(
    "Config",
    [("method", str, dataclasses.field(default="simclr"))]
    + [(name, opt.type | None, dataclasses.field(default=None)) for name, opt in OPTIONS.items()]
    + [(name, kind, dataclasses.field(default=default)) for name, (kind, default) in _CONTROL_FIELDS.items()
       if name != "method"])
Config.__module__ = __name__
Config.__doc__ = ("A run's settings: every option of GLOBAL_OPTIONS and of the methods' ``options`` (None = unset "
                  "until resolve), ``method``, ``resume``, ``fast``, ``progress``, and ``backend`` (filled by resolve).")


class CLIError(Exception):
    """A bad command-line value: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """A bad value or flag: one line and exit code 2 (argparse's usage block is left to --help)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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


def _add_option(group, opt: Option) -> None:
    default = opt.default
    if opt.parse is not None:
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(opt.flag, default=None, type=opt.parse, metavar=opt.metavar,
                           help=f"{opt.help} (default: {shown})")
    elif opt.type is bool:
        group.add_argument(opt.flag, default=None, action=argparse.BooleanOptionalAction,
                           help=f"{opt.help} (default: {default})")
    else:
        shown = "auto" if default is None else "none" if default == "" else default
        group.add_argument(opt.flag, default=None, choices=opt.choices,
                           type=_non_negative(opt.type) if opt.type in (int, float) else str,
                           help=f"{opt.help} (default: {shown})")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pretrain.py", description="Self-supervised pretraining on CIFAR (fastssl).",
        epilog="Unset options take --recipe, then the --fast preset (with --fast), then the method's recipe, then "
        "the default shown. Methods: " + ", ".join(methods.available()))
    p.add_argument("--method", default="simclr", help="training method: " + ", ".join(methods.available())
                   + " (default: %(default)s)")
    p.add_argument("--fast", action="store_true", help="short preset sized to this hardware (default: off)")
    for opt in GLOBAL_OPTIONS:
        if opt.name == "recipe":
            p.add_argument(opt.flag, default=None, choices=RECIPE_NAMES, help=f"{opt.help} (default: {opt.default})")
        else:
            _add_option(p, opt)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (default: off)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars (bars show only "
                   "when stderr is a terminal; otherwise one plain line every ~30 s and at each epoch end)")
    by_method: dict[str, list[Option]] = {}
    for name, (opt, method) in methods.method_options().items():
        by_method.setdefault(method, []).append(opt)
    for method, opts in sorted(by_method.items()):
        group = p.add_argument_group(f"{method} options")
        for opt in opts:
            _add_option(group, opt)
    return p


def parse_args(argv=None) -> Config:
    args = build_parser().parse_args(argv)
    return Config(**vars(args))


def resolve(cfg: Config) -> Config:
    """Fill every unset option (command line > --recipe > --fast preset > method recipe > defaults) and check values."""
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
    # --fast without --recipe takes the method's ``fast_recipe``: the recipe that won its time-to-accuracy runs
    recipe_name = cfg.recipe or (method_cls.fast_recipe if cfg.fast else "default")
    cfg.recipe = recipe_name
    recipe = method_cls.recipes.get(recipe_name, RECIPES.get(recipe_name))
    if recipe is None:
        raise CLIError(f"--recipe {recipe_name} is not defined for method {cfg.method} (its recipes: "
                       f"{', '.join(sorted({*RECIPES, *method_cls.recipes}))})")
    channels_last_asked = cfg.channels_last
    for name, default in DEFAULTS.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, recipe.get(name, preset.get(name, method_cls.recipe.get(name, default))))
    if is_vit(cfg.encoder) and cfg.channels_last:  # a ViT's activations are (B, T, D) tokens
        if channels_last_asked:
            print(f"note: --channels-last has no effect on {cfg.encoder} (a ViT); ignored", file=sys.stderr)
        cfg.channels_last = False
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
    _check_time_to_accuracy_options(cfg)
    if cfg.out is None:
        cfg.out = f"runs/{cfg.method}-{cfg.dataset}-{cfg.encoder}"
    from .dispatch import resolve_backend
    try:
        cfg.backend = resolve_backend(cfg.kernels, cfg.device)
    except (ValueError, RuntimeError) as e:
        raise CLIError(str(e))
    return cfg


def _check_time_to_accuracy_options(cfg: Config) -> None:
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
        raise ValueError(f"its config has unknown options ({', '.join(unknown[:5])}): another fastssl version, or "
                         "a method file that is not here (fastssl/methods, $FASTSSL_METHODS_PATH)?")
    cfg = Config(**saved)
    for name, default in DEFAULTS.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, default)
    if cfg.local_scale is not None:
        cfg.local_scale = tuple(cfg.local_scale)
    return cfg
