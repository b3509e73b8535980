"""The method interface and the registry behind ``--method NAME``."""
from __future__ import annotations

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


class Method(nn.Module):
    """Encoder + heads + loss. Subclasses set ``recipe`` and implement ``forward``.

    ``recipe`` holds the method's default hyper-parameters (optimizer, lr per 256 images, weight
    decay, temperature, projector sizes, augmentation policy, ...); a value given on the command
    line overrides it. ``forward(v1, v2, labels)`` returns {"loss": scalar, ...other scalars}.
    """

    name = "?"
    uses_labels = False  # supervised methods (SupCon, Triplet) receive the labels
    recipe: dict = {}
    # Overrides of the CPU ``--fast`` preset (``config.FAST_PRESETS["cpu"]``) for methods that need
    # another short-schedule setting to learn in ~400 steps; each method documents why.
    fast_cpu: dict = {}

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg

    def forward(self, v1, v2, labels=None) -> dict:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """Optimiser groups: biases and norm parameters get no weight decay and no LARS scaling."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]

    def on_step(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (BYOL's EMA target update lives here)."""
