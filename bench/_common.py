"""Shared by the bench scripts: the environment record every result carries, writing results, and stopping a
subprocess group that overran its limit."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import signal
import subprocess
from pathlib import Path

import torch

from data_prep.atomic import write_json, write_text
from fastssl.runtime import device_name

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
        env.update(device=device_name("cuda:0"), cuda=torch.version.cuda,
                   capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1))
    else:
        env.update(device=device_name("cpu"), cuda=None)
    if hasattr(os, "getloadavg"):
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return env


def device_tag() -> str:
    """'cpu' or a slug of the GPU's name (e.g. 'nvidia-h100-80gb-hbm3') for result file names."""
    if not torch.cuda.is_available():
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name("cuda:0").lower()).strip("-")


def stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def write_result(record: dict, markdown: str, path: Path, quiet: bool = False) -> None:
    """``path`` (JSON) and the markdown beside it (same name, .md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record, default=str)
    write_text(path.with_suffix(".md"), markdown.rstrip("\n") + "\n")
    if quiet:
        return
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"\nwrote {shown} and {shown.with_suffix('.md')}")


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM ``proc``'s process group (started with ``start_new_session``), so that a script can still write
    what it measured (bench/time_to_accuracy.py writes its report); SIGKILL after ``grace_s``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already ended
        pass
    proc.wait()
