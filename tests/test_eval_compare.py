"""scripts/compare_runs.py on synthetic run folders: finished runs (epoch and kNN rows, train_s) and a run
still training."""
import json

import pytest

from fastssl import compare


def write_run(folder, summary, rows, extra=None):
    folder.mkdir(parents=True)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, obj in (extra or {}).items():
        (folder / name).write_text(json.dumps(obj))
    return folder


def new_run(tmp_path):
    rows = [{"event": "knn", "epoch": 0, "step": 50, "images": 6400, "train_s": 30.0, "wall_s": 40.0, "knn_top1": 31.0},
            {"event": "epoch", "epoch": 1, "step": 100, "loss": 5.0, "lr": 0.1, "images_per_s": 200.0, "epoch_s": 64.0,
             "train_s": 64.0, "wall_s": 80.0, "knn_top1": 35.5},
            {"event": "knn", "epoch": 1, "step": 100, "images": 12800, "train_s": 64.0, "wall_s": 80.0, "knn_top1": 35.5},
            {"event": "epoch", "epoch": 2, "step": 200, "loss": 4.0, "lr": 0.0, "images_per_s": 210.0, "epoch_s": 61.0,
             "train_s": 125.0, "wall_s": 150.0, "knn_top1": 40.25}]
    summary = dict(method="dare", dataset="cifar10", encoder="resnet18", epochs=2, wall_s=150.0, train_s=125.0,
                   images_seen=25600, knn_top1_init=27.0, knn_top1=40.25, linear_top1=44.5, config={"width": 16})
    return write_run(tmp_path / "dare-new", summary, rows,
                     {"linear_eval-standard.json": {"protocol": "standard", "linear_top1": 47.0}})


def other_run(tmp_path):
    rows = [{"event": "epoch", "epoch": 1, "step": 100, "loss": 5.1, "lr": 0.1, "images_per_s": 100.0, "epoch_s": 128.0,
             "train_s": 128.0, "wall_s": 130.0, "knn_top1": None},
            {"event": "epoch", "epoch": 2, "step": 200, "loss": 4.2, "lr": 0.0, "images_per_s": 300.0, "epoch_s": 100.0,
             "train_s": 228.0, "wall_s": 240.0, "knn_top1": 38.0}]
    summary = dict(method="simclr", dataset="cifar10", encoder="resnet18", epochs=2, wall_s=300.0, train_s=256.0,
                   images_seen=51200, knn_top1_init=26.0, knn_top1=38.0, linear_top1=None, config={})
    return write_run(tmp_path / "simclr-other", summary, rows)


def test_curves(tmp_path):
    new, other = compare.read_run(new_run(tmp_path)), compare.read_run(other_run(tmp_path))
    assert new["curve"] == [(0.0, 27.0), (40.0, 31.0), (80.0, 35.5), (150.0, 40.25)]  # the duplicate at 80 s once
    assert other["curve"] == [(0.0, 26.0), (240.0, 38.0)]


def test_rows_that_are_not_fastssl_metrics_are_one_line_errors(tmp_path):
    folder = write_run(tmp_path / "foreign", None, [{"epoch": 1, "knn_top1": 30.0}])  # no event, no wall_s
    with pytest.raises(compare.RunError, match="line 1 is not a fastssl metrics row"):
        compare.read_run(folder)


def test_table_and_png(tmp_path, capsys):
    new, other = new_run(tmp_path), other_run(tmp_path)
    running = write_run(tmp_path / "byol-running", None,
                        [{"event": "epoch", "epoch": 1, "step": 10, "images_per_s": 50.0, "epoch_s": 20.0,
                          "wall_s": 25.0, "knn_top1": 12.5}])
    png = tmp_path / "overlay.png"
    assert compare.main([str(new), str(other), str(running), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0] == "| run | method | dataset | encoder | epochs | wall | images/s | kNN | linear |"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert cells[0] == ["dare-new", "dare", "cifar10", "resnet18", "2", "2m30s", "205", "40.25",
                        "44.50 (probe) / 47.00 (standard)"]  # 25600 images / 125 s of training
    assert cells[1] == ["simclr-other", "simclr", "cifar10", "resnet18", "2", "5m00s", "200", "38.00", "-"]
    assert cells[2][:2] == ["byol-running", "?"] and cells[2][4:] == ["1 so far", "25s", "50", "12.50", "-"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_a_run_still_training_is_named_from_its_checkpoint(tmp_path, capsys):
    import torch
    folder = write_run(tmp_path / "run", None, [{"event": "epoch", "epoch": 1, "step": 10, "images_per_s": 40.0,
                                                  "epoch_s": 88.0, "wall_s": 90.0, "knn_top1": None}])
    torch.save({"method": {}, "config": {"method": "byol", "dataset": "cifar100", "encoder": "resnet50",
                                         "epochs": 3}}, folder / "checkpoint.pt")
    assert compare.main([str(folder), "--out", str(tmp_path / "c.png")]) == 0
    row = [c.strip() for c in capsys.readouterr().out.splitlines()[2].strip("|").split("|")]
    assert row == ["run", "byol", "cifar100", "resnet50", "1 of 3 so far", "1m30s", "40", "-", "-"]


def test_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv in ([str(tmp_path / "missing")], [str(tmp_path / "empty")]):
        assert compare.main(argv + ["--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("compare_runs.py: error: ")
    bad = write_run(tmp_path / "bad", {"method": "x"}, [])
    (bad / "metrics.jsonl").write_text("{not json\n")
    assert compare.main([str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "line 1 is not JSON" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
