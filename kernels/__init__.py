"""Fused Triton kernels for fastssl's hot losses, and the dispatcher that picks fused or reference."""
