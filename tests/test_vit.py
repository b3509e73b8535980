"""The ViT encoders for 32-px images: registry and sizes, parameter count from the architecture, attention
equal to its formula, class-token features, other image sizes, channels-last, a method on a ViT, and
export (safetensors and torch.export reload to the same features; torchvision's names are refused)."""
import math

import pytest
import torch

from fastssl import methods
from fastssl.config import parse_args, resolve
from fastssl.models import ENCODERS, build_encoder
from fastssl.vit import Attention, VisionTransformer


def vit_parameters(depth, d, tokens=65, patch=4):
    """Per block: qkv 3d^2 + 3d, projection d^2 + d, MLP 8d^2 + 5d, two LayerNorms 4d; plus the patch
    embedding 3 p^2 d + d, the class token d, position embeddings tokens d and the final LayerNorm 2d."""
    return depth * (12 * d * d + 13 * d) + 3 * patch * patch * d + d + d + tokens * d + 2 * d


@pytest.mark.parametrize("name,depth,dim,heads", [("vit_tiny", 12, 192, 3), ("vit_small", 12, 384, 6)])
def test_sizes_and_parameter_count(name, depth, dim, heads):
    assert name in ENCODERS
    enc = build_encoder(name, width=16)  # --width does not apply to a ViT
    assert enc.dim == dim and len(enc.blocks) == depth and enc.blocks[0].attn.heads == heads
    assert enc.pos_embed.shape == (1, 65, dim)  # 8 x 8 patches of 4 px + the class token
    assert sum(p.numel() for p in enc.parameters()) == vit_parameters(depth, dim)


def test_attention_is_softmax_qk_v():
    torch.manual_seed(0)
    attn = Attention(12, 3).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    q, k, v = attn.qkv(x).split(12, dim=-1)
    heads = lambda t: t.view(2, 5, 3, 4).transpose(1, 2)  # noqa: E731
    w = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(4), dim=-1)
    want = attn.proj((w @ heads(v)).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x), want)


def test_features_are_the_normed_class_token_and_other_sizes_work():
    torch.manual_seed(0)
    enc = VisionTransformer(depth=2, dim=32, heads=2).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h = enc(x)
        tokens = enc.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([enc.cls_token.expand(3, -1, -1), tokens], 1) + enc.pos_embed
        torch.testing.assert_close(h, enc.norm(enc.blocks(tokens))[:, 0])
        assert enc(torch.randn(2, 3, 16, 16)).shape == (2, 32)  # a 4 x 4 grid: interpolated positions
        assert enc.position_embeddings(8, 8) is enc.pos_embed
        cl = enc.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, h, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        VisionTransformer(depth=1, dim=10, heads=3)


def test_a_method_trains_on_a_vit_with_local_views():
    cfg = resolve(parse_args(["--method", "simclr", "--device", "cpu", "--proj-hidden", "16", "--proj-dim", "8",
                              "--kernels", "torch", "--encoder", "vit_tiny"]))
    torch.manual_seed(0)
    model = methods.get_method("simclr")(VisionTransformer(depth=2, dim=32, heads=2), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(6, 3, 32, 32, generator=g) for _ in range(2)] + [torch.randn(6, 3, 16, 16, generator=g)]
    losses = []
    for _ in range(10):
        loss = model(views)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1 * abs(losses[0]), losses


def test_export_safetensors_and_torch_export_reload_to_the_same_features(tmp_path):
    pytest.importorskip("safetensors")
    from fastssl.export import ExportError, export, load_safetensors_encoder
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny").eval()
    ckpt = dict(config=dict(encoder="vit_tiny", width=64, dataset="cifar10", method="simclr"), epoch=1,
                method={f"encoder.{k}": v for k, v in enc.state_dict().items()},
                norm_mean=[125.0, 123.0, 114.0], norm_std=[63.0, 62.0, 66.0])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = enc(x)
        weights, sidecar = export(ckpt, "safetensors", tmp_path / "encoder.safetensors")
        torch.testing.assert_close(load_safetensors_encoder(weights)(x), want)
        program, _ = export(ckpt, "torchscript", tmp_path / "encoder.pt2")
        torch.testing.assert_close(torch.export.load(program).module()(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ExportError):  # torchvision's key names are ResNet names
        export(ckpt, "torchvision", tmp_path / "tv.pt")


@pytest.mark.slow  # ViT-Tiny on a CPU: ~1 CPU-minute
def test_a_run_on_vit_tiny_trains_and_its_checkpoint_reloads(tmp_path, tiny_folder):
    """The whole CLI path (channels-last on by default, kNN, checkpoint) with --encoder vit_tiny; the
    backbone rebuilt by load_encoder gives the features of the trained weights."""
    from fastssl import load_encoder
    from fastssl.checkpoint import load_checkpoint
    from fastssl.cli import main
    args = ["--method", "simclr", "--data", str(tiny_folder), "--out", str(tmp_path), "--encoder", "vit_tiny",
            "--batch-size", "16", "--epochs", "1", "--proj-hidden", "32", "--proj-dim", "16", "--knn-k", "5",
            "--device", "cpu", "--no-progress", "--warmup-epochs", "0.5", "--lr", "0.05", "--no-linear-eval"]
    assert main(args) == 0
    encoder, dim = load_encoder(tmp_path)
    assert dim == 192 and isinstance(encoder, VisionTransformer)
    state = load_checkpoint(tmp_path)["method"]
    assert torch.equal(encoder.pos_embed, state["encoder.pos_embed"])


def test_token_parameters_get_no_weight_decay_and_channels_last_is_ignored(capsys):
    cfg = resolve(parse_args(["--method", "simclr", "--encoder", "vit_tiny", "--device", "cpu", "--channels-last"]))
    assert cfg.channels_last is False and "no effect on vit_tiny" in capsys.readouterr().err
    method = methods.get_method("simclr")(build_encoder("vit_tiny"), cfg)
    decay, no_decay = method.param_groups()
    decayed = {id(p) for p in decay["params"]}
    assert id(method.encoder.cls_token) not in decayed and id(method.encoder.pos_embed) not in decayed
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim >= 2 for p in decay["params"])
    assert resolve(parse_args(["--method", "simclr", "--device", "cpu"])).channels_last is True  # ResNets keep it
