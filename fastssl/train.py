"""The training loop: data on the device, two views, method loss, optimiser step; kNN monitor,
atomic per-epoch checkpoints, exact resume, metrics.jsonl and summary.json in ``cfg.out``.

Under torchrun (WORLD_SIZE > 1) the same loop runs data-parallel (``fastssl.distributed``): every
BatchNorm is synchronised (SyncBatchNorm on CUDA, CrossRankBatchNorm on CPU), the method is wrapped
in DistributedDataParallel, each rank loads its shard of every global batch of ``cfg.batch_size``,
and only rank 0 prints, shows progress, evaluates and writes files. Checkpoints hold the unwrapped
method's state, so a run can resume on another number of ranks.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from data_prep import load_dataset

from . import distributed, methods
from .augment import TwoViewAugment, policy_pair
from .config import Config
from .data import epoch_seed, to_nchw
from .eval import extract_features, knn_top1, linear_probe
from .loaders import build_loader
from .models import build_encoder
from .optim import build_optimizer, lr_at

CHECKPOINT = "checkpoint.pt"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class ResumeError(ValueError):
    """The checkpoint cannot continue here (its global batch does not split over this many processes)."""


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _subset(n: int, size: int, seed: int) -> torch.Tensor:
    """A fixed random subset of range(n) (all of it when size is 0 or >= n), sorted."""
    if size <= 0 or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


class Evaluator:
    """kNN monitor (and, at the end, the linear probe) on fixed subsets of train (bank) and test."""

    def __init__(self, ds, cfg: Config, device):
        bank = _subset(len(ds.train_y), cfg.knn_bank, cfg.seed + 1)
        queries = _subset(len(ds.test_y), cfg.knn_queries, cfg.seed + 2)
        self.bank_x, self.bank_y = to_nchw(ds.train_x[bank.numpy()], device), torch.from_numpy(ds.train_y[bank.numpy()]).to(device)
        self.query_x, self.query_y = to_nchw(ds.test_x[queries.numpy()], device), torch.from_numpy(ds.test_y[queries.numpy()]).to(device)
        self.mean, self.std, self.num_classes, self.cfg = ds.mean, ds.std, ds.num_classes, cfg
        self.amp = torch.bfloat16 if cfg.amp == "bf16" else torch.float16 if cfg.amp == "fp16" else None

    def features(self, encoder):
        kw = dict(channels_last=self.cfg.channels_last, amp_dtype=self.amp)
        return (extract_features(encoder, self.bank_x, self.mean, self.std, **kw),
                extract_features(encoder, self.query_x, self.mean, self.std, **kw))

    def knn(self, encoder) -> float:
        bank, queries = self.features(encoder)
        return knn_top1(bank, self.bank_y, queries, self.query_y, self.num_classes, self.cfg.knn_k, self.cfg.knn_t)

    def linear(self, encoder) -> float:
        bank, queries = self.features(encoder)
        return linear_probe(bank, self.bank_y, queries, self.query_y, self.num_classes, seed=self.cfg.seed)


def peak_learning_rate(cfg: Config) -> float:
    """``cfg.lr`` is per 256 images; scaled to the global batch B by ``cfg.lr_scaling``:
    linear: lr B / 256 (the default), sqrt: lr sqrt(B / 256), none: lr."""
    ratio = cfg.batch_size / 256
    return cfg.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling or "linear"]


def train(cfg: Config) -> dict | None:
    """Run (or resume) one pretraining job described by a resolved ``cfg``; returns the summary (None
    on ranks other than 0 of a data-parallel run).

    ``wall_s`` counts everything this call does (data loading, evaluation included), summed over resumes.
    """
    device, owns_group = distributed.init(cfg.device)
    try:
        return _train(cfg, device)
    finally:
        if owns_group:
            distributed.shutdown()


def _train(cfg: Config, device: torch.device) -> dict | None:
    t_start = time.perf_counter()
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    log = print if main else (lambda *a, **k: None)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if cfg.resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = Config(**ckpt["config"])
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
    ds = load_dataset(cfg.dataset, cfg.data)
    if first_on_node:
        distributed.barrier()
    train_idx = _subset(len(ds.train_y), cfg.train_subset, cfg.seed).numpy()
    evaluator = Evaluator(ds, cfg, device) if main else None
    if main:
        log(f"data: {ds.name} from {ds.source}; training on {len(train_idx)} images, kNN bank {len(evaluator.bank_y)}"
            f" train images, {len(evaluator.query_y)} test queries"
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
    model = torch.compile(model) if cfg.compile == "on" else model
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    steps_per_epoch, peak_lr = len(loader), peak_learning_rate(cfg)
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    start_epoch, history, wall_before = 0, [], 0.0
    if ckpt is not None:
        method.load_state_dict(ckpt["method"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, history, wall_before, knn_init = ckpt["epoch"], ckpt["history"], ckpt["wall_s"], ckpt["knn_top1_init"]
        log(f"resumed from {ckpt_path} after epoch {start_epoch}")
    elif main:  # the other ranks wait in their first step's collectives meanwhile
        knn_init = evaluator.knn(method.encoder)
        log(f"kNN top-1 before training: {knn_init:.2f}%")

    for epoch in range(start_epoch, cfg.epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg.seed, epoch) + 1)  # method-side noise (DARe's eps) replays on resume
        method.train()
        step, loss_sum, t_epoch = epoch * steps_per_epoch, torch.zeros((), device=device), time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and main), leave=False,
                   unit="step")
        for i, (v1, v2, y) in enumerate(bar):
            lr = lr_at(step, total_steps, warmup_steps, peak_lr)
            for group in opt.param_groups:
                group["lr"] = peak_lr if group.get("fixed_lr") else lr
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                result = model([v1, v2], y if method.uses_labels else None)
            opt.zero_grad(set_to_none=True)
            scaler.scale(result["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            method.on_step(step, total_steps)
            loss_sum += result["loss"].detach()
            step += 1
            if (i + 1) % 20 == 0 or i + 1 == steps_per_epoch:  # syncs with the device: not every step
                # the mean over ranks of the rank losses is the global loss; every rank sees a NaN together
                mean_loss = distributed.all_reduce_mean(loss_sum).item() / (i + 1)
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(f"loss is {mean_loss} at epoch {epoch + 1}, step {step}; "
                                           f"the last good checkpoint is kept in {ckpt_path}")
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}",
                                img_s=f"{(i + 1) * cfg.batch_size / (time.perf_counter() - t_epoch):.0f}")
        epoch_s = time.perf_counter() - t_epoch
        row = dict(epoch=epoch + 1, step=step, loss=distributed.all_reduce_mean(loss_sum).item() / steps_per_epoch, lr=lr,
                   images_per_s=steps_per_epoch * cfg.batch_size / epoch_s, epoch_s=epoch_s, knn_top1=None)
        history.append(row)
        if not main:
            continue
        if epoch + 1 == cfg.epochs or (cfg.knn_every and (epoch + 1) % cfg.knn_every == 0):
            row["knn_top1"] = evaluator.knn(method.encoder)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if v is not None))
        wall = wall_before + time.perf_counter() - t_start
        # the unwrapped method (no DDP "module." prefix): resumable on any number of ranks
        atomic_save(dict(method=method.state_dict(), optimizer=opt.state_dict(), scaler=scaler.state_dict(),
                         epoch=epoch + 1, history=history, wall_s=wall, knn_top1_init=knn_init,
                         config=dataclasses.asdict(cfg)), ckpt_path)
        write_text("".join(json.dumps(r) + "\n" for r in history), out / "metrics.jsonl")

    if not main:
        return None
    linear = evaluator.linear(method.encoder) if cfg.linear_eval else None
    summary = dict(method=cfg.method, dataset=cfg.dataset, encoder=cfg.encoder, epochs=cfg.epochs,
                   steps=cfg.epochs * steps_per_epoch, images_seen=cfg.epochs * steps_per_epoch * cfg.batch_size,
                   wall_s=wall_before + time.perf_counter() - t_start, device=_device_name(device, world),
                   knn_top1_init=knn_init, knn_top1=history[-1]["knn_top1"], linear_top1=linear,
                   config=dataclasses.asdict(cfg))
    write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    return summary


def _device_name(device: torch.device, world: int = 1) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return name if world == 1 else f"{world} x {name} (torch.distributed)"
