"""Small facts about where a run executes, each computed in one place: the AMP dtype an ``--amp`` value
names, and a device's human-readable name for logs, summaries and benchmark records."""
from __future__ import annotations

import os
import platform

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str | None) -> torch.dtype | None:
    """The autocast dtype of an ``--amp`` value ("bf16", "fp16"), or None for "off"/None (full precision)."""
    return AMP_DTYPES.get(amp)


def device_name(device: torch.device | str, world: int = 1) -> str:
    """The GPU's marketing name, or the CPU's architecture, cores and torch threads; under torchrun
    (``world`` > 1) prefixed with the number of processes."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return name if world == 1 else f"{world} x {name} (torch.distributed)"
