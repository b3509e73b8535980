"""Fused DARe reparameterisation + Gaussian JSD (kernels/dare.py) against the reference.

CPU runs use Triton's interpreter (TRITON_INTERPRET=1 via monkeypatch, read at launch time).
"""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from fastssl import losses  # noqa: E402
from kernels import dare as kd  # noqa: E402
from fastssl import dispatch  # noqa: E402

SHAPES = [(1, 8), (2, 8), (3, 24), (17, 130), (64, 128), (130, 3)]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def rel_err(got, ref):
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def make_inputs(n, d, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    mu1 = torch.randn(n, d, generator=gen)
    mu2 = mu1 + 0.5 * torch.randn(n, d, generator=gen)
    lv1 = torch.randn(n, d, generator=gen) * 1.5
    lv2 = lv1 + torch.randn(n, d, generator=gen)
    eps1, eps2 = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    return [t.to(dtype) for t in (mu1, lv1, mu2, lv2)], (eps1.to(dtype), eps2.to(dtype))


def reference(mu1, lv1, mu2, lv2, eps1, eps2):
    return (losses.reparameterize(mu1, lv1, eps1), losses.reparameterize(mu2, lv2, eps2),
            losses.gaussian_jsd(mu1, lv1, mu2, lv2))


@pytest.mark.parametrize("n,d", SHAPES)
def test_explicit_eps_matches_reference(interpret, n, d):
    inputs, (eps1, eps2) = make_inputs(n, d, seed=n * 31 + d)
    gen = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)

    ref_in = [t.double().requires_grad_() for t in inputs]
    rz1, rz2, rj = reference(*ref_in, eps1.double(), eps2.double())
    ((rz1 * w1).sum() + (rz2 * w2).sum() + 2.5 * rj).backward()

    got_in = [t.clone().requires_grad_() for t in inputs]
    z1, z2, jsd = kd.fused_reparam_jsd(*got_in, eps1=eps1, eps2=eps2)
    assert z1.dtype == torch.float32 and jsd.shape == () and jsd.dtype == torch.float32
    ((z1 * w1).sum() + (z2 * w2).sum() + 2.5 * jsd).backward()

    assert rel_err(jsd, rj) < 1e-5
    for got, ref in zip(got_in, ref_in):
        assert rel_err(got.grad, ref.grad) < 1e-5

    # z is reparameterize's formula evaluated in fp32, op for op. The only possible difference is the
    # last bit of exp (the interpreter's numpy exp vs torch's; ex2.approx on a GPU), so allow 2 ulp of
    # the noise term exp(logvar/2) * eps.
    with torch.no_grad():
        for z, mu, lv, eps in ((z1, inputs[0], inputs[1], eps1), (z2, inputs[2], inputs[3], eps2)):
            expected = losses.reparameterize(mu, lv, eps)
            noise = (torch.exp(0.5 * lv) * eps).abs()
            ulp = torch.finfo(torch.float32).eps
            assert ((z - expected).abs() <= 2 * ulp * (noise + expected.abs()) + 1e-30).all()


def test_explicit_eps_bitwise_formula(interpret):
    """With exp taken from the same library (numpy, as the interpreter does) z is bitwise identical."""
    np = pytest.importorskip("numpy")
    (mu1, lv1, mu2, lv2), (eps1, eps2) = make_inputs(9, 40, seed=3)
    z1, _, _ = kd.fused_reparam_jsd(mu1, lv1, mu2, lv2, eps1=eps1, eps2=eps2)
    expected = mu1.numpy() + np.exp(np.float32(0.5) * lv1.numpy()) * eps1.numpy()
    assert np.array_equal(z1.numpy(), expected)


def test_partial_gradients(interpret):
    """Only the JSD used (z gradients None), and only z used (no JSD gradient)."""
    inputs, (eps1, eps2) = make_inputs(5, 19, seed=2)
    a = [t.clone().requires_grad_() for t in inputs]
    _, _, jsd = kd.fused_reparam_jsd(*a, eps1=eps1, eps2=eps2)
    jsd.backward()
    b = [t.double().requires_grad_() for t in inputs]
    losses.gaussian_jsd(*b).backward()
    for x, y in zip(a, b):
        assert rel_err(x.grad, y.grad) < 1e-5

    a = [t.clone().requires_grad_() for t in inputs]
    z1, _, _ = kd.fused_reparam_jsd(*a, eps1=eps1, eps2=eps2)
    z1.sum().backward()
    assert torch.equal(a[0].grad, torch.ones_like(a[0]))
    assert rel_err(a[1].grad, 0.5 * torch.exp(0.5 * inputs[1].double()) * eps1.double()) < 1e-6
    assert a[2].grad.abs().max() == 0 and a[3].grad.abs().max() == 0


def test_jsd_zero_for_equal_gaussians(interpret):
    mu, lv = torch.randn(4, 10), torch.randn(4, 10)
    _, _, jsd = kd.fused_reparam_jsd(mu, lv, mu, lv, seed=0)
    assert abs(jsd.item()) < 1e-6


def test_seeded_noise_is_deterministic_per_seed(interpret):
    inputs, _ = make_inputs(16, 33, seed=4)
    a = kd.fused_reparam_jsd(*inputs, seed=123)
    b = kd.fused_reparam_jsd(*inputs, seed=123)
    c = kd.fused_reparam_jsd(*inputs, seed=124)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])
    assert not torch.equal(a[0] - inputs[0], a[1] - inputs[2])  # the two views get different noise
    assert torch.equal(a[2], c[2])  # the JSD does not depend on the noise


def test_seeded_backward_regenerates_the_same_noise(interpret):
    """Gradients with seed == gradients with the explicit eps that seed produces (eps never stored)."""
    n, d, seed = 12, 37, 99
    zeros = torch.zeros(n, d)
    eps1, eps2, _ = kd.fused_reparam_jsd(zeros, zeros, zeros, zeros, seed=seed)  # z = eps when mu = logvar = 0
    inputs, _ = make_inputs(n, d, seed=5)
    gen = torch.Generator().manual_seed(6)
    w1, w2 = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)

    def grads(**kw):
        x = [t.clone().requires_grad_() for t in inputs]
        z1, z2, jsd = kd.fused_reparam_jsd(*x, **kw)
        ((z1 * w1).sum() + (z2 * w2).sum() + jsd).backward()
        return [t.grad for t in x], (z1, z2)

    g_seed, z_seed = grads(seed=seed)
    g_eps, z_eps = grads(eps1=eps1, eps2=eps2)
    assert torch.equal(z_seed[0], z_eps[0]) and torch.equal(z_seed[1], z_eps[1])
    for a, b in zip(g_seed, g_eps):
        assert torch.equal(a, b)


def test_seeded_noise_moments(interpret):
    """eps ~ N(0, 1) i.i.d.: moments on 2 x 512K draws (standard error of the mean ~1e-3) and no
    correlation between the views or between neighbouring elements."""
    n, d = 512, 1024
    zeros = torch.zeros(n, d)
    e1, e2, _ = kd.fused_reparam_jsd(zeros, zeros, zeros, zeros, seed=2024)
    x = torch.cat([e1.flatten(), e2.flatten()]).double()
    m = x.numel()
    mean, var = x.mean().item(), x.var().item()
    z = (x - mean) / math.sqrt(var)
    skew, kurt = (z ** 3).mean().item(), (z ** 4).mean().item()
    assert abs(mean) < 5 / math.sqrt(m)
    assert abs(var - 1) < 5 * math.sqrt(2 / m)
    assert abs(skew) < 5 * math.sqrt(6 / m)
    assert abs(kurt - 3) < 5 * math.sqrt(24 / m)
    assert abs(torch.corrcoef(torch.stack([e1.flatten(), e2.flatten()]))[0, 1].item()) < 5 / math.sqrt(n * d)
    flat = e1.flatten().double()
    assert abs((flat[1:] * flat[:-1]).mean().item()) < 5 / math.sqrt(n * d)
    assert abs((e1.double() * e1.roll(1, dims=0).double()).mean().item()) < 5 / math.sqrt(n * d)
    # tails: P(|x| > 3) = 0.0027 for N(0, 1)
    tail = (x.abs() > 3).double().mean().item()
    assert abs(tail - 0.0026998) < 5 * math.sqrt(0.0027 / m)


def test_no_seed_draws_from_torch_rng(interpret):
    inputs, _ = make_inputs(4, 8)
    torch.manual_seed(7)
    a = kd.fused_reparam_jsd(*inputs)
    torch.manual_seed(7)
    b = kd.fused_reparam_jsd(*inputs)
    c = kd.fused_reparam_jsd(*inputs)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_input_validation(interpret):
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="both eps1 and eps2"):
        kd.fused_reparam_jsd(x, x, x, x, eps1=x)
    with pytest.raises(ValueError, match="shape"):
        kd.fused_reparam_jsd(x, x, x, torch.randn(3, 5), seed=0)
    with pytest.raises(TypeError):
        kd.fused_reparam_jsd(x.double(), x.double(), x.double(), x.double(), seed=0)


def test_dispatch_reparam_jsd(interpret):
    inputs, _ = make_inputs(8, 16)
    torch.manual_seed(3)
    a = dispatch.reparam_jsd(*inputs, backend="triton")
    torch.manual_seed(3)
    b = dispatch.reparam_jsd(*inputs, backend="triton")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ref = dispatch.reparam_jsd(*[t.double() for t in inputs], backend="torch")
    assert rel_err(a[2], ref[2]) < 1e-5


def test_dispatch_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="CUDA"):
        dispatch.reparam_jsd(x, x, x, x, backend="triton")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu(monkeypatch, dtype):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    n, d = 512, 130
    inputs, (eps1, eps2) = make_inputs(n, d, seed=1, dtype=dtype)
    ref_in = [t.double().requires_grad_() for t in inputs]
    rz1, rz2, rj = reference(*ref_in, eps1.double(), eps2.double())
    (rz1.sum() + 2 * rz2.sum() + 3 * rj).backward()
    got_in = [t.cuda().requires_grad_() for t in inputs]
    z1, z2, jsd = kd.fused_reparam_jsd(*got_in, eps1=eps1.cuda(), eps2=eps2.cuda())
    (z1.float().sum() + 2 * z2.float().sum() + 3 * jsd).backward()
    # all arithmetic is fp32 and every output is stored once in the input dtype: one rounding, at most the unit
    # roundoff u relative (bf16: 8 significant bits, u = 2**-8; fp16: 11, u = 2**-11); twice that as the bound
    tol = {torch.float32: 1e-5, torch.bfloat16: 2 * 2.0 ** -8, torch.float16: 2 * 2.0 ** -11}[dtype]
    assert rel_err(z1, rz1) < tol and rel_err(z2, rz2) < tol and rel_err(jsd, rj) < tol
    for got, ref in zip(got_in, ref_in):
        assert rel_err(got.grad, ref.grad) < tol
    e1, e2, _ = kd.fused_reparam_jsd(*(torch.zeros(n, 4096, device="cuda", dtype=dtype),) * 4, seed=5)
    x = torch.cat([e1.flatten(), e2.flatten()]).double()
    assert abs(x.mean().item()) < 5e-3 and abs(x.var().item() - 1) < 1e-2


def test_seed_forms(interpret):
    """int seeds (also above 2**31: a 64-bit Philox key) and one-element tensor seeds are interchangeable."""
    inputs, _ = make_inputs(3, 20)
    big = 2**40 + 5
    a = kd.fused_reparam_jsd(*inputs, seed=big)
    b = kd.fused_reparam_jsd(*inputs, seed=torch.tensor(big))
    c = kd.fused_reparam_jsd(*inputs, seed=5)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert torch.isfinite(a[0]).all()
    with pytest.raises(ValueError, match="seed"):
        kd.fused_reparam_jsd(*inputs, seed=-1)


def test_seed_is_read_by_the_kernel_not_the_host(interpret, monkeypatch):
    """The seed tensor goes to the kernel as a pointer: no .item()/int() of it on the host (on a GPU that would
    synchronise the step), and the noise equals the int seed's."""
    inputs, _ = make_inputs(5, 12)
    want = kd.fused_reparam_jsd(*inputs, seed=77)
    seed = kd.draw_seed()
    seed.fill_(77)

    def refuse(*_):
        raise AssertionError("the seed was read on the host")
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "__int__", refuse)
    monkeypatch.setattr(torch.Tensor, "__index__", refuse)
    got = kd.fused_reparam_jsd(*[t.requires_grad_() for t in inputs], seed=seed)
    (got[0].sum() + got[2]).backward()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_draw_seed_device(interpret):
    torch.manual_seed(11)
    a = kd.draw_seed()
    torch.manual_seed(11)
    b = kd.draw_seed("cpu")
    assert a.shape == () and a.dtype == torch.int64 and a.device.type == "cpu" and torch.equal(a, b)
    assert 0 <= int(a) < 2**31
    with pytest.raises(ValueError, match="seed"):
        kd.reparam_jsd_fwd(*(torch.zeros(2, 3),) * 4, None, None, torch.tensor(1.5))


@cuda
def test_gpu_device_seed(monkeypatch):
    """A seed drawn on the GPU, a CPU seed and an int seed give the same noise."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = [torch.randn(64, 40, device="cuda") for _ in range(4)]
    seed = kd.draw_seed("cuda")
    assert seed.device.type == "cuda"
    a = kd.fused_reparam_jsd(*x, seed=seed)
    b = kd.fused_reparam_jsd(*x, seed=seed.cpu())
    c = kd.fused_reparam_jsd(*x, seed=int(seed))
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
