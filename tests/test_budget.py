"""Time-to-accuracy options: the schedule over a time budget, resume inside a budget, the stop at a kNN
target, the progressive-resolution schedule (and one compile per resolution), your own unlabelled images.

Budget runs use a simulated clock: each training step advances it by STEP_S and nothing else does, so the
number of steps a budget buys is exact and the tests assert no real timings."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl import methods
from fastssl import checkpoint as checkpoint_mod
from fastssl import train as train_mod
from fastssl.step import compile_model
from fastssl import train_state
from fastssl.checkpoint import load_checkpoint
from fastssl.cli import main
from fastssl.schedule import lr_at, lr_at_progress, parse_res_schedule, resolution_at

TINY = ["--width", "8", "--batch-size", "16", "--proj-hidden", "32", "--proj-dim", "16", "--knn-k", "10",
        "--device", "cpu", "--no-progress", "--lr", "0.2", "--no-linear-eval"]
STEP_S = 0.125  # simulated seconds per training step (exact in binary floating point)


# ------------------------------------------------------------------ schedule maths

def test_lr_over_progress():
    peak = 2.0
    assert lr_at_progress(0.0, 0.1, peak) == 0.0
    assert lr_at_progress(0.05, 0.1, peak) == pytest.approx(1.0)
    assert lr_at_progress(0.1, 0.1, peak) == pytest.approx(peak)
    assert lr_at_progress(0.55, 0.1, peak) == pytest.approx(peak / 2)  # cosine midpoint
    assert lr_at_progress(1.0, 0.1, peak) == pytest.approx(0.0, abs=1e-12)
    assert lr_at_progress(1.7, 0.1, peak) == pytest.approx(0.0, abs=1e-12)  # clamped past the budget
    lrs = [lr_at_progress(p / 100, 0.1, peak) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at_progress(0.0, 0.0, peak) == pytest.approx(peak)
    # after warmup it is the step schedule's cosine, with progress = steps done / total steps
    assert lr_at_progress(0.4, 0.1, peak) == pytest.approx(lr_at(40, 100, 10, peak))


def test_res_schedule_parse_and_lookup():
    thirds = parse_res_schedule("16,24,32")
    assert [px for _, px in thirds] == [16, 24, 32] and [e for e, _ in thirds] == pytest.approx([1 / 3, 2 / 3, 1])
    assert parse_res_schedule("16@0.3,24@0.6,32") == [(0.3, 16), (0.6, 24), (1.0, 32)]
    assert parse_res_schedule("16@0.5, 32@1") == parse_res_schedule("16@0.5,32") == [(0.5, 16), (1.0, 32)]
    assert parse_res_schedule("") == [] and resolution_at([], 0.7) == 32 and resolution_at([], 0.7, full=64) == 64
    assert [resolution_at(thirds, p) for p in (0.0, 0.3, 1 / 3, 0.5, 0.7, 1.0)] == [16, 16, 24, 24, 32, 32]
    explicit = parse_res_schedule("16@0.3,24@0.6,32")
    assert [resolution_at(explicit, p) for p in (0.29, 0.3, 0.59, 0.6, 0.99)] == [16, 24, 24, 32, 32]
    for bad in ("16,abc", "4,32", "16,48", "16@0.6,24@0.3,32", "16,24@0.5", "16@0.5,32@0.9", "16@x,32"):
        with pytest.raises(ValueError, match="--res-schedule"):
            parse_res_schedule(bad)
    assert parse_res_schedule("32,48,64", full=64)[-1] == (1.0, 64)


# ------------------------------------------------------------------ runs on a simulated clock

@pytest.fixture
def fake_clock(monkeypatch):
    """train's clock only moves when a method runs a training step."""
    now = [1000.0]
    monkeypatch.setattr(train_state, "now", lambda: now[0])
    for name in ("simclr", "dare"):
        cls = methods.get_method(name)
        real = cls.forward

        def forward(self, *a, _real=real, **k):
            if self.training:
                now[0] += STEP_S
            return _real(self, *a, **k)

        monkeypatch.setattr(cls, "forward", forward)
    return now


def run(out, tiny_folder, method, *extra):
    return main(["--method", method, "--data", str(tiny_folder), "--out", str(out), *TINY, *extra])


def rows_of(out, event):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


def test_budget_schedule_ends_with_the_budget(tmp_path, tiny_folder, fake_clock):
    # 2.5 s at 0.125 s a step: 20 steps = 4 epochs of 5; warmup 0.5 of 2 epochs = the first quarter
    out = tmp_path / "run"
    assert run(out, tiny_folder, "simclr", "--time-budget", "2.5", "--epochs", "2", "--warmup-epochs", "0.5") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["time_budget_s"] == 2.5 and summary["steps"] == 20 and summary["images_seen"] == 320
    assert summary["train_s"] == pytest.approx(2.5) and summary["stopped_by"] == "budget" and summary["epochs"] == 4
    epochs = rows_of(out, "epoch")
    assert [r["step"] for r in epochs] == [5, 10, 15, 20]
    peak = 0.2 * 16 / 256
    # each epoch row holds the lr of its last step, set at progress (step - 1) / 20
    expected = [lr_at_progress((r["step"] - 1) / 20, 0.25, peak) for r in epochs]
    assert [r["lr"] for r in epochs] == pytest.approx(expected)
    assert epochs[-1]["lr"] < 0.02 * peak  # decayed to ~0 exactly as the budget ran out
    assert [r["train_s"] for r in epochs] == pytest.approx([0.625, 1.25, 1.875, 2.5])
    assert [r["step"] for r in rows_of(out, "knn")] == [0, 20]


@pytest.mark.slow  # three short runs
def test_budget_resume_continues_where_it_stopped(tmp_path, tiny_folder, fake_clock, monkeypatch):
    monkeypatch.setattr(train_mod, "CHECKPOINT_EVERY_S", 0.3)  # mid-epoch checkpoints every ~3 steps
    args = ("--time-budget", "2.5", "--epochs", "2", "--warmup-epochs", "0.5")
    assert run(tmp_path / "full", tiny_folder, "dare", *args) == 0

    real_save = checkpoint_mod.save_checkpoint

    def save_then_die(state, path):
        real_save(state, path)
        if state["step"] >= 7 and state["batch"]:
            raise KeyboardInterrupt  # the job dies right after a mid-epoch checkpoint

    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", save_then_die)
    assert run(tmp_path / "part", tiny_folder, "dare", *args) == 130
    partial = load_checkpoint(tmp_path / "part")
    assert partial["batch"] > 0 and partial["train_s"] == pytest.approx(partial["step"] * STEP_S)
    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", real_save)
    assert run(tmp_path / "part", tiny_folder, "dare", *args, "--resume") == 0

    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    assert a["step"] == b["step"] == 20 and b["train_s"] == pytest.approx(2.5)
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=1e-5, atol=1e-6, msg=k)
    full, part = rows_of(tmp_path / "full", "epoch"), rows_of(tmp_path / "part", "epoch")
    assert [r["step"] for r in part] == [r["step"] for r in full]
    assert [r["lr"] for r in part] == pytest.approx([r["lr"] for r in full])
    assert [r["loss"] for r in part] == pytest.approx([r["loss"] for r in full], rel=1e-5)
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["train_s"] == pytest.approx(2.5)


@pytest.mark.slow  # eight short calls
def test_stop_after_pauses_and_resume_finishes_the_same_run(tmp_path, tiny_folder, fake_clock):
    # each call may run 0.3 s of the simulated clock (3 steps): the run goes on over calls that each
    # exit with code 75 after a checkpoint, and ends exactly where one uninterrupted call ends
    args = ("--time-budget", "2.5", "--epochs", "2", "--warmup-epochs", "0.5", "--knn-every-steps", "4")
    assert run(tmp_path / "full", tiny_folder, "dare", *args) == 0
    codes = [run(tmp_path / "part", tiny_folder, "dare", *args, "--stop-after", "0.3")]
    while codes[-1] == 75 and len(codes) < 20:
        codes.append(run(tmp_path / "part", tiny_folder, "dare", *args, "--stop-after", "0.3", "--resume"))
        ckpt = load_checkpoint(tmp_path / "part")
        assert ckpt["config"]["stop_after"] == 0.3 and ckpt["train_s"] == pytest.approx(ckpt["step"] * STEP_S)
    assert codes[-1] == 0 and set(codes[:-1]) == {75} and len(codes) == 7  # 20 steps, 3 a call
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    assert a["step"] == b["step"] == 20
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert [r["step"] for r in rows_of(tmp_path / "part", "knn")] == [r["step"] for r in rows_of(tmp_path / "full", "knn")]
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["train_s"] == pytest.approx(2.5) and summary["stopped_by"] == "budget"


def test_a_resume_does_not_charge_its_recompilation(tmp_path, tiny_folder, fake_clock, monkeypatch):
    # --compile on (compilation stubbed out: the clock is simulated): the first step after each resume is the
    # one that compiles again, and it is not charged, so a 2.5 s budget paused once buys one step more
    from fastssl import step as step_mod
    monkeypatch.setattr(step_mod, "compile_model", lambda model, **kw: model)
    args = ("--time-budget", "2.5", "--epochs", "2", "--warmup-epochs", "0.5", "--compile", "on")
    assert run(tmp_path / "r", tiny_folder, "simclr", *args, "--stop-after", "0.3") == 75
    assert load_checkpoint(tmp_path / "r")["step"] == 3
    assert run(tmp_path / "r", tiny_folder, "simclr", *args, "--resume") == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["steps"] == 21 and summary["train_s"] == pytest.approx(2.5)


def test_stop_after_rejects_a_negative_value(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--stop-after", "-1", *TINY])
    assert e.value.code == 2 and "argument --stop-after: must be >= 0, got -1" in capsys.readouterr().err


def test_target_knn_stops_the_run(tmp_path, tiny_folder, monkeypatch):
    measured = []

    def rising_knn(self, encoder):  # 0, 20, 40, 60, ...: reaches 50 at the fourth measurement
        measured.append(1)
        return {20: 20.0 * (len(measured) - 1), self.cfg.knn_k: 20.0 * (len(measured) - 1)}

    monkeypatch.setattr(train_mod.Evaluator, "knn", rising_knn)
    out = tmp_path / "run"
    assert run(out, tiny_folder, "simclr", "--epochs", "5", "--target-knn", "50", "--knn-every-steps", "2") == 0
    summary = json.loads((out / "summary.json").read_text())
    knn = rows_of(out, "knn")
    assert [(r["step"], r["knn_top1"]) for r in knn] == [(0, 0.0), (2, 20.0), (4, 40.0), (6, 60.0)]
    assert all(r["wall_s"] >= r["train_s"] >= 0 and r["images"] == 16 * r["step"] for r in knn)
    assert summary["stopped_by"] == "target" and summary["steps"] == 6 and summary["images_to_target"] == 96
    assert summary["target_knn"] == 50 and summary["knn_top1"] == 60.0
    assert 0 < summary["time_to_target_s"] <= summary["train_s"] and summary["knn_s"] > 0
    assert load_checkpoint(out)["step"] == 6  # the stop inside epoch 2 is checkpointed


def test_res_schedule_sets_the_global_size(tmp_path, tiny_folder, monkeypatch):
    from fastssl.loaders.resident import ResidentLoader
    sizes = []
    monkeypatch.setattr(ResidentLoader, "set_global_size", lambda self, px: sizes.append((self_step[0], px)),
                        raising=False)
    self_step = [0]
    cls = methods.get_method("simclr")
    real = cls.forward

    def counting(self, *a, **k):
        self_step[0] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(cls, "forward", counting)
    assert run(tmp_path / "run", tiny_folder, "simclr", "--epochs", "3", "--res-schedule", "16,24,32") == 0
    # 15 steps; the size is set before the batch of a step is drawn: steps 0-4 at 16, 5-9 at 24, 10-14 at 32
    assert sizes == [(0, 16), (5, 24), (10, 32)]


def test_each_resolution_compiles_once():
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    counter = CompileCounter()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 8, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 8))
    model = compile_model(net, backend=counter, shapes=3)

    def step(px):
        model(torch.randn(4, 3, px, px)).square().mean().backward()

    step(16)
    per_shape = counter.frame_count
    assert per_shape >= 1
    for px in (16, 24, 24, 32, 32):
        step(px)
    assert counter.frame_count == 3 * per_shape  # one compile per size
    for px in (16, 24, 32, 16):
        step(px)
    assert counter.frame_count == 3 * per_shape  # revisiting a size reuses its graph
    torch._dynamo.reset()


# ------------------------------------------------------------------ your own images (needs data_prep "images")

def _flat_folder(root):
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def _images_supported():
    import inspect
    import data_prep
    return "resolution" in inspect.signature(data_prep.load_dataset).parameters


@pytest.mark.skipif(not _images_supported(), reason="data_prep has no 'images' dataset on this branch yet")
def test_unlabelled_images_train_and_skip_evaluation(tmp_path, tiny_folder, capsys):
    folder = _flat_folder(tmp_path / "flat")
    out = tmp_path / "run"
    assert main(["--method", "simclr", "--dataset", "images", "--data", str(folder), "--out", str(out),
                 *TINY, "--epochs", "1"]) == 0
    assert "no class labels" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["knn_top1"] is None and summary["linear_top1"] is None
    assert not rows_of(out, "knn") and (out / "curves.png").is_file()
    # supervised methods refuse unlabelled data in one line
    assert main(["--method", "supcon", "--dataset", "images", "--data", str(folder), "--out", str(tmp_path / "s"),
                 *TINY, "--epochs", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("data_prep: ")]
    assert len(errors) == 1 and "no class labels" in errors[0]  # one line (besides data_prep's cache note)
    # --eval-data: kNN on a labelled folder
    assert main(["--method", "simclr", "--dataset", "images", "--data", str(folder), "--out", str(tmp_path / "e"),
                 *TINY, "--epochs", "1", "--eval-data", str(tiny_folder)]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert 0 <= summary["knn_top1"] <= 100


def test_unlabelled_images_train_side_with_a_stand_in_reader(tmp_path, tiny_folder, monkeypatch, capsys):
    """The train side of --dataset images / --eval-data against the data_prep contract (labeled, keyword
    arguments), with a stand-in reader: runs on branches whose data_prep lacks the images reader."""
    from types import SimpleNamespace
    real_load = train_mod.load_dataset
    calls = []

    def stand_in(name, data=None, **kw):
        calls.append((name, str(data), kw))
        if name != "images":
            return real_load(name, data)
        cifar = real_load("cifar10", tiny_folder, verbose=False)
        if str(data) == str(tiny_folder):  # the labelled folder
            return SimpleNamespace(**{k: getattr(cifar, k) for k in ("train_x", "train_y", "test_x", "test_y",
                                   "classes", "num_classes", "mean", "std")}, name="images", source=str(data),
                                   labeled=True)
        return SimpleNamespace(name="images", source=str(data), train_x=cifar.train_x,
                               train_y=np.full(len(cifar.train_y), -1), test_x=cifar.test_x[:0],
                               test_y=cifar.test_y[:0], classes=[], num_classes=0, mean=cifar.mean, std=cifar.std,
                               labeled=False)

    monkeypatch.setattr(train_mod, "load_dataset", stand_in)
    flat = tmp_path / "flat"
    flat.mkdir()
    base = ["--dataset", "images", "--data", str(flat), *TINY, "--epochs", "1", "--resolution", "32", "--strict"]
    assert main(["--method", "simclr", "--out", str(tmp_path / "u"), *base]) == 0
    assert calls[0] == ("images", str(flat), {"resolution": 32, "strict": True})
    assert "no class labels" in capsys.readouterr().out
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["knn_top1"] is None and summary["knn_top1_init"] is None
    assert not rows_of(tmp_path / "u", "knn") and (tmp_path / "u" / "curves.png").is_file()
    for method in ("supcon", "triplet"):  # supervised methods refuse unlabelled data in one line
        assert main(["--method", method, "--out", str(tmp_path / method), *base]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no class labels" in err and not (tmp_path / method).exists()
    assert main(["--method", "simclr", "--out", str(tmp_path / "t"), *base, "--target-knn", "50",
                 "--knn-every-steps", "2"]) == 2  # a target needs labels to measure
    capsys.readouterr()
    assert main(["--method", "simclr", "--out", str(tmp_path / "e"), *base, "--eval-data", str(tiny_folder)]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert 0 <= summary["knn_top1_init"] <= 100 and 0 <= summary["knn_top1"] <= 100
    assert calls[-1] == ("images", str(tiny_folder), {"resolution": 32, "strict": True})
    # --eval-data must be labelled
    assert main(["--method", "simclr", "--out", str(tmp_path / "x"), *base, "--eval-data", str(flat)]) == 2
    assert "--eval-data" in capsys.readouterr().err
