"""Launch planning (kernels/launch.py): configurations for every width and target, shared memory within each
target's limit, grids that fill the target's SMs, and the device's own target read from the device."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from kernels import launch as kl  # noqa: E402

OPERANDS = ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False), (torch.float16, False))


def _ctas(grid) -> int:
    ctas = 1
    for g in grid:
        ctas *= g
    return ctas


@pytest.mark.parametrize("name", sorted(kl.TARGETS))
def test_launch_configs_cover_every_width_and_fit_the_target(name):
    """GPU configs exist for narrow and wide rows, stay within the shapes the kernels assume, and their shared
    memory estimate (with headroom) is within the target's opt-in limit per block."""
    target = kl.TARGETS[name]
    for dtype, tf32 in OPERANDS:
        for d in (1, 8, 24, 64, 100, 128, 130, 256, 257, 1000, 4096):
            for backward in (False, True):
                c = kl.launch_config(d, dtype, tf32, interpret=False, backward=backward, target=target)
                assert c["BLOCK_D"] >= d and c["BLOCK_D"] % c["BLOCK_K"] == 0
                assert min(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]) >= 16  # tl.dot's minimum on a GPU
                if backward:
                    assert c["BLOCK_D"] % c["BLOCK_DV"] == 0 and c["BLOCK_DV"] >= 16
                assert kl.fits(c, dtype, backward, target), (name, dtype, tf32, d, backward, c)


def test_h100_tiles_are_the_base_tiles_and_smaller_parts_get_smaller_tiles():
    """sm_90 keeps the tiles its AOT table was tuned with. Before Hopper the row block a dot holds in registers
    is at most 64 x 128 elements; beyond that only shared memory shrinks tiles: the 163 KB A100 keeps the rest of
    the d = 256 tf32 backward's tiles, the 99 KB parts get narrower column tiles."""
    sm90, sm86, sm80 = kl.TARGETS["sm_90"], kl.TARGETS["sm_86"], kl.TARGETS["sm_80"]
    for backward in (False, True):
        base = kl.launch_config(256, torch.float32, True, interpret=False, backward=backward, target=sm90)
        assert (base["BLOCK_M"], base["BLOCK_N"]) == (64, 32)
        a100 = kl.launch_config(256, torch.float32, True, interpret=False, backward=backward, target=sm80)
        assert a100 == dict(base, BLOCK_M=32)
        rtx = kl.launch_config(256, torch.float32, True, interpret=False, backward=backward, target=sm86)
        assert rtx["BLOCK_M"] == 32 and rtx["BLOCK_N"] == (16 if backward else 32)
        assert not kl.fits(a100, torch.float32, backward, sm86) if backward else kl.fits(a100, torch.float32,
                                                                                          backward, sm86)
    for d in (64, 128, 256):
        for target in kl.TARGETS.values():
            for backward in (False, True):
                c = kl.launch_config(d, torch.bfloat16, False, interpret=False, backward=backward, target=target)
                if target.arch < 90:
                    assert c["BLOCK_M"] * c["BLOCK_D"] <= 64 * 128, (target.name, d, c)


def test_fit_refuses_when_nothing_fits():
    tiny = kl.Target("tiny", 80, 10, 4096)
    with pytest.raises(ValueError, match="shared memory"):
        kl.launch_config(256, torch.float32, True, interpret=False, target=tiny)


@pytest.mark.parametrize("name", sorted(kl.TARGETS))
def test_split_plan_fills_the_target(name):
    """>= 1 CTA per SM at 2N = 1024 and >= 2 per SM at 2N = 8192 for every precision, width, pass and the
    local-rows mode (2 ranks); no split once the rows alone give 2 CTAs per SM."""
    target = kl.TARGETS[name]
    for dtype, tf32 in OPERANDS[:3]:
        for d in (64, 128, 256, 512, 2048):
            for backward in (False, True):
                for two_n, rows, want in ((1024, 1024, target.sms), (1024, 512, target.sms),
                                          (8192, 8192, 2 * target.sms), (8192, 4096, 2 * target.sms)):
                    cfg, splits, grid = kl.launch_plan(rows, two_n, d, dtype, tf32, interpret=False,
                                                       backward=backward, target=target)
                    assert _ctas(grid) >= want, (name, dtype, tf32, d, backward, two_n, rows, cfg, grid)
                    assert splits <= triton.cdiv(two_n, cfg["BLOCK_N"])
                _, splits, _ = kl.launch_plan(65536, 65536, d, dtype, tf32, interpret=False, backward=backward,
                                              target=target)
                assert splits == 1


def test_num_splits():
    assert kl.num_splits(8, 1024, 32, 132) == 32 and kl.num_splits(64, 8192, 32, 132) == 5
    assert kl.num_splits(300, 8192, 32, 132) == 1
    assert kl.num_splits(8, 1024, 32, 58) == 11  # an L4: fewer SMs, fewer splits (chunks of 3 whole tiles)


def test_column_splits_rejects_zero():
    with pytest.raises(ValueError, match="splits"):
        with kl.column_splits(0):
            pass


def test_device_target():
    """Without CUDA the default (sm_90) profile; on a GPU the device's SMs, capability and opt-in shared memory."""
    target = kl.device_target()
    if not torch.cuda.is_available():
        assert target == kl.DEFAULT_TARGET and kl.sm_count() == 132
        return
    props = torch.cuda.get_device_properties(0)
    assert target.sms == props.multi_processor_count == kl.sm_count()
    assert target.arch == props.major * 10 + props.minor
    assert props.shared_memory_per_block <= target.smem_per_block < props.shared_memory_per_multiprocessor
