"""Exports of the backbone: each reloads to the original features (1e-5); the torchvision key mapping is
checked by name and shape against torchvision's ResNet layout written out here (no torchvision import)."""
import json
from pathlib import Path

import pytest
import torch

from fastssl import eval_cli
from fastssl.encoder import load_encoder
from fastssl.export import (ExportError, export, load_safetensors_encoder, sidecar_path, torchvision_state_dict)
from fastssl.models import build_encoder

from test_eval_protocols import make_checkpoint

BN = (("weight", 1), ("bias", 1), ("running_mean", 1), ("running_var", 1), ("num_batches_tracked", 0))


def torchvision_layout(arch: str) -> list[tuple[str, tuple]]:
    """torchvision.models.resnet18/50's state dict after conv1 -> 3x3 conv, maxpool and fc -> Identity:
    (key, shape) in order. Written from torchvision's architecture (BasicBlock: 3x3, 3x3; Bottleneck:
    1x1, 3x3, 1x1 with expansion 4; a downsample conv1x1 + BN where the shape changes)."""
    def conv(name, cout, cin, k):
        return [(f"{name}.weight", (cout, cin, k, k))]

    def bn(name, c):
        return [(f"{name}.{p}", (c,) if dims else ()) for p, dims in BN]

    keys = conv("conv1", 64, 3, 3) + bn("bn1", 64)
    blocks, expansion = {"resnet18": ([2, 2, 2, 2], 1), "resnet50": ([3, 4, 6, 3], 4)}[arch]
    cin = 64
    for layer, count in enumerate(blocks, start=1):
        planes = 64 * 2 ** (layer - 1)
        for b in range(count):
            p = f"layer{layer}.{b}"
            if expansion == 1:
                keys += conv(f"{p}.conv1", planes, cin, 3) + bn(f"{p}.bn1", planes)
                keys += conv(f"{p}.conv2", planes, planes, 3) + bn(f"{p}.bn2", planes)
            else:
                keys += conv(f"{p}.conv1", planes, cin, 1) + bn(f"{p}.bn1", planes)
                keys += conv(f"{p}.conv2", planes, planes, 3) + bn(f"{p}.bn2", planes)
                keys += conv(f"{p}.conv3", planes * 4, planes, 1) + bn(f"{p}.bn3", planes * 4)
            if b == 0 and (layer > 1 or expansion == 4):
                keys += conv(f"{p}.downsample.0", planes * expansion, cin, 1) + bn(f"{p}.downsample.1", planes * expansion)
            cin = planes * expansion
    return keys


@pytest.mark.parametrize("arch,count", [("resnet18", 120), ("resnet50", 318)])
def test_torchvision_keys_by_name_and_shape(arch, count):
    ours = build_encoder(arch, 64).state_dict()
    tv = torchvision_state_dict(ours, arch, 64)
    expected = torchvision_layout(arch)
    assert len(expected) == count  # torchvision's 122 / 320 keys less fc.weight and fc.bias
    assert [(k, tuple(v.shape)) for k, v in tv.items()] == expected
    assert not any(k.startswith("fc.") for k in tv)


def test_torchvision_keys_carry_the_right_tensors():
    """Same-shaped blocks could be swapped by a wrong index map: check values at fixed places."""
    r18 = build_encoder("resnet18", 64).state_dict()
    tv = torchvision_state_dict(r18, "resnet18", 64)
    pairs = {"conv1.weight": "stem.0.weight", "bn1.running_var": "stem.1.running_var",
             "layer1.1.conv2.weight": "stages.1.conv2.weight", "layer2.0.downsample.0.weight": "stages.2.shortcut.0.weight",
             "layer3.1.bn1.bias": "stages.5.bn1.bias", "layer4.1.conv1.weight": "stages.7.conv1.weight"}
    for tv_key, our_key in pairs.items():
        assert torch.equal(tv[tv_key], r18[our_key]), tv_key
    r50 = build_encoder("resnet50", 64).state_dict()
    tv50 = torchvision_state_dict(r50, "resnet50", 64)
    for tv_key, our_key in {"layer1.0.downsample.1.weight": "stages.0.shortcut.1.weight",
                            "layer3.5.conv3.weight": "stages.12.conv3.weight",
                            "layer4.2.bn3.running_var": "stages.15.bn3.running_var"}.items():
        assert torch.equal(tv50[tv_key], r50[our_key]), tv_key


def test_torchvision_refuses_other_widths(tmp_path, capsys):
    make_checkpoint(tmp_path / "run" / "checkpoint.pt", None, norm_mean=[1.0, 2.0, 3.0], norm_std=[4.0, 5.0, 6.0])
    with pytest.raises(ExportError, match="width 8 cannot load into torchvision"):
        torchvision_state_dict(build_encoder("resnet18", 8).state_dict(), "resnet18", 8)
    assert eval_cli.export_main(["--ckpt", str(tmp_path / "run"), "--to", "torchvision"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("export.py: error: width 8")
    assert not (tmp_path / "run" / "encoder-torchvision.pt").exists()



def test_torchvision_names_are_refused_for_encoders_other_than_the_resnets():
    with pytest.raises(ExportError, match="applies to the ResNets .* only, not vit_tiny"):
        torchvision_state_dict({"patch_embed.weight": torch.zeros(1)}, "vit_tiny", 64)


def test_an_export_that_fails_midway_leaves_no_file(tmp_path, monkeypatch):
    make_checkpoint(tmp_path / "checkpoint.pt", None, width=64, norm_mean=[1.0] * 3, norm_std=[2.0] * 3)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)

    def half_then_fail(obj, path):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export(ckpt, "torchvision", tmp_path / "out" / "tv.pt")
    assert list((tmp_path / "out").iterdir()) == []  # neither the weights, a temporary file, nor a sidecar

def _features(module, x):
    with torch.no_grad():
        return module(x)


def test_safetensors_reloads_to_the_same_features(tmp_path):
    enc = make_checkpoint(tmp_path / "run" / "checkpoint.pt", None, norm_mean=[125.3, 123.0, 113.9],
                          norm_std=[63.0, 62.1, 66.7])
    x = torch.randn(4, 3, 32, 32)
    want = _features(enc, x)
    # safetensors + sidecar
    assert eval_cli.export_main(["--ckpt", str(tmp_path / "run"), "--to", "safetensors"]) == 0
    weights = tmp_path / "run" / "encoder.safetensors"
    info = json.loads(sidecar_path(weights).read_text())
    assert (info["encoder"], info["width"], info["feature_dim"], info["dataset"]) == ("resnet18", 8, 64, "cifar10")
    assert info["norm_mean"] == [125.3, 123.0, 113.9] and info["norm_std"] == [63.0, 62.1, 66.7]
    torch.testing.assert_close(_features(load_safetensors_encoder(weights), x), want, atol=1e-5, rtol=0)


@pytest.mark.slow  # torch.export traces the network: ~10 s alone, a minute on a busy 2-core CPU
def test_program_reloads_to_the_same_features(tmp_path):
    enc = make_checkpoint(tmp_path / "run" / "checkpoint.pt", None, norm_mean=[1.0] * 3, norm_std=[2.0] * 3)
    x = torch.randn(4, 3, 32, 32)
    want = _features(enc, x)
    assert eval_cli.export_main(["--ckpt", str(tmp_path / "run"), "--to", "torchscript"]) == 0
    program = torch.export.load(tmp_path / "run" / "encoder.pt2").module()
    torch.testing.assert_close(_features(program, x), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(_features(program, x[:1]), want[:1], atol=1e-5, rtol=0)  # any batch size
    assert json.loads(sidecar_path(tmp_path / "run" / "encoder.pt2").read_text())["format"] == "torchscript"


def test_torchvision_export_reloads_to_the_same_features(tmp_path):
    """Width 64: the exported keys, renamed back by the torchvision layout's order, rebuild the same network."""
    enc = make_checkpoint(tmp_path / "checkpoint.pt", None, width=64, norm_mean=[1.0] * 3, norm_std=[2.0] * 3)
    assert eval_cli.export_main(["--ckpt", str(tmp_path / "checkpoint.pt"), "--to", "torchvision",
                                 "--out", str(tmp_path / "tv.pt")]) == 0
    tv = torch.load(tmp_path / "tv.pt", weights_only=True)
    assert list(tv) == [k for k, _ in torchvision_layout("resnet18")]
    ours = build_encoder("resnet18", 64)
    ours.load_state_dict(dict(zip(ours.state_dict(), tv.values())))  # same order, same tensors
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_features(ours.eval(), x), _features(enc, x), atol=1e-5, rtol=0)


def test_normalisation_is_computed_when_the_checkpoint_lacks_it(tmp_path, tiny_folder):
    from data_prep import load_dataset
    make_checkpoint(tmp_path / "run" / "checkpoint.pt", tiny_folder)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    written = export(ckpt, "safetensors", tmp_path / "e.safetensors")
    info = json.loads(written[1].read_text())
    ds = load_dataset("cifar10", tiny_folder, verbose=False)
    assert info["norm_mean"] == pytest.approx(list(ds.mean)) and info["norm_std"] == pytest.approx(list(ds.std))
    loaded, dim = load_encoder(tmp_path / "run")
    assert dim == info["feature_dim"]
