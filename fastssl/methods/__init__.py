"""Self-supervised methods, one file each, registered by name for ``--method NAME``.

A method is an ``nn.Module`` that owns its heads (the encoder is passed in) and maps the augmented
views to a dict whose "loss" entry is minimised; see ``base.Method``. To add one, write
``fastssl/methods/mymethod.py`` with a ``@register("mymethod")`` class (its hyper-parameters as
``options``); every module of this package is imported here, so nothing else needs editing.

``FASTSSL_METHODS_PATH`` (folders separated by ``os.pathsep``) adds folders whose modules are imported
as methods too (``fastssl.methods.<file name>``: relative imports such as ``from .base import Method``
work there), for methods kept outside the checkout. It is read once, when this package is imported.
"""
import importlib
import os
import pkgutil

from .base import Method, Option, available, get_method, method_options, register

__path__ += [p for p in os.environ.get("FASTSSL_METHODS_PATH", "").split(os.pathsep) if p]

_modules = sorted(m.name for folder in __path__ for m in pkgutil.iter_modules([folder]))
_twice = sorted({m for m in _modules if _modules.count(m) > 1})
if _twice:  # the first folder's file would win silently
    raise ImportError(f"method files of the same name in two folders of {__path__}: {', '.join(_twice)}")
for _module in dict.fromkeys(_modules):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")  # importing a module registers its methods

__all__ = ["Method", "Option", "available", "get_method", "method_options", "register"]
