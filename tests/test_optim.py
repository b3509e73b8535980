"""LARS against its update formula; the warmup + cosine schedule's shape."""
import math

import pytest
import torch

from fastssl.optim import LARS, build_optimizer, lr_at


def test_lars_step_matches_formula():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))      # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.1, momentum=0.9, weight_decay=0.5, eta=0.02)
    w.grad, b.grad = torch.tensor([0.0, 1.0]), torch.tensor([2.0])
    g = torch.tensor([0.0, 1.0]) + 0.5 * torch.tensor([3.0, 4.0])   # grad + wd * w
    trust = 0.02 * 5.0 / g.norm()
    opt.step()
    torch.testing.assert_close(w.data, torch.tensor([3.0, 4.0]) - 0.1 * trust * g)
    torch.testing.assert_close(b.data, torch.tensor([1.0 - 0.1 * 2.0]))
    # Second step: momentum carries the first update.
    v_b = 0.1 * 2.0
    b.grad = torch.tensor([2.0])
    w.grad = None
    opt.step()
    torch.testing.assert_close(b.data, torch.tensor([1.0 - v_b - (0.9 * v_b + 0.1 * 2.0)]))


def test_lars_zero_weight_falls_back_to_plain_sgd():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = LARS([w], lr=1.0, momentum=0.0)
    w.grad = torch.ones(3)
    opt.step()
    torch.testing.assert_close(w.data, -torch.ones(3))


def test_schedule():
    peak, total, warm = 2.0, 100, 10
    assert lr_at(0, total, warm, peak) == pytest.approx(0.2)
    assert lr_at(9, total, warm, peak) == pytest.approx(peak)
    assert lr_at(10, total, warm, peak) == pytest.approx(peak)
    assert lr_at(55, total, warm, peak) == pytest.approx(peak * 0.5)
    assert lr_at(100, total, warm, peak) == pytest.approx(0.0, abs=1e-12)
    lrs = [lr_at(s, total, warm, peak) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(0, total, 0, peak) == pytest.approx(peak)


def test_build_optimizer():
    p = [torch.nn.Parameter(torch.ones(2, 2))]
    assert isinstance(build_optimizer("sgd", [{"params": p}], 0.1, 1e-4), torch.optim.SGD)
    assert isinstance(build_optimizer("lars", [{"params": p}], 0.1, 1e-4), LARS)
    with pytest.raises(ValueError, match="lars"):
        build_optimizer("adam", [{"params": p}], 0.1, 0.0)


def test_adamw_is_decoupled_weight_decay_with_the_groups_kept():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    b = torch.nn.Parameter(torch.tensor([0.5]))
    opt = build_optimizer("adamw", [{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
                          lr=0.1, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    w.grad, b.grad = torch.tensor([0.3, 0.0]), torch.tensor([0.0])
    opt.step()
    # First Adam step: m / (sqrt(v) + eps) = sign(g) where g != 0, 0 where g == 0; decay w <- w (1 - lr wd).
    torch.testing.assert_close(w.data, torch.tensor([1.0, -2.0]) * (1 - 0.1 * 0.05) - 0.1 * torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(b.data, torch.tensor([0.5]))
    assert build_optimizer("adamw", [{"params": [w]}], 0.1, 0.0, betas=(0.9, 0.95)).param_groups[0]["betas"] == (0.9, 0.95)
