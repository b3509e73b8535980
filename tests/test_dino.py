"""DINO: options and recipe, the prototype head, the method's loss is the reference loss of its student and
teacher logits (two views and multi-crop), centering and the teacher-temperature warmup, the EMA teacher,
fp32 under autocast, and the loss going down on a fixed batch."""
import math

import pytest
import torch

from fastssl import losses, methods
from fastssl.methods.byol import ema_momentum
from fastssl.methods.dino import teacher_temperature
from fastssl.models import PrototypeHead
from new_methods_helpers import build, config, loss_goes_down, views

K = 32


def test_options_and_recipe():
    cls = methods.get_method("dino")
    assert {o.name: o.default for o in cls.options} == dict(
        dino_prototypes=4096, dino_student_temp=0.1, dino_teacher_temp=0.07, dino_teacher_temp_warmup=0.04,
        dino_teacher_warmup=0.3, dino_center_momentum=0.9)
    cfg = config("dino", "--device", "cpu")
    assert (cfg.optimizer, cfg.lr, cfg.proj_hidden, cfg.proj_dim, cfg.ema_base) == ("lars", 0.3, 2048, 256, 0.9995)
    model = build("dino", dino_prototypes=K)
    assert model.center.shape == (1, K) and model.teacher_temp.item() == pytest.approx(0.04)
    assert {"center", "teacher_temp"} <= set(model.state_dict())  # checkpointed, resumed
    assert "batch_center" not in model.state_dict()


def test_prototype_head_is_a_cosine_to_unit_prototypes():
    torch.manual_seed(0)
    head = PrototypeHead(12, 16, 6, 10).eval()
    h = torch.randn(5, 12)
    logits = head(h)
    assert logits.shape == (5, 10) and logits.abs().max() <= 1 + 1e-6
    with torch.no_grad():
        head.prototypes.mul_(7.0)  # weight normalisation: the prototypes' norms do not matter
    torch.testing.assert_close(head(h), logits)
    z = torch.nn.functional.normalize(head.mlp(h), dim=-1)
    torch.testing.assert_close(logits, z @ torch.nn.functional.normalize(head.prototypes, dim=-1).T)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "BatchNorm1d", "GELU"] * 2 + ["Linear"]


@pytest.mark.parametrize("local", [0, 2])
def test_forward_is_the_reference_loss_and_updates_the_center(local):
    model = build("dino", dino_prototypes=K, dino_center_momentum=0.8)
    torch.manual_seed(0)
    with torch.no_grad():
        model.center.copy_(0.1 * torch.randn(1, K))
        model.teacher_temp.fill_(0.05)
        for p in model.target_parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = views(local=local)
    center = model.center.clone()
    got = model(batch)["loss"]
    student = model.embed_views(batch, lambda v: model.projector(model.encoder(v)))
    teacher = [model.target_projector(model.target_encoder(v)).detach() for v in batch[:2]]
    torch.testing.assert_close(got, losses.dino_loss(student, teacher, center, 0.1, 0.05))
    assert torch.equal(model.center, center)  # the centre moves after the optimiser step
    model.on_step(0, 10)
    torch.testing.assert_close(model.center, 0.8 * center + 0.2 * torch.cat(teacher).mean(0, keepdim=True))


def test_bad_options_are_refused_and_a_tensor_temperature_is_the_float_one():
    with pytest.raises(ValueError, match="DINO: temperatures"):
        build("dino", dino_prototypes=K, dino_teacher_temp=0.0)
    with pytest.raises(ValueError, match="within"):
        build("dino", dino_prototypes=K, dino_center_momentum=1.5)
    s, t = [torch.randn(3, 5) for _ in range(2)], [torch.randn(3, 5) for _ in range(2)]
    torch.testing.assert_close(losses.dino_loss(s, t, torch.zeros(5), 0.1, torch.tensor(0.05)),
                               losses.dino_loss(s, t, torch.zeros(5), 0.1, 0.05))


def test_teacher_temperature_warmup_and_ema_teacher():
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temperature(15, 100, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert teacher_temperature(30, 100, 0.04, 0.07, 0.3) == teacher_temperature(99, 100, 0.04, 0.07, 0.3) == 0.07
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.0) == 0.07
    model = build("dino", dino_prototypes=K)
    model(views())["loss"].backward()
    assert all(p.grad is None for p in model.target_parameters())
    online = [p.detach().clone() for p in model.online_parameters()]
    target = [p.detach().clone() for p in model.target_parameters()]
    with torch.no_grad():
        for p in model.online_parameters():
            p.add_(1.0)
    model.on_step(14, 100)  # after the 15th step: the temperature of step 15
    assert model.teacher_temp.item() == pytest.approx(0.055)
    tau = ema_momentum(14, 100, 0.9995)
    for p, o, t in zip(model.target_parameters(), online, target):
        torch.testing.assert_close(p, tau * t + (1 - tau) * (o + 1.0))


def test_loss_in_fp32_under_autocast_and_goes_down():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = build("dino", dino_prototypes=K)(views(n=4))["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    values = loss_goes_down(build("dino", dino_prototypes=K), local=2)
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < values[0] - 0.1 * abs(values[0]), values
