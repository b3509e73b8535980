"""MoCo v3: recipe, heads, the method's loss is the symmetric reference loss of its queries and momentum
keys (and the multi-crop pairs), keys carry no gradient, the EMA momentum network (inherited from BYOL)
moves by the cosine schedule, fp32 under autocast, and the loss goes down on a fixed batch."""
import math

import pytest
import torch

from fastssl import losses, methods
from fastssl.methods.base import predict_pairs
from fastssl.methods.byol import ema_momentum
from new_methods_helpers import build, config, loss_goes_down, views


def test_recipe_and_heads():
    cfg = config("mocov3", "--device", "cpu")
    assert (cfg.optimizer, cfg.lr, cfg.temperature, cfg.proj_hidden, cfg.proj_dim, cfg.ema_base) == \
        ("lars", 0.3, 0.2, 4096, 256, 0.99)
    model = build("mocov3")
    assert type(model.projector[-1]).__name__ == "BatchNorm1d" and not model.projector[-1].affine
    assert [type(m).__name__ for m in model.predictor] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert all(not p.requires_grad for p in model.target_parameters())
    groups = model.param_groups()
    in_opt = {id(p) for g in groups for p in g["params"]}
    assert not in_opt & {id(p) for p in model.target_parameters()}
    assert {id(p) for p in model.predictor.parameters()} <= in_opt


@pytest.mark.parametrize("local", [0, 2])
def test_forward_is_the_symmetric_reference_loss(local):
    model = build("mocov3", "--temperature", "0.3")
    batch = views(local=local)
    torch.manual_seed(0)
    with torch.no_grad():  # move the momentum network away from the online one: keys != queries' targets
        for p in model.target_parameters():
            p.add_(0.05 * torch.randn_like(p))
    got = model(batch)["loss"]
    qs = model.embed_views(batch, lambda v: model.predictor(model.projector(model.encoder(v))))
    ks = [model.target_projector(model.target_encoder(v)).detach() for v in batch[:2]]
    pairs = predict_pairs(len(batch))
    want = sum(losses.mocov3_loss(qs[v], ks[g], 0.3) for v, g in pairs) * 2 / len(pairs)
    torch.testing.assert_close(got, want)
    if not local:
        torch.testing.assert_close(got, losses.mocov3_loss(qs[0], ks[1], 0.3) + losses.mocov3_loss(qs[1], ks[0], 0.3))


def test_keys_carry_no_gradient_and_the_momentum_network_follows():
    model = build("mocov3")
    model(views())["loss"].backward()
    assert all(p.grad is None for p in model.target_parameters())
    assert model.encoder.stem[0].weight.grad is not None
    with torch.no_grad():
        for p in model.online_parameters():
            p.add_(torch.randn_like(p))
    online = [p.detach().clone() for p in model.online_parameters()]
    target = [p.detach().clone() for p in model.target_parameters()]
    model.on_step(3, 10)
    tau = ema_momentum(3, 10, 0.99)
    assert model.momentum == pytest.approx(tau)
    for p, o, t in zip(model.target_parameters(), online, target):
        torch.testing.assert_close(p, tau * t + (1 - tau) * o)


def test_loss_in_fp32_under_autocast_and_goes_down():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = build("mocov3")(views(n=4))["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    values = loss_goes_down(build("mocov3"))
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < values[0] - 0.1 * abs(values[0]), values
    assert methods.get_method("mocov3").name == "mocov3"
