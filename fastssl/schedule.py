"""Schedules over training progress: the learning rate and the global-crop resolution.

Progress p in [0, 1] is the fraction of training done: steps done / total steps in the default
(epoch) mode, or training seconds spent / ``--time-budget`` in budget mode. Both schedules are
functions of p alone, so a budgeted run ends its warmup, decay and resolution ramp exactly when its
budget is spent, whatever the speed of the machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, final_frac: float = 0.0) -> float:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to ``final_frac * peak_lr``
    (the step-counted schedule of the default mode)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def lr_at_progress(progress: float, warmup_frac: float, peak_lr: float, final_frac: float = 0.0) -> float:
    """The same shape over progress p in [0, 1]: linear warmup to ``peak_lr`` over the first ``warmup_frac``,
    then cosine decay to ``final_frac * peak_lr`` at p = 1 (clamped beyond)."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup_frac:
        return peak_lr * p / warmup_frac
    t = (p - warmup_frac) / max(1e-12, 1.0 - warmup_frac)
    return peak_lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def parse_res_schedule(spec: str, full: int = 32) -> list[tuple[float, int]]:
    """``"16,24,32"`` -> [(1/3, 16), (2/3, 24), (1.0, 32)] (equal parts of training), or explicit ends
    ``"16@0.3,24@0.6,32"`` -> [(0.3, 16), (0.6, 24), (1.0, 32)]: each size is used until its end fraction.
    ``""`` -> [] (off: always ``full``). Sizes must lie in [8, full] and the last part ends at 1.0.
    Raises ValueError with a one-line message."""
    spec = (spec or "").strip()
    if not spec:
        return []
    parts = [p.strip() for p in spec.split(",")]
    explicit = any("@" in p for p in parts)
    out: list[tuple[float, int]] = []
    for i, part in enumerate(parts):
        size_text, _, end_text = part.partition("@")
        try:
            px = int(size_text)
        except ValueError:
            raise ValueError(f"--res-schedule {spec!r}: {size_text!r} is not a pixel size") from None
        if not 8 <= px <= full:
            raise ValueError(f"--res-schedule {spec!r}: sizes must be between 8 and {full} px, got {px}")
        if not explicit:
            end = (i + 1) / len(parts)
        elif end_text:
            try:
                end = float(end_text)
            except ValueError:
                raise ValueError(f"--res-schedule {spec!r}: {end_text!r} is not a fraction of training") from None
        elif i == len(parts) - 1:
            end = 1.0
        else:
            raise ValueError(f"--res-schedule {spec!r}: every size but the last needs @END (e.g. 16@0.3)")
        if not (0.0 < end <= 1.0) or (out and end <= out[-1][0]):
            raise ValueError(f"--res-schedule {spec!r}: end fractions must increase within (0, 1]")
        out.append((end, px))
    if out[-1][0] != 1.0:
        raise ValueError(f"--res-schedule {spec!r}: the last size must run to the end (@1 or no @)")
    return out


def resolution_at(schedule: list[tuple[float, int]], progress: float, full: int = 32) -> int:
    """The global-crop size at ``progress``: the first part whose end lies beyond it (``full`` when off)."""
    for end, px in schedule:
        if progress < end:
            return px
    return schedule[-1][1] if schedule else full


PROGRESS_STEPS = 1_000_000  # budget mode: Method.on_step sees progress as (round(p * this), this)


@dataclass(frozen=True)
class TrainSchedule:
    """A run's progress, lr and the position ``Method.on_step`` sees, in either mode: epochs (progress =
    steps / total steps, the lr counted in steps) or ``--time-budget`` (progress = training seconds / budget)."""
    peak_lr: float
    total_steps: int
    warmup_steps: int
    warmup_frac: float
    budget: float

    def progress(self, step: int, train_s: float) -> float:
        return min(1.0, train_s / self.budget) if self.budget else min(1.0, step / max(1, self.total_steps))

    def lr(self, step: int, progress: float) -> float:
        if self.budget:
            return lr_at_progress(progress, self.warmup_frac, self.peak_lr)
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr)

    def position(self, step: int, progress: float) -> tuple[int, int]:
        """(done, total) for ``Method.on_step``: steps, or progress in millionths under a budget."""
        if self.budget:
            return round(progress * PROGRESS_STEPS), PROGRESS_STEPS
        return step, self.total_steps
