"""DINO's prototype head + loss, eager vs torch.compile: time per forward + backward and peak memory, to
decide whether the B x K logits need a fused last-layer + loss kernel (issue 19).

One step: the student head on 2 global views (gradient), the teacher head on them (no gradient), and
``fastssl.losses.dino_loss`` (2 pairs). Features are random (B, --feature-dim): only the head and loss are
timed. Each (K, mode) runs in a fresh process so that its peak memory is its own: CUDA's
max_memory_allocated, or on a CPU the growth of the process's peak resident set during the measured steps.
The B x K logits' share is reported against that peak: one fp32 (B, K) tensor is 4 B K bytes.
CPU peak: the process's resident-set high-water mark (VmHWM), reset after the warm-up call by writing 5 to
/proc/self/clear_refs (Linux), minus the resident set at that moment.

    python bench/dino_head.py --batch 512 --prototypes 4096 65536
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import environment  # noqa: E402
from fastssl.losses import dino_loss  # noqa: E402
from fastssl.models import PrototypeHead  # noqa: E402


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the high-water mark to the current resident set; returns that resident set in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def measure(batch: int, prototypes: int, mode: str, feature_dim: int, hidden: int, bottleneck: int, reps: int,
            device: str) -> dict:
    torch.manual_seed(0)
    student = PrototypeHead(feature_dim, hidden, bottleneck, prototypes).to(device)
    teacher = PrototypeHead(feature_dim, hidden, bottleneck, prototypes).to(device).requires_grad_(False)
    center = torch.zeros(1, prototypes, device=device)
    views = [torch.randn(batch, feature_dim, device=device) for _ in range(2)]

    def step():
        with torch.no_grad():
            t = [teacher(v) for v in views]
        loss = dino_loss([student(v) for v in views], t, center, 0.1, 0.04)
        loss.backward()
        return loss

    fn = torch.compile(step) if mode == "compile" else step
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    start = time.perf_counter()
    fn()  # warm-up (the compile, for mode compile)
    sync()
    first = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    times = []
    for _ in range(reps):
        student.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _status_bytes("VmHWM")) - base
    logits = 4 * batch * prototypes
    return dict(batch=batch, prototypes=prototypes, mode=mode, first_call_s=round(first, 2),
                step_ms=round(1000 * min(times), 1), peak_extra_mib=round(peak / 2**20, 1),
                one_logits_mib=round(logits / 2**20, 1),
                head_params_mib=round(4 * sum(p.numel() for p in student.parameters()) / 2**20, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--prototypes", type=int, nargs="+", default=[4096, 65536])
    p.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    p.add_argument("--feature-dim", type=int, default=512, help="backbone feature size (ResNet-18: 512)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--bottleneck", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--one", action="store_true", help="measure one (K, mode) in this process (used internally)")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.batch, args.prototypes[0], args.modes[0], args.feature_dim, args.hidden,
                                 args.bottleneck, args.reps, args.device)))
        return 0
    print(json.dumps(environment(" ".join(sys.argv))))
    common = ["--batch", str(args.batch), "--feature-dim", str(args.feature_dim), "--hidden", str(args.hidden),
              "--bottleneck", str(args.bottleneck), "--reps", str(args.reps), "--device", args.device, "--one"]
    for k in args.prototypes:
        for mode in args.modes:
            out = subprocess.run([sys.executable, __file__, *common, "--prototypes", str(k), "--modes", mode],
                                 capture_output=True, text=True)
            line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else \
                json.dumps(dict(prototypes=k, mode=mode, error=(out.stderr.strip().splitlines() or ["?"])[-1]))
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
