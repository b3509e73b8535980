"""The peer baseline of bench/kernels.py: lightly's NTXentLoss (eager), when the optional ``[peers]`` extra is
installed."""
from __future__ import annotations

import sys

import torch


def import_lightly_ntxent():
    """(lightly's NTXentLoss class, None) or (None, why not). On a CPU-only torch, lightly's torchvision import
    needs the schema workaround of docs/toolchain.md (no torchvision C++ op is used by the loss)."""
    try:
        from lightly.loss import NTXentLoss
        return NTXentLoss, None
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "lightly":
            return None, "lightly is not installed (pip install -e '.[peers]')"
        return None, f"lightly does not import: {e}"
    except Exception as e:  # noqa: BLE001 - torchvision's C++ ops missing next to a CPU torch
        if "torchvision" not in str(e) or torch.version.cuda is not None:
            return None, f"lightly does not import: {type(e).__name__}: {e}"
    for name in [m for m in sys.modules if m.split(".")[0] in ("lightly", "torchvision")]:
        del sys.modules[name]
    global _torchvision_stub
    _torchvision_stub = torch.library.Library("torchvision", "DEF")
    _torchvision_stub.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_stub.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    try:
        from lightly.loss import NTXentLoss
        return NTXentLoss, None
    except Exception as e:  # noqa: BLE001
        return None, f"lightly does not import (even with the CPU torchvision workaround): {type(e).__name__}: {e}"


_torchvision_stub = None


def lightly_loss(variant, temperature):
    """lightly's NTXentLoss as a loss of (z1, z2, labels), or a string saying why there is none."""
    if variant != "simclr":
        return f"lightly's NTXentLoss is the simclr variant only (not {variant})"
    cls, why = import_lightly_ntxent()
    if cls is None:
        return why
    module = cls(temperature=temperature, memory_bank_size=0)
    return lambda z1, z2, labels: module(z1, z2)
