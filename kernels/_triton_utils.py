"""Small helpers shared by the Triton kernels: lazy JIT/interpreter selection and capability checks.

Triton decides between the GPU compiler and its CPU interpreter when ``@triton.jit`` runs, i.e. at
import time of the module that defines the kernel (``TRITON_INTERPRET`` is read by the decorator).
That makes the choice depend on import order: a test that sets ``TRITON_INTERPRET=1`` after some
other module imported ``kernels`` would get compiled kernels it cannot launch on CPU tensors. Our
kernels are therefore plain Python functions wrapped in :class:`LazyKernel`, which reads the
environment at launch time and builds the matching Triton object once per mode. ``.jit`` always
gives the compiler's ``JITFunction`` (used for ahead-of-time compilation checks).
"""
from __future__ import annotations

import contextlib
import os

import torch

_TRUE = ("1", "true", "on", "yes")


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is requested (``TRITON_INTERPRET=1``), read now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - triton missing or broken
        return False
    return True


def check_runnable(*tensors: torch.Tensor) -> None:
    """Raise a clear RuntimeError unless the fused kernels can run on these tensors' device."""
    if not triton_importable():
        raise RuntimeError("the fused Triton kernels need the `triton` package, which is not importable here; "
                           "use --kernels torch (the PyTorch reference)")
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise RuntimeError(f"all inputs of a fused kernel must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cuda":
        if interpreter_enabled():
            raise RuntimeError("TRITON_INTERPRET=1 is set but the inputs are CUDA tensors: the Triton interpreter "
                               "runs on CPU tensors only; unset TRITON_INTERPRET to run the kernels on the GPU")
        return
    if device.type == "cpu":
        if interpreter_enabled():
            return
        raise RuntimeError("the fused Triton kernels (--kernels triton) need a CUDA GPU, but the inputs are on the "
                           "CPU; use --kernels torch or --kernels auto here, or set TRITON_INTERPRET=1 to run the "
                           "kernels in Triton's (very slow) CPU interpreter for testing")
    raise RuntimeError(f"the fused Triton kernels cannot run on device {device}; use --kernels torch")


class LazyKernel:
    """A Triton kernel whose compiled-vs-interpreted form is chosen when it is launched."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._jit = None
        self._interpreted = None

    @property
    def jit(self):
        """The compiler's JITFunction (whatever TRITON_INTERPRET says): for launches on a GPU and AOT."""
        if self._jit is None:
            from triton.runtime.jit import JITFunction
            self._jit = JITFunction(self.fn)
        return self._jit

    @property
    def interpreted(self):
        if self._interpreted is None:
            from triton.runtime.interpreter import InterpretedFunction
            self._interpreted = InterpretedFunction(self.fn)
        return self._interpreted

    def __getitem__(self, grid):
        if not interpreter_enabled():
            return self.jit[grid]
        launcher = self.interpreted[grid]

        def launch(*args, **kwargs):
            with _interpreted_jit_calls():
                return launcher(*args, **kwargs)
        return launch


_interpreted_cache: dict = {}


def _call_interpreted(jit_function, *args, **kwargs):
    from triton.runtime.interpreter import InterpretedFunction
    fn = _interpreted_cache.get(jit_function.fn)
    if fn is None:
        fn = _interpreted_cache[jit_function.fn] = InterpretedFunction(jit_function.fn)
    return fn(*args, **kwargs)


@contextlib.contextmanager
def _interpreted_jit_calls():
    """Let an interpreted kernel call Triton's own ``@triton.jit`` library functions (``tl.sum``,
    ``tl.zeros``, ``tl.randn``, ...) even when triton was imported without TRITON_INTERPRET=1: those were
    made compiler-only ``JITFunction`` objects at import, whose ``__call__`` refuses to run. For the
    duration of an interpreted launch they run through the interpreter instead, and the language
    attributes the interpreter patches are restored afterwards so later GPU/AOT compilation is unaffected.
    """
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    modules = [tl, tl.core, tl.math, tl.standard, tl.random]
    classes = [tl.core.tensor]
    saved = [(m, dict(vars(m))) for m in modules + classes]
    original_call = JITFunction.__call__
    JITFunction.__call__ = _call_interpreted
    try:
        yield
    finally:
        JITFunction.__call__ = original_call
        for obj, before in saved:
            now = vars(obj)  # names the interpreter added (its rewritten functions' globals) stay
            for name, value in before.items():
                if now.get(name, _MISSING) is not value:
                    setattr(obj, name, value)


_MISSING = object()


def lazy_kernel(fn) -> LazyKernel:
    return LazyKernel(fn)


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())
