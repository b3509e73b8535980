"""Multi-view (multi-crop) contrastive loss: ``losses.multipositive_loss`` against a float64 loop written
from its docstring, its two-view special cases (NT-Xent, SupCon), and the dispatcher's routes (V = 2: the
two-view loss; V even: the SupCon path with stacked halves, also through the fused kernel in Triton's
interpreter; V odd: the reference)."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastssl import dispatch
from fastssl.losses import multipositive_loss, ntxent_loss, supcon_loss


def loop_multipositive(zs, tau, labels=None):
    """Row by row: row k = (view k // N, image k % N); positives = other rows of the same image (or class)."""
    n, v = len(zs[0]), len(zs)
    u = F.normalize(torch.cat(zs).double(), dim=1)
    group = [(labels[k % n].item() if labels is not None else k % n) for k in range(v * n)]
    total = 0.0
    for k in range(v * n):
        s = lambda l: float(u[k] @ u[l]) / tau  # noqa: E731
        pos = [l for l in range(v * n) if l != k and group[l] == group[k]]
        total += -sum(s(p) for p in pos) / len(pos) + math.log(sum(math.exp(s(l)) for l in range(v * n) if l != k))
    return total / (v * n)


def views(v, n=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(v)]


@pytest.mark.parametrize("v", [2, 3, 4, 6])
@pytest.mark.parametrize("labels", [None, [0, 1, 0, 2, 1]])
def test_multipositive_matches_loop(v, labels):
    zs = views(v, seed=v)
    y = torch.tensor(labels) if labels is not None else None
    for tau in (0.1, 0.5):
        assert multipositive_loss(zs, tau, y).item() == pytest.approx(loop_multipositive(zs, tau, y), rel=1e-12)


def test_two_views_are_ntxent_and_supcon():
    z1, z2 = views(2, n=7, d=5, seed=1)
    # image identities as labels: the only positive of a row is the other view of its image
    assert multipositive_loss([z1, z2], 0.2).item() == pytest.approx(ntxent_loss(z1, z2, 0.2).item(), rel=1e-12)
    assert multipositive_loss([z1, z2], 0.2, torch.arange(7)).item() == pytest.approx(
        ntxent_loss(z1, z2, 0.2).item(), rel=1e-12)
    y = torch.tensor([0, 1, 0, 2, 1, 1, 0])
    assert multipositive_loss([z1, z2], 0.3, y).item() == pytest.approx(supcon_loss(z1, z2, y, 0.3).item(), rel=1e-12)


def test_multipositive_invariances_and_errors():
    zs = views(3, seed=2)
    ref = multipositive_loss(zs, 0.2).item()
    assert multipositive_loss([zs[2], zs[0], zs[1]], 0.2).item() == pytest.approx(ref, rel=1e-12)  # view order
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert multipositive_loss([z[perm] for z in zs], 0.2).item() == pytest.approx(ref, rel=1e-12)  # image order
    assert multipositive_loss([3.0 * z for z in zs], 0.2).item() == pytest.approx(ref, rel=1e-12)  # scale
    # more positives of the same image that coincide with the anchor lower the loss
    assert multipositive_loss([zs[0], zs[0].clone(), zs[0].clone()], 0.2).item() < ref
    with pytest.raises(ValueError, match="at least 2"):
        multipositive_loss(zs[:1], 0.2)
    with pytest.raises(ValueError, match="one shape"):
        multipositive_loss([zs[0], zs[1][:4]], 0.2)
    with pytest.raises(ValueError, match="labels"):
        multipositive_loss(zs, 0.2, torch.arange(4))


def test_multipositive_gradcheck():
    zs = [z.requires_grad_(True) for z in views(3, n=3, d=3, seed=3)]
    assert torch.autograd.gradcheck(lambda a, b, c: multipositive_loss([a, b, c], 0.3), zs)
    y = torch.tensor([0, 1, 0])
    assert torch.autograd.gradcheck(lambda a, b, c: multipositive_loss([a, b, c], 0.3, y), zs)


def _loss_and_grads(fn, zs):
    zs = [z.detach().clone().requires_grad_(True) for z in zs]
    loss = fn(zs)
    loss.backward()
    return loss.detach(), [z.grad for z in zs]


@pytest.mark.parametrize("v", [2, 3, 4])
@pytest.mark.parametrize("labels", [None, [0, 1, 0, 2, 1]])
def test_dispatch_reference_routes(v, labels):
    """torch backend: V = 2 is the two-view loss; every V equals multipositive_loss (loss and gradients)."""
    zs = views(v, seed=10 + v)
    y = torch.tensor(labels) if labels is not None else None
    got = _loss_and_grads(lambda z: dispatch.multiview_contrastive_loss(z, 0.2, labels=y, backend="torch"), zs)
    ref = _loss_and_grads(lambda z: multipositive_loss(z, 0.2, y), zs)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=0)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if v == 2:
        two = dispatch.contrastive_loss(zs[0], zs[1], 0.2, labels=y, backend="torch")
        assert torch.equal(got[0], two.detach())


@pytest.mark.parametrize("v", [2, 4, 3])
@pytest.mark.parametrize("labels", [None, [0, 1, 0, 2, 1, 1, 0]])
def test_dispatch_fused_kernel_in_the_interpreter(monkeypatch, v, labels):
    """triton backend (TRITON_INTERPRET=1): even V through the kernel's SupCon path, odd V through the
    reference; loss and gradients equal the float64 reference on the same fp32 inputs."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    zs = [z.float() for z in views(v, n=7, d=8, seed=20 + v)]
    y = torch.tensor(labels) if labels is not None else None
    got = _loss_and_grads(lambda z: dispatch.multiview_contrastive_loss(z, 0.2, labels=y, backend="triton"), zs)
    ref = _loss_and_grads(lambda z: multipositive_loss([t.double() for t in z], 0.2, y), zs)
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0].double(), ref[0].double(), rtol=1e-5, atol=1e-6)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)
