"""The fused ops beyond the interpreter: AOT compilation for sm_90, custom-op registration, torch.compile.

* Every kernel goes through Triton's real GPU pipeline for an H100 (``GPUTarget("cuda", 90, 32)``) for fp32
  and bf16 input signatures, with the launch configuration used on a GPU; this needs no GPU (ptxas ships
  with triton) and catches what the interpreter accepts but the compiler rejects.
* ``torch.library.opcheck`` checks each custom op's schema, fake (meta) implementation, autograd
  registration and AOT-dispatch with dynamic shapes (the real kernels run in the interpreter).
* ``torch.compile(fullgraph=True)`` traces a DARe-style loss through the ops (aot_eager backend: inductor's
  C++ compile would take a minute here) and reproduces eager values and gradients exactly.
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from kernels import aot  # noqa: E402
from kernels import contrastive as kc  # noqa: E402
from kernels import dare as kd  # noqa: E402

H100_SMEM = 232448  # bytes of shared memory a block may use on sm_90


def _compiler_usable() -> bool:
    """False when triton itself was imported with TRITON_INTERPRET=1 (its tl.* library functions are then
    interpreter objects that the GPU code generator cannot compile)."""
    from triton.runtime.jit import JITFunction
    import triton.language as tl
    return isinstance(tl.standard.zeros, JITFunction)


needs_compiler = pytest.mark.skipif(not _compiler_usable(),
                                    reason="triton was imported with TRITON_INTERPRET=1; run without it set")

# (kind, dtype, variant or has_eps, d, tf32, 2N): 2N = 1024 launches the split forward (+ combine) and backward
AOT_CASES = (
    [("contrastive", torch.bfloat16, v, 128, False, 65536) for v in ("simclr", "decoupled", "supcon")]
    + [("contrastive", torch.float32, v, 128, False, 65536) for v in ("decoupled", "supcon")]
    + [("contrastive", torch.float32, "supcon", 128, True, 65536),   # tf32
       ("contrastive", torch.bfloat16, "supcon", 256, False, 65536),
       ("contrastive", torch.float32, "simclr", 130, False, 65536),  # d = 130 pads to BLOCK_D = 256
       ("contrastive", torch.float32, "decoupled", 128, True, 1024),
       ("contrastive", torch.bfloat16, "supcon", 256, False, 1024)]
    + [("dare", dt, has_eps, 130, False, 0) for dt in (torch.float32, torch.bfloat16) for has_eps in (False, True)]
)


def _case_id(case):
    kind, dtype, what, d, tf32, two_n = case
    return f"{kind}-{str(dtype)[6:]}-{what}-d{d}" + ("-tf32" if tf32 else "") + (f"-2N{two_n}" if two_n else "")


@needs_compiler
@pytest.mark.parametrize("case", AOT_CASES, ids=[_case_id(c) for c in AOT_CASES])
def test_aot_compile_sm90(monkeypatch, case):
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # triton >= 3.9 warns when unset; 3.6 fuses by default
    kind, dtype, what, d, tf32, two_n = case
    specs = (aot.contrastive_specs(dtype, d=d, variant=what, allow_tf32=tf32, two_n=two_n) if kind == "contrastive"
             else aot.dare_specs(dtype, d=d, has_eps=what))
    if two_n == 1024:
        assert [s[0] for s in specs] == [kc._contrastive_fwd_kernel, kc._contrastive_combine_kernel,
                                         kc._contrastive_bwd_kernel] and specs[0][2]["SPLIT"]
    for spec in specs:
        info = aot.compile_spec(*spec, arch=90)
        assert info["ptx_bytes"] > 0 and info["cubin_bytes"] > 0
        assert info["ptx_target"].startswith("sm_90"), info
        assert info["dynamic_shared"] <= H100_SMEM, info
        if kind == "contrastive" and info["kernel"] != "_contrastive_combine_kernel":
            tensor_cores = dtype != torch.float32 or tf32
            # bf16 and tf32 similarities run on Hopper's warpgroup MMA; "ieee" fp32 must not use tensor cores
            assert info["wgmma"] == tensor_cores, info
            if not tensor_cores:
                assert not info["mma_sync"], info
        if d <= 256:  # ptxas's spill count (the stack also holds local arrays, e.g. libdevice's sin/cos buffer)
            assert info.get("spill_stores", 0) == 0, f"register spills in a d <= 256 configuration: {info}"


# ---- custom ops --------------------------------------------------------------------------------

@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        z1, z2 = torch.empty(7, 130), torch.empty(7, 130)
        loss, u, rnorm, lse, npos = torch.ops.ssl_kernels.contrastive_fwd(z1, z2, None, 0.2, 0, False)
        assert loss.shape == () and loss.dtype == torch.float32
        assert u.shape == (14, 130) and rnorm.shape == lse.shape == npos.shape == (14,)
        zb = torch.empty(7, 130, dtype=torch.bfloat16)
        assert torch.ops.ssl_kernels.contrastive_fwd(zb, zb, None, 0.2, 0, False)[1].dtype == torch.bfloat16
        du = torch.ops.ssl_kernels.contrastive_bwd(u, None, lse, npos, loss, 0.2, 0, False)
        assert du.shape == (14, 130) and du.dtype == torch.float32
        m = torch.empty(5, 33, dtype=torch.bfloat16)
        seed = torch.tensor(3)
        z1, z2, jsd = torch.ops.ssl_kernels.reparam_jsd_fwd(m, m, m, m, None, None, seed)
        assert z1.shape == z2.shape == (5, 33) and z1.dtype == torch.bfloat16 and jsd.shape == ()
        grads = torch.ops.ssl_kernels.reparam_jsd_bwd(m, m, m, m, None, None, seed, m, None, jsd)
        assert [g.shape for g in grads] == [(5, 33)] * 4


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("variant", ["simclr", "decoupled", "supcon"])
def test_opcheck_contrastive(interpret, variant):
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(5, 12, generator=gen, requires_grad=True)
    z2 = torch.randn(5, 12, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 2]) if variant == "supcon" else None
    _opcheck(torch.ops.ssl_kernels.contrastive_fwd.default, (z1, z2, labels, 0.3, kc.VARIANTS[variant], False))


def test_opcheck_contrastive_bwd(interpret):
    u = torch.nn.functional.normalize(torch.randn(10, 12))
    _opcheck(torch.ops.ssl_kernels.contrastive_bwd.default,
             (u, None, torch.randn(10) + 3, torch.ones(10), torch.tensor(1.3), 0.2, 0, False))


@pytest.mark.parametrize("explicit_eps", [True, False])
def test_opcheck_dare(interpret, explicit_eps):
    gen = torch.Generator().manual_seed(0)
    x = [torch.randn(4, 9, generator=gen, requires_grad=True) for _ in range(4)]
    eps = [torch.randn(4, 9, generator=gen) for _ in range(2)] if explicit_eps else [None, None]
    _opcheck(torch.ops.ssl_kernels.reparam_jsd_fwd.default, (*x, *eps, torch.tensor(17)))


def test_torch_compile_fullgraph(interpret):
    def dare_step(mu1, lv1, mu2, lv2, labels):
        z1, z2, jsd = kd.fused_reparam_jsd(mu1, lv1, mu2, lv2, seed=7)
        con = kc.fused_contrastive_loss(z1, z2, 0.2, variant="decoupled")
        sup = kc.fused_contrastive_loss(mu1, mu2, 0.1, labels=labels)
        return con + 0.5 * jsd + sup

    def run(fn):
        gen = torch.Generator().manual_seed(0)
        x = [torch.randn(6, 20, generator=gen, requires_grad=True) for _ in range(4)]
        out = fn(*x, torch.tensor([0, 1, 0, 1, 2, 2]))
        out.backward()
        return out.detach(), [t.grad for t in x]

    torch._dynamo.reset()
    eager = run(dare_step)
    compiled = run(torch.compile(dare_step, backend="aot_eager", fullgraph=True))
    assert torch.equal(eager[0], compiled[0])
    for a, b in zip(eager[1], compiled[1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_torch_compile_through_dispatch(interpret):
    """What the methods do: dispatch -> fused ops, seed drawn from torch's RNG inside the graph."""
    from fastssl import dispatch

    def dare_loss(mu1, lv1, mu2, lv2):
        z1, z2, jsd = dispatch.reparam_jsd(mu1, lv1, mu2, lv2, backend="triton")
        return dispatch.contrastive_loss(z1, z2, 0.2, variant="decoupled", backend="triton") + 0.1 * jsd

    def run(fn):
        torch.manual_seed(0)
        x = [torch.randn(6, 20, requires_grad=True) for _ in range(4)]
        out = fn(*x)
        out.backward()
        return out.detach(), [t.grad for t in x]

    torch._dynamo.reset()
    eager = run(dare_loss)
    compiled = run(torch.compile(dare_loss, backend="aot_eager", fullgraph=True))
    assert torch.equal(eager[0], compiled[0])
    for a, b in zip(eager[1], compiled[1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
