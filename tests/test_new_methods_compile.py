"""VICReg, MoCo v3 and DINO (and a method on a ViT) under torch.compile: the whole forward + backward is ONE
graph (``fullgraph=True``: a graph break is an error), its loss and gradients equal eager's, and three SGD
steps with the methods' ``on_step`` between them (EMA momentum, DINO's teacher temperature and centre) do
not recompile. Marked ``compile`` (minutes of cold inductor compiles on a CPU), as tests/test_compile.py."""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from fastssl import methods
from fastssl.vit import VisionTransformer
from new_methods_helpers import SMALL, build, config, views

pytestmark = pytest.mark.compile

CASES = {  # id: (method, local views, backbone)
    "vicreg": ("vicreg", 0, "resnet"),
    "mocov3": ("mocov3", 0, "resnet"),
    "dino": ("dino", 0, "resnet"),
    "dino-multicrop": ("dino", 2, "resnet"),
    "simclr-vit": ("simclr", 1, "vit"),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make(name, backbone):
    if backbone == "resnet":
        return build(name, dino_prototypes=64)
    torch.manual_seed(0)
    return methods.get_method(name)(VisionTransformer(depth=2, dim=32, heads=2), config(name, *SMALL))


def forward_backward(model, method, batch):
    loss = model(batch)["loss"]
    loss.backward()
    grads = {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}
    method.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("case", list(CASES))
def test_one_graph_equal_to_eager_and_no_recompile(case):
    name, local, backbone = CASES[case]
    eager = make(name, backbone)
    method = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(method, backend=counter, fullgraph=True)
    batch = views(n=4, local=local)
    want, got = forward_backward(eager, eager, batch), forward_backward(compiled, method, batch)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    assert got[1].keys() == want[1].keys() and len(want[1]) > 10
    largest = max(g.abs().max().item() for g in want[1].values())
    for k in want[1]:  # inductor's own reduction order: the tolerance of tests/test_compile.py
        floor = 1e-4 * want[1][k].abs().max().item() + 1e-6 * largest
        torch.testing.assert_close(got[1][k], want[1][k], rtol=1e-3, atol=floor, msg=lambda m: f"{case} {k}: {m}")
    for key in [k for k, _ in eager.named_buffers()]:  # BN statistics, DINO's centre: updated alike
        torch.testing.assert_close(method.get_buffer(key), eager.get_buffer(key), rtol=1e-4, atol=1e-6)
    opt = torch.optim.SGD([p for g in method.param_groups() for p in g["params"]], lr=0.01)
    for i in range(1, 3):
        opt.zero_grad(set_to_none=True)
        loss = compiled(views(n=4, local=local, seed=10 + i))["loss"]
        loss.backward()
        opt.step()
        method.on_step(i, 10)
        assert torch.isfinite(loss)
    assert counter.frame_count == 1, f"{case}: {counter.frame_count} graphs after 3 steps"
