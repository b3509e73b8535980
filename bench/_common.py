"""Shared by the bench scripts: the environment record every result carries, and writing results."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def environment(command: str) -> dict:
    """Device, versions (python, torch, triton, CUDA), platform, command and local time of a run."""
    env = dict(command=command, python=platform.python_version(), torch=torch.__version__,
               platform=platform.platform(), time=_dt.datetime.now().isoformat(timespec="seconds"))
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        env["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1))
    else:
        env.update(device=f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"{torch.get_num_threads()} threads)", cuda=None)
    if hasattr(os, "getloadavg"):
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return env


def device_tag() -> str:
    """'cpu' or a slug of the GPU's name (e.g. 'nvidia-h100-80gb-hbm3') for result file names."""
    if not torch.cuda.is_available():
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def write_result(record: dict, markdown: str, path: Path, quiet: bool = False) -> None:
    """``path`` (JSON) and the markdown beside it (same name, .md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown.rstrip("\n") + "\n")
    if quiet:
        return
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"\nwrote {shown} and {shown.with_suffix('.md')}")
