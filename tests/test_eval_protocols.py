"""Evaluation protocols: kNN at two k in one search, the crop+flip augmentation, class-balanced label
subsets, the standard linear protocol (the backbone stays frozen), fine-tuning, and the CLIs' one-line
refusals of files that are not checkpoints (a malicious pickle is never run)."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastssl import eval as ev
from fastssl import eval_cli
from fastssl.checkpoint import CheckpointError
from fastssl.encoder import load_encoder
from fastssl.models import build_encoder

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(path: Path, data, encoder: str = "resnet18", width: int = 8, **extra) -> torch.nn.Module:
    """A checkpoint as train.py writes it (the whole method's state; the backbone under encoder.*)."""
    torch.manual_seed(0)
    enc = build_encoder(encoder, width)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    state = {"encoder." + k: v for k, v in enc.state_dict().items()}
    state["projector.0.weight"] = torch.randn(4, enc.dim)
    config = dict(method="simclr", dataset="cifar10", data=str(data) if data else None, encoder=encoder, width=width,
                  seed=0, channels_last=True, knn_t=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(method=state, optimizer={}, epoch=1, history=[], wall_s=1.0, config=config, **extra), path)
    return enc.eval()


# ---- kNN -----------------------------------------------------------------------------------------------

def test_knn_two_k_in_one_search_match_separate_searches():
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(300, 16, generator=gen), torch.randn(50, 16, generator=gen)
    bank_y, query_y = torch.randint(0, 5, (300,), generator=gen), torch.randint(0, 5, (50,), generator=gen)
    both = ev.knn_accuracies(bank, bank_y, queries, query_y, 5, ks=(20, 200), chunk=16)
    assert set(both) == {20, 200}
    for k in (20, 200):
        assert both[k] == ev.knn_top1(bank, bank_y, queries, query_y, 5, k=k)
    # k = 1 on queries that are bank points: every query finds itself
    assert ev.knn_accuracies(bank, bank_y, bank[:40], bank_y[:40], 5, ks=(1,))[1] == 100.0


def test_knn_k_larger_than_bank_uses_the_whole_bank():
    bank, y = torch.eye(4), torch.tensor([0, 0, 0, 1])
    out = ev.knn_accuracies(bank, y, torch.eye(4)[3:], torch.tensor([1]), 2, ks=(1, 200), temperature=0.1)
    assert out[1] == 100.0 and out[200] == 100.0  # exp(10) of itself outweighs three exp(0) votes


# ---- augmentation and subsets --------------------------------------------------------------------------

def test_pad_crop_flip_is_a_shifted_possibly_flipped_window_of_the_padded_image():
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zeros: padding is recognisable
    out = ev.pad_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = shifts = 0
    for i in range(len(x)):
        windows = [(t, l, f) for t in range(5) for l in range(5) for f in (False, True)
                   if torch.equal(out[i], (lambda w: w.flip(2) if f else w)(padded[i, :, t:t + 8, l:l + 8]))]
        assert windows, f"image {i} is not a window of its padded image"
        flips += windows[0][2]
        shifts += windows[0][:2] != (2, 2)
    assert 10 < flips < 54 and shifts > 32  # both kinds of randomness happen


def test_balanced_subset_counts_seed_and_bounds():
    labels = torch.arange(10).repeat_interleave(100)  # 1000 labels, 100 per class
    a = ev.balanced_subset(labels, 0.1, seed=3)
    assert len(a) == 100 and torch.bincount(labels[a], minlength=10).tolist() == [10] * 10
    assert torch.equal(a, ev.balanced_subset(labels, 0.1, seed=3))
    assert not torch.equal(a, ev.balanced_subset(labels, 0.1, seed=4))
    assert torch.bincount(labels[ev.balanced_subset(labels, 0.01, seed=0)]).tolist() == [1] * 10
    assert len(ev.balanced_subset(labels, 1.0)) == 1000
    with pytest.raises(ValueError):
        ev.balanced_subset(labels, 0.0)


# ---- standard linear protocol and fine-tuning ----------------------------------------------------------

def _tiny(tiny_folder):
    from data_prep import load_dataset

    from fastssl.data import to_nchw
    ds = load_dataset("cifar10", tiny_folder, verbose=False)
    return (ds, to_nchw(ds.train_x, "cpu"), torch.from_numpy(ds.train_y), to_nchw(ds.test_x, "cpu"),
            torch.from_numpy(ds.test_y))


def test_standard_protocol_keeps_the_backbone_frozen_and_learns(tiny_folder):
    ds, xtr, ytr, xte, yte = _tiny(tiny_folder)
    torch.manual_seed(0)
    enc = build_encoder("resnet18", 8).train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    lines = []
    data = ev.LabelledSplits(xtr, ytr, xte, yte, ds.mean, ds.std, ds.num_classes)
    schedule = dataclasses.replace(ev.STANDARD_LINEAR, epochs=15, batch_size=16, lr=0.1)
    top1 = ev.standard_linear_eval(enc, data, schedule, log=lines.append)
    after = enc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics untouched
    assert enc.training and all(p.requires_grad for p in enc.parameters())  # restored as it was
    assert len(lines) == 15 and top1 > 30.0  # 10 classes: chance is 10%


def test_finetune_changes_the_backbone_and_learns(tiny_folder):
    ds, xtr, ytr, xte, yte = _tiny(tiny_folder)
    torch.manual_seed(0)
    enc = build_encoder("resnet18", 8)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    data = ev.LabelledSplits(xtr, ytr, xte, yte, ds.mean, ds.std, ds.num_classes)
    top1 = ev.finetune(enc, data, dataclasses.replace(ev.FINETUNE, epochs=8, batch_size=16, lr=0.05))
    assert not torch.equal(before["stem.0.weight"], enc.state_dict()["stem.0.weight"])
    assert top1 > 30.0


# ---- load_encoder and the CLIs -------------------------------------------------------------------------

def test_load_encoder_from_file_and_run_folder(tmp_path):
    enc = make_checkpoint(tmp_path / "run" / "checkpoint.pt", None)
    x = torch.randn(3, 3, 32, 32)
    for where in (tmp_path / "run", tmp_path / "run" / "checkpoint.pt"):
        loaded, dim = load_encoder(where)
        assert dim == 64 and not loaded.training  # width 8 -> 8 * 8 features
        torch.testing.assert_close(loaded(x), enc(x), atol=1e-5, rtol=0)
    import fastssl
    assert fastssl.load_encoder(tmp_path / "run")[1] == 64


class _Payload:
    """Unpickling this creates ``target`` (builtins.open in write mode): the attack a checkpoint must not run."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def bad_files(tmp_path: Path) -> dict[str, Path]:
    """A malicious pickle, a truncated checkpoint and two foreign files; also the file the payload would create."""
    target = tmp_path / "pwned"
    files = {"malicious": tmp_path / "evil.pt", "truncated": tmp_path / "cut.pt", "foreign": tmp_path / "other.pt",
             "text": tmp_path / "notes.pt"}
    torch.save({"method": _Payload(target), "config": {}}, files["malicious"])
    make_checkpoint(tmp_path / "good.pt", None)
    blob = (tmp_path / "good.pt").read_bytes()
    files["truncated"].write_bytes(blob[: len(blob) // 2])
    torch.save({"weights": torch.zeros(3)}, files["foreign"])
    files["text"].write_text("hello\n")
    return files, target


def test_the_payload_is_live(tmp_path):
    """The malicious file really would create the file if unpickled: the refusals below mean something."""
    files, target = bad_files(tmp_path)
    torch.load(files["malicious"], weights_only=False)
    assert target.exists()


@pytest.mark.parametrize("kind", ["malicious", "truncated", "foreign", "text"])
def test_load_encoder_and_clis_refuse_non_checkpoints_on_one_line(tmp_path, kind, capsys):
    files, target = bad_files(tmp_path)
    with pytest.raises(CheckpointError) as e:
        load_encoder(files[kind])
    assert "\n" not in str(e.value)
    for main in (eval_cli.linear_eval_main, eval_cli.finetune_main):
        assert main(["--ckpt", str(files[kind]), "--device", "cpu"]) == 2
    assert eval_cli.export_main(["--ckpt", str(files[kind]), "--to", "safetensors"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(" error: " in line and "not a fastssl checkpoint" in line for line in err)
    assert not target.exists()


def test_linear_eval_script_exit_code_2_and_no_file_created(tmp_path):
    files, target = bad_files(tmp_path)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "linear_eval.py"), "--ckpt", str(files["malicious"])],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("linear_eval.py: error: ") and not target.exists()


def test_bad_option_values_are_one_line(capsys):
    for argv in (["--ckpt", "x", "--protocol", "best"], ["--ckpt", "x", "--epochs", "0"],
                 ["--ckpt", "x", "--train-subset", "-5"]):
        with pytest.raises(SystemExit) as e:
            eval_cli.linear_eval_main(argv)
        assert e.value.code == 2
    with pytest.raises(SystemExit):
        eval_cli.finetune_main(["--ckpt", "x", "--labels-fraction", "0"])
    assert "must be in (0, 1]" in capsys.readouterr().err
    assert eval_cli.linear_eval_main(["--ckpt", "/nonexistent/run"]) == 2
    assert "no checkpoint at /nonexistent/run" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["probe", "standard"])
def test_linear_eval_cli_both_protocols(tmp_path, tiny_folder, protocol, capsys):
    make_checkpoint(tmp_path / "run" / "checkpoint.pt", tiny_folder)
    argv = ["--ckpt", str(tmp_path / "run"), "--device", "cpu", "--protocol", protocol, "--epochs", "2",
            "--train-subset", "40", "--test-subset", "20"]
    assert eval_cli.linear_eval_main(argv) == 0
    out = capsys.readouterr().out
    assert "kNN top-1: k=20" in out and "k=200" in out
    result = json.loads((tmp_path / "run" / f"linear_eval-{protocol}.json").read_text())
    assert result["protocol"] == protocol and (result["train_images"], result["test_images"]) == (40, 20)
    assert 0 <= result["linear_top1"] <= 100 and {"knn_top1_k20", "knn_top1_k200"} <= set(result)


def test_finetune_cli_uses_a_balanced_label_fraction(tmp_path, tiny_folder):
    make_checkpoint(tmp_path / "run" / "checkpoint.pt", tiny_folder)
    assert eval_cli.finetune_main(["--ckpt", str(tmp_path / "run"), "--device", "cpu", "--labels-fraction", "0.25",
                                   "--epochs", "1", "--batch-size", "8"]) == 0
    result = json.loads((tmp_path / "run" / "finetune-0.25.json").read_text())
    assert result["train_images"] == 20 and result["labels_fraction"] == 0.25  # 80 images, 2 per class


def test_linear_probe_does_not_depend_on_the_global_rng():
    """The probe's result depends on its seed only (a run's end and a later linear_eval.py must agree)."""
    gen = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(200, 8, generator=gen), torch.randn(50, 8, generator=gen)
    ytr, yte = (xtr[:, 0] > 0).long(), (xte[:, 0] > 0).long()
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        results.append(ev.linear_probe(xtr, ytr, xte, yte, 2, epochs=1, batch_size=64, lr=0.01, seed=5))
    assert results[0] == results[1]
