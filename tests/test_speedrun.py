"""bench/speedrun.py, the race to 90% kNN: its plan, and a race at tiny sizes on a CPU that is paused after
every step (--call-limit) and resumed call after call ends where one uninterrupted call ends."""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import speedrun  # noqa: E402
from fastssl.checkpoint import load_checkpoint  # noqa: E402

TINY = ["--device", "cpu", "--dataset", "images", "--width", "8", "--batch-size", "32", "--proj-hidden", "32",
        "--proj-dim", "16", "--knn-k", "10", "--lr", "0.2", "--warmup-epochs", "0"]


def tiny(tiny_folder, out, *extra):
    # --target-knn 0: the tiny set's kNN passes 90% at once; the race must run all of its steps here
    return ["--out", str(out), "--data", str(tiny_folder), "--epochs", "2", "--knn-every", "1", *extra, "--", *TINY,
            "--target-knn", "0"]


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    assert speedrun.main(["--out", str(tmp_path / "race"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # no measurement yet: 500 epochs at the reference's 11.9 s, 450 s of training a 540 s call
    assert "stop at 90% kNN (k = 200" in out and "about 99 min of training left" in out
    assert "about 14 more call(s) of 540 s" in out and "a guess until the first epoch" in out
    assert "--recipe speedrun" in out and "--stop-after 540" in out and "--train-subset 0" in out
    assert "--resume" not in out and not (tmp_path / "race").exists()


@pytest.mark.parametrize("bad, says", [(["--target", "0"], "--target is a kNN top-1"),
                                       (["--call-limit", "-5"], "--call-limit must be >= 0"),
                                       (["--method", "nope"], "unknown method 'nope'")])
def test_bad_options_are_one_line(bad, says, capsys):
    with pytest.raises(SystemExit) as e:
        speedrun.parse_args(bad)
    assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.slow  # five subprocess calls of scripts/pretrain.py
def test_a_race_paused_after_every_step_ends_as_one_uninterrupted_call(tmp_path, tiny_folder, capsys):
    whole = tmp_path / "whole"
    assert speedrun.main(tiny(tiny_folder, whole, "--call-limit", "0")) == 0
    part = tmp_path / "part"
    codes = [speedrun.main(tiny(tiny_folder, part, "--call-limit", "0.001"))]
    while codes[-1] == speedrun.PAUSED and len(codes) < 10:
        codes.append(speedrun.main(tiny(tiny_folder, part, "--call-limit", "0.001")))
    assert codes == [75, 75, 75, 0]  # 2 epochs of 2 steps: a pause after each of the first three
    out = capsys.readouterr().out
    assert "call 2, resuming" in out and "run the same command again" in out
    a, b = load_checkpoint(whole), load_checkpoint(part)
    assert a["step"] == b["step"] == 4
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=1e-5, atol=1e-6, msg=k)
    race = json.loads((part / "race.json").read_text())
    assert race["calls"] == 4 and [c["rc"] for c in race["call_log"]] == [75, 75, 75, 0]
    assert race["stopped_by"] == "epochs" and not race["reached"] and race["steps"] == 4
    assert set(race["seconds_to"]) == {"80", "85", "90"} and len(race["knn_curve"]) == 3  # before, epoch 1, 2
    assert race["train_s"] == pytest.approx(sum(c["train_s_added"] for c in race["call_log"]), abs=0.5)
    assert "# Speedrun: simclr to 90% kNN" in (part / "race.md").read_text()
    assert speedrun.main(tiny(tiny_folder, part)) == 0 and "finished earlier" in capsys.readouterr().out
