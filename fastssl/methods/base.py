"""The method interface and the registry behind ``--method NAME``."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_REGISTRY: dict[str, type["Method"]] = {}


def register(name: str):
    def add(cls):
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
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


@dataclass(frozen=True)
class Option:
    """TEMP stand-in for the options helper's Option (dropped at merge)."""
    name: str
    type: type
    default: object
    help: str
    choices: tuple | None = None


class Method(nn.Module):
    """Encoder + heads + loss. Subclasses set ``recipe`` and implement ``forward``.

    ``recipe`` holds the method's default hyper-parameters (optimizer, lr per 256 images, weight
    decay, temperature, projector sizes, augmentation policy, ...); a value given on the command
    line overrides it. ``forward(views, labels)`` returns {"loss": scalar, ...other scalars}.

    ``views`` is a list of (n, C, H, W) batches of the same n images: views[0] and views[1] are the two
    global crops, views[2:] optional smaller local crops (multi-crop). With exactly two views every
    method computes what the two-view paper defines; how extra views enter is each method's docstring.
    """

    name = "?"
    uses_labels = False  # supervised methods (SupCon, Triplet) receive the labels
    recipe: dict = {}
    options: tuple = ()
    # Overrides of the CPU ``--fast`` preset (``config.FAST_PRESETS["cpu"]``) for methods that need
    # another short-schedule setting to learn in ~400 steps; each method documents why.
    fast_cpu: dict = {}

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
        """Optimiser groups: biases and norm parameters get no weight decay and no LARS scaling."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
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
