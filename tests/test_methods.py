"""The five added methods (SupCon, Triplet, Barlow Twins, SimSiam, BYOL): registry and recipes,
label routing, the loss going down, BYOL's EMA target (update, schedule, optimiser, checkpoint,
resume) and SimSiam's undecayed predictor lr."""
import json
import math

import pytest
import torch

from fastssl import methods
from fastssl import checkpoint as checkpoint_mod
from fastssl import train as train_mod
from fastssl.cli import main
from fastssl.config import FAST_PRESETS, parse_args, resolve
from fastssl.methods.byol import ema_momentum
from fastssl.models import build_encoder
from fastssl.optim import build_optimizer

NEW = ["supcon", "triplet", "barlow", "simsiam", "byol"]
TINY = ["--width", "8", "--batch-size", "16", "--proj-hidden", "32", "--proj-dim", "16", "--knn-k", "10",
        "--device", "cpu", "--no-progress", "--warmup-epochs", "0.5", "--lr", "0.2", "--no-linear-eval"]


def build(name, *extra):
    cfg = resolve(parse_args(["--method", name, *TINY, *extra]))
    torch.manual_seed(0)
    return methods.get_method(name)(build_encoder("resnet18", 8), cfg)


def run(out, tiny_folder, method, *extra):
    return main(["--method", method, "--data", str(tiny_folder), "--out", str(out), *TINY, *extra])


def test_registry_recipes_and_labels_flag():
    assert set(methods.available()) >= {"simclr", "dare", *NEW}
    for name in NEW:
        cls = methods.get_method(name)
        assert cls.uses_labels == (name in ("supcon", "triplet"))
        cfg = resolve(parse_args(["--method", name, "--device", "cpu"]))
        for key, value in cls.recipe.items():
            assert getattr(cfg, key) == value, (name, key)
    expect = dict(supcon=("sgd", 0.4), barlow=("lars", 0.3), simsiam=("sgd", 0.5), byol=("lars", 1.0))
    for name, (opt, lr) in expect.items():
        assert methods.get_method(name).recipe["optimizer"] == opt and methods.get_method(name).recipe["lr"] == lr
    assert methods.get_method("barlow").recipe["aug"] == methods.get_method("byol").recipe["aug"] == "asymmetric"
    assert methods.get_method("simsiam").recipe["proj_dim"] == methods.get_method("barlow").recipe["proj_dim"] == 2048
    cfg = resolve(parse_args(["--method", "triplet", "--device", "cpu", "--triplet-mining", "batch_hard"]))
    assert cfg.triplet_mining == "batch_hard" and cfg.triplet_margin == 0.2


def test_fast_cpu_overrides_merge_over_the_preset():
    for name in ["simclr", "dare", *NEW]:
        cls = methods.get_method(name)
        cfg = resolve(parse_args(["--method", name, "--fast", "--device", "cpu"]))
        for key, value in {**FAST_PRESETS["cpu"], **cls.fast_cpu}.items():
            assert getattr(cfg, key) == value, (name, key)
    cfg = resolve(parse_args(["--method", "byol", "--fast", "--device", "cpu", "--lr", "0.123"]))
    assert cfg.lr == 0.123  # the command line still wins


@pytest.mark.parametrize("name", NEW)
def test_loss_goes_down_on_a_fixed_batch(name):
    model = build(name)
    opt = torch.optim.SGD([p for g in model.param_groups() for p in g["params"]], lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    losses = []
    for step in range(25):
        loss = model([v1, v2], y if model.uses_labels else None)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_step(step, 25)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1 * abs(losses[0]), losses


@pytest.mark.parametrize("name", NEW)
def test_loss_is_computed_in_fp32_under_autocast(name):
    model = build(name)
    v1, v2, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model([v1, v2], y if model.uses_labels else None)["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_supervised_methods_need_labels():
    for name in ("supcon", "triplet"):
        with pytest.raises(ValueError, match="labels"):
            build(name)([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])


@pytest.mark.parametrize("name", NEW)
def test_end_to_end_loss_goes_down_and_labels_reach_only_supervised(tmp_path, tiny_folder, monkeypatch, name):
    cls = methods.get_method(name)
    seen = []
    real_forward = cls.forward

    def spy(self, views, labels=None):
        seen.append(labels)
        return real_forward(self, views, labels)

    monkeypatch.setattr(cls, "forward", spy)
    assert run(tmp_path, tiny_folder, name, "--epochs", "4", "--lr", "0.1") == 0
    assert seen and all((lab is not None) == cls.uses_labels for lab in seen)
    if cls.uses_labels:
        assert all(lab.dtype == torch.int64 and lab.shape == (16,) for lab in seen)
    rows = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
            if r.get("event", "epoch") == "epoch"]
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["method"] == name and 0 <= summary["knn_top1"] <= 100


# ------------------------------------------------------------------ BYOL's target network

def test_ema_schedule_endpoints_and_shape():
    assert ema_momentum(0, 100) == pytest.approx(0.99)
    assert ema_momentum(100, 100) == pytest.approx(1.0)
    assert ema_momentum(50, 100) == pytest.approx(0.995)
    assert ema_momentum(200, 100) == pytest.approx(1.0)
    assert ema_momentum(0, 10, base=0.9) == pytest.approx(0.9)
    values = [ema_momentum(k, 100) for k in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    # Cosine shape: tau(k) = 1 - 0.01 (cos(pi k / K) + 1) / 2.
    assert ema_momentum(25, 100) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2, rel=1e-12)


def test_ema_update_is_the_exact_average_and_leaves_buffers_alone():
    model = build("byol")
    assert all(not p.requires_grad for p in model.target_parameters())
    for p, q in zip(model.online_parameters(), model.target_parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()  # a copy, not shared storage
    with torch.no_grad():
        for p in model.online_parameters():
            p.add_(torch.randn_like(p))
    online = [p.detach().clone() for p in model.online_parameters()]
    target = [p.detach().clone() for p in model.target_parameters()]
    buffers = {k: v.clone() for k, v in model.target_encoder.state_dict().items() if "running" in k}
    model.on_step(30, 100)
    tau = ema_momentum(30, 100)
    assert model.momentum == tau
    for t_new, t_old, o in zip(model.target_parameters(), target, online):
        torch.testing.assert_close(t_new, tau * t_old + (1 - tau) * o, rtol=1e-6, atol=1e-7)
    for p, o in zip(model.online_parameters(), online):
        assert torch.equal(p, o)  # the online network is untouched
    for k, v in model.target_encoder.state_dict().items():
        if k in buffers:
            assert torch.equal(v, buffers[k])
    model.on_step(100, 100)  # tau = 1 at the end: no change
    assert model.momentum == 1.0
    after = [p.detach().clone() for p in model.target_parameters()]
    model.on_step(100, 100)
    assert all(torch.equal(a, b) for a, b in zip(after, model.target_parameters()))


def test_ema_base_option_sets_the_schedule_start():
    model = build("byol", "--ema-base", "0.9")
    model.on_step(0, 10)
    assert model.cfg.ema_base == 0.9 and model.momentum == pytest.approx(0.9)
    assert resolve(parse_args(["--method", "byol", "--device", "cpu"])).ema_base == 0.99


def test_byol_target_not_optimised_but_checkpointed(tmp_path, tiny_folder):
    model = build("byol")
    in_groups = {id(p) for g in model.param_groups() for p in g["params"]}
    assert in_groups.isdisjoint(id(p) for p in model.target_parameters())
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
    # The target gets no gradient from the loss.
    model([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])["loss"].backward()
    assert all(p.grad is None for p in model.target_parameters())

    assert run(tmp_path, tiny_folder, "byol", "--epochs", "1") == 0
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    n_online = sum(1 for k, v in model.named_parameters() if v.requires_grad)
    assert sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"]) == n_online
    assert len(ckpt["optimizer"]["state"]) <= n_online
    assert any(k.startswith("target_encoder.") for k in ckpt["method"])
    assert any(k.startswith("target_projector.") for k in ckpt["method"])
    # After training the target differs from both its initial copy and the online network.
    enc = {k[len("encoder."):]: v for k, v in ckpt["method"].items() if k.startswith("encoder.")}
    tgt = {k[len("target_encoder."):]: v for k, v in ckpt["method"].items() if k.startswith("target_encoder.")}
    assert enc.keys() == tgt.keys()
    assert any(not torch.equal(enc[k], tgt[k]) for k in enc if "weight" in k)


def test_byol_resume_matches_uninterrupted_run(tmp_path, tiny_folder, monkeypatch):
    assert run(tmp_path / "a", tiny_folder, "byol", "--epochs", "3") == 0

    real_save, saves = checkpoint_mod.save_checkpoint, []

    def save_then_die(obj, path):
        real_save(obj, path)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", save_then_die)
    assert run(tmp_path / "b", tiny_folder, "byol", "--epochs", "3") == 130
    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", real_save)
    assert run(tmp_path / "b", tiny_folder, "byol", "--epochs", "3", "--resume") == 0

    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3 and a["method"].keys() == b["method"].keys()
    assert any(k.startswith("target_") for k in a["method"])
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert [r["loss"] for r in a["history"]] == pytest.approx([r["loss"] for r in b["history"]], rel=1e-5)


# ------------------------------------------------------------------ SimSiam's predictor lr

def test_simsiam_predictor_keeps_peak_lr(tmp_path, tiny_folder):
    model = build("simsiam")
    groups = model.param_groups()
    pred = {id(p) for p in model.predictor.parameters()}
    fixed = [g for g in groups if g.get("fixed_lr")]
    assert {id(p) for g in fixed for p in g["params"]} == pred
    assert all(pred.isdisjoint(id(p) for p in g["params"]) for g in groups if not g.get("fixed_lr"))
    build_optimizer("sgd", groups, lr=0.1, weight_decay=1e-5)  # extra group keys are accepted

    assert run(tmp_path, tiny_folder, "simsiam", "--epochs", "2") == 0
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    peak = 0.2 * 16 / 256
    lrs = [(g.get("fixed_lr", False), g["lr"]) for g in ckpt["optimizer"]["param_groups"]]
    assert all(lr == pytest.approx(peak) for f, lr in lrs if f)
    assert all(lr < 0.2 * peak for f, lr in lrs if not f)  # the rest followed the cosine decay


# ------------------------------------------------------------------ many views per image (multi-crop)

ALL = ["simclr", "dare", *NEW]


def multicrop_views(n=6, local_sizes=(8, 8), seed=3):
    """Two 16 px global views and local views of the given sizes, inputs that require grad."""
    g = torch.Generator().manual_seed(seed)
    sizes = (16, 16, *local_sizes)
    return [torch.randn(n, 3, s, s, generator=g).requires_grad_(True) for s in sizes]


@pytest.mark.parametrize("name", ALL)
def test_every_method_takes_global_and_local_views(name):
    model = build(name)
    vs = multicrop_views()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(vs, y if model.uses_labels else None)
    loss = out["loss"]
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(v.shape == () and torch.isfinite(v) for v in out.values())
    loss.backward()
    enc = [p.grad for p in model.encoder.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in enc) and any(gr.abs().sum() > 0 for gr in enc)
    for v in vs:  # every view, local ones included, reaches the loss
        assert v.grad is not None and v.grad.abs().sum() > 0, name
    # the local views change the loss: they are not ignored
    torch.manual_seed(0)
    two = model(vs[:2], y if model.uses_labels else None)["loss"]
    assert not torch.equal(two.detach(), loss.detach())


def test_encoder_pools_global_and_local_sizes_and_locals_of_two_sizes():
    model = build("simclr")
    for px in (8, 12, 16, 32):
        assert model.encoder(torch.randn(2, 3, px, px)).shape == (2, model.encoder.dim)
    vs = multicrop_views(n=4, local_sizes=(8, 12, 8))
    zs = model.embed_views(vs, lambda v: model.projector(model.encoder(v)))
    assert [tuple(z.shape) for z in zs] == [(4, 16)] * 5
    assert torch.isfinite(model(vs)["loss"])


def test_views_are_checked():
    model = build("simclr")
    with pytest.raises(ValueError, match="list of views"):
        model(torch.randn(4, 3, 16, 16))
    with pytest.raises(ValueError, match="list of views"):
        model([torch.randn(4, 3, 16, 16)])
    with pytest.raises(ValueError, match="same images"):
        model([torch.randn(4, 3, 16, 16), torch.randn(3, 3, 16, 16)])


def test_view_pairs():
    from fastssl.methods.base import cross_pairs, predict_pairs
    assert cross_pairs(2) == [(0, 1)] and predict_pairs(2) == [(0, 1), (1, 0)]
    assert cross_pairs(4) == [(0, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert predict_pairs(3) == [(0, 1), (1, 0), (2, 0), (2, 1)]


@pytest.mark.parametrize("name", ALL)
def test_multicrop_loss_is_the_documented_combination(name):
    """In eval mode (BatchNorm on running statistics: each view's embedding is its own), the loss equals
    the documented formula written out here from the heads' outputs for each view separately."""
    from fastssl import losses
    from fastssl.methods.base import cross_pairs, predict_pairs
    model = build(name).eval()
    vs = [v.detach() for v in multicrop_views(n=6, local_sizes=(8, 12))]
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    cfg = model.cfg
    with torch.no_grad():
        torch.manual_seed(5)
        got = model(vs, y if model.uses_labels else None)["loss"]
        if name == "dare":
            heads = [model.head(model.encoder(v)) for v in vs]
            torch.manual_seed(5)
            terms = []
            for a, b in cross_pairs(4):
                (mu_a, lv_a), (mu_b, lv_b) = heads[a], heads[b]
                z_a, z_b = losses.reparameterize(mu_a, lv_a), losses.reparameterize(mu_b, lv_b)
                terms.append(losses.ntxent_loss(z_a, z_b, cfg.temperature, variant=cfg.dare_variant)
                             + cfg.dare_lambda * losses.gaussian_jsd(mu_a, lv_a, mu_b, lv_b))
            want = sum(terms) / len(terms)
        else:
            zs = [model.projector(model.encoder(v)) for v in vs]
            if name == "simclr":
                want = losses.multipositive_loss(zs, cfg.temperature)
            elif name == "supcon":
                want = losses.multipositive_loss(zs, cfg.temperature, y)
            elif name == "triplet":
                want = losses.triplet_loss(torch.cat(zs), y.repeat(4), cfg.triplet_margin, cfg.triplet_mining)
            elif name == "barlow":
                want = sum(losses.barlow_twins_loss(zs[a], zs[b], model.lambd) for a, b in cross_pairs(4)) / 5
            elif name == "simsiam":
                ps = [model.predictor(z) for z in zs]
                want = sum(losses.negative_cosine(ps[v], zs[g]) for v, g in predict_pairs(4)) / 6
            else:  # byol: targets of the global views only
                ps = [model.predictor(z) for z in zs]
                ts = [model.target_projector(model.target_encoder(v)) for v in vs[:2]]
                want = 2 * sum(losses.byol_loss(ps[v], ts[g]) for v, g in predict_pairs(4)) / 6
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
