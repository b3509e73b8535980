"""End to end on a tiny image folder: both methods train, write their files, resume exactly; unsafe or
broken checkpoints, bad options and missing data end in one line; logs, curves.png, TensorBoard."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import dataclasses

import pytest
import torch

from fastssl import methods
from fastssl.cli import main
from fastssl.config import Config, parse_args, resolve
from fastssl.models import build_encoder
from fastssl import checkpoint as checkpoint_mod
from fastssl import train as train_mod
from fastssl.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--width", "8", "--batch-size", "16", "--proj-hidden", "32", "--proj-dim", "16", "--knn-k", "10",
        "--device", "cpu", "--no-progress", "--warmup-epochs", "0.5", "--lr", "0.2"]


def run(tmp_path, tiny_folder, method, *extra):
    out = tmp_path / method
    code = main(["--method", method, "--data", str(tiny_folder), "--out", str(out), *TINY, *extra])
    return code, out


@pytest.mark.parametrize("method", ["simclr", "dare"])
def test_end_to_end_writes_summary_and_metrics(tmp_path, tiny_folder, method):
    code, out = run(tmp_path, tiny_folder, method, "--epochs", "2")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("method", "dataset", "encoder", "epochs", "steps", "images_seen", "wall_s", "device",
                "knn_top1_init", "knn_top1", "linear_top1", "config", "train_s", "eval_s", "time_budget_s",
                "target_knn", "time_to_target_s", "images_to_target"):
        assert key in summary
    assert summary["time_budget_s"] is None and summary["time_to_target_s"] is None
    assert 0 < summary["train_s"] <= summary["wall_s"] and summary["eval_s"] > 0
    assert summary["method"] == method and summary["epochs"] == 2 and summary["steps"] == 2 * (80 // 16)
    assert summary["images_seen"] == summary["steps"] * 16
    assert 0 <= summary["knn_top1"] <= 100 and 0 <= summary["linear_top1"] <= 100
    assert summary["config"]["batch_size"] == 16
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in lines if r["event"] == "epoch"]
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [5, 10]
    assert all(r["images_per_s"] > 0 and r["loss"] == r["loss"] and r["train_s"] <= r["wall_s"] for r in rows)
    knn = [r for r in lines if r["event"] == "knn"]  # before training and after the last epoch
    assert [r["step"] for r in knn] == [0, 10] and knn[0]["knn_top1"] == summary["knn_top1_init"]
    assert knn[1]["knn_top1"] == rows[-1]["knn_top1"] == summary["knn_top1"] and knn[1]["images"] == 160
    assert (out / "checkpoint.pt").is_file() and not list(out.glob("*.tmp*"))
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = load_checkpoint(out)
    assert len(ckpt["norm_mean"]) == 3 and all(isinstance(v, float) for v in ckpt["norm_mean"] + ckpt["norm_std"])


@pytest.mark.parametrize("method", ["simclr", "dare"])
def test_loss_goes_down_on_a_fixed_batch(method):
    cfg = resolve(parse_args(["--method", method, *TINY]))
    torch.manual_seed(0)
    model = methods.get_method(method)(build_encoder("resnet18", 8), cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    v1, v2 = torch.randn(16, 3, 32, 32), torch.randn(16, 3, 32, 32)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # same DARe noise every step: a deterministic objective
        loss = model([v1, v2])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_resume_matches_uninterrupted_run(tmp_path, tiny_folder, monkeypatch):
    code, full = run(tmp_path / "a", tiny_folder, "dare", "--epochs", "3", "--no-linear-eval")
    assert code == 0

    saves = []
    real_save = checkpoint_mod.save_checkpoint

    def save_then_die(obj, path):
        real_save(obj, path)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt  # the job dies after the second epoch's checkpoint

    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", save_then_die)
    code, part = run(tmp_path / "b", tiny_folder, "dare", "--epochs", "3", "--no-linear-eval")
    assert code == 130 and load_checkpoint(part)["epoch"] == 2
    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", real_save)
    code, part = run(tmp_path / "b", tiny_folder, "dare", "--epochs", "3", "--no-linear-eval", "--resume")
    assert code == 0

    a, b = load_checkpoint(full), load_checkpoint(part)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert [r["loss"] for r in a["history"]] == pytest.approx([r["loss"] for r in b["history"]], rel=1e-5)
    assert (part / "metrics.jsonl").read_text() .count('"event": "epoch"') == 3


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path, tiny_folder, monkeypatch, capsys):
    real_forward = methods.get_method("simclr").forward
    calls = []

    def nan_in_second_epoch(self, *a):
        calls.append(1)
        loss = real_forward(self, *a)["loss"]
        return {"loss": loss * float("nan") if len(calls) > 5 else loss}  # 5 steps per epoch

    monkeypatch.setattr(methods.get_method("simclr"), "forward", nan_in_second_epoch)
    code, out = run(tmp_path, tiny_folder, "simclr", "--epochs", "3", "--no-linear-eval")
    assert code == 3
    err = capsys.readouterr().err
    assert "diverged" in err and "epoch 2" in err
    ckpt = load_checkpoint(out)
    assert "kept in" in err and ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())
    assert not (out / "summary.json").exists()


def test_nan_before_the_first_checkpoint_claims_none(tmp_path, tiny_folder, monkeypatch, capsys):
    real_forward = methods.get_method("simclr").forward

    def nan(self, *a):
        return {"loss": real_forward(self, *a)["loss"] * float("nan")}

    monkeypatch.setattr(methods.get_method("simclr"), "forward", nan)
    code, out = run(tmp_path, tiny_folder, "simclr", "--epochs", "2")
    err = capsys.readouterr().err
    assert code == 3 and "no checkpoint was written" in err and "kept" not in err
    assert not (out / "checkpoint.pt").exists()
    assert not out.exists()  # the run wrote nothing: no empty folder is left


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_folder, capsys):
    code, _ = run(tmp_path, tiny_folder, "simclr", "--resume")
    err = capsys.readouterr().err
    assert code == 2 and "no checkpoint" in err and err.count("\n") == 1


class _CreatesFile:
    """A pickle payload: unpickling it would call os.system and create a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _pretrain(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain.py"), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_resume_refuses_a_malicious_or_broken_checkpoint(tmp_path, tiny_folder):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "checkpoint.pt", "wb") as f:
        pickle.dump({"method": _CreatesFile(marker), "config": {}}, f)
    args = ["--data", str(tiny_folder), "--out", str(run_dir), "--resume", "--device", "cpu", "--no-progress"]
    done = _pretrain(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("pretrain.py: error:") and "Traceback" not in done.stderr
    assert not marker.exists()


def test_resume_refuses_a_truncated_or_foreign_checkpoint(tmp_path, tiny_folder, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"method": {"w": torch.zeros(1000)}, "config": {"method": "simclr"}}, run_dir / "checkpoint.pt")
    blob = (run_dir / "checkpoint.pt").read_bytes()
    for content in (blob[: len(blob) // 2], None):  # cut in half; a torch file that is not a checkpoint
        if content is None:
            torch.save({"weights": torch.zeros(2)}, run_dir / "checkpoint.pt")
        else:
            (run_dir / "checkpoint.pt").write_bytes(content)
        capsys.readouterr()
        assert main(["--data", str(tiny_folder), "--out", str(run_dir), "--resume", *TINY]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a fastssl checkpoint" in err


def test_missing_data_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "runs" / "x"
    code = main(["--data", str(tmp_path / "nonexistent"), "--out", str(out), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("pretrain.py: error:")
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_plain_log_lines_without_a_terminal(tmp_path, tiny_folder, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "LOG_EVERY_S", 0.0)  # a line after every step, not only at epoch ends
    code, out = run(tmp_path, tiny_folder, "simclr", "--epochs", "1", "--no-linear-eval")
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1 step ")]
    assert len(lines) == 5  # 4 periodic lines and the epoch's line (pytest's stderr is not a terminal)
    assert all(" loss " in line and " lr " in line and " img/s " in line and " ETA " in line for line in lines)
    assert lines[-1].startswith("epoch 1/1 step 5/5 ")


def test_tensorboard_log_has_the_scalars(tmp_path, tiny_folder):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    code, out = run(tmp_path, tiny_folder, "simclr", "--epochs", "2", "--no-linear-eval", "--log", "tensorboard")
    assert code == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "knn/top1"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("knn/top1")] == pytest.approx([r["knn_top1"] for r in rows if r["event"] == "knn"])


def test_cli_errors(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--batch-size", "abc"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        parse_args(["--optimizer", "adam"])
    assert e.value.code == 2
    assert main(["--method", "nope"]) == 2
    err = capsys.readouterr().err
    assert "simclr" in err and "dare" in err and err.count("\n") >= 1
    assert main(["--method", "simclr", "--epochs", "0", "--device", "cpu"]) == 2
    capsys.readouterr()
    for bad in (["--res-schedule", "16,40"], ["--res-schedule", "16@0.5,24@0.4,32"], ["--target-knn", "150"],
                ["--target-knn", "50"], ["--resolution", "64"], ["--local-size", "48"],
                ["--dataset", "images"]):
        assert main(["--method", "simclr", "--device", "cpu", *bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err, (bad, err)
    for bad in (["--local-scale", "0.5,0.1"], ["--local-scale", "x"], ["--time-budget", "-1"], ["--recipe", "x"],
                ["--log", "wandb"]):
        with pytest.raises(SystemExit) as e:
            parse_args(bad)
        assert e.value.code == 2, bad


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in Config.__dataclass_fields__:
        if f not in ("backend", "progress"):
            assert "--" + f.replace("_", "-") in text
    assert text.count("default:") >= 30
    for flag in ("--time-budget", "--target-knn", "--knn-every-steps", "--local-crops", "--local-size",
                 "--local-scale", "--res-schedule", "--recipe", "--log", "--eval-data", "--resolution", "--strict"):
        assert flag in text


def test_recipe_and_new_defaults():
    cfg = resolve(parse_args(["--method", "simclr", "--device", "cpu"]))
    assert (cfg.time_budget, cfg.target_knn, cfg.knn_every_steps, cfg.local_crops, cfg.local_size) == (0, 0, 0, 0, 16)
    assert cfg.local_scale == (0.05, 0.3) and cfg.res_schedule == "" and cfg.recipe == "default" and cfg.log == "none"
    speed = resolve(parse_args(["--method", "simclr", "--device", "cpu", "--recipe", "speedrun"]))
    # speedrun = default with progressive resolution (measured, see fastssl/config.py); the command line wins
    assert speed.res_schedule == "16,24,32"
    assert dataclasses.replace(speed, recipe="default", res_schedule="") == cfg
    mine = resolve(parse_args(["--method", "simclr", "--device", "cpu", "--recipe", "speedrun", "--res-schedule", ""]))
    assert dataclasses.replace(mine, recipe="default") == cfg
    cfg = resolve(parse_args(["--method", "simclr", "--device", "cpu", "--local-scale", "0.1,0.4", "--local-crops", "4"]))
    assert cfg.local_scale == (0.1, 0.4) and cfg.local_crops == 4


def test_fast_preset_and_recipe_resolution():
    cfg = resolve(parse_args(["--method", "dare", "--fast", "--device", "cpu"]))
    assert cfg.width == 16 and cfg.train_subset > 0 and cfg.dare_variant == "decoupled" and cfg.compile == "off"
    cfg = resolve(parse_args(["--method", "dare", "--fast", "--device", "cpu", "--width", "32", "--dare-lambda", "0"]))
    assert cfg.width == 32 and cfg.dare_lambda == 0.0
    cfg = resolve(parse_args(["--method", "simclr", "--device", "cpu"]))
    assert cfg.optimizer == methods.get_method("simclr").recipe["optimizer"] and cfg.amp == "off"


def test_linear_eval_refuses_an_unsafe_checkpoint(tmp_path, capsys):
    from fastssl.eval_cli import linear_eval_main
    marker = tmp_path / "pwned"
    with open(tmp_path / "checkpoint.pt", "wb") as f:
        pickle.dump({"method": _CreatesFile(marker), "config": {}}, f)
    assert linear_eval_main(["--ckpt", str(tmp_path / "checkpoint.pt"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a fastssl checkpoint" in err and not marker.exists()
    assert linear_eval_main(["--ckpt", str(tmp_path / "missing.pt"), "--device", "cpu"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_tensorboard_missing_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    assert main(["--method", "simclr", "--device", "cpu", "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fastssl[tensorboard]" in err
