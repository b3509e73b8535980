"""What a training run knows about itself between steps, and its clock: the part of a checkpoint that is
not weights. ``TrainState.to_checkpoint()`` / ``from_checkpoint()`` carry it across a resume exactly."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field


def now() -> float:
    return time.perf_counter()


@dataclass
class TrainState:
    epoch: int = 0                         # whole epochs done
    batch: int = 0                         # batches done of the current epoch (a resume skips them)
    step: int = 0                          # optimiser steps done
    epoch_loss: float = 0.0                # sum of the current epoch's batch losses so far
    epoch_train_s: float = 0.0             # training seconds spent in the current epoch so far
    history: list = field(default_factory=list)  # one row per finished (or stopped) epoch
    metrics: list = field(default_factory=list)  # metrics.jsonl: epoch and knn rows
    wall_s: float = 0.0                    # all seconds of the run, over resumes (at the last checkpoint)
    train_s: float = 0.0                   # training seconds, over resumes (at the last checkpoint)
    knn_s: float = 0.0                     # seconds spent in the kNN monitor, over resumes
    knn_top1_init: float | None = None     # kNN of the untrained network
    time_to_target_s: float | None = None  # training seconds until --target-knn was reached
    images_to_target: int | None = None

    def to_checkpoint(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainState:
        return cls(**{f.name: ckpt[f.name] for f in dataclasses.fields(cls)})

    def last_knn_step(self) -> int:
        """The step of the last kNN measurement when it is the last metrics row, else -1."""
        return self.metrics[-1]["step"] if self.metrics and self.metrics[-1]["event"] == "knn" else -1


class TrainClock:
    """Training seconds: wall time since the start, minus paused spans (evaluation, reports), plus the
    seconds carried over from before a resume."""

    def __init__(self, carried: float = 0.0):
        self.carried, self.started = carried, now()

    def read(self) -> float:
        return self.carried + now() - self.started

    @contextlib.contextmanager
    def paused(self):
        t0 = now()
        try:
            yield
        finally:
            self.started += now() - t0
