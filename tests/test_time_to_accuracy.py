"""bench/time_to_accuracy.py (the CLI), bench/tta_sweep.py and bench/tta_report.py without training: the
command lines, resume, the gain maths and the
report (JSON, markdown, PNG) from synthetic run folders, --dry-run, and the subprocess runner."""
import argparse
import importlib.util
import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import time_to_accuracy as tta  # noqa: E402
from bench import tta_report as report  # noqa: E402
from bench import tta_sweep as sweep  # noqa: E402


def pinned_parser() -> argparse.ArgumentParser:
    """scripts/pretrain.py's options as pinned in the team contract, every value a plain string."""
    p = argparse.ArgumentParser(prog="pretrain.py", exit_on_error=False)
    for flag in ("--method", "--seed", "--out", "--time-budget", "--target-knn", "--knn-every-steps",
                 "--local-crops", "--local-size", "--local-scale", "--res-schedule", "--recipe", "--lr",
                 "--temperature", "--warmup-epochs", "--data", "--dataset", "--encoder", "--width",
                 "--train-subset", "--knn-bank", "--knn-queries", "--device"):
        p.add_argument(flag)
    for flag in ("--fast", "--no-progress", "--no-linear-eval"):
        p.add_argument(flag, action="store_true")
    return p


def parse(run) -> argparse.Namespace:
    assert run["argv"][0] == "scripts/pretrain.py"
    return pinned_parser().parse_args(run["argv"][1:])


def args_for(tmp_path, *extra):
    return tta.parse_args(["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "res" / "tta.json"), *extra])


# ---- command lines ---------------------------------------------------------------------------------

def test_every_candidate_builds_a_command_with_the_pinned_options(tmp_path):
    args = args_for(tmp_path, "--candidates", *sweep.CANDIDATES, "--seeds", "0", "1", "--data", "/d")
    runs = sweep.plan(args)
    assert len(runs) == len(sweep.CANDIDATES) * 2 * 2  # candidates x (simclr, dare) x seeds
    assert [(r["seed"], r["method"]) for r in runs[:2]] == [(0, "simclr"), (0, "simclr")]  # seeds outermost
    folders = set()
    for run in runs:
        ns = parse(run)
        assert (ns.method, ns.seed, ns.time_budget, ns.knn_every_steps) == (run["method"], str(run["seed"]), "240",
                                                                           "100")
        assert ns.fast and ns.no_progress and ns.no_linear_eval and ns.data == "/d" and ns.target_knn is None
        assert ns.out == str(tmp_path / "runs" / f"{run['method']}-{run['candidate']}-s{run['seed']}")
        folders.add(ns.out)
        changed = {k: v for k, v in vars(ns).items()
                   if k in ("local_crops", "local_size", "res_schedule", "recipe", "lr", "temperature",
                            "warmup_epochs") and v is not None}
        expected = {"default": {}, "multicrop": dict(local_crops="4", local_size="16"),
                    "progressive": dict(res_schedule="16,24,32"), "progressive-long": dict(res_schedule="16@0.5,24@0.8,32"),
                    "warmup-short": dict(warmup_epochs="0.05"),
                    "lr-x2": dict(lr="1.0"), "temp-0.5": dict(temperature="0.5"),
                    "speedrun": dict(recipe="speedrun")}[run["candidate"]]
        assert changed == {"recipe": "default", **expected}, run["candidate"]  # a change is made to default
    assert len(folders) == len(runs)


def test_combined_candidates_and_their_refusals():
    assert sweep.candidate_args("multicrop+progressive") == ["--local-crops", "4", "--local-size", "16",
                                                           "--res-schedule", "16,24,32", "--recipe", "default"]
    assert sweep.candidate_args("speedrun+multicrop") == ["--recipe", "speedrun", "--local-crops", "4",
                                                        "--local-size", "16"]
    with pytest.raises(sweep.SweepError, match="unknown candidate 'nope'"):
        sweep.candidate_args("default+nope")
    sweep.CANDIDATES["lr-low"] = ["--lr", "0.1"]
    try:
        with pytest.raises(sweep.SweepError, match="lr-x2 and lr-low both set --lr"):
            sweep.candidate_args("lr-x2+lr-low")
    finally:
        del sweep.CANDIDATES["lr-low"]


def test_gpu_mode_is_full_size_speedrun_against_default_with_a_target(tmp_path):
    args = args_for(tmp_path, "--gpu")
    assert (args.candidates, args.seeds, args.target_knn) == (["default", "speedrun"], [0], 80.0)
    assert (args.budget, args.time_limit) == (75.0, 470.0)
    runs = sweep.plan(args)
    assert [(r["method"], r["candidate"]) for r in runs] == [("simclr", "default"), ("simclr", "speedrun"),
                                                             ("dare", "default"), ("dare", "speedrun")]
    for run in runs:
        ns = parse(run)
        assert not ns.fast and ns.target_knn == "80" and ns.time_budget == "75"
        assert (ns.dataset, ns.encoder, ns.width, ns.train_subset, ns.knn_bank, ns.knn_queries, ns.device) == \
            ("cifar10", "resnet18", "64", "0", "0", "0", "cuda")
        assert (ns.recipe == "speedrun") == (run["candidate"] == "speedrun")


def test_arguments_after_a_double_dash_go_to_every_run(tmp_path):
    args = args_for(tmp_path, "--candidates", "default", "--seeds", "3", "--", "--width", "8", "--device", "cpu")
    runs = sweep.plan(args)
    assert all(r["argv"][-4:] == ["--width", "8", "--device", "cpu"] for r in runs)
    assert parse(runs[0]).width == "8"


@pytest.mark.parametrize("flags, message", [
    (["--budget", "0"], "--budget must be > 0"),
    (["--candidates", "multicrop"], "must include default"),
    (["--candidates", "default", "nope"], "unknown candidate 'nope'"),
    (["--target-knn", "120"], "percentage"),
    (["--seeds", "0", "0"], "must not repeat"),
    (["--methods", "simclr", "nope"], "unknown method(s) nope"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bad_options_are_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        args_for(tmp_path, *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("time_to_accuracy.py: error: ") and message in err[-1]


def test_check_commands_reports_an_option_pretrain_does_not_know(tmp_path):
    runs = sweep.plan(args_for(tmp_path, "--candidates", "default", "multicrop", "--methods", "simclr", "--seeds", "0"))
    parser = pinned_parser()
    assert sweep.check_commands(runs, parser) == []
    old = argparse.ArgumentParser(prog="pretrain.py")  # a pretrain.py that predates --time-budget
    for flag in ("--method", "--seed", "--out", "--knn-every-steps", "--local-crops", "--local-size"):
        old.add_argument(flag)
    for flag in ("--fast", "--no-progress", "--no-linear-eval"):
        old.add_argument(flag, action="store_true")
    problems = sweep.check_commands(runs, old)
    assert len(problems) == 2 and problems[0].startswith("simclr-default-s0: ")
    assert "unrecognized arguments: --time-budget 240" in problems[0]


# ---- synthetic runs --------------------------------------------------------------------------------

KNN = {("simclr", "default"): (40.0, 42.0), ("simclr", "multicrop"): (44.5, 45.0),
       ("simclr", "progressive"): (39.0, 43.0), ("dare", "default"): (38.0, 39.0),
       ("dare", "multicrop"): (41.0, 43.0), ("dare", "progressive"): (38.5, 40.0)}


def write_run(run, knn_final, budget=240.0, train_s=None, status="ok", target=None, curve=None, commit="c0ffee"):
    """A finished run folder as pretrain.py (contract item 6) and the runner leave it."""
    folder = Path(run["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / sweep.RUN_INFO).write_text(json.dumps(dict(argv=run["argv"], status=status, threads=2, commit=commit)))
    train_s = budget if train_s is None else train_s
    curve = curve or [(0.4 * train_s, knn_final - 4.0), (0.8 * train_s, knn_final - 1.0), (train_s, knn_final)]
    rows = [dict(event="epoch", epoch=1, step=100, loss=5.0, lr=0.1, images_per_s=200.0, epoch_s=50.0,
                 train_s=curve[0][0], wall_s=70.0, knn_top1=None)]
    rows += [dict(event="knn", epoch=1, step=100 * (i + 1), images=12800 * (i + 1), train_s=t, wall_s=t + 30,
                  knn_top1=k) for i, (t, k) in enumerate(curve)]
    (folder / sweep.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    reached = next((t for t, k in curve if target and k >= target), None)
    summary = dict(method=run["method"], knn_top1_init=28.0, knn_top1=knn_final, train_s=train_s, eval_s=40.0,
                   wall_s=train_s + 60, steps=300, images_seen=38400, time_budget_s=budget,
                   time_to_target_s=reached, target_knn=target, device="cpu (2 cores, 2 threads)",
                   config=dict(width=16, batch_size=128, train_subset=25600, knn_bank=10000, knn_queries=2000))
    (folder / sweep.SUMMARY).write_text(json.dumps(summary))


class Clock:
    """time.perf_counter for the module under test: moves only when a fake run says so."""
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def fake_execute(calls, budget=240.0, job_s=300.0, clock=None):
    """Stands in for sweep.execute: writes the run folder a real run would, from the KNN table."""
    def execute(run, threads, timeout):
        calls.append(sweep.run_name(run["method"], run["candidate"], run["seed"]))
        write_run(run, KNN[(run["method"], run["candidate"])][run["seed"]], budget=budget)
        if clock is not None:
            clock.now += job_s
        return dict(status="ok", rc=0, job_s=job_s)
    return execute


def test_gain_maths_pairs_seeds():
    recs = [dict(method="simclr", candidate=c, seed=s, status="ok", knn_top1=KNN[("simclr", c)][s],
                 time_to_target_s=None) for c in ("default", "multicrop", "progressive") for s in (0, 1)]
    recs.append(dict(method="simclr", candidate="lr-x2", seed=0, status="ok", knn_top1=49.0, time_to_target_s=None))
    recs.append(dict(method="simclr", candidate="lr-x2", seed=1, status="failed", knn_top1=None,
                     time_to_target_s=None))
    recs.append(dict(method="simclr", candidate="temp-0.5", seed=2, status="ok", knn_top1=60.0,
                     time_to_target_s=None))  # no default on seed 2: no gain
    g = {row["candidate"]: row for row in report.gains(recs)}
    assert set(g) == {"multicrop", "progressive", "lr-x2"}
    assert g["multicrop"]["gain_per_seed"] == [4.5, 3.0] and g["multicrop"]["mean_gain"] == 3.75
    assert g["multicrop"]["meets_target"] and g["multicrop"]["min_gain"] == 3.0
    assert g["progressive"]["gain_per_seed"] == [-1.0, 1.0] and g["progressive"]["mean_gain"] == 0.0
    assert not g["progressive"]["meets_target"]
    assert g["lr-x2"]["seeds"] == [0] and g["lr-x2"]["mean_gain"] == 9.0 and not g["lr-x2"]["meets_target"]
    assert not report.gains(recs, target_gain=4.0)[0]["meets_target"]  # 3.0 on seed 1 is below 4
    assert report.winners(report.gains(recs), ["simclr"]) == ["multicrop", "lr-x2"]
    assert report.winners(report.gains(recs), ["simclr", "dare"]) == []  # no dare run: not shown to win for dare


def test_time_to_target_speedup():
    recs = [dict(method="dare", candidate=c, seed=s, status="ok", knn_top1=80.5, time_to_target_s=t)
            for c, s, t in (("default", 0, 300.0), ("speedrun", 0, 200.0), ("default", 1, 330.0),
                            ("speedrun", 1, 220.0))]
    (row,) = report.gains(recs)
    assert row["time_to_target_speedup"] == pytest.approx(1.5) and row["mean_gain"] == 0.0
    recs[3]["time_to_target_s"] = None  # speedrun did not reach it on seed 1: only seed 0 counts
    assert report.gains(recs)[0]["time_to_target_speedup"] == pytest.approx(1.5)


def test_read_run_curve_target_and_early_stop(tmp_path):
    run = dict(method="simclr", candidate="default", seed=0, folder=tmp_path / "r", argv=["scripts/pretrain.py"])
    assert sweep.read_run(run)["status"] == "not run"
    write_run(run, 45.0, train_s=100.0, curve=[(50.0, 41.0), (100.0, 45.0)])
    rec = sweep.read_run(run, target=44.0)
    assert rec["curve"] == [[0.0, 28.0], [50.0, 41.0], [100.0, 45.0]]  # the epoch row without kNN is not a point
    assert rec["time_to_target_s"] == 100.0 and not rec["stopped_early"]
    rec = sweep.read_run(run)  # no target: a run that ended at 100 of 240 s stopped before its budget
    assert rec["stopped_early"] and (rec["knn_top1"], rec["steps"], rec["train_s"]) == (45.0, 300, 100.0)
    # an older trainer: epoch rows without "event", the kNN on some of them
    rows = [dict(epoch=1, train_s=60.0, knn_top1=None), dict(epoch=2, train_s=120.0, knn_top1=33.0)]
    (run["folder"] / sweep.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sweep.read_run(run)["curve"] == [[0.0, 28.0], [120.0, 33.0]]
    (run["folder"] / sweep.SUMMARY).unlink()
    (run["folder"] / sweep.RUN_INFO).write_text(json.dumps(dict(argv=run["argv"], status="running")))
    assert sweep.read_run(run)["status"] == "incomplete"


def test_sweep_report_json_markdown_png(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(sweep, "execute", fake_execute(calls))
    monkeypatch.setattr(sweep, "pretrain_parser", pinned_parser)
    out = tmp_path / "res" / "tta.json"
    argv = ["--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--candidates", "default", "multicrop",
            "progressive"]
    assert tta.main(argv) == 0
    assert len(calls) == 12 and calls[:3] == ["simclr-default-s0", "simclr-multicrop-s0", "simclr-progressive-s0"]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "time_to_accuracy" and record["environment"]["torch"] == torch.__version__
    assert record["settings"]["budget"] == 240.0 and record["settings"]["threads"] >= 1
    assert record["candidate_args"]["multicrop"] == ["--local-crops", "4", "--local-size", "16", "--recipe", "default"]
    gains = {(g["method"], g["candidate"]): g for g in record["gains"]}
    assert gains[("simclr", "multicrop")]["gain_per_seed"] == [4.5, 3.0]
    assert gains[("dare", "multicrop")]["mean_gain"] == 3.5 and gains[("dare", "multicrop")]["meets_target"]
    assert record["winners"] == ["multicrop"]  # progressive loses on simclr (-1, +1: mean 0)
    md = out.with_suffix(".md").read_text()
    assert "| multicrop | simclr | 0 | 44.50 | 28.00 | 240 | 300 | 38,400 | ok |" in md
    assert "| multicrop | dare | 0, 1 | +3.50 | +3.00, +4.00 | yes |" in md
    assert "| progressive | simclr | 0, 1 | +0.00 | -1.00, +1.00 | no |" in md
    assert "| multicrop | `--local-crops 4 --local-size 16 --recipe default` |" in md and "| default | `--recipe default` |" in md
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # scripts/render_results.py recognises the record as this benchmark's (and no other's)
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "scripts" / "render_results.py")
    render_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_results)
    assert render_results.kind_of(record) == "time_to_accuracy"


def test_resume_skips_finished_runs_and_refuses_foreign_ones(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(sweep, "execute", fake_execute(calls))
    monkeypatch.setattr(sweep, "pretrain_parser", pinned_parser)
    base = ["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "tta.json"), "--candidates", "default",
            "multicrop", "--methods", "simclr"]
    runs = sweep.plan(tta.parse_args(base))
    write_run(runs[0], 40.0, commit="0ldc0de")  # simclr-default-s0 finished before an interruption
    write_run(runs[3], 45.0)  # simclr-multicrop-s1
    assert tta.main(base) == 2 and "pass --resume" in capsys.readouterr().err and calls == []
    assert tta.main(base + ["--resume"]) == 0
    assert calls == ["simclr-multicrop-s0", "simclr-default-s1"]
    record = json.loads((tmp_path / "tta.json").read_text())
    assert [r["knn_top1"] for r in record["runs"]] == [40.0, 44.5, 42.0, 45.0]
    md = (tmp_path / "tta.md").read_text()
    assert "The runs come from 2 commits: 0ldc0de (1 run), c0ffee (3 runs)." in md
    # a finished folder that another command wrote (here: another budget) is not silently reused
    calls.clear()
    assert tta.main(base + ["--resume", "--budget", "60"]) == 2
    assert "another command" in capsys.readouterr().err and calls == []


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "execute", lambda *a: pytest.fail("--dry-run must not train"))
    monkeypatch.setattr(sweep, "pretrain_parser", pinned_parser)
    base = ["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "tta.json"), "--candidates", "default",
            "lr-x2", "--seeds", "0", "--threads", "2"]
    write_run(sweep.plan(tta.parse_args(base))[0], 40.0)
    assert tta.main(base + ["--dry-run", "--resume"]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 ")]
    assert len(commands) == 4 and "4 runs (1 finished)" in out
    assert commands[0].endswith("# finished: skipped") and not commands[1].endswith("skipped")
    argv = shlex.split(commands[1])[3:]
    assert argv[0] == "scripts/pretrain.py" and argv[argv.index("--lr") + 1] == "1.0"
    assert "about 16 min left" in out  # 3 runs x (240 s + the 90 s first guess outside the budget) = 16.5 min
    assert not (tmp_path / "tta.json").exists()


def test_time_limit_starts_only_runs_that_fit(tmp_path, monkeypatch, capsys):
    calls, clock = [], Clock()
    monkeypatch.setattr(sweep, "time", clock)
    monkeypatch.setattr(sweep, "execute", fake_execute(calls, budget=100.0, job_s=150.0, clock=clock))
    monkeypatch.setattr(sweep, "pretrain_parser", pinned_parser)
    out = tmp_path / "tta.json"
    base = ["--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--candidates", "default", "multicrop",
            "--methods", "simclr", "--budget", "100"]
    # run 1 needs 100 s + the 90 s first guess (fits in 400 s); it took 150 s, 50 s outside the budget, so
    # run 2 needs 150 s of the 250 s left; run 3 needs 150 s of the 100 s left: not started
    assert tta.main(base + ["--time-limit", "400"]) == 0
    assert calls == ["simclr-default-s0", "simclr-multicrop-s0"] and "2 run(s) not started" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert [r["status"] for r in record["runs"]] == ["ok", "ok", "not run", "not run"]
    assert [g["gain_per_seed"] for g in record["gains"]] == [[4.5]]
    calls.clear()
    assert tta.main(base + ["--resume", "--time-limit", "150"]) == 0 and calls == []  # 100 + 90 > 150


def test_jobs_run_default_and_candidate_side_by_side_on_their_own_cores(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    calls, finish, together = [], fake_execute([]), threading.Barrier(2, timeout=30)

    def execute(run, threads, timeout):
        together.wait()  # returns only when both runs of a pair are under way at once
        calls.append((run["candidate"], run["seed"], run["core"], threads))
        return finish(run, threads, timeout)

    monkeypatch.setattr(sweep, "execute", execute)
    monkeypatch.setattr(sweep, "pretrain_parser", pinned_parser)
    base = ["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "tta.json"), "--candidates", "default",
            "multicrop", "--methods", "simclr", "--seeds", "0", "1"]
    assert tta.main(base + ["--jobs", "2"]) == 0
    assert sorted(calls) == [("default", 0, 0, 2), ("default", 1, 0, 2), ("multicrop", 0, 1, 2), ("multicrop", 1, 1, 2)]
    assert "2 runs side by side, one pinned core each" in (tmp_path / "tta.md").read_text()
    for bad, says in ((["--jobs", "5"], "--jobs must be between 1 and the 4 core(s)"),
                      (["--jobs", "2", "--threads", "3"], "--jobs 2 x --threads 3 is more threads than the 4")):
        with pytest.raises(SystemExit) as e:
            tta.parse_args(base + bad)
        assert e.value.code == 2 and says in capsys.readouterr().err


def test_a_pinned_run_sees_only_its_core(tmp_path):
    core = max(os.sched_getaffinity(0))
    # a run that is no candidate of the sweep (bench/pretrain_fast.py's) brings its own extra arguments
    run = dict(method="simclr", candidate="fast", extra=[], seed=0, folder=tmp_path / "run", core=core,
               argv=["-c", "import os, time; time.sleep(0.5); print('cores', sorted(os.sched_getaffinity(0)))"])
    info = sweep.execute(run, threads=1, timeout=60)
    assert info["core"] == core and info["status"] == "failed"  # no summary.json: not a training run
    assert json.loads((tmp_path / "run" / sweep.RUN_INFO).read_text())["candidate_args"] == []
    assert f"cores [{core}]" in (tmp_path / "run" / sweep.LOG).read_text()


def test_sigterm_mid_sweep_writes_the_report_of_finished_runs(tmp_path, monkeypatch, capsys):
    """bench/run_all.py stops an overrunning piece with SIGTERM: what finished is still reported."""
    calls, finish = [], fake_execute([])

    def execute(run, threads, timeout):
        calls.append(run["candidate"])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the second run trains
        return finish(run, threads, timeout)

    monkeypatch.setattr(sweep, "execute", execute)
    monkeypatch.setattr(sweep, "pretrain_parser", pinned_parser)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "tta.json"
    assert tta.main(["--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--candidates", "default",
                     "multicrop", "--methods", "simclr", "--seeds", "0"]) == 130
    assert calls == ["default", "multicrop"] and "rerun with --resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
    record = json.loads(out.read_text())
    assert [r["status"] for r in record["runs"]] == ["ok", "not run"]


def test_gpu_report_has_time_to_target_and_speedup(tmp_path):
    args = args_for(tmp_path, "--gpu", "--methods", "dare")
    default, speedrun = sweep.plan(args)
    write_run(default, 80.4, budget=75.0, train_s=60.0, target=80.0, curve=[(30.0, 71.0), (60.0, 80.4)])
    write_run(speedrun, 81.0, budget=75.0, train_s=40.0, target=80.0, curve=[(20.0, 74.0), (40.0, 81.0)])
    record = report.build_record(args, [default, speedrun], "python bench/time_to_accuracy.py --gpu")
    assert [r["time_to_target_s"] for r in record["runs"]] == [60.0, 40.0]
    assert not any(r["stopped_early"] for r in record["runs"])  # ended at the target, not short of the budget
    md = report.summary_markdown(record)
    assert "target 80% kNN" in md and "| time to target (s) |" in md
    assert "| speedrun | dare | 0 | 81.00 | 28.00 | 40 | 300 | 38,400 | 40 | ok |" in md
    assert "| speedrun | dare | 0 | +0.60 | +0.60 | no | 1.50x |" in md
    report.chart(record, tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_mode_refuses_without_cuda(tmp_path, capsys):
    assert tta.main(["--gpu", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "t.json")]) == 2
    assert "--gpu needs a CUDA device" in capsys.readouterr().err


# ---- the subprocess runner (a stand-in script, not pretrain.py) --------------------------------------

def test_execute_pins_threads_records_and_stops_an_overrun(tmp_path):
    folder = tmp_path / "run"
    writer = ("import json, os, sys; out = sys.argv[sys.argv.index('--out') + 1]; "
              "json.dump(dict(omp=os.environ['OMP_NUM_THREADS'], knn_top1=50.0), open(out + '/summary.json', 'w'))")
    run = dict(method="simclr", candidate="default", seed=0, folder=folder, argv=["-c", writer, "--out", str(folder)])
    folder.mkdir()
    (folder / sweep.METRICS).write_text('{"stale": 1}\n')  # a restarted run never mixes with an old one
    info = sweep.execute(run, threads=3, timeout=60)
    assert info["status"] == "ok" and info["rc"] == 0
    assert json.loads((folder / sweep.SUMMARY).read_text())["omp"] == "3" and not (folder / sweep.METRICS).exists()
    recorded = json.loads((folder / sweep.RUN_INFO).read_text())
    assert recorded["argv"] == run["argv"] and recorded["status"] == "ok" and recorded["threads"] == 3
    assert recorded["commit"] == sweep.git_commit() and recorded["load_average_start"] is not None
    assert sweep.run_status(run) == "done"
    assert "$ -c" in (folder / sweep.LOG).read_text()

    sleep = "import time; print('started', flush=True); time.sleep(60)"
    sleeper = dict(run, folder=tmp_path / "slow", argv=["-c", sleep])
    info = sweep.execute(sleeper, threads=1, timeout=1.0)
    assert info["status"] == "timeout" and info["job_s"] < 30
    assert "started" in (tmp_path / "slow" / sweep.LOG).read_text()
    failing = dict(run, folder=tmp_path / "bad", argv=["-c", "import sys; sys.exit(3)"])
    assert sweep.execute(failing, threads=1, timeout=30)["status"] == "failed"


def test_fast_takes_speedrun_exactly_where_the_committed_sweep_says_it_won():
    """A method's ``fast_recipe`` is "speedrun" if and only if the latest committed 240 s CPU sweep of
    default against speedrun shows a gain of at least 3 kNN points on both seeds for it."""
    from fastssl import methods
    records = [json.loads(p.read_text()) for p in (ROOT / "bench" / "results").glob("time_to_accuracy-cpu-*.json")]
    sweeps = [r for r in records if r["settings"]["budget"] == 240 and "speedrun" in r["settings"]["candidates"]
              and len(r["settings"]["seeds"]) >= 2]
    assert sweeps, "no committed 240 s sweep of the speedrun recipe"
    latest = max(sweeps, key=lambda r: r["environment"]["time"])
    won = {g["method"] for g in latest["gains"] if g["candidate"] == "speedrun" and g["meets_target"]}
    measured = {g["method"] for g in latest["gains"] if g["candidate"] == "speedrun"}
    for name in methods.available():
        fast = methods.get_method(name).fast_recipe
        assert fast == ("speedrun" if name in won else "default"), (name, fast, name in measured)
