"""bench/train_step.py and bench/run_all.py on the CPU at tiny sizes, and the results renderer's sections
(its page/summary sync with the committed JSON is tested in tests/test_readme.py)."""
import importlib.util
import json
import os
import re
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import run_all, train_step  # noqa: E402


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_results = _load_script("render_results")


def test_train_step_ladder_on_cpu(tmp_path, tiny_folder):
    out = tmp_path / "ts.json"
    assert train_step.main(["--encoders", "resnet18", "--width", "8", "--batch-size", "16", "--steps", "2",
                            "--warmup", "1", "--data", str(tiny_folder), "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    env = record["environment"]
    for key in ("device", "torch", "triton", "python", "command", "time"):
        assert env[key] is not None
    rows = record["results"]
    assert [r["row"] for r in rows] == [name for name, _ in train_step.LADDER] and record["complete"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["channels_last"] is False and rows[1]["channels_last"] is True
    assert rows[1]["speedup"] == pytest.approx(rows[1]["images_per_s"] / rows[0]["images_per_s"])
    if not torch.cuda.is_available():  # the CPU skips bf16, compile and the fused kernels, saying why
        assert all("skipped" in r and "CPU" in r["skipped"] for r in rows[2:])
    md = out.with_suffix(".md").read_text()
    assert "| resnet18 | eager fp32 |" in md and "skipped" in md


def test_train_step_bad_flags_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        train_step.main(["--steps", "0"])
    assert e.value.code == 2 and "--steps must be >= 1" in capsys.readouterr().err
    assert train_step.main(["--method", "nope", "--synthetic"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_run_all_refuses_without_cuda(capsys):
    assert run_all.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def _assert_bringable(folder: Path) -> list[Path]:
    """What a lease brings back from $OUT: at most 8 files, names [A-Za-z0-9._-], <= 16 MiB, <= 2 folders deep."""
    entries = list(folder.rglob("*"))
    files = [p for p in entries if p.is_file()]
    assert 1 <= len(files) <= 8, files
    for p in entries:
        rel = p.relative_to(folder)
        assert re.fullmatch(r"[A-Za-z0-9._-]+", p.name), rel
        assert len(rel.parts) <= 3 and not p.is_symlink(), rel
        assert not p.is_file() or p.stat().st_size <= 16 * 2**20, rel
    assert run_all.out_problems(folder) == []
    return files


def test_run_all_cpu_smoke_brings_home_at_most_8_files(tmp_path, tiny_folder, monkeypatch):
    export = tmp_path / "OUT"
    monkeypatch.setenv("OUT", str(export))
    assert run_all.main(["--cpu-smoke", "--data", str(tiny_folder)]) == 0
    files = _assert_bringable(export)
    assert sorted(p.name for p in files) == ["index.json", "index.md", "run_all-cpu-smoke-full.tar.gz"]
    index = json.loads((export / "index.json").read_text())
    assert index["mode"] == "cpu-smoke" and index["environment"]["torch"] == torch.__version__
    status = {p["name"]: p["status"] for p in index["pieces"]}
    assert status == {"data": "ok", "kernel-tests": "skipped", "kernels-training": "ok", "kernels": "ok",
                      "loaders": "ok", "train-step": "ok", "simclr-r18-cifar10": "ok", "pretrain-dare-fast": "ok",
                      "kernel-registers": "ok"}
    md = (export / "index.md").read_text()
    for name, st in status.items():
        assert f"| {name} | {st} |" in md
    with tarfile.open(export / "run_all-cpu-smoke-full.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        inside = {name: json.loads(tar.extractfile(members[name]).read()) for name in
                  ("kernels.json", "loaders.json", "train_step.json", "kernel-registers.json")}
    assert all(inside.values())
    assert {f"{name}.log" for name, st in status.items() if st != "skipped"} <= set(members)
    assert not [m for m in members if m.endswith((".pt", ".pth", ".npy"))]  # no checkpoints, no caches
    pieces = {p["name"]: p for p in index["pieces"]}
    simclr = pieces["simclr-r18-cifar10"]["pretrain"]
    assert simclr["epochs_done"] == 3 and simclr["s_per_epoch"] > 0 and len(simclr["epoch_s"]) == 3
    assert "simclr-r18-cifar10/metrics.jsonl" in members
    assert pieces["pretrain-dare-fast"]["pretrain"]["linear_top1"] is not None
    assert set(index["skipped_loaders"]) == {"ffcv", "dali"}
    assert not Path(index["folder"]).exists()  # the scratch run folder is gone; the bundle holds what counts


def test_run_all_bundle_leaves_out_the_largest_files_to_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "MAX_FILE_BYTES", 4000)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "small.log").write_text("ok\n")
    (tmp_path / "run" / "big.json").write_bytes(os.urandom(8000))  # incompressible
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x" * 10)
    dest = tmp_path / "b.tar.gz"
    assert run_all.bundle(tmp_path / "run", dest) == ["big.json"]
    assert dest.stat().st_size <= 4000
    with tarfile.open(dest) as tar:
        assert tar.getnames() == ["small.log"]


def test_run_all_quick_dry_run_fits_300_s(capsys):
    assert run_all.main(["--quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    limits = [float(m) for m in re.findall(r"^  \S+ +(\d+) s  ", out, re.M)]
    names = re.findall(r"^  (\S+) +\d+ s  ", out, re.M)
    assert names == ["data", "kernel-tests", "kernels-training", "kernels-8192", "simclr-r18-epoch",
                     "kernel-registers"]
    assert sum(limits) <= 300 and f"limits total: {sum(limits):.0f} s" in out


def test_run_all_missing_data_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    monkeypatch.setenv("OUT", str(tmp_path / "OUT"))
    assert run_all.main(["--cpu-smoke", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never downloads" in err
    assert run_all.main(["--cpu-smoke", "--quick", "--data", str(tmp_path / "nothing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "OUT").exists()  # nothing ran


def test_run_all_stops_a_piece_that_overruns(tmp_path):
    piece = dict(name="sleeper", argv=[sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"])
    rec = run_all.run_piece(piece, limit=1.0, log=tmp_path / "sleeper.log")
    assert rec["status"] == "timeout" and rec["wall_s"] < 30
    assert "started" in (tmp_path / "sleeper.log").read_text()


def test_run_all_unknown_piece(capsys):
    assert run_all.main(["--cpu-smoke", "--only", "nope"]) == 2
    assert "unknown piece" in capsys.readouterr().err


# ---- rendering --------------------------------------------------------------------------------------

def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _loaders(time, device, pairs):
    return dict(command="python bench/loaders.py", device=device, time=time, dataset="cifar10", images_per_epoch=10,
                batch_size=2, policy="default", results=[dict(loader="torch", pairs_per_s=100.0),
                                                         dict(loader="resident", pairs_per_s=pairs)])


def test_render_keeps_the_latest_per_benchmark_and_device(tmp_path):
    _write(tmp_path / "a.json", _loaders("2026-01-01T00:00:00", "cpu (2 cores)", 1111.0))
    _write(tmp_path / "b.json", _loaders("2026-02-01T00:00:00", "cpu (2 cores)", 2222.0))
    _write(tmp_path / "c.json", _loaders("2026-01-15T00:00:00", "NVIDIA H100 80GB HBM3", 33333.0))
    _write(tmp_path / "cpu-smoke-1/loaders.json", _loaders("2027-01-01T00:00:00", "cpu (2 cores)", 4444.0))
    _write(tmp_path / "junk.json", {"unrelated": 1})
    section = render_results.render(tmp_path)
    assert "2,222" in section and "33,333" in section and "22.22x" in section
    assert "1,111" not in section and "4,444" not in section  # older, and a cpu-smoke folder
    assert "Measured on GPU: NVIDIA H100 80GB HBM3" in section
    assert section.startswith(render_results.BEGIN) and section.rstrip().endswith(render_results.END)


def test_render_without_gpu_says_what_is_not_measured(tmp_path):
    _write(tmp_path / "a.json", _loaders("2026-01-01T00:00:00", "cpu (2 cores)", 1111.0))
    section = render_results.render(tmp_path)
    assert "nothing below was measured on a GPU" in section and "Not yet measured" in section
    assert "### Training step ladder (`bench/train_step.py`)\n\nNot measured yet." in section


def test_render_reproduction_table(tmp_path, tiny_folder):
    from fastssl import reproduce
    out = tmp_path / "reproduce-x"
    assert reproduce.main(["--budget", "smoke", "--device", "cpu", "--no-progress", "--methods", "triplet",
                           "--datasets", "cifar10", "--encoders", "resnet18", "--data", str(tiny_folder),
                           "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    section = render_results.render(tmp_path)
    ours = results["cells"][0]["linear_top1"]
    assert f"| triplet | cifar10 | resnet18 | {ours:.2f} | 86.0 |" in section
    assert "Budget **smoke**" in section and "NOT a reproduction" in section


def test_run_all_gpu_command_lines_parse(tmp_path):
    """Without a GPU, at least check that every GPU-mode piece's command line is accepted by its script."""
    import importlib

    from bench import run_plan
    from fastssl.config import parse_args as pretrain_args
    parsers = {"bench/kernels.py": importlib.import_module("bench.kernels").parse_args,
               "bench/loaders.py": importlib.import_module("bench.loaders").parse_args,
               "bench/train_step.py": train_step.parse_args, "scripts/pretrain.py": pretrain_args,
               "bench/time_to_accuracy.py": importlib.import_module("bench.time_to_accuracy").parse_args}
    for plan, budget in (("full", run_plan.FULL_BUDGET_S), ("quick", run_plan.QUICK_BUDGET_S)):
        pieces = {p["name"]: p for p in run_plan.pieces(plan, False, "somewhere", tmp_path)}
        assert sum(p["limit"] for p in pieces.values()) <= budget <= 570  # fits one 10-minute call
        for p in pieces.values():
            script = p["argv"][1]
            if script in parsers:
                parsers[script](p["argv"][2:])  # argparse exits on an unknown flag
            assert "--data" not in p["argv"] or p["argv"][p["argv"].index("--data") + 1] == "somewhere"
    assert list(pieces) == ["data", "kernel-tests", "kernels-training", "kernels-8192", "simclr-r18-epoch",
                            "kernel-registers"]
    simclr = pieces["simclr-r18-epoch"]["argv"]
    assert simclr[simclr.index("--epochs") + 1] == "2"  # the compiling epoch, then one timed
    full = {p["name"]: p for p in run_plan.pieces("full", False, "somewhere", tmp_path)}
    assert full["pretrain-dare-fast"]["argv"][2:6] == ["--method", "dare", "--fast", "--no-progress"]
    # the time-to-accuracy piece: a lease of its own, within one 10-minute call
    (tta,) = run_plan.pieces("time-to-accuracy", False, "somewhere", tmp_path)
    assert tta["limit"] <= run_plan.FULL_BUDGET_S
    options = parsers["bench/time_to_accuracy.py"](tta["argv"][2:])
    assert options.gpu and options.time_limit < tta["limit"] and Path(options.data).name == "somewhere"
    skipped = full["loaders"]["skipped_loaders"]
    for name, module in (("ffcv", "ffcv"), ("dali", "nvidia.dali")):
        assert (name in skipped) != run_plan.module_available(module)
    xdist = run_plan.module_available("xdist")
    assert ("-n" in pieces["kernel-tests"]["argv"]) == xdist


def test_render_time_to_accuracy(tmp_path):
    from bench import tta_report
    env = dict(command="python bench/time_to_accuracy.py", device="cpu (x86_64, 2 cores, 2 threads)",
               time="2026-12-01T10:00:00", torch="2.13")
    runs = [dict(method="simclr", candidate=c, seed=0, status="ok", knn_top1=k, knn_top1_init=28.0, train_s=240.0,
                 steps=300, images_seen=38400, curve=[[0.0, 28.0], [240.0, k]]) for c, k in (("default", 40.0),
                                                                                           ("multicrop", 44.5))]
    record = dict(benchmark="time_to_accuracy", environment=env, runs=runs, gains=tta_report.gains(runs),
                  winners=["multicrop"],
                  settings=dict(mode="fast", budget=240.0, knn_every_steps=100, target_knn=None, threads=2))
    _write(tmp_path / "time_to_accuracy-cpu-1.json", record)
    section = render_results.render(tmp_path)
    assert "### Time to accuracy (`bench/time_to_accuracy.py`)\n\n**CPU. 240 s, seed 0.**" in section
    assert "| multicrop | simclr | 0 | +4.50 | +4.50 | no |" in section
    # the README's table of --recipe speedrun against default, one line per method and budget
    for run in runs:
        run["candidate"] = dict(multicrop="speedrun").get(run["candidate"], run["candidate"])
    record.update(gains=tta_report.gains(runs), settings={**record["settings"], "budget": 960.0, "seeds": [0]})
    _write(tmp_path / "time_to_accuracy-cpu-2.json", record)
    readme = render_results.summary(tmp_path)
    assert "| simclr | 960 | 0 | 40.00 -> 44.50 (+4.50) | [json](" in readme
    assert "time_to_accuracy-cpu-1.json" in readme  # the 240 s record is another question: kept beside it


def test_pretrain_fast_table_from_run_folders_and_its_render(tmp_path, monkeypatch, capsys):
    from bench import pretrain_fast, tta_sweep
    knn = dict(simclr=(27.15, 44.0, "speedrun"), dare=(27.15, 38.0, "default"))

    def execute(run, threads, timeout):  # what a finished scripts/pretrain.py leaves in its folder
        run["folder"].mkdir(parents=True)
        before, after, recipe = knn[run["method"]]
        _write(run["folder"] / tta_sweep.RUN_INFO, dict(argv=run["argv"], status="ok", threads=threads, core=run["core"]))
        _write(run["folder"] / tta_sweep.SUMMARY, dict(encoder="resnet18", steps=400, knn_top1_init=before,
                                                       knn_top1=after, knn_top1_k20=after + 1, linear_top1=after + 2,
                                                       train_s=300.0, wall_s=400.0, config=dict(recipe=recipe)))
        return dict(status="ok", job_s=400.0)

    monkeypatch.setattr(tta_sweep, "execute", execute)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    results = tmp_path / "results"
    out = results / "pretrain-fast-cpu-2.json"
    assert pretrain_fast.main(["--methods", "simclr", "dare", "--jobs", "2", "--runs-dir", str(tmp_path / "runs"),
                               "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [(r["method"], r["recipe"], r["knn_top1"], r["core"]) for r in record["results"]] == [
        ("simclr", "speedrun", 44.0, 0), ("dare", "default", 38.0, 1)]
    assert record["setup"] == "seed 0, 1 thread(s) a run, 2 runs side by side, one pinned core each"
    assert pretrain_fast.main(["--methods", "simclr", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    older = dict(benchmark="pretrain_fast", provenance="p.", device="cpu", command="c", time="2026-01-01T00:00:00",
                 setup="s", note="n", results=[dict(method="vicreg", knn_top1_init=27.15, knn_top1=40.2,
                                                    linear_top1=44.2, wall_s=1.0, source="run output"),
                                               dict(method="simclr", knn_top1_init=27.15, knn_top1=41.0, wall_s=1.0)])
    _write(results / "pretrain-fast-cpu-1.json", older)
    page = render_results.render(results)
    assert "| simclr | speedrun | 27.15 | 44.00 | 45.00 | 46.00 | 400 | 300 | 400 |" in page
    assert "| vicreg | 27.15 | 40.20 | 44.20 | [pretrain-fast-cpu-1.json]" in page and "41.00" not in page
    readme = render_results.summary(results)
    assert "| simclr | speedrun | 27.15 | 44.00 | 46.00 |" in readme and "| dare | default | 27.15 | 38.00 | 40.00 |" in readme


# ---- bench/kernels.py: honest defaults, per-row failures, incremental JSON --------------------------------

def test_kernels_bench_defaults_are_the_training_precisions():
    from bench import kernels as kb
    args = kb.parse_args([])
    assert args.precisions == ["tf32", "bf16"] and args.variants == ["simclr"]
    assert kb.parse_args(["--variant", "supcon"]).variants == ["supcon"]
    with pytest.raises(SystemExit):
        kb.parse_args(["--sizes", "1023"])


def test_kernels_bench_rows_catch_every_exception_and_save_each_row(tmp_path):
    """A fake measure on the CPU: one implementation raises Triton's OutOfResources, one a CUDA-style OOM; each
    failure is recorded in its own row, the other rows are measured, and the JSON on disk holds every row
    finished so far whenever the next row starts. The unsplit row runs with one forced column split."""
    from triton.runtime.errors import OutOfResources

    from bench import kernels as kb
    from kernels import launch as kl
    out = tmp_path / "k.json"
    args = kb.parse_args(["--sizes", "8", "16", "--dims", "4", "--precisions", "tf32", "ieee", "--variants",
                          "simclr", "supcon", "--no-compile", "--out", str(out)])
    writer = kb.RowWriter(dict(environment={}, config={}), out)
    seen = []

    def fake_measure(fn, z1, z2, labels, rep):
        on_disk = json.loads(out.read_text())["rows"]
        assert len(on_disk) == len(writer.record["rows"])  # saved before this row started
        seen.append(kl._split_override)
        if z1.shape[0] == 8 and labels is not None and len(seen) % 2:
            raise OutOfResources(300000, 232448, "shared memory")
        if z1.shape[0] == 4 and labels is not None:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return dict(fwd_ms=1.0, fwd_bwd_ms=2.0, peak_extra_mib=0.5)

    kb.contrastive_rows(args, writer, measure=fake_measure)
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 * 2 * 2 * 4  # precisions x variants x sizes x (eager, fused, fused-unsplit, lightly)
    assert {r["impl"] for r in rows} == {"eager", "fused", "fused-unsplit", "lightly"}
    errors = [r["error"] for r in rows if "error" in r]
    assert any(e.startswith("OutOfResources: out of resource: shared memory") for e in errors)
    assert "OOM" in errors and all(r["variant"] == "supcon" for r in rows if "error" in r)
    measured = [r for r in rows if "fwd_ms" in r]
    assert measured and all(r["fwd_bwd_ms"] == 2.0 and r["peak_extra_mib"] == 0.5 for r in measured)
    unsplit = [r for r in rows if r["impl"] == "fused-unsplit" and "error" not in r]
    assert unsplit and all(r["splits"] == [1, 1] for r in unsplit)
    fused = [r for r in rows if r["impl"] == "fused" and "error" not in r]
    assert all(r["splits"][0] >= 1 for r in fused)
    assert seen.count(1) == sum(1 for r in rows if r["impl"] == "fused-unsplit")  # forced only for those rows
    lightly = [r for r in rows if r["impl"] == "lightly"]
    assert all(("skipped" in r) != ("fwd_ms" in r or "error" in r) for r in lightly)
    assert all("simclr variant only" in r["skipped"] for r in lightly if r["variant"] == "supcon")
    md = kb.markdown(dict(environment=dict(command="x", device="cpu", time="t", torch="t", triton="t"),
                          config=dict(temperature=0.2), cuda=True, rows=rows))
    assert "#### supcon, ieee" in md and "| OOM |" in md and "OutOfResources" in md
    assert "fused vs unsplit (f+b)" in md


def test_kernels_bench_lightly_skips_with_a_reason_when_absent(monkeypatch):
    from bench import kernels as kb
    monkeypatch.setitem(sys.modules, "lightly", None)  # import lightly -> ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "lightly.loss", None)
    got = kb.lightly_loss("simclr", 0.2)
    assert isinstance(got, str) and "lightly" in got


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_kernels_bench_without_cuda_exits_0(tmp_path, capsys):
    from bench import kernels as kb
    out = tmp_path / "k.json"
    assert kb.main(["--variants", "simclr", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["cuda"] is False and [r["two_n"] for r in record["cpu_reference"]] == [256, 1024]
    assert "No CUDA device" in capsys.readouterr().out and out.with_suffix(".md").exists()


# ---- bench/stack_check.py and bench/kernel_registers.py (no venv, no GPU) ---------------------------------

def test_stack_check_pins_the_oldest_stack_and_installs_the_rest():
    from bench import stack_check
    deps = stack_check.runtime_dependencies()
    names = {d.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip() for d in deps}
    assert {"numba", "tqdm", "pillow", "matplotlib", "safetensors"} <= names
    assert not names & {"torch", "triton", "numpy"}  # pinned by PINS, never left to the resolver
    assert stack_check.PINS == ["torch==2.11.0", "triton==3.6.0", "numpy<2.3"]
    assert all(path.startswith("tests/test_kernels_") for path in stack_check.KERNEL_TESTS)
    args = stack_check.parse_args(["--venv", "/tmp/v"])
    assert args.steps == ["import", "kernel-tests", "compile-tests", "aot"]


def test_kernel_registers_reads_only_the_fused_loss_binaries(tmp_path):
    from bench import kernel_registers
    for key, name in (("a1", "_contrastive_fwd_kernel"), ("b2", "triton_poi_fused_add_0")):
        (tmp_path / key).mkdir()
        (tmp_path / key / f"{name}.cubin").write_bytes(b"not a cubin")
        (tmp_path / key / f"{name}.ttir").write_text(f"tt.func public @{name}(%arg0: !tt.ptr<bf16> ...")
        (tmp_path / key / f"{name}.json").write_text(json.dumps(dict(name=name, num_warps=8, num_stages=2,
                                                                      shared=4096, target=dict(arch=90))))
    (row,) = kernel_registers.scan(tmp_path)
    assert (row["kernel"], row["num_warps"], row["dynamic_shared"], row["arch"], row["dtype"]) == (
        "_contrastive_fwd_kernel", 8, 4096, 90, "bf16")
    out = tmp_path / "regs.json"
    assert kernel_registers.main(["--cache", str(tmp_path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["kernel"] == "_contrastive_fwd_kernel"
    assert "| _contrastive_fwd_kernel | 90 | bf16 | 8 | 2 |" in out.with_suffix(".md").read_text()
    assert kernel_registers.main(["--cache", str(tmp_path / "none"), "--out", str(out)]) == 0
    assert "No fused-loss binaries" in out.with_suffix(".md").read_text()
