"""Self-supervised methods, one file each, registered by name for ``--method NAME``.

A method is an ``nn.Module`` that owns its heads (the encoder is passed in) and maps two augmented
views to a dict whose "loss" entry is minimised; see ``base.Method``. To add one: write
``fastssl/methods/mymethod.py`` with a ``@register("mymethod")`` class and import it below.
"""
from .base import Method, available, get_method, register

from . import simclr, dare, supcon, triplet, barlow, simsiam, byol  # noqa: E402,F401  (importing registers them)

__all__ = ["Method", "available", "get_method", "register"]
