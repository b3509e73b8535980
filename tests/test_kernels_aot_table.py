"""The committed AOT tables (bench/results/kernels-aot-<target>-triton<version>.{json,md}, from
bench/kernels_aot.py) against the code, one set of checks per table: the same launch plans (blocks, warps,
stages, splits, grids, binaries) for every configuration of its target and matrix, every binary compiled, no
register spills at d <= 256 (in the training precisions under every Triton; in all precisions in the Triton 3.9
sm_90 table), shared memory within the target's limit, the fill targets (>= 1 CTA per SM at 2N = 1024, >= 2 at
2N = 8192), the markdown rendered from the JSON; and, where the table was made with this Triton, two binaries
recompiled here give the committed registers / spills / shared memory."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import kernels_aot as ka  # noqa: E402
from kernels import launch  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TABLES = sorted(RESULTS.glob("kernels-aot-sm*-triton*.json"))
NAME_FIELDS = ("kind", "precision", "d", "variant", "pass_", "mode")
RECORDS = {p.name: json.loads(p.read_text()) for p in TABLES}


def _name(row) -> tuple:
    return tuple(row[k] for k in NAME_FIELDS)


def test_every_target_has_a_table():
    """sm_80/86/89 (training matrix) and sm_90 (full matrix) with Triton 3.9, the version the tables are kept
    with; other Triton versions' tables are extra evidence (e.g. sm_90 under Triton 3.6)."""
    have = {(r["target"], r["matrix"]) for r in RECORDS.values() if r["triton"].startswith("3.9")}
    assert have >= {("sm_80", "training"), ("sm_86", "training"), ("sm_89", "training"), ("sm_90", "full")}, have
    for path, record in RECORDS.items():
        version = ".".join(record["triton"].split(".")[:2])
        assert path == f"kernels-aot-{record['target'].replace('_', '')}-triton{version}.json"


@pytest.mark.parametrize("table", [p.name for p in TABLES])
def test_table_matches_the_launch_plans(table):
    """Regenerating the plans (no compilation) gives the committed ones: change a config, rerun the script."""
    record = RECORDS[table]
    target = launch.TARGETS[record["target"]]
    assert (record["sm_count"], record["smem_per_block"], record["arch"]) == \
        (target.sms, target.smem_per_block, target.arch)
    assert record["sizes"] == list(ka.SIZES)
    committed = {_name(r): r for r in record["rows"]}
    names = []
    for name, launches in ka.configurations(target, record["matrix"]):
        names.append(_name(name))
        row = committed[_name(name)]
        for two_n in ka.SIZES:
            plan, specs = launches(two_n)
            got = row["launches"][str(two_n)]
            for key in ("blocks", "num_warps", "num_stages", "splits", "grid", "ctas"):
                assert got.get(key) == plan.get(key), (table, name, two_n, key)
            assert got["binaries"] == [ka._key(ka.build_spec(s)) for s in specs], (table, name, two_n)
            assert all(b in record["compiles"] for b in got["binaries"])
    assert sorted(names) == sorted(committed), f"configurations added or removed: rerun bench/kernels_aot.py ({table})"


@pytest.mark.parametrize("table", [p.name for p in TABLES])
def test_every_configuration_compiles_within_the_target(table):
    record = RECORDS[table]
    rows = record["rows"]
    full = record["matrix"] == "full"
    precisions = set(ka.PRECISIONS) if full else set(ka.TRAINING_PRECISIONS)
    assert {r["precision"] for r in rows if r["kind"] == "contrastive"} == precisions
    assert {r["d"] for r in rows} == set(ka.DIMS if full else ka.TRAINING_DIMS)
    assert {r["mode"] for r in rows} == {"whole", "local"}
    assert {r["variant"] for r in rows if r["kind"] == "contrastive"} == set(ka.VARIANTS)
    assert {(r["kind"], r["pass_"]) for r in rows} == {(k, p) for k in ("contrastive", "dare") for p in ("fwd", "bwd")}
    assert all(not r["errors"] for r in rows), [(_name(r), r["errors"]) for r in rows if r["errors"]]
    # Triton 3.9 fits every precision; other versions are held to the training precisions (Triton 3.6 spills a
    # few bytes in fp32-ieee kernels that training does not run)
    strict = record["triton"].startswith("3.9") or not full
    spilling = [(_name(r), r["spill_bytes"]) for r in rows if r["d"] <= 256 and r["spill_bytes"] != 0
                and (strict or r["precision"] in ka.TRAINING_PRECISIONS + ka.TRAINING_DARE_DTYPES)]
    assert not spilling, spilling
    assert all(0 < r["registers"] <= 255 and r["shared_bytes"] <= record["smem_per_block"] for r in rows)
    # spills come from ptxas -v run as Triton runs it: the same register count as the cubin proves the same build
    assert all("spill_stores" in c and c["ptxas_registers"] == c["registers"] for c in record["compiles"].values())


@pytest.mark.parametrize("table", [p.name for p in TABLES])
def test_grids_fill_the_target(table):
    record = RECORDS[table]
    targets = {int(k): v for k, v in record["cta_targets"].items()}
    assert targets == {1024: record["sm_count"], 8192: 2 * record["sm_count"]}
    for r in record["rows"]:
        if r["kind"] != "contrastive":
            continue
        for two_n, want in targets.items():
            assert r["launches"][str(two_n)]["ctas"] >= want, (_name(r), two_n, r["launches"][str(two_n)])
        assert r["launches"]["65536"]["splits"] == 1 or r["mode"] == "local", _name(r)


@pytest.mark.parametrize("table", [p.name for p in TABLES])
def test_markdown_is_rendered_from_the_json(table):
    assert (RESULTS / table).with_suffix(".md").read_text() == ka.markdown(RECORDS[table])


def _compiler_usable() -> bool:
    from triton.runtime.jit import JITFunction
    import triton.language as tl
    return isinstance(tl.standard.zeros, JITFunction)


@pytest.mark.skipif(not _compiler_usable(), reason="triton was imported with TRITON_INTERPRET=1")
@pytest.mark.parametrize("table", [p.name for p in TABLES])
def test_two_binaries_recompile_to_the_committed_resources(monkeypatch, tmp_path, table):
    """A split tf32 forward at d = 128 and a bf16 backward at d = 256 (training configurations), compiled now
    for the table's target (an empty Triton cache: really through ptxas)."""
    import triton
    record = RECORDS[table]
    if triton.__version__ != record["triton"]:
        pytest.skip(f"{table} was made with triton {record['triton']}, this is {triton.__version__}")
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    target = launch.TARGETS[record["target"]]
    picks = {("contrastive", "fp32-tf32", 128, "simclr", "fwd", "whole"): "1024",
             ("contrastive", "bf16", 256, "supcon", "bwd", "whole"): "65536"}
    by_name = {_name(r): r for r in record["rows"]}
    configs = {_name(n): launches for n, launches in ka.configurations(target, record["matrix"])}
    for name, two_n in picks.items():
        _, specs = configs[name](int(two_n))
        got = ka.compile_one(specs[0], target.arch)
        want = record["compiles"][by_name[name]["launches"][two_n]["binaries"][0]]
        for key in ("registers", "stack_bytes", "spill_stores", "dynamic_shared", "static_shared", "wgmma"):
            assert got.get(key) == want.get(key), (table, name, key, got.get(key), want.get(key))
