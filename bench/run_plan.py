"""The pieces of bench/run_all.py: what each runs, its time limit (cold compiles counted) and what it writes.

Two plans. ``quick`` is first light on a lent GPU in at most 300 s, so that a second call still fits in the
lease: the CUDA kernel tests (bf16/fp16, the tf32 gradient check), the training-configuration kernel rows
(d = 256, simclr and decoupled, fp32 inputs with tf32, 2N = 1024), fused vs eager vs compile at 2N = 8192,
d = 128, one compiled ResNet-18 SimCLR epoch on CIFAR-10 after the compiling one, and the registers/spills
of the binaries the machine's Triton compiled. ``full`` adds the loaders, the train-step ladder, a DARe
``--fast`` run and the size sweep of the kernels, within one 10-minute call. ``--cpu-smoke`` runs the same
pieces at tiny sizes on a CPU (the orchestration, not the numbers).

A limit is the piece's wall clock including Triton's and inductor's cold compiles on a fresh machine (the
GPU kernel tests compile about 100 binaries, in parallel with ``pytest -n`` where pytest-xdist is installed).
To add a piece: an entry below and a row in bench/README.md saying what its figure must show.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

KERNEL_TESTS = ["tests/test_kernels_contrastive.py", "tests/test_kernels_dare.py", "tests/test_kernels_cross.py",
                "tests/test_kernels_compile.py"]
TINY = ["--width", "8", "--batch-size", "16", "--proj-hidden", "32", "--proj-dim", "16", "--knn-k", "10",
        "--device", "cpu"]
QUICK_BUDGET_S = 300.0  # first light: a second call must still fit in the 15-minute lease
FULL_BUDGET_S = 570.0  # one device call is at most 600 s
# --cpu-smoke rehearses the orchestration on a shared CPU, whose speed says nothing about the GPU's: its
# limits and deadline are the GPU's times this, so that a loaded machine does not stop a tiny piece
SMOKE_SLACK = 4


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def kernel_tests(smoke: bool, out: Path) -> dict:
    """The CUDA kernel tests (fp32 ieee/tf32 incl. the gradients, bf16, fp16, every variant), parallel if possible."""
    workers = ["-n", str(min(16, os.cpu_count() or 1))] if module_available("xdist") else []
    skip = ("--cpu-smoke: the kernel tests need CUDA here (the CPU suite covers them in the interpreter)" if smoke
            else None if module_available("pytest") else "pytest is not installed on this machine")
    return dict(name="kernel-tests", limit=80, skip=skip,  # JUnit XML: a record per test (at the end)
                argv=[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, "-k", "gpu or cuda",
                      f"--junit-xml={out / 'kernel-tests.xml'}", *KERNEL_TESTS])


def kernels_bench(name: str, limit: float, out: Path, gpu_args: list[str], smoke: bool) -> dict:
    """bench/kernels.py; it saves after every row, so a piece stopped at its limit keeps the rows it measured."""
    return dict(name=name, limit=limit, json=f"{name}.json",
                argv=[sys.executable, "bench/kernels.py", "--out", str(out / f"{name}.json")]
                + ([] if smoke else gpu_args))


def simclr_r18(name: str, limit: float, epochs: int, out: Path, data: list[str], smoke: bool) -> dict:
    return dict(name=name, limit=limit, run_dir=name,
                argv=[sys.executable, "scripts/pretrain.py", "--method", "simclr", "--encoder", "resnet18",
                      "--dataset", "cifar10", "--epochs", str(epochs), "--no-linear-eval", "--no-progress",
                      "--out", str(out / name), *data] + (TINY if smoke else []))


def pieces(plan: str, smoke: bool, data: str | None, out: Path) -> list[dict]:
    """The pieces of ``plan`` ("quick", "full" or "time-to-accuracy"), in order; each runs in the repository
    root and writes into ``out``."""
    todo = _pieces(plan, smoke, data, out)
    for piece in todo if smoke else []:
        piece["limit"] *= SMOKE_SLACK
    return todo


def _pieces(plan: str, smoke: bool, data: str | None, out: Path) -> list[dict]:
    py = sys.executable
    data_args = ["--data", data] if data else []
    training_rows = kernels_bench(
        "kernels-training", 35, out,  # fused against eager; the compile baseline is kernels-8192's (time)
        ["--sizes", "1024", "--dims", "256", "--variants", "simclr", "decoupled", "--precisions", "tf32",
         "--rep", "25", "--no-dare", "--no-peers", "--no-compile"], smoke)
    registers = dict(name="kernel-registers", limit=15, json="kernel-registers.json",
                     argv=[py, "bench/kernel_registers.py", "--out", str(out / "kernel-registers.json")])
    data_piece = dict(name="data", limit=25 if plan == "quick" else 30,
                      argv=[py, "-m", "data_prep", "--dataset", "cifar10", *data_args])
    if plan == "quick":
        return [data_piece, kernel_tests(smoke, out), training_rows,
                kernels_bench("kernels-8192", 55, out,
                              ["--sizes", "8192", "--dims", "128", "--variants", "simclr", "--rep", "25", "--no-dare",
                               "--no-peers", "--no-unsplit"], smoke),
                simclr_r18("simclr-r18-epoch", 90, 2, out, data_args, smoke), registers]
    if plan == "time-to-accuracy":
        # a lease of its own: time to 80% kNN, speedrun against default, SimCLR and DARe, ResNet-18 on full
        # CIFAR-10; runs start only while they fit
        return [dict(name="time-to-accuracy", limit=500, json="time_to_accuracy.json",
                     argv=[py, "bench/time_to_accuracy.py", "--out", str(out / "time_to_accuracy.json"),
                           "--runs-dir", str(out / "time-to-accuracy-runs"), *data_args]
                     + (["--methods", "simclr", "--candidates", "default", "--seeds", "0", "--budget", "3",
                         "--knn-every-steps", "2", "--", *TINY] if smoke else ["--gpu", "--time-limit", "470"]))]
    loaders, loader_skips = ["resident", "torch"], {}
    for name, module, extra in (("ffcv", "ffcv", ["ffcv", "ffcv-jpg", "ffcv-crops"]), ("dali", "nvidia.dali", ["dali"])):
        if smoke:
            loader_skips[name] = "--cpu-smoke times only the resident and torch loaders"
        elif module_available(module):
            loaders += extra
        else:
            loader_skips[name] = f"{module} is not installed on this machine (pip install -e '.[{name}]')"
    return [
        data_piece, kernel_tests(smoke, out), training_rows,
        # the training precisions (tf32, bf16), split vs unsplit, across sizes
        kernels_bench("kernels", 75, out,
                      ["--sizes", "1024", "8192", "65536", "--dims", "128", "--rep", "25", "--no-dare"], smoke),
        dict(name="loaders", limit=35, json="loaders.json", skipped_loaders=loader_skips,
             argv=[py, "bench/loaders.py", "--loaders", *loaders, "--out", str(out / "loaders.json"), *data_args]
             + (["--subset", "64", "--batch-size", "16", "--workers", "0"] if smoke else ["--subset", "20480"])),
        dict(name="train-step", limit=130, json="train_step.json",
             argv=[py, "bench/train_step.py", "--out", str(out / "train_step.json"), *data_args]
             + (["--encoders", "resnet18", "--width", "8", "--batch-size", "16", "--steps", "2", "--warmup", "1"]
                if smoke else ["--steps", "20", "--warmup", "3"])),
        simclr_r18("simclr-r18-cifar10", 75, 3, out, data_args, smoke),
        dict(name="pretrain-dare-fast", limit=80, run_dir="pretrain-dare-fast",
             argv=[py, "scripts/pretrain.py", "--method", "dare", "--fast", "--no-progress",
                   "--out", str(out / "pretrain-dare-fast"), *data_args] + (TINY + ["--epochs", "1"] if smoke else [])),
        registers,
    ]
