"""Where a fused kernel cannot compile or launch, training falls back to the reference loss with one warning
line (fastssl/dispatch.py). The failure is forced by making the fused op raise what Triton raises (a compilation
error, out of resources); the kernels run in the interpreter otherwise (TRITON_INTERPRET=1)."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from fastssl import dispatch, losses  # noqa: E402
from kernels import contrastive as kc  # noqa: E402
from kernels import dare as kd  # noqa: E402


@pytest.fixture
def fresh(monkeypatch):
    """Interpreter on, and a process-fresh probe cache and warning set (they are per process by design)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dispatch, "_warned", set())
    monkeypatch.setattr(dispatch, "_probed", {})


def _out_of_resources(*args, **kwargs):
    from triton.runtime.errors import OutOfResources
    raise OutOfResources(232448 + 1024, 232448, "shared memory")


def _compilation_error(*args, **kwargs):
    raise RuntimeError("PTX .version 8.7 does not support .target sm_120 (ptxas)")


def _warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("failure", [_out_of_resources, _compilation_error])
def test_contrastive_falls_back_to_the_reference_with_one_warning_line(fresh, monkeypatch, capsys, failure):
    monkeypatch.setattr(kc, "fused_contrastive_loss", failure)
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    for variant in ("simclr", "decoupled", "simclr"):  # repeated calls: still one line
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        got = dispatch.contrastive_loss(a, b, 0.2, variant=variant, backend="triton")
        got.backward()
        r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        want = losses.ntxent_loss(r1, r2, 0.2, variant=variant)
        want.backward()
        assert torch.equal(got, want) and torch.equal(a.grad, r1.grad) and torch.equal(b.grad, r2.grad)
    lines = _warning_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("warning: the fused contrastive kernel cannot run here")
    assert ("OutOfResources" if failure is _out_of_resources else "sm_120") in lines[0]
    assert "reference" in lines[0]


def test_dare_falls_back_and_the_contrastive_kernel_still_runs(fresh, monkeypatch, capsys):
    """Only the failing kernel is replaced: DARe's reference reparameterisation + JSD, the fused contrastive loss."""
    monkeypatch.setattr(kd, "fused_reparam_jsd", _out_of_resources)
    gen = torch.Generator().manual_seed(1)
    mu1, lv1, mu2, lv2 = (torch.randn(5, 8, generator=gen) for _ in range(4))
    torch.manual_seed(3)
    z1, z2, jsd = dispatch.reparam_jsd(mu1, lv1, mu2, lv2, backend="triton")
    torch.manual_seed(3)
    r1, r2, rjsd = dispatch.reparam_jsd(mu1, lv1, mu2, lv2, backend="torch")
    assert torch.equal(z1, r1) and torch.equal(z2, r2) and torch.equal(jsd, rjsd)
    con = dispatch.contrastive_loss(z1, z2, 0.2, variant="decoupled", backend="triton")
    torch.testing.assert_close(con, losses.ntxent_loss(z1, z2, 0.2, variant="decoupled"), rtol=1e-5, atol=1e-6)
    lines = _warning_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "fused DARe kernel" in lines[0], lines


def test_a_working_kernel_is_used_without_a_warning(fresh, monkeypatch, capsys):
    calls = []
    real = kc.fused_contrastive_loss

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(kc, "fused_contrastive_loss", counting)
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    dispatch.contrastive_loss(z1, z2, 0.2, backend="triton")
    dispatch.contrastive_loss(z1, z2, 0.2, backend="triton")
    assert len(calls) == 3  # one probe for this shape, then the two real calls
    assert capsys.readouterr().err == ""


def test_misuse_is_still_an_error(monkeypatch):
    """A CPU tensor without the interpreter is the caller's mistake, not a kernel failure: no silent fallback."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA"):
        dispatch.contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), 0.2, backend="triton")


@pytest.mark.compile
@pytest.mark.parametrize("broken", [True, False])
def test_fallback_decided_outside_the_compiled_graph(fresh, monkeypatch, capsys, broken):
    """Under torch.compile(fullgraph=True) the probe runs at trace time (a graph break would fail fullgraph) and
    the graph holds the reference loss when the kernel is broken, the fused op when it works."""
    ops = []
    real = kc.fused_contrastive_loss
    monkeypatch.setattr(kc, "fused_contrastive_loss", _out_of_resources if broken else real)
    monkeypatch.setattr(losses, "ntxent_loss", lambda *a, **k: ops.append("reference") or real_ntxent(*a, **k))
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)

    def step(a, b):
        return dispatch.contrastive_loss(a, b, 0.2, variant="decoupled", backend="triton")

    torch._dynamo.reset()  # the probe's answer is a constant of the graph: a new answer needs a new trace
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(z1, z2), real_ntxent(z1, z2, 0.2, variant="decoupled"), rtol=1e-5, atol=1e-6)
    assert ops == (["reference"] if broken else [])  # traced once
    assert len(_warning_lines(capsys.readouterr().err)) == (1 if broken else 0)


real_ntxent = losses.ntxent_loss
