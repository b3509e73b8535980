"""VICReg: recipe and options, the method's loss is the reference loss of its expander outputs (two views
and multi-crop pairs), fp32 under autocast, and the loss goes down on a fixed batch."""
import math

import pytest
import torch

from fastssl import losses, methods
from fastssl.methods.base import cross_pairs
from new_methods_helpers import build, config, loss_goes_down, views


def test_recipe_and_options():
    cls = methods.get_method("vicreg")
    assert {o.name: o.default for o in cls.options} == dict(vicreg_sim=25.0, vicreg_var=25.0, vicreg_cov=1.0)
    assert all(o.help.startswith("VICReg:") for o in cls.options)
    cfg = config("vicreg", "--device", "cpu")
    assert (cfg.optimizer, cfg.lr, cfg.proj_hidden, cfg.proj_dim) == ("lars", 0.3, 2048, 2048)
    model = build("vicreg")
    assert [type(m).__name__ for m in model.projector] == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]


@pytest.mark.parametrize("local", [0, 2])
def test_forward_is_the_reference_loss_of_the_expander(local):
    model = build("vicreg", vicreg_sim=3.0, vicreg_var=2.0, vicreg_cov=0.5)
    batch = views(local=local)
    got = model(batch)["loss"]
    zs = model.embed_views(batch, lambda v: model.projector(model.encoder(v)))
    pairs = cross_pairs(len(batch))
    want = sum(losses.vicreg_loss(zs[a], zs[b], 3.0, 2.0, 0.5) for a, b in pairs) / len(pairs)
    torch.testing.assert_close(got, want)
    assert len(pairs) == 1 + 2 * local


def test_loss_in_fp32_under_autocast_and_goes_down():
    model = build("vicreg")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(views(n=4))["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    values = loss_goes_down(build("vicreg"), lr=0.005)  # 25 x MSE: gradients ~10x the contrastive ones
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < values[0] - 0.1 * abs(values[0]), values
