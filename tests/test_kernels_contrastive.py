"""Fused contrastive kernels (kernels/contrastive.py) against the reference losses.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set per test with monkeypatch: the
kernels pick interpreter vs compiler at launch time, so nothing leaks into other test modules). The
reference is evaluated in float64 on the same fp32 inputs; fp32 kernels must agree to 1e-5 relative
(max abs error / max abs reference value) in the loss and in both input gradients.

The interpreter is slow, so temperatures cycle through TAUS over the full (variant, N, d) cross product
rather than multiplying it, and SupCon labels alternate between many repeats (2-3 classes) and few (mostly
unique labels); tests below add every label regime, tiny tiles and sliced-d paths. bf16/fp16/fp32-on-GPU
tests need CUDA.
"""
from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

triton = pytest.importorskip("triton")

from fastssl import losses  # noqa: E402
from kernels import contrastive as kc  # noqa: E402
from kernels import launch as kl  # noqa: E402
from fastssl import dispatch  # noqa: E402

NS = (2, 3, 17, 64, 130)
DS = (8, 24, 128, 130)
TAUS = (0.05, 0.1, 0.2, 0.5, 1.0)
VARIANTS = ("simclr", "decoupled", "supcon")
TOL_FP32 = 1e-5

_shapes = [(n, d) for n in NS for d in DS]  # the full cross product: ~25 s in the interpreter
CASES = [(variant, n, d, TAUS[i % len(TAUS)]) for i, (variant, (n, d)) in
         enumerate(itertools.product(VARIANTS, _shapes))]

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def make_labels(n: int, regime: str, gen: torch.Generator) -> torch.Tensor:
    if regime == "many":  # 2-3 classes: |P(k)| large
        return torch.randint(0, 3 if n > 3 else 2, (n,), generator=gen)
    if regime == "few":  # mostly unique labels, a couple of collisions
        return torch.randint(0, 4 * n, (n,), generator=gen)
    if regime == "same":
        return torch.zeros(n, dtype=torch.long)
    if regime == "unique":
        return torch.randperm(n, generator=gen) * 7 - 3  # arbitrary, even negative, class ids
    raise ValueError(regime)


def reference(z1, z2, tau, variant, labels):
    if variant == "supcon":
        return losses.supcon_loss(z1, z2, labels, tau)
    return losses.ntxent_loss(z1, z2, tau, variant=variant)


def check_against_reference(variant, n, d, tau, labels=None, seed=0, tol=TOL_FP32, upstream=1.7,
                            dtype=torch.float32, device="cpu", correlation=0.1):
    """Loss and both gradients vs the float64 reference; errors relative to the reference's max |value|.

    Views are only mildly correlated by default: with near-identical views and a small tau the loss
    is a tiny difference of two large numbers (lse - s_pos) that no fp32 computation resolves to 1e-5
    relative (the fp32 reference itself is off by percents); test_aligned_views covers that regime.
    """
    gen = torch.Generator().manual_seed(seed)
    z1 = (torch.randn(n, d, generator=gen) * 3).to(dtype)
    z2 = (torch.randn(n, d, generator=gen) + correlation * z1.float()).to(dtype)
    r1, r2 = (z.double().requires_grad_() for z in (z1, z2))
    ref = reference(r1, r2, tau, variant, labels)
    (ref * upstream).backward()

    f1, f2 = (z.to(device).requires_grad_() for z in (z1, z2))
    lab = labels.to(device) if labels is not None else None
    out = kc.fused_contrastive_loss(f1, f2, tau, labels=lab, variant="simclr" if variant == "supcon" else variant)
    assert out.shape == () and out.dtype == torch.float32
    (out * upstream).backward()
    errs = dict(loss=rel_err(out, ref), dz1=rel_err(f1.grad, r1.grad), dz2=rel_err(f2.grad, r2.grad))
    assert f1.grad.dtype == dtype and f2.grad.dtype == dtype
    assert max(errs.values()) < tol, (variant, n, d, tau, errs)
    return errs


@pytest.mark.parametrize("variant,n,d,tau", CASES, ids=[f"{v}-N{n}-d{d}-t{t}" for v, n, d, t in CASES])
def test_matches_reference(interpret, variant, n, d, tau):
    labels = None
    if variant == "supcon":
        regime = "many" if (n + d) % 2 == 0 else "few"
        labels = make_labels(n, regime, torch.Generator().manual_seed(n * 1000 + d))
    check_against_reference(variant, n, d, tau, labels, seed=n + d)


@pytest.mark.parametrize("variant", VARIANTS)
def test_aligned_views(interpret, variant):
    """Strongly aligned views, small tau: the fused loss is as accurate as the fp32 reference is."""
    n, d, tau = 6, 24, 0.05
    gen = torch.Generator().manual_seed(4)
    z1 = torch.randn(n, d, generator=gen)
    z2 = z1 + 0.05 * torch.randn(n, d, generator=gen)
    labels = make_labels(n, "many", gen) if variant == "supcon" else None
    exact = reference(z1.double(), z2.double(), tau, variant, labels)
    fp32_error = (reference(z1, z2, tau, variant, labels).double() - exact).abs().item()
    got = kc.fused_contrastive_loss(z1, z2, tau, labels=labels, variant="simclr" if variant == "supcon" else variant)
    assert (got.double() - exact).abs().item() <= 4 * fp32_error + 1e-6 / tau


def test_cases_cover_the_matrix():
    assert {c[1] for c in CASES} == set(NS) and {c[2] for c in CASES} == set(DS)
    assert {c[0] for c in CASES} == set(VARIANTS)
    for variant in VARIANTS:
        assert len({c[3] for c in CASES if c[0] == variant}) >= 4


@pytest.mark.parametrize("regime", ["many", "few", "same", "unique"])
def test_supcon_label_regimes(interpret, regime):
    n = 17
    labels = make_labels(n, regime, torch.Generator().manual_seed(5))
    check_against_reference("supcon", n, 24, 0.1, labels, seed=11)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,d,block_k,block_dv", [(17, 24, None, None), (40, 130, None, None), (17, 130, 32, None),
                                                  (9, 24, 16, 16), (9, 300, 64, 64)])
def test_small_tiles_straddling_views(interpret, variant, n, d, block_k, block_dv):
    """16 x 16 tiles: row blocks straddle the view boundary, many column blocks, ragged edges. With block_k
    the similarity is reduced over d in slices (the GPU's fp32 "ieee" path and wide rows), the last one
    ragged; with block_dv the backward grid also splits dU over d (d = 300: the wide-row code path)."""
    labels = make_labels(n, "many", torch.Generator().manual_seed(1)) if variant == "supcon" else None
    with kc.block_sizes(16, 16, block_k, block_dv):
        check_against_reference(variant, n, d, 0.2, labels, seed=3)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("row_off,n_local", [(0, 13), (0, 5), (4, 5), (12, 1)])
def test_local_rows_mode(interpret, variant, row_off, n_local):
    """The data-parallel mode: rows row_off .. row_off + n_local - 1 of each view against all 2N columns give
    exactly those rows of the whole forward (loss, lse, |P|) and, with every row's lse, those rows of the whole
    backward scaled by N / n_local (the backward divides by the local row count 2 n_local, not by 2N).
    N = 13 and 16 x 16 tiles: ragged blocks that straddle the views."""
    n, d = 13, 20
    gen = torch.Generator().manual_seed(4)
    u, _ = kc._normalise(torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen))
    labels = make_labels(n, "many", gen) if variant == "supcon" else None
    grad = torch.tensor(1.3)
    mine = torch.cat([torch.arange(row_off, row_off + n_local), n + torch.arange(row_off, row_off + n_local)])
    with kc.block_sizes(16, 16):
        full = kc._launch_fwd(u, labels, n, 0, n, 0.3, kc.VARIANTS[variant], False)
        local = kc._launch_fwd(u, labels, n, row_off, n_local, 0.3, kc.VARIANTS[variant], False)
        for got, ref in zip(local, full):
            torch.testing.assert_close(got, ref[mine], rtol=0, atol=1e-6)
        du_full = kc._launch_bwd(u, labels, full[1], full[2], grad, n, 0, n, 0.3, kc.VARIANTS[variant], False)
        du_local = kc._launch_bwd(u, labels, full[1], local[2], grad, n, row_off, n_local, 0.3, kc.VARIANTS[variant],
                                  False)
    torch.testing.assert_close(du_local, du_full[mine] * (n / n_local), rtol=1e-5, atol=1e-6)
    # and the whole-batch gradient is the reference's (so the local rows are too)
    uu = u.clone().requires_grad_(True)
    ref = reference(uu[:n], uu[n:], 0.3, variant, labels)
    (g_ref,) = torch.autograd.grad(ref * grad, uu)
    tangent = du_full - u * (u * du_full).sum(1, keepdim=True)  # u is unit norm: the normalisation's projection
    torch.testing.assert_close(tangent, g_ref, rtol=1e-4, atol=1e-6)


def test_non_contiguous_inputs_and_single_gradient(interpret):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(20, 2 * 24, generator=gen)
    z1, z2 = base[:, :24], base[:, 24:]  # strided views
    assert not z1.is_contiguous()
    a = z1.clone().requires_grad_()
    ref = losses.ntxent_loss(a.double(), z2.double(), 0.3)
    ref.backward()
    b = z1.clone().requires_grad_()
    out = kc.fused_contrastive_loss(b, z2, 0.3)  # z2 needs no gradient
    out.backward()
    assert rel_err(out, ref) < TOL_FP32 and rel_err(b.grad, a.grad) < TOL_FP32


def test_no_grad_forward(interpret):
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    with torch.no_grad():
        out = kc.fused_contrastive_loss(z1, z2, 0.5, variant="decoupled")
    assert rel_err(out, losses.ntxent_loss(z1.double(), z2.double(), 0.5, "decoupled")) < TOL_FP32


def test_input_validation(interpret):
    z = torch.randn(1, 8)
    with pytest.raises(ValueError, match="N >= 2"):
        kc.fused_contrastive_loss(z, z, 0.2, variant="decoupled")
    with pytest.raises(ValueError, match="variant"):
        kc.fused_contrastive_loss(z, z, 0.2, variant="nope")
    with pytest.raises(TypeError, match="float32"):
        kc.fused_contrastive_loss(z.double(), z.double(), 0.2)
    with pytest.raises(ValueError, match="temperature"):
        kc.fused_contrastive_loss(z, z, 0.0)
    with pytest.raises(ValueError, match="labels"):
        kc.fused_contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), 0.2, labels=torch.zeros(3, dtype=torch.long))


def test_cpu_without_interpreter_raises_clearly(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    z = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="CUDA"):
        kc.fused_contrastive_loss(z, z, 0.2)


# ---- dispatch --------------------------------------------------------------------------------

def test_resolve_backend(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert dispatch.resolve_backend("torch", "cpu") == "torch"
    assert dispatch.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(RuntimeError, match="needs a CUDA device.*TRITON_INTERPRET=1"):
        dispatch.resolve_backend("triton", "cpu")
    with pytest.raises(ValueError, match="--kernels"):
        dispatch.resolve_backend("fast", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.resolve_backend("triton", "cpu") == "triton"
    assert dispatch.resolve_backend("auto", "cpu") == "torch"  # auto never picks the interpreter
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            dispatch.resolve_backend("triton", "cuda")


@cuda
def test_resolve_backend_cuda(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert dispatch.resolve_backend("auto", "cuda") == "triton"
    assert dispatch.resolve_backend("triton", "cuda:0") == "triton"


@pytest.mark.parametrize("variant,labels", [("simclr", None), ("decoupled", None),
                                            ("simclr", torch.tensor([0, 1, 0, 2, 1]))])
def test_dispatch_triton_matches_torch(interpret, variant, labels):
    gen = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(5, 12, generator=gen), torch.randn(5, 12, generator=gen)
    got = dispatch.contrastive_loss(z1, z2, 0.2, labels=labels, variant=variant, backend="triton")
    ref = dispatch.contrastive_loss(z1.double(), z2.double(), 0.2, labels=labels, variant=variant, backend="torch")
    assert rel_err(got, ref) < TOL_FP32


def test_dispatch_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    z = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="CUDA"):
        dispatch.contrastive_loss(z, z, 0.2, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        dispatch.contrastive_loss(z, z, 0.2, backend="auto")


# ---- GPU only --------------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,d", [(3, 8), (130, 130), (1000, 256), (300, 600)])
def test_gpu_fp32_ieee(monkeypatch, variant, n, d):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    labels = make_labels(n, "many", torch.Generator().manual_seed(0)) if variant == "supcon" else None
    check_against_reference(variant, n, d, 0.1, labels, device="cuda")


# Unit roundoff (half an ulp at 1) of the operands the tensor cores see: bf16 keeps 8 significant bits, fp16 and
# tf32 11. Low-precision checks compare the fused op's error (vs the float64 reference on the same rounded inputs)
# with the error of eager PyTorch computing the same loss at the same precision: the fused op must be no worse than
# twice that plus two unit roundoffs (a deterministic bound on the error of the row norms would be far looser;
# PyTorch's own computation is the standard a user compares against).
UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11, "tf32": 2.0 ** -11}


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """PyTorch's fp32 CUDA matmuls on tf32 tensor cores inside (the reference's precision), restored after."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        previous, matmul.fp32_precision = matmul.fp32_precision, "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = previous
    else:
        previous, matmul.allow_tf32 = matmul.allow_tf32, enabled
        try:
            yield
        finally:
            matmul.allow_tf32 = previous


def errors_vs_float64(loss_fn, z1, z2, tau, variant, labels, upstream=1.7):
    """Relative errors (max abs error / max abs value) of loss_fn's loss and both gradients on (z1, z2) against
    the float64 reference on the same values."""
    r1, r2 = (z.detach().double().cpu().requires_grad_() for z in (z1, z2))
    ref = reference(r1, r2, tau, variant, labels.cpu() if labels is not None else None)
    (ref * upstream).backward()
    f1, f2 = (z.detach().clone().requires_grad_() for z in (z1, z2))
    out = loss_fn(f1, f2)
    (out * upstream).backward()
    return dict(loss=rel_err(out, ref), dz1=rel_err(f1.grad, r1.grad), dz2=rel_err(f2.grad, r2.grad))


def check_low_precision(variant, n, d, tau, precision, device="cuda"):
    """The fused op (bf16/fp16 inputs, or fp32 with tf32) against eager PyTorch at the same precision, both
    measured against float64: loss and both input gradients."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}[precision]
    tf32 = precision == "tf32"
    gen = torch.Generator().manual_seed(n + d)
    z1 = (torch.randn(n, d, generator=gen) * 3).to(dtype).to(device)
    z2 = (torch.randn(n, d, generator=gen) + 0.1 * z1.float().cpu()).to(dtype).to(device)
    labels = make_labels(n, "many", gen).to(device) if variant == "supcon" else None
    kernel_variant = "simclr" if variant == "supcon" else variant
    fused = errors_vs_float64(lambda a, b: kc.fused_contrastive_loss(a, b, tau, labels=labels, variant=kernel_variant,
                                                                     allow_tf32=tf32), z1, z2, tau, variant, labels)
    with tf32_matmuls(tf32):
        eager = errors_vs_float64(lambda a, b: reference(a, b, tau, variant, labels), z1, z2, tau, variant, labels)
    u = UNIT_ROUNDOFF[precision]
    assert all(fused[k] <= 2 * eager[k] + 2 * u for k in fused), (variant, n, d, precision, fused, eager)
    return fused, eager


@cuda
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,d", [(257, 128), (512, 256)])
def test_gpu_fp32_tf32_loss_and_gradients(monkeypatch, variant, n, d):
    """fp32 inputs with tf32 similarities (training's default on a GPU), loss and gradients; 2N = 1024 at
    d = 256 is the training configuration (split columns)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    check_low_precision(variant, n, d, 0.2, "tf32")


@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,d", [(17, 24), (300, 130), (2048, 128), (512, 256)])
def test_gpu_half_precision(monkeypatch, precision, variant, n, d):
    """bf16/fp16 operands with fp32 accumulation: loss and gradients."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    check_low_precision(variant, n, d, 0.2, precision)


# ---- column splits (flash-decoding style forward combine, partial dU per split) ---------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,d,splits,tau", [(13, 20, 2, 0.1), (13, 20, 5, 0.5), (9, 24, 7, 0.2), (21, 130, 3, 0.07)])
def test_column_splits_match_reference(interpret, variant, n, d, splits, tau):
    """Forced splits with 16 x 16 tiles, ragged N (not a multiple of the tiles): every split path (partials,
    combine, per-split dU summed) against the float64 reference, values and gradients. 7 splits of 18 columns
    (N = 9) leave empty chunks; d = 130 with BLOCK_K = 32 runs the sliced similarity; decoupled row blocks
    that lie in one view split only that view's columns."""
    labels = make_labels(n, "many" if n % 2 else "few", torch.Generator().manual_seed(n)) \
        if variant == "supcon" else None
    block_k = 32 if d > 128 else None
    with kc.block_sizes(16, 16, block_k), kc.column_splits(splits):
        check_against_reference(variant, n, d, tau, labels, seed=n + splits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_split_equals_unsplit(interpret, variant):
    """The split launches give the unsplit launches' loss, lse, |P| and dU (to fp32 rounding)."""
    n, d = 11, 24
    gen = torch.Generator().manual_seed(8)
    u, _ = kc._normalise(torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen))
    labels = make_labels(n, "many", gen) if variant == "supcon" else None
    code, grad = kc.VARIANTS[variant], torch.tensor(0.7)
    outs = {}
    for splits in (1, 4):
        with kc.block_sizes(16, 16), kc.column_splits(splits):
            fwd = kc._launch_fwd(u, labels, n, 0, n, 0.2, code, False)
            du = kc._launch_bwd(u, labels, fwd[1], fwd[2], grad, n, 0, n, 0.2, code, False)
        outs[splits] = (*fwd, du)
    for a, b in zip(outs[1], outs[4]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_column_splits_local_rows(interpret, variant):
    """Local-rows mode with split columns: this rank's rows of the whole-batch results (backward scaled by
    N / n_local), and the whole batch's dU is the reference gradient."""
    n, d, row_off, n_local = 13, 20, 4, 5
    gen = torch.Generator().manual_seed(6)
    u, _ = kc._normalise(torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen))
    labels = make_labels(n, "many", gen) if variant == "supcon" else None
    code, grad = kc.VARIANTS[variant], torch.tensor(1.3)
    mine = torch.cat([torch.arange(row_off, row_off + n_local), n + torch.arange(row_off, row_off + n_local)])
    with kc.block_sizes(16, 16), kc.column_splits(3):
        full = kc._launch_fwd(u, labels, n, 0, n, 0.3, code, False)
        local = kc._launch_fwd(u, labels, n, row_off, n_local, 0.3, code, False)
        du_full = kc._launch_bwd(u, labels, full[1], full[2], grad, n, 0, n, 0.3, code, False)
        du_local = kc._launch_bwd(u, labels, full[1], local[2], grad, n, row_off, n_local, 0.3, code, False)
    for got, ref in zip(local, full):
        torch.testing.assert_close(got, ref[mine], rtol=0, atol=1e-6)
    torch.testing.assert_close(du_local, du_full[mine] * (n / n_local), rtol=1e-5, atol=1e-6)
    uu = u.double().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(reference(uu[:n], uu[n:], 0.3, variant, labels) * grad.double(), uu)
    tangent = du_full - u * (u * du_full).sum(1, keepdim=True)
    torch.testing.assert_close(tangent.double(), g_ref, rtol=1e-4, atol=1e-6)


@cuda
@pytest.mark.parametrize("dtype,tf32", [(torch.float32, True), (torch.float32, False), (torch.bfloat16, False)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gpu_split_matches_unsplit(monkeypatch, dtype, tf32, variant):
    """On the GPU, 2N = 1024 (the plan splits the columns) against the same launches forced unsplit."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    n, d = 512, 128
    gen = torch.Generator().manual_seed(0)
    u, _ = kc._normalise(torch.randn(n, d, generator=gen).cuda().to(dtype), torch.randn(n, d, generator=gen).cuda()
                         .to(dtype))
    labels = make_labels(n, "many", gen).cuda() if variant == "supcon" else None
    code, grad = kc.VARIANTS[variant], torch.tensor(1.0, device="cuda")
    assert kl.launch_plan(2 * n, 2 * n, d, dtype, tf32, interpret=False)[1] > 1
    outs = []
    for forced in (None, 1):
        with kc.column_splits(forced) if forced else contextlib.nullcontext():
            fwd = kc._launch_fwd(u, labels, n, 0, n, 0.2, code, tf32)
            outs.append((*fwd, kc._launch_bwd(u, labels, fwd[1], fwd[2], grad, n, 0, n, 0.2, code, tf32)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
