"""The method interface, its options, and the registry behind ``--method NAME``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

_REGISTRY: dict[str, type["Method"]] = {}
_OPTIONS: dict[str, tuple["Option", str]] = {}  # option name -> (its declaration, the first method declaring it)


@dataclass(frozen=True)
class Option:
    """One hyper-parameter: a field of ``fastssl.config.Config`` (``cfg.NAME``), a ``--NAME`` flag
    (underscores become dashes) with ``help``, ``choices`` and ``default`` shown in ``--help``.

    ``type`` is int, float, str or bool (bool: ``--NAME`` / ``--no-NAME``); int and float values must be
    >= 0, as every numeric option of the command line. ``parse`` replaces ``type`` as the argparse
    converter for structured values (type tuple, e.g. "LO,HI"), shown as ``metavar``. Option names are global: a
    method prefixes its own with its name (``dare_lambda``); two methods may declare the same option
    only identically (type, default, choices); a method sets another value through its ``recipe``."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"option name {self.name!r} is not a Python identifier")
        if self.type not in (int, float, str, bool, tuple):
            raise ValueError(f"option {self.name!r}: type must be int, float, str or bool, got {self.type!r}")
        if self.type is tuple and self.parse is None:
            raise ValueError(f"option {self.name!r}: a tuple option needs parse= (how to read it from the command line)")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def same_as(self, other: "Option") -> bool:
        return (self.type, self.default, self.choices) == (other.type, other.default, other.choices)


def register(name: str):
    """Class decorator: ``@register("mymethod")`` makes the class ``--method mymethod`` and adds its
    ``options``. Raises ValueError for a name taken twice or an option that clashes with another method's."""
    def add(cls):
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        for opt in cls.options:
            if not isinstance(opt, Option):
                raise ValueError(f"method {name!r}: options must be Option(...) entries, got {opt!r}")
            seen = _OPTIONS.get(opt.name)
            if seen is not None and not seen[0].same_as(opt):
                raise ValueError(
                    f"option {opt.name!r} of method {name!r} ({opt.type.__name__}, default {opt.default!r}, choices "
                    f"{opt.choices}) differs from method {seen[1]!r}'s ({seen[0].type.__name__}, default "
                    f"{seen[0].default!r}, choices {seen[0].choices}): declare it identically or rename it")
        for opt in cls.options:
            _OPTIONS.setdefault(opt.name, (opt, name))
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return add


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> type["Method"]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def method_options() -> dict[str, tuple[Option, str]]:
    """Every registered method's options: name -> (Option, the first method that declares it)."""
    return dict(_OPTIONS)


NO_DECAY_NAMES = ("cls_token", "pos_embed")  # fastssl.vit's token parameters (3-D, but not weights)


class Method(nn.Module):
    """Encoder + heads + loss. Subclasses declare ``options``, set ``recipe`` and implement ``forward``.

    ``options`` are the method's own hyper-parameters (``Option`` entries): each becomes ``cfg.NAME`` and
    a ``--NAME`` flag. ``recipe`` holds the method's values for global options (optimizer, lr per 256
    images, weight decay, temperature, projector sizes, augmentation policy, ...) and may set its own
    options too; a value given on the command line overrides it. ``recipes`` holds the method's own
    ``--recipe NAME`` override sets (a name absent there takes ``config.RECIPES[NAME]``).
    ``forward(views, labels)`` returns {"loss": scalar, ...other scalars}.

    ``views`` is a list of (n, C, H, W) batches of the same n images: views[0] and views[1] are the two
    global crops, views[2:] optional smaller local crops (multi-crop). With exactly two views every
    method computes what the two-view paper defines; how extra views enter is each method's docstring.
    """

    name = "?"
    uses_labels = False  # supervised methods (SupCon, Triplet) receive the labels
    options: tuple[Option, ...] = ()
    recipe: dict = {}
    recipes: dict[str, dict] = {}
    # Overrides of the CPU ``--fast`` preset (``config.FAST_PRESETS["cpu"]``) for methods that need
    # another short-schedule setting to learn in ~400 steps; each method documents why.
    fast_cpu: dict = {}
    # The recipe ``--fast`` takes when --recipe is not given: "speedrun" once the method's speedrun recipe
    # has beaten its default at equal training seconds on every seed (bench/time_to_accuracy.py).
    fast_recipe: str = "default"

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        raise NotImplementedError

    def embed_views(self, views: list[torch.Tensor], net) -> list:
        """``net(view)`` for every view, in order. Each global view goes through ``net`` alone (so that
        BatchNorm statistics are per global view, exactly as in the two-view methods); the local views
        of one size go through it in one batched call (one call per size: fewer, larger kernels). If
        ``net`` returns a tuple (DARe's (mu, logvar)), each entry is a tuple."""
        check_views(views)
        out = [net(v) for v in views[:2]]
        by_size: dict[tuple, list[int]] = {}
        for i in range(2, len(views)):
            by_size.setdefault(tuple(views[i].shape[1:]), []).append(i)
        local = {}
        for idx in by_size.values():
            y = net(torch.cat([views[i] for i in idx]))
            parts = zip(*(t.chunk(len(idx)) for t in y)) if isinstance(y, tuple) else y.chunk(len(idx))
            local.update(zip(idx, parts))
        return out + [local[i] for i in range(2, len(views))]

    def param_groups(self) -> list[dict]:
        """Optimiser groups: biases, norm parameters and a ViT's class token and position embeddings get no
        weight decay and no LARS scaling (as in the usual ViT recipes)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(NO_DECAY_NAMES) else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]

    def on_step(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (BYOL's EMA target update lives here)."""


def check_views(views) -> None:
    """views: a list (or tuple) of at least 2 tensors with one batch size (two global views first)."""
    if not isinstance(views, (list, tuple)) or len(views) < 2:
        raise ValueError("a method takes a list of views [global1, global2, *locals] (at least 2), got "
                         f"{type(views).__name__}")
    n = views[0].shape[0]
    if any(v.shape[0] != n for v in views):
        raise ValueError(f"every view must hold the same images, got batch sizes {[v.shape[0] for v in views]}")


def cross_pairs(n_views: int) -> list[tuple[int, int]]:
    """The view pairs of the non-contrastive methods (and DARe): the two global views with each other,
    and each local view with each global view (multi-crop as in SwAV and DINO; no local-local pairs):
    [(0, 1), (2, 0), (2, 1), (3, 0), (3, 1), ...]. With two views: [(0, 1)]."""
    return [(0, 1)] + [(v, g) for v in range(2, n_views) for g in (0, 1)]


def predict_pairs(n_views: int) -> list[tuple[int, int]]:
    """The (predicting view, target global view) pairs of BYOL and SimSiam: every view predicts each
    global view other than itself (targets come from global views only, as DINO's teacher):
    [(0, 1), (1, 0), (2, 0), (2, 1), ...]. With two views: [(0, 1), (1, 0)]."""
    return [(0, 1), (1, 0)] + [(v, g) for v in range(2, n_views) for g in (0, 1)]
