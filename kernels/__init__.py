"""Fused Triton kernels for self-supervised losses, registered as ``torch.ops.ssl_kernels.*``.

A leaf package: it imports only torch, triton and the standard library. The dispatcher that picks a
fused kernel or the PyTorch reference lives with the reference losses, outside this package, and passes
the kernels what they need (gathered tensors, row offsets, the world size, a gather function) as arguments.
"""
