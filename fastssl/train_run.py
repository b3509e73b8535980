"""The named helpers the training loop (``fastssl.train``) calls: kNN measurements and the target stop,
checkpoints, metrics and progress lines, the epoch rows and the closing summary. ``Run`` holds what they
share (the Config, the step, the ``TrainState``, the training clock, the output folder); the loop itself
keeps only the control flow."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from data_prep.atomic import write_text

from . import checkpoint, distributed, train_state
from .checkpoint import CHECKPOINT
from .runtime import device_name
from .schedule import TrainSchedule, parse_res_schedule, resolution_at
from .step import Step, begin_epoch
from .train_state import TrainClock, TrainState

PLOT_EVERY_S = 60.0  # curves.png is redrawn at an epoch end at most this often (drawing takes ~1 s), and at the end


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint (if any) is kept."""


class GlobalSize:
    """Progressive resolution (--res-schedule): the loader renders global crops at the schedule's size
    from the next batch on."""

    def __init__(self, loader, cfg):
        self.loader, self.full = loader, cfg.resolution
        self.schedule = parse_res_schedule(cfg.res_schedule, full=cfg.resolution)
        self.px = None

    def follow(self, progress: float) -> None:
        px = resolution_at(self.schedule, progress, full=self.full)
        if self.schedule and px != self.px:
            self.loader.set_global_size(px)
        self.px = px


class Run:
    """One run's shared parts and the loop's helpers. Only rank 0 (``main``) evaluates and writes files."""

    def __init__(self, cfg, device: torch.device, ds, step: Step, state: TrainState, evaluator, t_start: float,
                 saved: bool, main: bool, log):
        self.cfg, self.device, self.ds, self.step, self.state = cfg, device, ds, step, state
        self.evaluator, self.main, self.log = evaluator, main, log
        self.clock, self.t_start, self.wall_before = TrainClock(state.train_s), t_start, state.wall_s
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / CHECKPOINT
        self.saved = saved  # a checkpoint of this run exists (said when the loss diverges)
        self.last_plot = time.perf_counter()
        self.tb = None
        if main:  # data and model are ready: now the output folder may appear
            self.out.mkdir(parents=True, exist_ok=True)
            if cfg.log == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.out / "tensorboard"))

    def wall(self) -> float:
        return self.wall_before + train_state.now() - self.t_start

    def call_spent(self) -> bool:
        """This call's ``--stop-after`` seconds are spent (rank 0's clock decides for every rank)."""
        if not self.cfg.stop_after:
            return False
        return bool(distributed.from_rank0(float(train_state.now() - self.t_start >= self.cfg.stop_after), self.device))

    def pause(self) -> dict:
        """The end of a call stopped by ``--stop-after``: its checkpoint is written; metrics.jsonl now too."""
        st, cfg = self.state, self.cfg
        self.report()
        budget = f" of {cfg.time_budget:g}" if cfg.time_budget else ""
        self.log(f"paused after {train_state.now() - self.t_start:.0f} s of this call (--stop-after {cfg.stop_after:g}) "
                 f"at step {st.step}, {self.clock.read():.1f}{budget} training seconds spent; continue with "
                 f"--resume --out {cfg.out}")
        return dict(stopped_by="paused", steps=st.step, train_s=self.clock.read(), out=str(self.out))

    # ---- the clock and the loss -------------------------------------------------------------------

    def read_clock(self, sync: bool = False) -> float:
        """Training seconds, agreed over ranks; ``sync``: after the device finished its queued work."""
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return distributed.from_rank0(self.clock.read(), self.device)

    def mean_loss(self, loss_sum: torch.Tensor, batches: int, epoch: int) -> float:
        """The epoch's mean loss so far over all ranks (every rank sees a NaN together); raises
        ``TrainingDiverged`` when it is not finite."""
        mean = distributed.all_reduce_mean(loss_sum).item() / batches
        if not math.isfinite(mean):
            kept = (f"the last good checkpoint is kept in {self.ckpt_path}" if self.saved else
                    "no checkpoint was written (it diverged before the first one)")
            raise TrainingDiverged(f"loss is {mean} at epoch {epoch + 1}, step {self.state.step}; {kept}")
        return mean

    def start_epoch(self, loader, ckpt: dict | None):
        """The epoch's batches; resuming mid-epoch (``ckpt``): the RNG as it was, the first batches replayed."""
        begin_epoch(loader, self.cfg.seed, self.state.epoch)
        if ckpt is not None:
            torch.set_rng_state(ckpt["rng_cpu"])
            if self.device.type == "cuda" and "rng_cuda" in ckpt:
                torch.cuda.set_rng_state(ckpt["rng_cuda"], self.device)
        self.step.method.train()
        batches = iter(loader)
        for _ in range(self.state.batch):
            next(batches)
        return batches

    # ---- evaluation and the target stop -----------------------------------------------------------

    def measure_knn(self, epoch: float, step: int) -> float | None:
        """One kNN measurement (rank 0; paused clock) recorded as a metrics row."""
        if self.evaluator is None:
            return None
        t0, at = train_state.now(), self.clock.read()
        with self.clock.paused():
            accs = self.evaluator.knn(self.step.method.encoder)
        top1 = accs[self.cfg.knn_k]
        self.state.knn_s += train_state.now() - t0
        self.state.metrics.append(dict(event="knn", epoch=epoch, step=step, images=step * self.cfg.batch_size,
                                       train_s=at, wall_s=self.wall(), knn_top1=top1, knn_top1_k20=accs[20]))
        if self.tb is not None:
            self.tb.add_scalar("knn/top1", top1, step)
        return top1

    def target_reached(self, top1: float | None) -> bool:
        """Whether --target-knn has been reached (recording when, the first time)."""
        st, target = self.state, self.cfg.target_knn
        if target and top1 is not None and top1 >= target and st.time_to_target_s is None:
            st.time_to_target_s = st.metrics[-1]["train_s"]  # when the model that reached it was trained
            st.images_to_target = st.step * self.cfg.batch_size
            self.log(f"kNN top-1 {top1:.2f}% reached the target {target:g}% after {st.time_to_target_s:.1f} "
                     f"training seconds, {st.images_to_target} images")
        return st.time_to_target_s is not None

    def final_knn(self, steps_per_epoch: int) -> None:
        """The kNN of a run that stopped between measurements (its budget), put on its last epoch row."""
        st = self.state
        top1 = self.measure_knn(st.epoch + st.batch / steps_per_epoch, st.step)
        epoch_rows = [r for r in st.metrics if r["event"] == "epoch"]
        if epoch_rows and epoch_rows[-1]["step"] == st.step:
            epoch_rows[-1]["knn_top1"] = st.history[-1]["knn_top1"] = top1
        self.save(st.epoch_loss)

    # ---- checkpoints and reports ------------------------------------------------------------------

    def save(self, epoch_loss: float) -> None:
        """A checkpoint of the current state: after ``state.epoch`` whole epochs and ``state.batch`` batches."""
        ds = self.ds
        state = dict(self.step.state_dict(), **self.state.to_checkpoint())
        state.update(epoch_loss=epoch_loss, wall_s=self.wall(), train_s=self.clock.read(),
                     rng_cpu=torch.get_rng_state(), norm_mean=[float(v) for v in ds.mean],
                     norm_std=[float(v) for v in ds.std], config=dataclasses.asdict(self.cfg))
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        with self.clock.paused():  # checkpoint writes are not training: not charged to the budget (wall_s has them)
            checkpoint.save_checkpoint(state, self.ckpt_path)  # the unwrapped method: resumable on any ranks
        self.saved = True

    def report(self, final: bool = False) -> None:
        """metrics.jsonl, and curves.png now and then and at the end (not charged to the training clock)."""
        with self.clock.paused():
            write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.state.metrics))
            if final or time.perf_counter() - self.last_plot >= PLOT_EVERY_S:
                from .plots import plot_curves
                cfg = self.cfg
                plot_curves(self.state.metrics, self.out / "curves.png", title=f"{cfg.method} {cfg.dataset} {cfg.encoder}")
                self.last_plot = time.perf_counter()

    def progress_line(self, label: str, schedule: TrainSchedule, loss: float, lr: float, images_per_s: float,
                      train_s: float, progress: float) -> str:
        """One plain log line: where, loss, lr, speed and the time left (from the budget or the step rate)."""
        step, budget = self.state.step, self.cfg.time_budget
        if budget:
            left, where = max(0.0, budget - train_s), f"step {step}"
        else:
            left = (train_s / max(progress, 1e-9)) * (1 - progress) if progress else float("nan")
            where = f"step {step}/{schedule.total_steps}"
        eta = "?" if not math.isfinite(left) else time.strftime("%H:%M:%S", time.gmtime(left))
        return f"{label} {where} loss {loss:.4f} lr {lr:.4g} img/s {images_per_s:.0f} ETA {eta}"

    # ---- epochs and the summary -------------------------------------------------------------------

    def end_epoch(self, epoch: int, steps_per_epoch: int, loss_sum: torch.Tensor, lr: float, train_s: float,
                  epoch_t0: float) -> tuple[dict, bool]:
        """The epoch's metrics row (a fractional epoch when stopped inside it: a resume continues it) and
        whether the epoch is whole; the state moves to the next epoch."""
        st = self.state
        done, epoch_train_s = st.batch, train_s - epoch_t0
        whole = done == steps_per_epoch
        row = dict(event="epoch", epoch=epoch + 1 if whole else round(epoch + done / steps_per_epoch, 4),
                   step=st.step, loss=distributed.all_reduce_mean(loss_sum).item() / max(1, done), lr=lr,
                   images_per_s=done * self.cfg.batch_size / max(1e-9, epoch_train_s),
                   epoch_s=epoch_train_s, train_s=train_s, wall_s=self.wall(), knn_top1=None)
        if whole:
            st.epoch, st.batch, st.epoch_train_s, st.epoch_loss = epoch + 1, 0, 0.0, 0.0
        else:
            st.epoch_train_s, st.epoch_loss = epoch_train_s, row["loss"] * done
        return row, whole

    def record_epoch(self, row: dict, label: str, schedule: TrainSchedule, train_s: float) -> None:
        """The epoch row into the history and metrics, TensorBoard and the log."""
        self.state.history.append({k: v for k, v in row.items() if k != "event"})
        self.state.metrics.append(row)
        if self.tb is not None:
            for name in ("loss", "lr", "images_per_s"):
                self.tb.add_scalar(f"train/{name}", row[name], row["step"])
        if self.main:
            knn = f" knn_top1 {row['knn_top1']:.2f}" if row["knn_top1"] is not None else ""
            self.log(self.progress_line(label, schedule, row["loss"], row["lr"], row["images_per_s"], train_s,
                                        schedule.progress(self.state.step, train_s)) + knn)

    def finish(self, train_s: float, stopped_by: str, steps_per_epoch: int, world: int) -> dict:
        """The final reports, the linear probe and summary.json (rank 0)."""
        cfg, st = self.cfg, self.state
        self.report(final=True)
        linear, linear_s = None, 0.0
        if cfg.linear_eval and self.evaluator is not None:
            t0 = train_state.now()
            linear = self.evaluator.linear(self.step.method.encoder)
            linear_s = train_state.now() - t0
        knn_rows = [r for r in st.metrics if r["event"] == "knn"]
        finished_epochs = st.epoch + st.batch / steps_per_epoch
        summary = dict(method=cfg.method, dataset=cfg.dataset, encoder=cfg.encoder,
                       epochs=cfg.epochs if finished_epochs == cfg.epochs else round(finished_epochs, 3),
                       steps=st.step, images_seen=st.step * cfg.batch_size, wall_s=self.wall(),
                       train_s=train_s, eval_s=st.knn_s + linear_s, knn_s=st.knn_s,
                       linear_s=linear_s, time_budget_s=cfg.time_budget or None, target_knn=cfg.target_knn or None,
                       time_to_target_s=st.time_to_target_s, images_to_target=st.images_to_target,
                       stopped_by=stopped_by, device=device_name(self.device, world),
                       knn_top1_init=st.knn_top1_init, knn_top1=knn_rows[-1]["knn_top1"] if knn_rows else None,
                       knn_top1_k20=knn_rows[-1].get("knn_top1_k20") if knn_rows else None,
                       linear_top1=linear, config=dataclasses.asdict(cfg))
        write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        if self.tb is not None:
            self.tb.close()
        return summary
