"""Registers, spills and shared memory of the fused-loss binaries this machine's Triton actually compiled.

    python bench/kernel_registers.py --out regs.json          # after the kernel tests / benchmarks / training ran

bench/kernels_aot.py compiles the whole launch matrix ahead of time for a chosen target; this reads what the
run before it left in Triton's caches (``$TRITON_CACHE_DIR``, else ~/.triton/cache and inductor's, where a
process that compiled with inductor sends every later Triton compile): every cubin of a
fused-loss kernel (kernels/), its metadata (warps, stages, dynamic shared memory) and
the bundled cuobjdump's registers and stack (spill) bytes. Inductor's own kernels are left out. No GPU is
needed to read the cache; without binaries the record says so (exit 0).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench._common import environment, write_result  # noqa: E402
from kernels import aot  # noqa: E402


def is_ours(name: str) -> bool:
    """A fused-loss kernel, not one of inductor's generated ones (triton_poi_*, triton_red_*, triton_per_*, ...).
    By name, so that kernels added to or renamed in kernels/ are found without an edit here."""
    return not name.startswith("triton_")


def cache_dirs() -> list[Path]:
    """Where Triton writes binaries: $TRITON_CACHE_DIR when set; else its default and inductor's triton folder
    (inductor sets $TRITON_CACHE_DIR in a process that compiles, so the fused kernels land there too)."""
    if os.environ.get("TRITON_CACHE_DIR"):
        return [Path(os.environ["TRITON_CACHE_DIR"])]
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    return [Path.home() / ".triton" / "cache", Path(cache_dir()) / "triton"]


def scan(folder: Path) -> list[dict]:
    """One row per fused-loss cubin below ``folder``: kernel, warps, stages, shared and cuobjdump's counts."""
    found = []
    for cubin in sorted(folder.rglob("*.cubin")) if folder.is_dir() else []:
        meta_path = cubin.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if is_ours(meta.get("name") or cubin.stem):
            found.append((cubin, meta))
    # one cuobjdump process per binary: in parallel, a fresh GPU run leaves a hundred or more
    with cf.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        usages = list(pool.map(lambda item: aot._resource_usage(item[0].read_bytes()), found))
    rows = []
    for (cubin, meta), usage in zip(found, usages):
        target = meta.get("target") or {}
        ttir = cubin.with_suffix(".ttir")  # the first pointer argument's element type: the input dtype
        dtype = re.search(r"!tt\.ptr<(\w+)>", ttir.read_text()) if ttir.exists() else None
        rows.append(dict(kernel=meta.get("name") or cubin.stem, arch=target.get("arch"),
                         dtype=dtype.group(1) if dtype else None,
                         num_warps=meta.get("num_warps"), num_stages=meta.get("num_stages"),
                         dynamic_shared=meta.get("shared"), registers=usage.get("registers"),
                         spill_bytes=usage.get("stack_bytes"), static_shared=usage.get("static_shared"),
                         cache_key=cubin.parent.name))
    return sorted(rows, key=lambda r: (r["kernel"], r["num_warps"] or 0, r["cache_key"]))


def markdown(record: dict) -> str:
    env, rows = record["environment"], record["rows"]
    lines = [f"`{env['command']}` on {env['device']}, Triton {env['triton']}, {env['time']}; "
             f"caches {', '.join(record['cache'])}.", ""]
    if not rows:
        return "\n".join(lines + ["No fused-loss binaries in the cache (nothing compiled them on this machine)."]) + "\n"
    lines += ["| kernel | arch | input | warps | stages | registers | spill (B) | shared (KiB) |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        shared = (r["dynamic_shared"] or 0) + (r["static_shared"] or 0)
        lines.append(f"| {r['kernel']} | {r['arch']} | {r['dtype']} | {r['num_warps']} | {r['num_stages']} | "
                     f"{r['registers']} | {r['spill_bytes']} | {shared / 1024:.0f} |")
    spilling = [r for r in rows if r["spill_bytes"]]
    lines += ["", f"{len(rows)} binaries, {len(spilling)} spill"
              + (": " + ", ".join(f"{r['kernel']} sm_{r['arch']} {r['dtype']} ({r['spill_bytes']} B)" for r in spilling)
                 if spilling else "") + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, nargs="+", default=None, help="Triton cache folders (default: "
                   "$TRITON_CACHE_DIR, else ~/.triton/cache and inductor's triton folder)")
    p.add_argument("--out", type=Path, required=True, help="JSON path; the markdown goes beside it")
    args = p.parse_args(argv)
    folders = args.cache or cache_dirs()
    rows = [row for folder in folders for row in scan(folder)]
    command = "python bench/kernel_registers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record = dict(benchmark="kernel_registers", environment=environment(command), cache=[str(f) for f in folders],
                  rows=rows,
                  spilling=sum(1 for r in rows if r["spill_bytes"]))
    write_result(record, markdown(record), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
