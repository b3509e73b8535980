"""The training loop: data on the device, two views, one ``fastssl.step.Step`` per batch; kNN monitor,
atomic checkpoints, exact resume, metrics.jsonl, summary.json and curves.png in ``cfg.out``. The run's
state between steps is a ``TrainState`` (``fastssl.train_state``); the loop's helpers (evaluation, the
target stop, checkpoints, reports) are ``fastssl.train_run.Run``'s.

Two ways to say how long to train:

- epochs (the default): the lr warms up over ``warmup_epochs`` and decays (cosine) over the steps of
  ``epochs`` epochs;
- ``time_budget`` seconds: progress p = training seconds spent / budget, the lr warms up over the first
  ``warmup_epochs / epochs`` of p and decays over the rest, and the run stops when p reaches 1 (epochs
  then only set that fraction). Training seconds exclude evaluation (kNN monitor, probe) and writing
  checkpoints, metrics and plots (``wall_s`` counts everything). On CUDA (or with several processes) the clock is read
  after a device sync every ``SYNC_EVERY_STEPS`` steps (and agreed over ranks), so the lr and the stop
  lag the true time by at most that many steps; on a single CPU process it is read every step.

``target_knn`` stops the run when the kNN monitor (every ``knn_every_steps`` steps and/or every
``knn_every`` epochs) reaches that top-1. Checkpoints are written at the end of every epoch, every
``CHECKPOINT_EVERY_S`` training seconds within an epoch, and where the run stops; ``--resume`` continues
mid-epoch exactly (the loader replays the epoch's first batches and discards them; the RNG state and
the budget's seconds are carried).

Under torchrun (WORLD_SIZE > 1) the same loop runs data-parallel (``fastssl.distributed``): every
BatchNorm is synchronised (SyncBatchNorm on CUDA, CrossRankBatchNorm on CPU), the method is wrapped
in DistributedDataParallel, each rank loads its shard of every global batch of ``cfg.batch_size``,
and only rank 0 prints, shows progress, evaluates and writes files (its clock and stop decisions are
broadcast). Checkpoints hold the unwrapped method's state, so a run can resume on another number of ranks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from data_prep import load_dataset

from . import distributed, methods, train_state
from .checkpoint import CHECKPOINT, CheckpointError, load_checkpoint
from .config import Config, config_from_checkpoint
from .augment import TwoViewAugment, policy_pair
from .eval import Evaluator, fixed_subset
from .loaders import build_loader
from .step import Step, build_method
from .train_run import GlobalSize, Run, TrainingDiverged
from .train_state import TrainState

__all__ = ["CHECKPOINT_EVERY_S", "ResumeError", "RunError", "TrainingDiverged", "train"]

LOG_EVERY_S = 30.0          # without a terminal: one plain progress line this often (and at each epoch end)
CHECKPOINT_EVERY_S = 600.0  # a mid-epoch checkpoint after this many training seconds without one
SYNC_EVERY_STEPS = 8        # CUDA or several processes: read (and agree on) the clock this often
LOSS_EVERY_STEPS = 20       # the epoch's mean loss is read (a device sync) and checked for NaN this often


class RunError(ValueError):
    """The run cannot start with these settings and data (one line; the CLI exits with code 2)."""


class ResumeError(RunError):
    """The checkpoint cannot continue here (its global batch does not split over this many processes)."""


def train(cfg: Config) -> dict | None:
    """Run (or resume) one pretraining job described by a resolved ``cfg``; returns the summary (None
    on ranks other than 0 of a data-parallel run).

    ``wall_s`` counts everything this call does (data loading, evaluation included), summed over resumes.
    """
    device, owns_group = distributed.init(cfg.device)
    out = Path(cfg.out)
    # folders this run may create (deepest first); rank 0 alone writes files, so it alone tidies them up
    # (another rank's early exit must not remove the folder rank 0 is about to write into)
    created = [p for p in (out, *out.parents) if not p.exists()] if distributed.rank() == 0 else []
    try:
        return _train(cfg, device)
    except BaseException:
        for folder in created:  # a run that failed before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty
        raise
    finally:
        if owns_group:
            distributed.shutdown()


def training_loader(cfg, ds, device, rank: int = 0, world: int = 1):
    """The training loader of ``cfg`` over ``ds``: the ``--train-subset`` images (a fixed random subset;
    all of them by default), ``--aug``'s two views normalised by the dataset's statistics, this rank's
    shard of every global batch."""
    indices = fixed_subset(len(ds.train_y), cfg.train_subset, cfg.seed).numpy()
    augment = TwoViewAugment(*policy_pair(cfg.aug), ds.mean, ds.std, channels_last=cfg.channels_last)
    return build_loader(cfg, ds, indices, augment, device, rank=rank, world=world)


def _load_data(cfg: Config, main: bool, log):
    """The training dataset and the labelled set to evaluate on (None: no labels, evaluation skipped)."""
    if cfg.dataset == "images":  # keyword arguments of the image-folder reader (CIFAR takes none)
        ds = load_dataset("images", cfg.data, resolution=cfg.resolution, strict=cfg.strict)
    else:
        ds = load_dataset(cfg.dataset, cfg.data)
    labeled = getattr(ds, "labeled", True)
    if not labeled and methods.get_method(cfg.method).uses_labels:
        raise RunError(f"--method {cfg.method} is supervised and {cfg.data} has no class labels (no class "
                       f"sub-folders): use a self-supervised method or a labelled folder")
    if cfg.eval_data:
        eval_ds = load_dataset("images", cfg.eval_data, resolution=cfg.resolution, strict=cfg.strict)
        if not getattr(eval_ds, "labeled", True):
            raise RunError(f"--eval-data {cfg.eval_data} has no class labels: give a folder or archive with "
                           f"one sub-folder per class")
        return ds, eval_ds
    if not labeled:
        if cfg.target_knn:
            raise RunError(f"--target-knn needs labels to measure kNN: {cfg.data} has none; add --eval-data PATH")
        if main:
            log(f"note: {cfg.data} has no class labels: the kNN monitor and the linear probe are skipped "
                f"(--eval-data PATH evaluates on a labelled folder)")
        return ds, None
    return ds, ds


def _resumed_config(cfg: Config, ckpt: dict, ckpt_path: Path, world: int, log) -> Config:
    """The checkpoint's settings (what the command line changed is ignored, and said), with this call's
    ``resume``, ``progress`` and ``out``."""
    try:
        saved = config_from_checkpoint(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt_path} is not a fastssl checkpoint: {e}") from None
    per_call = ("resume", "progress", "out", "stop_after")
    changed = [f.name for f in dataclasses.fields(Config) if f.name not in per_call
               and getattr(saved, f.name) != getattr(cfg, f.name)]
    if changed:
        log(f"resume: using the checkpoint's settings; ignoring changed options: {', '.join(changed)}")
    cfg = dataclasses.replace(saved, **{name: getattr(cfg, name) for name in per_call})
    if cfg.batch_size % world:
        raise ResumeError(f"--resume: the checkpoint's global batch {cfg.batch_size} is not divisible by the "
                          f"number of processes ({world})")
    return cfg


def _once_per_node(load):
    """``load()`` on the node's first process, then on the others (they read what it cached)."""
    first_on_node = distributed.local_rank() == 0
    if not first_on_node:
        distributed.barrier()
    result = load()
    if first_on_node:
        distributed.barrier()
    return result


def _train(cfg: Config, device: torch.device) -> dict | None:
    t_start = train_state.now()
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    log = print if main else (lambda *a, **k: None)
    ckpt_path = Path(cfg.out) / CHECKPOINT
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path)  # CheckpointError: missing, truncated, foreign or unsafe
        cfg = _resumed_config(cfg, ckpt, ckpt_path, world, log)
    if world == 1:
        device = torch.device(cfg.device)

    # One process per node decodes and caches the dataset (and, below, converts FFCV/DALI files) first.
    ds, eval_ds = _once_per_node(lambda: _load_data(cfg, main, log))
    train_idx = fixed_subset(len(ds.train_y), cfg.train_subset, cfg.seed).numpy()
    evaluator = Evaluator(eval_ds, cfg, device, mean=ds.mean, std=ds.std) if main and eval_ds is not None else None
    if main:
        where = ("" if evaluator is None else f", kNN bank {len(evaluator.bank_y)} images and "
                 f"{len(evaluator.query_y)} queries of {'--eval-data' if eval_ds is not ds else ds.name}")
        log(f"data: {ds.name} from {ds.source}; training on {len(train_idx)} images{where}"
            + (f"; {world} processes, {cfg.batch_size // world} images each per step" if world > 1 else ""))
    loader = _once_per_node(lambda: training_loader(cfg, ds, device, rank=rank, world=world))
    step = Step(cfg, build_method(cfg), device, len(loader), world)
    state = TrainState()
    if ckpt is not None:
        step.load_state_dict(ckpt)
        state = TrainState.from_checkpoint(ckpt)
        log(f"resumed from {ckpt_path} at epoch {state.epoch}" + (f", batch {state.batch}" if state.batch else "")
            + (f", {state.train_s:.1f} of {cfg.time_budget:g} training seconds spent" if cfg.time_budget else ""))
    run = Run(cfg, device, ds, step, state, evaluator, t_start, saved=ckpt is not None, main=main, log=log)
    schedule, steps_per_epoch, budget = step.schedule, len(loader), cfg.time_budget
    if ckpt is None and main:  # the other ranks wait in their first step's collectives meanwhile
        state.knn_top1_init = run.measure_knn(0, 0)
        if state.knn_top1_init is not None:
            log(f"kNN top-1 before training: {state.knn_top1_init:.2f}%")
    last_knn_step = state.last_knn_step()
    bars = cfg.progress and main and sys.stderr.isatty()
    refresh_every = 1 if world == 1 and device.type == "cpu" else SYNC_EVERY_STEPS
    train_s = last_log = last_ckpt = run.read_clock()
    sizes = GlobalSize(loader, cfg)
    stopped = "budget" if budget and train_s >= budget else "target" if state.time_to_target_s else None
    lr = schedule.lr(state.step, schedule.progress(state.step, train_s))
    recompiles = ckpt is not None and cfg.compile == "on"  # a resume compiles again: not charged to the clock

    while stopped is None and (budget or state.epoch < cfg.epochs):
        epoch, skip = state.epoch, state.batch
        batches = run.start_epoch(loader, ckpt if skip else None)
        loss_sum = torch.full((), state.epoch_loss if skip else 0.0, device=device)
        epoch_t0 = train_s - (state.epoch_train_s if skip else 0.0)
        label = f"epoch {epoch + 1}" + ("" if budget else f"/{cfg.epochs}")
        bar = tqdm(batches, desc=label, total=steps_per_epoch, initial=skip, disable=not bars, leave=False, unit="step")
        sizes.follow(schedule.progress(state.step, train_s))
        for i, (views, y) in enumerate(bar, start=skip):
            p = schedule.progress(state.step, train_s)
            lr = schedule.lr(state.step, p)
            with run.clock.paused() if recompiles else contextlib.nullcontext():
                loss_sum += step(views, y, lr, schedule.position(state.step, p))
            recompiles = False
            state.step, state.batch = state.step + 1, i + 1
            last_batch = i + 1 == steps_per_epoch
            if (i + 1) % LOSS_EVERY_STEPS == 0 or last_batch:  # syncs with the device: not every step
                bar.set_postfix(loss=f"{run.mean_loss(loss_sum, i + 1, epoch):.4f}", lr=f"{lr:.3g}")
            if state.step % refresh_every == 0 or last_batch:
                train_s = run.read_clock(sync=budget or world > 1)
                if budget and train_s >= budget:
                    stopped = "budget"
            sizes.follow(schedule.progress(state.step, train_s))  # before the next batch is drawn
            if cfg.knn_every_steps and state.step % cfg.knn_every_steps == 0:
                top1 = run.measure_knn(epoch + (i + 1) / steps_per_epoch, state.step) if main else None
                last_knn_step = state.step
                if cfg.target_knn and distributed.from_rank0(float(run.target_reached(top1)) if main else 0.0, device):
                    stopped = "target"
            if not bars and main and train_s - last_log >= LOG_EVERY_S and not last_batch:
                last_log = train_s
                log(run.progress_line(label, schedule, loss_sum.item() / (i + 1), lr,
                                      (i + 1) * cfg.batch_size / max(1e-9, train_s - epoch_t0), train_s, p))
            if stopped:
                break
            pause = state.step % refresh_every == 0 and run.call_spent()  # --stop-after
            if (pause or train_s - last_ckpt >= CHECKPOINT_EVERY_S) and not last_batch:
                state.epoch_train_s = train_s - epoch_t0
                loss_so_far = distributed.all_reduce_mean(loss_sum).item()  # a collective: every rank
                if main:
                    run.save(loss_so_far)
                last_ckpt = train_s
                if pause:
                    stopped = "paused"
                    break
        if stopped == "paused":
            break
        row, whole = run.end_epoch(epoch, steps_per_epoch, loss_sum, lr, train_s, epoch_t0)
        if main and whole and last_knn_step != state.step and (
                (not budget and state.epoch == cfg.epochs) or (cfg.knn_every and state.epoch % cfg.knn_every == 0)):
            row["knn_top1"] = run.measure_knn(state.epoch, state.step)
            last_knn_step = state.step
            if cfg.target_knn and run.target_reached(row["knn_top1"]):
                stopped = "target"
        elif last_knn_step == state.step and state.metrics and state.metrics[-1]["event"] == "knn":
            row["knn_top1"] = state.metrics[-1]["knn_top1"]
        if cfg.target_knn and world > 1:
            stopped = "target" if distributed.from_rank0(float(stopped == "target"), device) else stopped
        run.record_epoch(row, label, schedule, train_s)
        ckpt = None  # the next epoch starts fresh
        if main:
            run.save(state.epoch_loss)
            last_ckpt = train_s
            run.report()
        if stopped is None and (budget or state.epoch < cfg.epochs) and run.call_spent():
            stopped = "paused"  # only while training is left: a finished run ends in this call

    if stopped == "paused":
        return run.pause() if main else None
    train_s = run.clock.read()  # the training seconds of the run (not what follows: final kNN, probe, reports)
    if not main:
        return None
    if evaluator is not None and last_knn_step != state.step:  # the final kNN of a run stopped by its budget
        run.final_knn(steps_per_epoch)
    return run.finish(train_s, stopped or "epochs", steps_per_epoch, world)
