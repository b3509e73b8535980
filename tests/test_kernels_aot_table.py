"""The committed sm_90 AOT table (bench/results/kernels-aot-sm90.{json,md}, from bench/kernels_aot.py) against the
code: the same launch plans (blocks, splits, grids, binaries) for every configuration, no register spills at
d <= 256, the fill targets (>= 132 CTAs at 2N = 1024, >= 264 at 2N = 8192), and two binaries recompiled here
give the committed registers / spills / shared memory."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import kernels_aot as ka  # noqa: E402

TABLE = ROOT / "bench" / "results" / "kernels-aot-sm90.json"
RECORD = json.loads(TABLE.read_text())
NAME_FIELDS = ("kind", "precision", "d", "variant", "pass_", "mode")


def _name(row) -> tuple:
    return tuple(row[k] for k in NAME_FIELDS)


def test_table_matches_the_launch_plans():
    """Regenerating the plans (no compilation) gives the committed ones: change a config, rerun the script."""
    committed = {_name(r): r for r in RECORD["rows"]}
    names = []
    for name, launches in ka.configurations():
        names.append(_name(name))
        row = committed[_name(name)]
        for two_n in ka.SIZES:
            record, specs = launches(two_n)
            got = row["launches"][str(two_n)]
            for key in ("blocks", "num_warps", "splits", "grid", "ctas"):
                assert got[key] == record[key], (name, two_n, key)
            assert got["binaries"] == [ka._key(ka.build_spec(s)) for s in specs], (name, two_n)
            assert all(b in RECORD["compiles"] for b in got["binaries"])
    assert sorted(names) == sorted(committed), "configurations added or removed: rerun bench/kernels_aot.py"
    assert RECORD["sizes"] == list(ka.SIZES) and RECORD["sm_count"] == 132


def test_every_configuration_compiles_and_nothing_spills_up_to_d_256():
    rows = RECORD["rows"]
    assert {r["precision"] for r in rows if r["kind"] == "contrastive"} == set(ka.PRECISIONS)
    assert {r["d"] for r in rows} == set(ka.DIMS) and {r["mode"] for r in rows} == {"whole", "local"}
    assert {r["variant"] for r in rows if r["kind"] == "contrastive"} == set(ka.VARIANTS)
    assert {(r["kind"], r["pass_"]) for r in rows} == {(k, p) for k in ("contrastive", "dare") for p in ("fwd", "bwd")}
    assert all(not r["errors"] for r in rows), [(_name(r), r["errors"]) for r in rows if r["errors"]]
    spilling = [(_name(r), r["spill_bytes"]) for r in rows if r["d"] <= 256 and r["spill_bytes"] != 0]
    assert not spilling, spilling
    assert all(0 < r["registers"] <= 255 and r["shared_bytes"] <= 232448 for r in rows)


def test_grids_fill_a_132_sm_gpu():
    for r in RECORD["rows"]:
        if r["kind"] != "contrastive":
            continue
        for two_n, target in ((1024, 132), (8192, 264)):
            assert r["launches"][str(two_n)]["ctas"] >= target, (_name(r), two_n, r["launches"][str(two_n)])
        assert r["launches"]["65536"]["splits"] == 1 or r["mode"] == "local", _name(r)


def test_markdown_is_rendered_from_the_json():
    assert TABLE.with_suffix(".md").read_text() == ka.markdown(RECORD)


def _compiler_usable() -> bool:
    from triton.runtime.jit import JITFunction
    import triton.language as tl
    return isinstance(tl.standard.zeros, JITFunction)


@pytest.mark.skipif(not _compiler_usable(), reason="triton was imported with TRITON_INTERPRET=1")
def test_two_binaries_recompile_to_the_committed_resources(monkeypatch, tmp_path):
    """A split tf32 forward at d = 128 and a bf16 backward at d = 256 (training configurations), compiled now
    (an empty Triton cache: really through ptxas)."""
    import triton
    if triton.__version__ != RECORD["triton"]:
        pytest.skip(f"the table was made with triton {RECORD['triton']}, this is {triton.__version__}")
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    picks = {("contrastive", "fp32-tf32", 128, "simclr", "fwd", "whole"): "1024",
             ("contrastive", "bf16", 256, "supcon", "bwd", "whole"): "65536"}
    by_name = {_name(r): r for r in RECORD["rows"]}
    configs = {_name(n): launches for n, launches in ka.configurations()}
    for name, two_n in picks.items():
        _, specs = configs[name](int(two_n))
        got = ka.compile_one(specs[0])
        want = RECORD["compiles"][by_name[name]["launches"][two_n]["binaries"][0]]
        for key in ("registers", "stack_bytes", "dynamic_shared", "static_shared", "wgmma"):
            assert got.get(key) == want.get(key), (name, key, got.get(key), want.get(key))
