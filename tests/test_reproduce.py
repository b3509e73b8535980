"""The Table 1 reproduction at the smoke budget, end to end on the tiny image folder (CPU): files,
resume after a kill (nothing finished is recomputed), the plan, the budgets and the one-line errors."""
import csv
import json
from pathlib import Path

import pytest
import torch

from fastssl import reproduce
from fastssl import checkpoint as checkpoint_mod
from fastssl import train as train_mod

ARGS = ["--budget", "smoke", "--datasets", "cifar10", "--encoders", "resnet18", "--device", "cpu", "--no-progress"]


def test_paper_table_covers_the_grid():
    cells = reproduce.grid()
    assert len(cells) == 7 * 2 * 2 == len(reproduce.PAPER)
    assert all((c.method, c.dataset, c.encoder) in reproduce.PAPER for c in cells)
    assert reproduce.PAPER[("dare", "cifar10", "resnet18")] == (87.3, None)
    assert reproduce.PAPER[("simclr", "cifar100", "resnet18")] == (55.0, 66.83)
    assert [c.name for c in reproduce.grid(["dare"], ["cifar10"], ["resnet18", "resnet50"])] == \
        ["dare-cifar10-resnet50", "dare-cifar10-resnet18"]


def test_extra_rows_carry_solo_learns_reference_and_say_so():
    from fastssl import methods
    from fastssl.reproduce.report import results_markdown
    from fastssl.reproduce.table import EXTRA_METHODS, REFERENCE
    assert set(EXTRA_METHODS) <= set(methods.available()) and not set(EXTRA_METHODS) & set(reproduce.METHODS)
    assert REFERENCE[("mocov3", "cifar10", "resnet18")] == 93.10 and ("mocov3", "cifar10", "resnet50") not in REFERENCE
    cell = reproduce.cell_config(reproduce.Cell("vicreg", "cifar10", "resnet18"), "quick", Path("runs"), device="cpu")
    assert cell.vicreg_sim == 25.0 and cell.optimizer == "lars"  # an extra row's cell resolves its own options
    row = dict(method="vicreg", dataset="cifar10", encoder="resnet18", linear_top1=80.0, paper_top1=None,
               paper_original_top1=None, reference_top1=92.07, diff=-12.07, knn_top1=70.0, epochs=50, steps=10,
               wall_s=60.0, device="cpu", linear_protocol="probe")
    text = results_markdown(dict(budget="quick", cells=[row], linear_protocol="probe"))
    assert "| vicreg | cifar10 | resnet18 | 80.00 | 92.07\\* | -12.07 |" in text
    assert "online linear probe, 1000 epochs" in text


def test_budgets_override_the_schedule_and_keep_the_recipe(tmp_path):
    cell = reproduce.Cell("barlow", "cifar100", "resnet50")
    quick = reproduce.cell_config(cell, "quick", tmp_path, device="cpu")
    assert (quick.epochs, quick.batch_size, quick.knn_bank, quick.knn_queries) == (50, 512, 0, 0)
    assert (quick.optimizer, quick.lr, quick.proj_dim, quick.width) == ("lars", 0.3, 2048, 64)  # Barlow's recipe
    assert quick.out == str(tmp_path / "cells" / "barlow-cifar100-resnet50") and quick.linear_eval
    full = reproduce.cell_config(cell, "full", tmp_path, device="cpu")
    assert (full.epochs, full.batch_size) == (1000, 256)
    smoke = reproduce.cell_config(cell, "smoke", tmp_path, device="cpu")
    assert smoke.width == 8 and smoke.train_subset > 0 and smoke.knn_bank > 0


def test_smoke_end_to_end_kill_and_resume(tmp_path, tiny_folder, monkeypatch, capsys):
    out = tmp_path / "table1"
    argv = ARGS + ["--methods", "simclr", "dare", "--data", str(tiny_folder), "--out", str(out)]

    # first run: simclr finishes, dare is killed after its first epoch's checkpoint
    real_save, saves = checkpoint_mod.save_checkpoint, []

    def save_then_die(obj, path):
        real_save(obj, path)
        saves.append(path)
        if "dare" in str(path):
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", save_then_die)
    assert reproduce.main(argv) == 130
    simclr_dir, dare_dir = out / "cells" / "simclr-cifar10-resnet18", out / "cells" / "dare-cifar10-resnet18"
    assert (simclr_dir / "result.json").is_file() and not (dare_dir / "result.json").exists()
    first = torch.load(dare_dir / "checkpoint.pt", weights_only=True)
    assert first["epoch"] == 1
    simclr_bytes = (simclr_dir / "result.json").read_bytes()
    plan = json.loads((out / "plan.json").read_text())
    assert [c["cell"] for c in plan["cells"]] == ["simclr-cifar10-resnet18", "dare-cifar10-resnet18"]
    assert all(c["estimate_s"] > 0 for c in plan["cells"])

    # rerun: only dare trains, resuming from its checkpoint
    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", real_save)
    calls, real_train = [], train_mod.train

    def counting_train(cfg):
        calls.append((cfg.out, cfg.resume))
        return real_train(cfg)

    monkeypatch.setattr(train_mod, "train", counting_train)
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    printed = capsys.readouterr().out
    assert "simclr-cifar10-resnet18      done" in printed and "dare-cifar10-resnet18        resume" in printed
    plan = {c["cell"]: c for c in json.loads((out / "plan.json").read_text())["cells"]}
    assert plan["dare-cifar10-resnet18"]["steps"] == 80 // 32  # one epoch left of two
    assert calls == [(str(dare_dir), True)]
    assert (simclr_dir / "result.json").read_bytes() == simclr_bytes
    resumed = torch.load(dare_dir / "checkpoint.pt", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["history"][0] == first["history"][0]
    assert json.loads((dare_dir / "result.json").read_text())["resumed"] is True

    # the output files
    results = json.loads((out / "results.json").read_text())
    assert results["budget"] == "smoke" and len(results["cells"]) == 2 and len(results["cells_not_run"]) == 26
    for r in results["cells"]:
        assert r["diff"] == pytest.approx(r["linear_top1"] - r["paper_top1"], abs=0.01)
        assert r["epochs"] == 2 and r["wall_s"] > 0 and r["device"].startswith("cpu")
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], float(r["paper_top1"])) for r in rows] == [("simclr", 85.9), ("dare", 87.3)]
    md = (out / "results.md").read_text()
    assert "| simclr | cifar10 | resnet18 |" in md and "85.9 (91.8)" in md and "NOT a reproduction" in md
    assert "| probe |\n" in md and all(r["linear_protocol"] == "probe" for r in results["cells"])
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a third run recomputes nothing
    calls.clear()
    assert reproduce.main(argv) == 0 and calls == []


def test_plan_only_trains_nothing(tmp_path, tiny_folder, monkeypatch):
    monkeypatch.setattr(train_mod, "train", lambda cfg: pytest.fail("--plan-only trained"))
    out = tmp_path / "plan"
    argv = ["--budget", "smoke", "--device", "cpu", "--datasets", "cifar10", "--methods", "simclr", "byol",
            "--data", str(tiny_folder), "--out", str(out), "--plan-only"]
    assert reproduce.main(argv) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["cells"]) == 4 and set(plan["probes"]) == {"resnet18/two-view", "resnet50/two-view",
                                                               "resnet18/ema-target", "resnet50/ema-target"}
    steps = {c["cell"]: c["steps"] for c in plan["cells"]}
    assert steps["simclr-cifar10-resnet18"] == 2 * (80 // 32)  # 80 tiny images, batch 32, 2 epochs
    assert not (out / "cells").exists()


def test_errors_are_one_line(tmp_path, tiny_folder, capsys):
    out = tmp_path / "t"
    (out).mkdir()
    (out / "budget.json").write_text(json.dumps({"budget": "quick"}))
    assert reproduce.main(ARGS + ["--methods", "simclr", "--data", str(tiny_folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds a --budget quick run" in err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--budget", "huge"])
    assert e.value.code == 2


def test_missing_data_fails_the_cell_not_the_run(tmp_path, tiny_folder, capsys):
    """CIFAR-100 is absent (the tiny folder is CIFAR-10 shaped): that cell fails with a message, the rest runs."""
    out = tmp_path / "m"
    argv = ["--budget", "smoke", "--device", "cpu", "--no-progress", "--methods", "simclr", "--encoders", "resnet18",
            "--data", str(tiny_folder), "--out", str(out)]
    assert reproduce.main(argv) == 1
    captured = capsys.readouterr()
    assert "cell simclr-cifar100-resnet18 failed" in captured.err
    assert (out / "cells" / "simclr-cifar10-resnet18" / "result.json").is_file()
    assert len(json.loads((out / "results.json").read_text())["cells"]) == 1


def test_full_budget_uses_the_standard_protocol():
    assert reproduce.LINEAR_PROTOCOL == {"smoke": "probe", "quick": "probe", "full": "standard"}
    assert reproduce.STANDARD == dict(epochs=100, batch_size=256, lr=0.1)
    assert reproduce.protocol_of({}) == "probe"  # results written before protocols were recorded


@pytest.mark.slow  # a smoke cell end to end: ~25 s on a busy CPU
def test_standard_protocol_cell_records_its_protocol(tmp_path, tiny_folder, monkeypatch):
    """The smoke budget switched to the standard protocol (2 epochs): the cell's linear number comes from
    fastssl.eval.standard_linear_eval and every output file says so."""
    monkeypatch.setitem(reproduce.LINEAR_PROTOCOL, "smoke", "standard")
    for key, value in dict(epochs=2, batch_size=32, lr=0.1).items():
        monkeypatch.setitem(reproduce.STANDARD, key, value)
    from fastssl import eval as ev
    calls, real = [], ev.standard_linear_eval

    def counting(encoder, data, schedule, **kwargs):
        calls.append(dict(data=data, schedule=schedule))
        return real(encoder, data, schedule, **kwargs)

    monkeypatch.setattr(ev, "standard_linear_eval", counting)
    out = tmp_path / "std"
    assert reproduce.main(ARGS + ["--methods", "simclr", "--data", str(tiny_folder), "--out", str(out)]) == 0
    assert len(calls) == 1 and calls[0]["schedule"].epochs == 2
    record = json.loads((out / "cells" / "simclr-cifar10-resnet18" / "result.json").read_text())
    assert record["linear_protocol"] == "standard" and record["linear_settings"]["epochs"] == 2
    assert record["probe_top1"] is not None and record["linear_s"] > 0
    results = json.loads((out / "results.json").read_text())
    assert results["linear_protocol"] == "standard" and results["cells"][0]["linear_protocol"] == "standard"
    row = next(csv.DictReader((out / "results.csv").open()))
    assert row["linear_protocol"] == "standard" and row["knn_protocol"].startswith("kNN k=20")  # smoke: knn_k 20
    md = (out / "results.md").read_text()
    assert "| simclr | cifar10 | resnet18 |" in md and "| standard |\n" in md and "standard: a linear head on the frozen backbone" in md


def test_a_cell_checkpoint_that_is_not_one_is_refused_on_one_line(tmp_path, tiny_folder, capsys):
    """Planning reads a half-done cell's checkpoint with weights_only: a foreign file is one line, exit 2."""
    out = tmp_path / "r"
    cell = out / "cells" / "simclr-cifar10-resnet18"
    cell.mkdir(parents=True)
    (cell / "checkpoint.pt").write_text("not a checkpoint\n")
    assert reproduce.main(ARGS + ["--methods", "simclr", "--data", str(tiny_folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a fastssl checkpoint" in err
