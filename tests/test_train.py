"""End to end on a tiny image folder: both methods train, write their files, resume exactly."""
import json

import pytest
import torch

from fastssl import methods
from fastssl.cli import main
from fastssl.config import Config, parse_args, resolve
from fastssl.models import build_encoder
from fastssl import train as train_mod

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
                "knn_top1_init", "knn_top1", "linear_top1", "config"):
        assert key in summary
    assert summary["method"] == method and summary["epochs"] == 2 and summary["steps"] == 2 * (80 // 16)
    assert summary["images_seen"] == summary["steps"] * 16
    assert 0 <= summary["knn_top1"] <= 100 and 0 <= summary["linear_top1"] <= 100
    assert summary["config"]["batch_size"] == 16
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["images_per_s"] > 0 and r["loss"] == r["loss"] for r in rows)
    assert (out / "checkpoint.pt").is_file() and not list(out.glob("*.tmp"))


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
        loss = model(v1, v2)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_resume_matches_uninterrupted_run(tmp_path, tiny_folder, monkeypatch):
    code, full = run(tmp_path / "a", tiny_folder, "dare", "--epochs", "3", "--no-linear-eval")
    assert code == 0

    saves = []
    real_save = train_mod.atomic_save

    def save_then_die(obj, path):
        real_save(obj, path)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt  # the job dies after the second epoch's checkpoint

    monkeypatch.setattr(train_mod, "atomic_save", save_then_die)
    code, part = run(tmp_path / "b", tiny_folder, "dare", "--epochs", "3", "--no-linear-eval")
    assert code == 130 and torch.load(part / "checkpoint.pt", weights_only=False)["epoch"] == 2
    monkeypatch.setattr(train_mod, "atomic_save", real_save)
    code, part = run(tmp_path / "b", tiny_folder, "dare", "--epochs", "3", "--no-linear-eval", "--resume")
    assert code == 0

    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(part / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert [r["loss"] for r in a["history"]] == pytest.approx([r["loss"] for r in b["history"]], rel=1e-5)
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 3


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
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())
    assert not (out / "summary.json").exists()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_folder, capsys):
    code, _ = run(tmp_path, tiny_folder, "simclr", "--resume")
    assert code == 1 and "no checkpoint" in capsys.readouterr().err


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


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in Config.__dataclass_fields__:
        if f not in ("backend", "progress"):
            assert "--" + f.replace("_", "-") in text
    assert text.count("default:") >= 30


def test_fast_preset_and_recipe_resolution():
    cfg = resolve(parse_args(["--method", "dare", "--fast", "--device", "cpu"]))
    assert cfg.width == 16 and cfg.train_subset > 0 and cfg.dare_variant == "decoupled" and cfg.compile == "off"
    cfg = resolve(parse_args(["--method", "dare", "--fast", "--device", "cpu", "--width", "32", "--dare-lambda", "0"]))
    assert cfg.width == 32 and cfg.dare_lambda == 0.0
    cfg = resolve(parse_args(["--method", "simclr", "--device", "cpu"]))
    assert cfg.optimizer == methods.get_method("simclr").recipe["optimizer"] and cfg.amp == "off"
