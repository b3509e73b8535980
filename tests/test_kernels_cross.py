"""The fused query-key (cross) contrastive loss (kernels/cross.py, MoCo v3's) against the float64 reference
cross_entropy(normalize(q) normalize(k)^T / tau, pos_offset + arange(n)): loss, query gradients and, when asked,
key gradients; ragged shapes (not multiples of the tiles), gathered keys (m > n, an offset positive), the sliced
similarity and the sliced dU; on CPU in Triton's interpreter, on a GPU in every precision."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

from fastssl import dispatch  # noqa: E402
from kernels import launch as kl  # noqa: E402
from kernels.cross import fused_cross_contrastive_loss  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL_FP32 = 1e-5


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def reference(q, k, tau, pos_offset=0):
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / tau
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device) + pos_offset)


def rel_err(got, ref) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def errors(n, m, d, tau, pos_offset=0, key_grad=True, dtype=torch.float32, device="cpu", allow_tf32=False,
           upstream=1.3):
    gen = torch.Generator().manual_seed(n * 100 + m + d)
    k = (torch.randn(m, d, generator=gen) * 2).to(dtype)
    q = (torch.randn(n, d, generator=gen) + 0.5 * k[pos_offset:pos_offset + n].float()).to(dtype)
    rq, rk = q.double().requires_grad_(), k.double().requires_grad_()
    (reference(rq, rk, tau, pos_offset) * upstream).backward()
    fq = q.to(device).requires_grad_()
    fk = k.to(device).requires_grad_(key_grad)
    out = fused_cross_contrastive_loss(fq, fk, tau, pos_offset=pos_offset, allow_tf32=allow_tf32)
    assert out.shape == () and out.dtype == torch.float32
    (out * upstream).backward()
    assert fq.grad.dtype == dtype and (fk.grad is not None) == key_grad
    errs = dict(loss=rel_err(out, reference(rq.detach(), rk.detach(), tau, pos_offset)), dq=rel_err(fq.grad, rq.grad))
    if key_grad:
        errs["dk"] = rel_err(fk.grad, rk.grad)
    return errs


CASES = [  # n, m, d, tau, pos_offset, block sizes (BLOCK_M, BLOCK_N[, BLOCK_K[, BLOCK_DV]]) or None (the plan)
    (1, 1, 8, 0.2, 0, None), (5, 5, 8, 0.07, 0, None), (17, 17, 24, 0.2, 0, (16, 16)),
    (7, 13, 20, 0.5, 4, (16, 16)), (13, 39, 40, 0.1, 26, (16, 16)), (9, 9, 130, 0.2, 0, (16, 16, 32)),
    (6, 11, 24, 1.0, 5, (16, 16, 16, 16)), (40, 70, 300, 0.2, 30, (16, 16, 64, 64)), (130, 130, 64, 0.2, 0, None),
]


@pytest.mark.parametrize("n,m,d,tau,pos_offset,blocks", CASES,
                         ids=[f"n{c[0]}-m{c[1]}-d{c[2]}-t{c[3]}-o{c[4]}-{'plan' if c[5] is None else 'x'.join(map(str, c[5]))}"
                              for c in CASES])
def test_matches_float64(interpret, n, m, d, tau, pos_offset, blocks):
    with kl.block_sizes(*blocks) if blocks else contextlib.nullcontext():
        errs = errors(n, m, d, tau, pos_offset)
    assert max(errs.values()) < TOL_FP32, errs


def test_keys_without_gradient(interpret):
    """MoCo v3's keys have no gradient: none is computed, and the query gradient is unchanged."""
    with_k = errors(9, 12, 24, 0.2, 3)
    without = errors(9, 12, 24, 0.2, 3, key_grad=False)
    assert set(without) == {"loss", "dq"} and without["dq"] == with_k["dq"] < TOL_FP32


def test_input_validation(interpret):
    q, k = torch.randn(4, 8), torch.randn(6, 8)
    with pytest.raises(ValueError, match="pos_offset"):
        fused_cross_contrastive_loss(q, k, 0.2, pos_offset=3)
    with pytest.raises(ValueError, match="shape|\\(n, d\\)"):
        fused_cross_contrastive_loss(q, torch.randn(6, 9), 0.2)
    with pytest.raises(TypeError, match="dtype"):
        fused_cross_contrastive_loss(q, k.double(), 0.2)
    with pytest.raises(ValueError, match="temperature"):
        fused_cross_contrastive_loss(q, k, 0.0)


def test_dispatch_triton_matches_torch(interpret):
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(10, 16, generator=gen), torch.randn(10, 16, generator=gen)
    a, b = q.clone().requires_grad_(), q.clone().requires_grad_()
    fused = dispatch.cross_contrastive(a, k, 0.2, backend="triton")
    ref = dispatch.cross_contrastive(b, k, 0.2, backend="torch")
    (fused + ref).backward()
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_opcheck(interpret):
    q, k = torch.randn(5, 8, requires_grad=True), torch.randn(7, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.ssl_kernels.cross_contrastive_fwd.default, (q, k, 0.3, 2, False),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@cuda
@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16", "fp16"])
@pytest.mark.parametrize("n,m,d", [(3, 3, 8), (257, 514, 128), (512, 512, 256)])
def test_gpu(monkeypatch, precision, n, m, d):
    """fp32 ("ieee") to 1e-5 relative; tf32/bf16/fp16 no worse than twice eager PyTorch at the same precision
    plus two unit roundoffs (the standard of tests/test_kernels_contrastive.py)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    fused = errors(n, m, d, 0.2, m - n, dtype=dtype, device="cuda", allow_tf32=precision == "tf32")
    if precision == "ieee":
        assert max(fused.values()) < TOL_FP32, fused
        return
    from test_kernels_contrastive import UNIT_ROUNDOFF, tf32_matmuls
    gen = torch.Generator().manual_seed(n * 100 + m + d)
    k = (torch.randn(m, d, generator=gen) * 2).to(dtype)
    q = (torch.randn(n, d, generator=gen) + 0.5 * k[m - n:].float()).to(dtype)
    rq, rk = q.double().requires_grad_(), k.double().requires_grad_()
    (reference(rq, rk, 0.2, m - n) * 1.3).backward()
    eq, ek = q.cuda().requires_grad_(), k.cuda().requires_grad_()
    with tf32_matmuls(precision == "tf32"):
        out = reference(eq, ek, 0.2, m - n)
        (out * 1.3).backward()
    eager = dict(loss=rel_err(out, reference(rq.detach(), rk.detach(), 0.2, m - n)), dq=rel_err(eq.grad, rq.grad),
                 dk=rel_err(ek.grad, rk.grad))
    u = UNIT_ROUNDOFF[precision]
    assert all(fused[key] <= 2 * eager[key] + 2 * u for key in fused), (fused, eager)


def _compiler_usable() -> bool:
    from triton.runtime.jit import JITFunction
    import triton.language as tl
    return isinstance(tl.standard.zeros, JITFunction)


@pytest.mark.skipif(not _compiler_usable(), reason="triton was imported with TRITON_INTERPRET=1")
@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_aot_compiles_without_spills(monkeypatch, target, precision):
    """The training precisions at d = 256 (MoCo v3's projector output), 512 queries against 1024 gathered keys,
    through the real compiler for an A100 and an H100: no spills, shared memory within the target."""
    from kernels import aot
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    t = kl.TARGETS[target]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for spec in aot.cross_specs(dtype, d=256, allow_tf32=precision == "tf32", n=512, m=1024, target=t):
        info = aot.compile_spec(*spec, arch=t.arch)
        assert info.get("stack_bytes", 0) == 0, info
        assert info["dynamic_shared"] + info.get("static_shared", 0) <= t.smem_per_block, info
        assert info["wgmma"] == (t.arch >= 90), info
