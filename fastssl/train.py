"""The training loop: data on the device, two views, method loss, optimiser step; kNN monitor,
atomic checkpoints, exact resume, metrics.jsonl, summary.json and curves.png in ``cfg.out``.

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
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from data_prep import load_dataset

from . import distributed, methods
from .augment import TwoViewAugment, policy_pair
from .checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, config_from_checkpoint
from .data import epoch_seed, to_nchw
from .eval import extract_features, fixed_subset, knn_accuracies, linear_probe
from .loaders import build_loader
from .models import build_encoder
from .optim import build_optimizer
from .schedule import lr_at, lr_at_progress, parse_res_schedule, resolution_at

LOG_EVERY_S = 30.0          # without a terminal: one plain progress line this often (and at each epoch end)
CHECKPOINT_EVERY_S = 600.0  # a mid-epoch checkpoint after this many training seconds without one
PLOT_EVERY_S = 60.0         # curves.png is redrawn at an epoch end at most this often (drawing takes ~1 s), and at the end
SYNC_EVERY_STEPS = 8        # CUDA or several processes: read (and agree on) the clock this often
PROGRESS_STEPS = 1_000_000  # budget mode: Method.on_step sees progress as (round(p * this), this)

atomic_save = save_checkpoint  # kept as a module attribute: tests replace it to simulate a crash after a save


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint (if any) is kept."""


class RunError(ValueError):
    """The run cannot start with these settings and data (one line; the CLI exits with code 2)."""


class ResumeError(RunError):
    """The checkpoint cannot continue here (its global batch does not split over this many processes)."""


def _now() -> float:
    return time.perf_counter()


def write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Evaluator:
    """kNN monitor (and, at the end, the linear probe) on fixed subsets of train (bank) and test.

    ``mean``/``std`` (default: the dataset's) normalise the images as in training: pass the training set's
    when evaluating on another labelled set (``--eval-data``). A labelled set without a test split gives
    a fixed fifth of its images as queries and the rest as the bank."""

    def __init__(self, ds, cfg: Config, device, mean=None, std=None):
        train_x, train_y, test_x, test_y = ds.train_x, ds.train_y, ds.test_x, ds.test_y
        if len(test_y) == 0:
            order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.seed + 3)).numpy()
            held = order[:max(1, len(order) // 5)]
            kept = order[len(held):]
            train_x, train_y, test_x, test_y = train_x[kept], train_y[kept], train_x[held], train_y[held]
        bank = fixed_subset(len(train_y), cfg.knn_bank, cfg.seed + 1).numpy()
        queries = fixed_subset(len(test_y), cfg.knn_queries, cfg.seed + 2).numpy()
        self.bank_x, self.bank_y = to_nchw(train_x[bank], device), torch.from_numpy(train_y[bank]).to(device)
        self.query_x, self.query_y = to_nchw(test_x[queries], device), torch.from_numpy(test_y[queries]).to(device)
        self.mean = ds.mean if mean is None else mean
        self.std = ds.std if std is None else std
        self.num_classes, self.cfg = ds.num_classes, cfg
        self.amp = torch.bfloat16 if cfg.amp == "bf16" else torch.float16 if cfg.amp == "fp16" else None

    def features(self, encoder):
        kw = dict(channels_last=self.cfg.channels_last, amp_dtype=self.amp)
        return (extract_features(encoder, self.bank_x, self.mean, self.std, **kw),
                extract_features(encoder, self.query_x, self.mean, self.std, **kw))

    def knn(self, encoder) -> dict[int, float]:
        """kNN top-1 (%) at k = 20 and at --knn-k (200 by default), from one similarity search."""
        bank, queries = self.features(encoder)
        return knn_accuracies(bank, self.bank_y, queries, self.query_y, self.num_classes, ks=(20, self.cfg.knn_k),
                              temperature=self.cfg.knn_t)

    def linear(self, encoder) -> float:
        bank, queries = self.features(encoder)
        return linear_probe(bank, self.bank_y, queries, self.query_y, self.num_classes, seed=self.cfg.seed)


class TrainClock:
    """Training seconds: wall time since the start, minus paused spans (evaluation, reports), plus the
    seconds carried over from before a resume."""

    def __init__(self, carried: float = 0.0):
        self.carried, self.started = carried, _now()

    def read(self) -> float:
        return self.carried + _now() - self.started

    @contextlib.contextmanager
    def paused(self):
        t0 = _now()
        try:
            yield
        finally:
            self.started += _now() - t0


def peak_learning_rate(cfg: Config) -> float:
    """``cfg.lr`` is per 256 images; scaled to the global batch B by ``cfg.lr_scaling``:
    linear: lr B / 256 (the default), sqrt: lr sqrt(B / 256), none: lr."""
    ratio = cfg.batch_size / 256
    return cfg.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling or "linear"]


def compile_model(model: torch.nn.Module, backend: str = "inductor", shapes: int = 1) -> torch.nn.Module:
    """``torch.compile`` with static shapes: each input shape (a resolution of the --res-schedule, the
    local crops) is compiled once, as its own specialised graph, instead of one symbolic-shape graph;
    the recompile limit is raised to hold ``shapes`` of them."""
    import torch._dynamo.config as dynamo_config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, shapes + 4)
    return torch.compile(model, dynamic=False, backend=backend)


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


def _agree(value: float, device) -> float:
    """Rank 0's value on every rank (the clock and stop decisions must not differ between ranks)."""
    if distributed.world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, src=0)
    return float(t.item())


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


def _train(cfg: Config, device: torch.device) -> dict | None:
    t_start = _now()
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    log = print if main else (lambda *a, **k: None)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path)  # CheckpointError: missing, truncated, foreign or unsafe
        try:
            saved = config_from_checkpoint(ckpt["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{ckpt_path} is not a fastssl checkpoint: {e}") from None
        changed = [f.name for f in dataclasses.fields(Config) if f.name not in ("resume", "progress", "out")
                   and getattr(saved, f.name) != getattr(cfg, f.name)]
        if changed:
            log(f"resume: using the checkpoint's settings; ignoring changed options: {', '.join(changed)}")
        cfg = dataclasses.replace(saved, resume=True, progress=cfg.progress, out=cfg.out)
        if cfg.batch_size % world:
            raise ResumeError(f"--resume: the checkpoint's global batch {cfg.batch_size} is not divisible by the "
                              f"number of processes ({world})")
    if world == 1:
        device = torch.device(cfg.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # One process per node decodes and caches the dataset (and, below, converts FFCV/DALI files) first;
    # the node's other processes then read the cache.
    first_on_node = distributed.local_rank() == 0
    if not first_on_node:
        distributed.barrier()
    ds, eval_ds = _load_data(cfg, main, log)
    if first_on_node:
        distributed.barrier()
    train_idx = fixed_subset(len(ds.train_y), cfg.train_subset, cfg.seed).numpy()
    evaluator = Evaluator(eval_ds, cfg, device, mean=ds.mean, std=ds.std) if main and eval_ds is not None else None
    if main:
        where = ("" if evaluator is None else f", kNN bank {len(evaluator.bank_y)} images and "
                 f"{len(evaluator.query_y)} queries of {'--eval-data' if eval_ds is not ds else ds.name}")
        log(f"data: {ds.name} from {ds.source}; training on {len(train_idx)} images{where}"
            + (f"; {world} processes, {cfg.batch_size // world} images each per step" if world > 1 else ""))

    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    augment = TwoViewAugment(*policy_pair(cfg.aug), ds.mean, ds.std, channels_last=cfg.channels_last)
    if not first_on_node:
        distributed.barrier()
    loader = build_loader(cfg, ds, train_idx, augment, device, rank=rank, world=world)
    if first_on_node:
        distributed.barrier()

    torch.manual_seed(cfg.seed)
    method = methods.get_method(cfg.method)(build_encoder(cfg.encoder, cfg.width), cfg)
    if world > 1:
        method = distributed.convert_batchnorm(method, device)  # BatchNorm over the global batch
    method = method.to(device, memory_format=fmt)
    opt = build_optimizer(cfg.optimizer, method.param_groups(), lr=0.0, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    model = method
    if world > 1:  # rank 0's initial weights are broadcast; BatchNorm buffers stay in sync by construction
        model = distributed.wrap_ddp(method, device)
    res_schedule = parse_res_schedule(cfg.res_schedule, full=cfg.resolution)
    if cfg.compile == "on":
        model = compile_model(model, shapes=len(res_schedule) + 1 + (cfg.local_crops > 0))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    steps_per_epoch, peak_lr = len(loader), peak_learning_rate(cfg)
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    budget, warmup_frac = cfg.time_budget, min(1.0, cfg.warmup_epochs / cfg.epochs)
    st = dict(epoch=0, batch=0, step=0, epoch_loss=0.0, epoch_train_s=0.0, history=[], metrics=[], wall_s=0.0,
              train_s=0.0, knn_s=0.0, knn_top1_init=None, time_to_target_s=None, images_to_target=None)
    if ckpt is not None:
        method.load_state_dict(ckpt["method"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        st.update({k: ckpt[k] for k in st if k in ckpt})
        if "step" not in ckpt:  # a checkpoint from before mid-epoch resume: always at an epoch boundary
            st["step"] = st["epoch"] * steps_per_epoch
        if not st["metrics"]:
            st["metrics"] = [dict(event="epoch", **r) for r in st["history"]]
        log(f"resumed from {ckpt_path} at epoch {st['epoch']}" + (f", batch {st['batch']}" if st["batch"] else "")
            + (f", {st['train_s']:.1f} of {budget:g} training seconds spent" if budget else ""))
    clock = TrainClock(st["train_s"])
    wall_before = st["wall_s"]
    eval_s = dict(knn=st["knn_s"], linear=0.0)

    def wall() -> float:
        return wall_before + _now() - t_start

    def measure_knn(epoch: int, step: int) -> float | None:
        """One kNN measurement (rank 0; paused clock) recorded as a metrics row."""
        if evaluator is None:
            return None
        t0, at = _now(), clock.read()
        with clock.paused():
            accs = evaluator.knn(method.encoder)
        top1 = accs[cfg.knn_k]
        eval_s["knn"] += _now() - t0
        st["metrics"].append(dict(event="knn", epoch=epoch, step=step, images=step * cfg.batch_size,
                                  train_s=at, wall_s=wall(), knn_top1=top1, knn_top1_k20=accs[20]))
        if tb is not None:
            tb.add_scalar("knn/top1", top1, step)
        return top1

    def target_reached(top1: float | None) -> bool:
        if cfg.target_knn and top1 is not None and top1 >= cfg.target_knn and st["time_to_target_s"] is None:
            st["time_to_target_s"] = st["metrics"][-1]["train_s"]  # when the model that reached it was trained
            st["images_to_target"] = st["step"] * cfg.batch_size
            log(f"kNN top-1 {top1:.2f}% reached the target {cfg.target_knn:g}% after {st['time_to_target_s']:.1f} "
                f"training seconds, {st['images_to_target']} images")
        return st["time_to_target_s"] is not None

    tb = None
    if main:  # data and model are ready: now the output folder may appear
        out.mkdir(parents=True, exist_ok=True)
        if cfg.log == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(str(out / "tensorboard"))
    if ckpt is None and main:  # the other ranks wait in their first step's collectives meanwhile
        st["knn_top1_init"] = measure_knn(0, 0)
        if st["knn_top1_init"] is not None:
            log(f"kNN top-1 before training: {st['knn_top1_init']:.2f}%")
    last_knn_step = st["metrics"][-1]["step"] if st["metrics"] and st["metrics"][-1]["event"] == "knn" else -1

    def save(epoch_loss: float) -> None:
        """A checkpoint of the current state: after ``st['epoch']`` whole epochs and ``st['batch']`` batches."""
        state = dict(method=method.state_dict(), optimizer=opt.state_dict(), scaler=scaler.state_dict(),
                     epoch=st["epoch"], batch=st["batch"], step=st["step"], epoch_loss=epoch_loss,
                     epoch_train_s=st["epoch_train_s"], history=st["history"], metrics=st["metrics"],
                     wall_s=wall(), train_s=clock.read(), knn_s=eval_s["knn"], knn_top1_init=st["knn_top1_init"],
                     time_to_target_s=st["time_to_target_s"], images_to_target=st["images_to_target"],
                     rng_cpu=torch.get_rng_state(), norm_mean=[float(v) for v in ds.mean],
                     norm_std=[float(v) for v in ds.std], config=dataclasses.asdict(cfg))
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        with clock.paused():  # checkpoint writes are not training: not charged to the budget (wall_s has them)
            atomic_save(state, ckpt_path)  # the unwrapped method (no DDP "module." prefix): resumable on any ranks
        st["saved"] = True

    last_plot = [time.perf_counter()]

    def report(final: bool = False) -> None:
        """metrics.jsonl, and curves.png now and then and at the end (not charged to the training clock)."""
        with clock.paused():
            write_text("".join(json.dumps(r) + "\n" for r in st["metrics"]), out / "metrics.jsonl")
            if final or time.perf_counter() - last_plot[0] >= PLOT_EVERY_S:
                from .plots import plot_curves
                plot_curves(st["metrics"], out / "curves.png", title=f"{cfg.method} {cfg.dataset} {cfg.encoder}")
                last_plot[0] = time.perf_counter()

    def progress(train_s: float) -> float:
        return min(1.0, train_s / budget) if budget else min(1.0, st["step"] / max(1, total_steps))

    bars = cfg.progress and main and sys.stderr.isatty()
    refresh_every = 1 if world == 1 and device.type == "cpu" else SYNC_EVERY_STEPS
    st["saved"] = ckpt is not None
    train_s = _agree(clock.read(), device)
    last_log, last_ckpt = train_s, train_s
    global_px = [None]
    if res_schedule and not hasattr(loader, "set_global_size") and main:
        log(f"note: the {cfg.loader} loader cannot change the crop size: --res-schedule is ignored")

    def set_global_size(p: float) -> None:
        """Progressive resolution: the loader renders global crops at the schedule's size from the next batch."""
        px = resolution_at(res_schedule, p, full=cfg.resolution)
        if res_schedule and px != global_px[0] and hasattr(loader, "set_global_size"):
            loader.set_global_size(px)
        global_px[0] = px
    stopped = "budget" if budget and train_s >= budget else "target" if st["time_to_target_s"] else None
    lr = lr_at_progress(progress(train_s), warmup_frac, peak_lr) if budget else lr_at(st["step"], total_steps, warmup_steps, peak_lr)

    while stopped is None and (budget or st["epoch"] < cfg.epochs):
        epoch, skip = st["epoch"], st["batch"]
        loader.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg.seed, epoch) + 1)  # method-side noise (DARe's eps) replays on resume
        if skip and ckpt is not None:  # resuming mid-epoch: the RNG as it was, the epoch's first batches replayed
            torch.set_rng_state(ckpt["rng_cpu"])
            if device.type == "cuda" and "rng_cuda" in ckpt:
                torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
        method.train()
        loss_sum = torch.full((), st["epoch_loss"] if skip else 0.0, device=device)
        epoch_t0 = train_s - (st["epoch_train_s"] if skip else 0.0)
        batches = iter(loader)
        for _ in range(skip):
            next(batches)
        label = f"epoch {epoch + 1}" + ("" if budget else f"/{cfg.epochs}")
        bar = tqdm(batches, desc=label, total=steps_per_epoch, initial=skip, disable=not bars, leave=False, unit="step")
        set_global_size(progress(train_s))
        for i, (views, y) in enumerate(bar, start=skip):
            p = progress(train_s)
            lr = lr_at_progress(p, warmup_frac, peak_lr) if budget else lr_at(st["step"], total_steps, warmup_steps, peak_lr)
            for group in opt.param_groups:
                group["lr"] = peak_lr if group.get("fixed_lr") else lr
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                result = model(views, y if method.uses_labels else None)
            opt.zero_grad(set_to_none=True)
            scaler.scale(result["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            if budget:
                method.on_step(round(p * PROGRESS_STEPS), PROGRESS_STEPS)
            else:
                method.on_step(st["step"], total_steps)
            loss_sum += result["loss"].detach()
            st["step"] += 1
            st["batch"] = i + 1
            if (i + 1) % 20 == 0 or i + 1 == steps_per_epoch:  # syncs with the device: not every step
                # the mean over ranks of the rank losses is the global loss; every rank sees a NaN together
                mean_loss = distributed.all_reduce_mean(loss_sum).item() / (i + 1)
                if not math.isfinite(mean_loss):
                    kept = (f"the last good checkpoint is kept in {ckpt_path}" if st["saved"] else
                            "no checkpoint was written (it diverged before the first one)")
                    raise TrainingDiverged(f"loss is {mean_loss} at epoch {epoch + 1}, step {st['step']}; {kept}")
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}")
            if st["step"] % refresh_every == 0 or i + 1 == steps_per_epoch:
                if device.type == "cuda" and (budget or world > 1):
                    torch.cuda.synchronize(device)
                train_s = _agree(clock.read(), device)
                if budget and train_s >= budget:
                    stopped = "budget"
            set_global_size(progress(train_s))  # before the next batch is drawn
            top1 = None
            if cfg.knn_every_steps and st["step"] % cfg.knn_every_steps == 0:
                top1 = measure_knn(epoch + (i + 1) / steps_per_epoch, st["step"]) if main else None
                last_knn_step = st["step"]
                if cfg.target_knn and _agree(float(target_reached(top1)) if main else 0.0, device):
                    stopped = "target"
            if not bars and main and train_s - last_log >= LOG_EVERY_S and i + 1 < steps_per_epoch:
                last_log = train_s
                log(_progress_line(cfg, label, st["step"], total_steps, loss_sum.item() / (i + 1), lr,
                                   (i + 1) * cfg.batch_size / max(1e-9, train_s - epoch_t0), train_s, p))
            if stopped:
                break
            if train_s - last_ckpt >= CHECKPOINT_EVERY_S and i + 1 < steps_per_epoch:
                st["epoch_train_s"] = train_s - epoch_t0
                mean = distributed.all_reduce_mean(loss_sum).item()
                if main:
                    save(mean)
                last_ckpt = train_s
        batches_done = st["batch"]
        epoch_train_s = train_s - epoch_t0
        whole = st["batch"] == steps_per_epoch
        row = dict(event="epoch", epoch=epoch + 1 if whole else round(epoch + batches_done / steps_per_epoch, 4),
                   step=st["step"],
                   loss=distributed.all_reduce_mean(loss_sum).item() / max(1, batches_done), lr=lr,
                   images_per_s=batches_done * cfg.batch_size / max(1e-9, epoch_train_s),
                   epoch_s=epoch_train_s, train_s=train_s, wall_s=wall(), knn_top1=None)
        if whole:
            st["epoch"], st["batch"], st["epoch_train_s"], st["epoch_loss"] = epoch + 1, 0, 0.0, 0.0
        else:  # stopped inside the epoch: a resume continues it
            st["epoch_train_s"], st["epoch_loss"] = epoch_train_s, row["loss"] * batches_done
        last_epoch = not budget and st["epoch"] == cfg.epochs
        if main and whole and (last_epoch or (cfg.knn_every and st["epoch"] % cfg.knn_every == 0)) \
                and last_knn_step != st["step"]:
            row["knn_top1"] = measure_knn(st["epoch"], st["step"])
            last_knn_step = st["step"]
            if cfg.target_knn and target_reached(row["knn_top1"]):
                stopped = "target"
        elif last_knn_step == st["step"] and st["metrics"] and st["metrics"][-1]["event"] == "knn":
            row["knn_top1"] = st["metrics"][-1]["knn_top1"]
        if cfg.target_knn and world > 1:
            stopped = "target" if _agree(float(stopped == "target"), device) else stopped
        st["history"].append({k: v for k, v in row.items() if k != "event"})
        st["metrics"].append(row)
        ckpt = None  # the next epoch starts fresh
        if tb is not None:
            for name in ("loss", "lr", "images_per_s"):
                tb.add_scalar(f"train/{name}", row[name], st["step"])
        if main:
            log(_progress_line(cfg, label, st["step"], total_steps, row["loss"], lr, row["images_per_s"], train_s,
                               progress(train_s)) + (f" knn_top1 {row['knn_top1']:.2f}" if row["knn_top1"] is not None else ""))
        if not main:
            continue
        save(st["epoch_loss"])
        last_ckpt = train_s
        report()

    train_s = clock.read()  # the training seconds of the run (not what follows: final kNN, probe, reports)
    if not main:
        return None
    if evaluator is not None and last_knn_step != st["step"]:  # the final kNN of a run stopped by its budget
        top1 = measure_knn(st["epoch"] + st["batch"] / steps_per_epoch, st["step"])
        epoch_rows = [r for r in st["metrics"] if r["event"] == "epoch"]
        if epoch_rows and epoch_rows[-1]["step"] == st["step"]:
            epoch_rows[-1]["knn_top1"] = st["history"][-1]["knn_top1"] = top1
        save(st["epoch_loss"])
    report(final=True)
    linear = None
    if cfg.linear_eval and evaluator is not None:
        t0 = _now()
        linear = evaluator.linear(method.encoder)
        eval_s["linear"] = _now() - t0
    knn_rows = [r for r in st["metrics"] if r["event"] == "knn"]
    finished_epochs = st["epoch"] + st["batch"] / steps_per_epoch
    summary = dict(method=cfg.method, dataset=cfg.dataset, encoder=cfg.encoder,
                   epochs=cfg.epochs if finished_epochs == cfg.epochs else round(finished_epochs, 3),
                   steps=st["step"], images_seen=st["step"] * cfg.batch_size, wall_s=wall(),
                   train_s=train_s, eval_s=eval_s["knn"] + eval_s["linear"], knn_s=eval_s["knn"],
                   linear_s=eval_s["linear"], time_budget_s=budget or None, target_knn=cfg.target_knn or None,
                   time_to_target_s=st["time_to_target_s"], images_to_target=st["images_to_target"],
                   stopped_by=stopped or "epochs", device=_device_name(device, world),
                   knn_top1_init=st["knn_top1_init"], knn_top1=knn_rows[-1]["knn_top1"] if knn_rows else None,
                   knn_top1_k20=knn_rows[-1].get("knn_top1_k20") if knn_rows else None,
                   linear_top1=linear, config=dataclasses.asdict(cfg))
    write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    if tb is not None:
        tb.close()
    return summary


def _progress_line(cfg: Config, label: str, step: int, total_steps: int, loss: float, lr: float, images_per_s: float,
                   train_s: float, progress: float) -> str:
    """One plain log line: where, loss, lr, speed and the time left (from the budget or the step rate)."""
    if cfg.time_budget:
        left, where = max(0.0, cfg.time_budget - train_s), f"step {step}"
    else:
        left, where = (train_s / max(progress, 1e-9)) * (1 - progress) if progress else float("nan"), f"step {step}/{total_steps}"
    eta = "?" if not math.isfinite(left) else time.strftime("%H:%M:%S", time.gmtime(left))
    return f"{label} {where} loss {loss:.4f} lr {lr:.4g} img/s {images_per_s:.0f} ETA {eta}"


def _device_name(device: torch.device, world: int = 1) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return name if world == 1 else f"{world} x {name} (torch.distributed)"
