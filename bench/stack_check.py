"""Prove the oldest supported stack on a CPU: torch 2.11 + Triton 3.6 (the lent GPU machine's) in a venv of its own.

    python bench/stack_check.py --venv /work/.stack/py312-torch211                 # everything (~25-40 min cold)
    python bench/stack_check.py --venv DIR --python /root/.pyenv/versions/3.12.1/bin/python
    python bench/stack_check.py --venv DIR --steps import kernel-tests -k "simclr"  # a quick subset

Creates the venv if it does not exist (``torch==2.11.0 triton==3.6.0 "numpy<2.3"``: Triton 3.6's interpreter
passes a scalar as a 1-element array that numpy >= 2.3 refuses to convert; see docs/toolchain.md), adds the
project's other runtime dependencies from pyproject.toml (pinned so pip cannot move torch, Triton or numpy)
and pytest, and imports this checkout through PYTHONPATH (nothing is installed from it). Then, each step timed:

- ``import``: fastssl, kernels, data_prep and the training entry points import;
- ``kernel-tests``: tests/test_kernels_*.py in Triton's interpreter;
- ``compile-tests``: the whole-step inductor compiles of SimCLR and DARe, DARe's in-graph noise, and the
  fused custom ops inside the compiled graph (tests/test_compile.py, ``-m compile``);
- ``aot``: bench/kernels_aot.py for sm_90 in the training precisions, written to
  bench/results/kernels-aot-sm90-triton<version>.{json,md} (the table named by the Triton it was compiled with).

Writes a summary (versions, per step: command, status, seconds, last line) to
bench/results/stack-check-torch<version>-triton<version>.{json,md}; exit 0 only when every step passed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from data_prep.atomic import write_json, write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# The oldest stack in the support range (pyproject.toml) and the numpy its interpreter needs.
PINS = ["torch==2.11.0", "triton==3.6.0", "numpy<2.3"]
PINNED = ("torch", "triton", "numpy")
STEPS = ("import", "kernel-tests", "compile-tests", "aot")
KERNEL_TESTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_kernels_*.py"))
# SimCLR and DARe whole-step compiles, DARe's noise in the graph, the fused ops inside the graph (6 tests)
COMPILE_TESTS = ["tests/test_compile.py", "-m", "compile", "-k",
                 "(whole_step and (simclr or dare)) or dare_noise or fused_custom_ops"]
IMPORTS = ("import fastssl, kernels, data_prep, torch, triton, numpy; "
           "from fastssl import train, losses, models, dispatch; from kernels import contrastive, dare; "
           "print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", type=Path, required=True, help="the venv to use, created when it does not exist")
    p.add_argument("--python", default="/root/.pyenv/versions/3.12.1/bin/python",
                   help="interpreter that creates a new venv (default: %(default)s)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="(default: all)")
    p.add_argument("-k", dest="kernel_k", default=None, help="pytest -k for the kernel tests (default: all)")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel AOT compiles")
    p.add_argument("--aot-args", default=None,
                   help="arguments for bench/kernels_aot.py instead of the default (--jobs, --out the Triton-named "
                   "table: --target sm_90 --matrix training)")
    p.add_argument("--no-install", action="store_true", help="use the venv as it is (no pip)")
    p.add_argument("--out", type=Path, default=None,
                   help="summary JSON (default: bench/results/stack-check-torch<v>-triton<v>.json)")
    return p.parse_args(argv)


PYTEST_SUMMARY = re.compile(r"^=*\s*\d+ (passed|failed)")


def run(argv: list[str], env: dict) -> tuple[int, float, str]:
    """Run a command from the repository root with its output streamed through; (exit code, seconds, pytest's
    summary line, else the last line)."""
    print("$ " + shlex.join(argv), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = summary = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.strip() and not line.startswith("WARNING: Location"):  # pip's notes on the local indexes
            last = line.strip()
        if PYTEST_SUMMARY.search(line):
            summary = line.strip()
    return proc.wait(), time.perf_counter() - t0, (summary or last)[-300:]


def runtime_dependencies() -> list[str]:
    """pyproject.toml's dependencies other than torch, Triton and numpy (those are pinned above)."""
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        raise SystemExit("stack_check.py: error: run it with Python >= 3.11 (it reads pyproject.toml with tomllib)")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if not d.split(";")[0].strip().lower().startswith(PINNED)]


def prepare_venv(args, env: dict) -> list[dict]:
    """Create the venv (when absent) and install the pinned stack plus the runtime deps; the steps it took."""
    steps, py = [], args.venv / "bin" / "python"
    if not py.exists():
        rc, s, last = run([args.python, "-m", "venv", str(args.venv)], env)
        steps.append(dict(step="venv", status="ok" if rc == 0 else "failed", seconds=round(s, 1), last=last))
        if rc:
            return steps
    if args.no_install:
        return steps
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(PINS) + "\n")  # constraints: pip may add packages but never move these three
    argv = [str(py), "-m", "pip", "install", "-q", "-c", f.name, *PINS, *runtime_dependencies(), "pytest"]
    rc, s, last = run(argv, env)
    os.unlink(f.name)
    steps.append(dict(step="install", command=shlex.join(argv), status="ok" if rc == 0 else "failed",
                      seconds=round(s, 1), last=last))
    return steps


def aot_arguments(triton_version: str, jobs: int) -> list[str]:
    """bench/kernels_aot.py's arguments for the sm_90 table in the training precisions, named by Triton version
    (the name kernels_aot.py would give it by default, spelled out so that the summary records it)."""
    out = RESULTS / f"kernels-aot-sm90-triton{triton_version}.json"
    return ["--target", "sm_90", "--matrix", "training", "--jobs", str(jobs), "--out", str(out.relative_to(ROOT))]


def minor(version: str | None) -> str:
    """'3.6' of '3.6.0', '2.11' of '2.11.0+cu130': how results are named."""
    return ".".join((version or "unknown").split("+")[0].split(".")[:2])


def versions(py: Path, env: dict) -> dict:
    code = ("import json, platform, torch, triton, numpy; print(json.dumps(dict(python=platform.python_version(), "
            "torch=torch.__version__, triton=triton.__version__, numpy=numpy.__version__)))")
    got = subprocess.run([str(py), "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    return json.loads(got.stdout) if got.returncode == 0 else {}


def markdown(record: dict) -> str:
    v = record["versions"]
    lines = [f"# Stack check: torch {v.get('torch')}, Triton {v.get('triton')}, numpy {v.get('numpy')}, "
             f"Python {v.get('python')}", "", f"`{record['command']}` on {record['machine']}, {record['time']}; "
             f"total {record['total_s']:.0f} s.", "", "| step | status | seconds | last line |", "|---|---|---:|---|"]
    for s in record["steps"]:
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']:.0f} | {s['last'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    cache = Path(tempfile.mkdtemp(prefix="fastssl-stack-check-"))
    # One inductor compile thread: torch 2.11's pool of compile workers did not shut down at the end of the
    # compile tests here (the process waited its 300 s timeout at exit after all tests had passed).
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", FASTSSL_CACHE=str(cache),
               NUMBA_THREADING_LAYER="omp", TORCHINDUCTOR_COMPILE_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # the kernel tests set it themselves, per test
    steps = prepare_venv(args, env)
    py = args.venv / "bin" / "python"
    if any(s["status"] != "ok" for s in steps):
        print(f"stack_check.py: error: could not prepare {args.venv} (see above)", file=sys.stderr)
        return 2
    ver = versions(py, env)
    pytest = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    commands = {
        "import": [str(py), "-c", IMPORTS],
        "kernel-tests": pytest + KERNEL_TESTS + (["-k", args.kernel_k] if args.kernel_k else []),
        "compile-tests": pytest + COMPILE_TESTS,
        "aot": [str(py), "bench/kernels_aot.py"]
               + (shlex.split(args.aot_args) if args.aot_args else
                  aot_arguments(minor(ver.get("triton")), args.jobs)),
    }
    for name in args.steps:
        rc, s, last = run(commands[name], env)
        steps.append(dict(step=name, command=shlex.join(commands[name]).replace(str(py), "VENV/bin/python"),
                          status="ok" if rc == 0 else "failed", seconds=round(s, 1), last=last))
        print(f"[{name}] {steps[-1]['status']} in {s:.0f} s", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    record = dict(command="python bench/stack_check.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                  machine=f"{platform.machine()}, {os.cpu_count()} cores", venv=str(args.venv), versions=ver,
                  time=time.strftime("%Y-%m-%dT%H:%M:%S"), total_s=round(time.perf_counter() - t0, 1), steps=steps)
    out = args.out or RESULTS / f"stack-check-torch{minor(ver.get('torch'))}-triton{minor(ver.get('triton'))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    write_text(out.with_suffix(".md"), markdown(record))
    print("\n" + markdown(record) + f"\nwrote {out} and {out.with_suffix('.md')}", flush=True)
    return 0 if all(s["status"] == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
