"""Choose between the fused Triton kernels and the PyTorch reference losses.

Methods call these functions, never a kernel directly. ``backend`` is "torch" or "triton";
``resolve_backend("auto", device)`` gives Triton on CUDA and the reference elsewhere.

"triton" on a CPU device is an error unless ``TRITON_INTERPRET=1`` is set, in which case the kernels
run in Triton's CPU interpreter (correct but very slow: for tests and debugging only). The kernel
modules are imported lazily, so ``--kernels torch`` never needs Triton.

Data-parallel runs (a torch.distributed group of K > 1 ranks, ``fastssl.distributed``): each rank
passes its local (n, d) rows; the contrastive losses then use the global batch of B = K n images:
this rank's 2n rows of Z against all 2B gathered columns (the Triton kernel's local-rows mode, or
``losses.contrastive_rows_loss`` on the reference path), returning the mean over this rank's rows,
so that the mean over ranks is the single-process loss on the concatenated batch. DARe's noise is
drawn for the global batch and sliced, so a rank's rows get the noise of those rows of the
single-process reference run.
"""
from __future__ import annotations

import sys

import torch

from . import distributed, losses
from kernels._triton_utils import check_runnable, interpreter_enabled, triton_importable

BACKENDS = ("auto", "triton", "torch")


def resolve_backend(mode: str, device: torch.device | str) -> str:
    """"torch" or "triton" for ``--kernels mode`` on ``device``; raises RuntimeError when "triton" cannot run."""
    if mode not in BACKENDS:
        raise ValueError(f"--kernels must be one of {BACKENDS}, got {mode!r}")
    device = torch.device(device)
    if mode == "torch":
        return "torch"
    if mode == "auto":
        use = device.type == "cuda" and triton_importable() and not interpreter_enabled()
        return "triton" if use else "torch"
    # mode == "triton": fail now, with a clear message, rather than at the first loss call
    if not triton_importable():
        raise RuntimeError("--kernels triton: the `triton` package is not importable; install it or use --kernels torch")
    if device.type == "cuda":
        if interpreter_enabled():
            raise RuntimeError("--kernels triton on CUDA with TRITON_INTERPRET=1 set: the interpreter runs on CPU "
                               "tensors only; unset TRITON_INTERPRET")
        return "triton"
    if device.type == "cpu" and interpreter_enabled():
        return "triton"
    raise RuntimeError(f"--kernels triton needs a CUDA device, but the device is {device}. Use --kernels auto or "
                       "--kernels torch here" + (", or set TRITON_INTERPRET=1 to run the kernels in Triton's (very "
                                                 "slow) CPU interpreter for testing" if device.type == "cpu" else ""))


def _check_backend(backend: str) -> None:
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch' or 'triton' (resolve 'auto' with resolve_backend), got {backend!r}")


@torch.compiler.assume_constant_result  # torch.compile reads the flag at trace time (its getters are untraceable)
def _tf32_allowed() -> bool:
    """fp32 similarities use tf32 tensor cores exactly when the user allowed tf32 for fp32 CUDA matmuls
    (``torch.backends.cuda.matmul.fp32_precision = "tf32"``, ``allow_tf32 = True`` or
    ``torch.set_float32_matmul_precision("high")``); otherwise true fp32 ("ieee"), like the reference."""
    matmul = torch.backends.cuda.matmul
    try:
        precision = getattr(matmul, "fp32_precision", None)  # the newer API (torch >= 2.9)
        if precision is not None:
            return precision == "tf32"
        return bool(matmul.allow_tf32)
    except RuntimeError:  # torch refuses to answer when the legacy and new APIs were mixed
        return False


_warned: set = set()


def _warn_fallback(kernel: str, error: BaseException) -> None:
    """One line on stderr, once per process and kernel."""
    if kernel in _warned:
        return
    _warned.add(kernel)
    why = (str(error).strip().splitlines() or [""])[0][:300]
    print(f"warning: the fused {kernel} kernel cannot run here ({type(error).__name__}: {why}); "
          "using the PyTorch reference loss instead (--kernels torch silences this)", file=sys.stderr, flush=True)


def _probe_contrastive(device, dtype, n, d, variant, supcon, allow_tf32) -> None:
    from kernels.contrastive import fused_contrastive_loss
    gen = torch.Generator(device=device).manual_seed(0)
    z1, z2 = (torch.randn(n, d, device=device, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    labels = torch.arange(n, device=device) % 3 if supcon else None
    loss = fused_contrastive_loss(z1, z2, 0.5, labels=labels, variant=variant, allow_tf32=allow_tf32)
    torch.autograd.grad(loss, (z1, z2))  # the backward kernel too; grad() leaves no .grad behind
    if not torch.isfinite(loss).item():
        raise RuntimeError(f"non-finite probe loss {loss.item()}")


def _probe_dare(device, dtype, n, d) -> None:
    from kernels.dare import fused_reparam_jsd
    gen = torch.Generator(device=device).manual_seed(0)
    xs = [torch.randn(n, d, device=device, generator=gen).to(dtype).requires_grad_() for _ in range(4)]
    z1, z2, jsd = fused_reparam_jsd(*xs, seed=0)
    torch.autograd.grad(z1.float().sum() + z2.float().sum() + jsd, xs)
    if not torch.isfinite(jsd).item():
        raise RuntimeError(f"non-finite probe JSD {jsd.item()}")


def _probe_cross(device, dtype, n, m, d, allow_tf32) -> None:
    from kernels.cross import fused_cross_contrastive_loss
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(n, d, device=device, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(m, d, device=device, generator=gen).to(dtype)
    loss = fused_cross_contrastive_loss(q, k, 0.5, allow_tf32=allow_tf32)
    torch.autograd.grad(loss, q)
    if not torch.isfinite(loss).item():
        raise RuntimeError(f"non-finite probe loss {loss.item()}")


_PROBES = {"contrastive": _probe_contrastive, "DARe": _probe_dare, "cross contrastive": _probe_cross}


_probed: dict = {}


@torch.compiler.assume_constant_result  # run at trace time, outside the graph: the graph holds only the answer
def _fused_usable(kernel: str, device: str, dtype: torch.dtype, *shape_and_options) -> bool:
    """True when the fused ``kernel`` compiles, launches and gives a finite value for these inputs on ``device``;
    else warns once (see the module docstring) and returns False. Any exception counts: Triton's
    CompilationError or OutOfResources, a driver error for an unsupported GPU, a ptxas failure. Probed once per
    process and arguments."""
    key = (kernel, device, dtype, *shape_and_options)
    if key not in _probed:
        try:
            with torch.enable_grad():
                _PROBES[kernel](torch.device(device), dtype, *shape_and_options)
            _probed[key] = True
        except Exception as e:  # noqa: BLE001 - whatever stops the kernel, training continues on the reference
            _warn_fallback(kernel, e)
            _probed[key] = False
    return _probed[key]


def contrastive_loss(z1, z2, temperature, labels=None, variant="simclr", backend="torch"):
    """NT-Xent ("simclr"), decoupled cross-view ("decoupled") or SupCon (``labels`` given).

    In a process group of K > 1 ranks: the loss of this rank's rows against the global batch (see
    the module docstring)."""
    _check_backend(backend)
    if backend == "triton":
        check_runnable(z1, z2, labels)  # misuse (a CPU tensor without the interpreter) stays an error
        if not _fused_usable("contrastive", str(z1.device), z1.dtype, int(z1.shape[0]) * distributed.world_size(),
                             int(z1.shape[1]), variant if labels is None else "simclr", labels is not None,
                             _tf32_allowed()):
            backend = "torch"
    if distributed.enabled():
        return _gathered_contrastive_loss(z1, z2, temperature, labels, variant, backend)
    if backend == "triton":
        from kernels.contrastive import fused_contrastive_loss
        return fused_contrastive_loss(z1, z2, temperature, labels=labels, variant=variant,
                                      allow_tf32=_tf32_allowed())
    if labels is not None:
        return losses.supcon_loss(z1, z2, labels, temperature)
    return losses.ntxent_loss(z1, z2, temperature, variant=variant)


def cross_contrastive_reference(q, k, temperature, pos_offset=0):
    """cross_entropy(normalize(q) normalize(k)^T / tau, pos_offset + arange(n)): MoCo v3's ctr without its 2 tau."""
    logits = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(k, dim=1).T / temperature
    return torch.nn.functional.cross_entropy(logits.float(), torch.arange(q.shape[0], device=q.device) + pos_offset)


def cross_contrastive(q, k, temperature, backend="torch"):
    """MoCo v3's query-key contrastive loss: cross-entropy of normalize(q) normalize(k)^T / tau with each query's
    own key as the target (the diagonal), averaged over the queries; fp32 scalar. Gradients flow to q, and to k
    only if it requires them (MoCo v3 passes momentum keys without). Multiply by 2 tau for MoCo v3's ctr.

    In a process group of K > 1 ranks the keys are gathered (without gradient: k gets none there) and this rank's
    queries are scored against all K n keys, the positive of query i being key rank * n + i; the mean over this
    rank's queries, whose mean over ranks is the loss of the global batch."""
    _check_backend(backend)
    pos_offset = 0
    if distributed.enabled():
        pos_offset = distributed.rank() * q.shape[0]
        k = distributed.all_gather_nograd(k.detach())
    if backend == "triton":
        check_runnable(q, k)
        if _fused_usable("cross contrastive", str(q.device), q.dtype, int(q.shape[0]), int(k.shape[0]),
                         int(q.shape[1]), _tf32_allowed()):
            from kernels.cross import fused_cross_contrastive_loss
            return fused_cross_contrastive_loss(q, k, temperature, pos_offset=pos_offset, allow_tf32=_tf32_allowed())
    return cross_contrastive_reference(q, k, temperature, pos_offset)


def multiview_contrastive_loss(zs, temperature, labels=None, backend="torch"):
    """The contrastive loss of V >= 2 views of the same images (``losses.multipositive_loss``: every
    view of an image, or with ``labels`` of its class, is a positive).

    V = 2: exactly ``contrastive_loss(zs[0], zs[1], ...)`` (NT-Xent, or SupCon with labels).
    V > 2 and even: the Triton kernel's SupCon path, which sees rows [z1; z2] with labels [y; y]: z1 is
    the first V/2 views stacked, z2 the others, and y the image identities (or the class labels)
    repeated V/2 times; every row then has exactly the group of ``multipositive_loss``, and the loss,
    a mean over rows with label-defined positives, does not depend on the row order. Works under
    torch.distributed like ``contrastive_loss`` (identities are offset by rank * n: unique globally).
    V > 2 and odd: the kernel's [y; y] layout cannot hold an odd number of rows per image, so the
    reference loss runs (on the gathered views under torch.distributed: every rank the same global loss).
    """
    if len(zs) == 2:
        return contrastive_loss(zs[0], zs[1], temperature, labels=labels, backend=backend)
    _check_backend(backend)
    n = zs[0].shape[0]
    if labels is None:
        first = distributed.rank() * n if distributed.enabled() else 0
        labels = torch.arange(first, first + n, device=zs[0].device)
    half = len(zs) // 2
    if len(zs) % 2 == 0:
        return contrastive_loss(torch.cat(zs[:half]), torch.cat(zs[half:]), temperature, labels=labels.repeat(half),
                                backend=backend)
    if distributed.enabled():
        gathered = [distributed.all_gather_with_grad(z) for z in zs]
        return losses.multipositive_loss(gathered, temperature, distributed.all_gather_nograd(labels))
    return losses.multipositive_loss(zs, temperature, labels)


@torch.compiler.disable  # collectives: a graph break under torch.compile
def _gathered_contrastive_loss(z1, z2, temperature, labels, variant, backend):
    if backend == "triton":
        from kernels.contrastive import gathered_contrastive_loss
        return gathered_contrastive_loss(z1, z2, temperature, labels=labels, variant=variant,
                                         allow_tf32=_tf32_allowed(), rank=distributed.rank(),
                                         world_size=distributed.world_size(),
                                         all_gather=distributed.all_gather_nograd)
    # Reference: gradient-correct gather of both views, this rank's rows against all columns.
    n, world, rank = z1.shape[0], distributed.world_size(), distributed.rank()
    big1, big2 = distributed.all_gather_with_grad(z1), distributed.all_gather_with_grad(z2)
    mine = torch.arange(rank * n, (rank + 1) * n, device=z1.device)
    rows = torch.cat([mine, mine + world * n])
    y = distributed.all_gather_nograd(labels) if labels is not None else None
    return losses.contrastive_rows_loss(big1, big2, temperature, rows, labels=y, variant=variant)


def _global_noise(mu: torch.Tensor) -> torch.Tensor:
    """N(0, I) drawn for the global batch (K n rows, the same stream on every rank), this rank's n rows."""
    n, world, rank = mu.shape[0], distributed.world_size(), distributed.rank()
    return torch.randn((world * n, *mu.shape[1:]), dtype=mu.dtype, device=mu.device)[rank * n:(rank + 1) * n]


def reparam_jsd(mu1, logvar1, mu2, logvar2, backend="torch"):
    """(z1, z2, jsd): both views reparameterised with fresh N(0, I) noise, and their Gaussian JSD.

    On the Triton path the noise comes from the kernel's Philox generator; its seed is drawn on the input's
    device from torch's generator of that device, so ``torch.manual_seed`` makes runs reproducible (the noise
    differs from the reference's ``torch.randn`` stream, it is not the same sample).
    """
    _check_backend(backend)
    if backend == "triton":
        check_runnable(mu1, logvar1, mu2, logvar2)
        if not _fused_usable("DARe", str(mu1.device), mu1.dtype, int(mu1.shape[0]), int(mu1.shape[1])):
            backend = "torch"
    if distributed.enabled():
        # The global batch's noise, sliced (matches the single-process reference run row for row).
        # The JSD is per sample: this rank's mean, whose mean over ranks is the global mean.
        eps1, eps2 = _global_noise(mu1), _global_noise(mu2)
        if backend == "triton":
            from kernels.dare import fused_reparam_jsd
            return fused_reparam_jsd(mu1, logvar1, mu2, logvar2, eps1=eps1, eps2=eps2)
        return (losses.reparameterize(mu1, logvar1, eps1), losses.reparameterize(mu2, logvar2, eps2),
                losses.gaussian_jsd(mu1, logvar1, mu2, logvar2))
    if backend == "triton":
        from kernels.dare import draw_seed, fused_reparam_jsd
        # the seed is drawn on the device, inside a compiled graph, and read by the kernel: no host sync
        return fused_reparam_jsd(mu1, logvar1, mu2, logvar2, seed=draw_seed(mu1.device))
    z1 = losses.reparameterize(mu1, logvar1)
    z2 = losses.reparameterize(mu2, logvar2)
    return z1, z2, losses.gaussian_jsd(mu1, logvar1, mu2, logvar2)
