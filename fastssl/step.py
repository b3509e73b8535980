"""The pretraining step, built once from a Config and shared by everything that runs it: the training
loop (``fastssl.train``), the train-step benchmark (``bench/train_step.py``) and the Table-1 plan's
estimates (``fastssl.reproduce.plan``). Nothing else calls ``backward()`` or ``optimizer.step()`` for
pretraining, so what the benchmarks time is what training runs.

One call, ``step(views, labels, lr, at)``, is one optimiser step: the lr set on every parameter group
(groups marked ``fixed_lr`` keep the peak lr), the method's forward under autocast (``--amp``), the
scaled backward (a GradScaler for fp16), the optimiser step and ``Method.on_step(*at)`` (BYOL's EMA).
Built around it once: the method in channels-last (``--channels-last``) on the device, SyncBatchNorm
and DistributedDataParallel under torchrun, the optimiser, ``torch.compile`` with static shapes
(``--compile``), and tf32 matmuls and cuDNN autotuning (CUDA's flags: no effect on a CPU).
"""
from __future__ import annotations

import math
import time

import torch

from . import distributed, methods
from .data import epoch_seed
from .models import build_encoder
from .optim import build_optimizer
from .runtime import amp_dtype
from .schedule import TrainSchedule, parse_res_schedule


def enable_fast_math() -> None:
    """tf32 matmuls and convolutions, and cuDNN's autotuner: training's CUDA settings (CUDA-only flags)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def compile_model(model: torch.nn.Module, backend: str = "inductor", shapes: int = 1) -> torch.nn.Module:
    """``torch.compile`` with static shapes: each input shape (a resolution of the --res-schedule, the
    local crops) is compiled once, as its own specialised graph, instead of one symbolic-shape graph;
    the recompile limit is raised to hold ``shapes`` of them."""
    import torch._dynamo.config as dynamo_config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, shapes + 4)
    return torch.compile(model, dynamic=False, backend=backend)


def input_shapes(cfg) -> int:
    """How many input shapes a run's step sees: each size of the --res-schedule, the full size, local crops."""
    return len(parse_res_schedule(cfg.res_schedule, full=cfg.resolution)) + 1 + (cfg.local_crops > 0)


def peak_learning_rate(cfg) -> float:
    """``cfg.lr`` is per 256 images; scaled to the global batch B by ``cfg.lr_scaling``:
    linear: lr B / 256 (the default), sqrt: lr sqrt(B / 256), none: lr."""
    ratio = cfg.batch_size / 256
    return cfg.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling or "linear"]


def train_schedule(cfg, steps_per_epoch: int) -> TrainSchedule:
    """The run's lr and progress: ``--epochs`` epochs of ``steps_per_epoch`` steps (or ``--time-budget``
    seconds), ``--warmup-epochs`` of linear warmup, the peak lr scaled by ``--lr-scaling``."""
    return TrainSchedule(peak_lr=peak_learning_rate(cfg), total_steps=cfg.epochs * steps_per_epoch,
                         warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
                         warmup_frac=min(1.0, cfg.warmup_epochs / cfg.epochs), budget=cfg.time_budget)


def build_method(cfg) -> torch.nn.Module:
    """The method of ``cfg`` on a fresh encoder, its weights drawn from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    return methods.get_method(cfg.method)(build_encoder(cfg.encoder, cfg.width), cfg)


def begin_epoch(loader, seed: int, epoch: int) -> None:
    """Start an epoch: the loader's permutation and the method-side noise (DARe's eps) depend only on
    (seed, epoch), so a resumed run replays them."""
    loader.set_epoch(epoch)
    torch.manual_seed(epoch_seed(seed, epoch) + 1)


class Step:
    """One optimiser step of pretraining (see the module docstring). ``method`` is the unwrapped method
    (what checkpoints hold), ``model`` what the step calls (DDP-wrapped and/or compiled), ``schedule``
    the run's lr and progress over ``steps_per_epoch`` steps an epoch."""

    def __init__(self, cfg, method: torch.nn.Module, device: torch.device, steps_per_epoch: int, world: int = 1):
        enable_fast_math()
        self.device = torch.device(device)  # the Config is read here, once: the step keeps none of it
        if world > 1:
            method = distributed.convert_batchnorm(method, self.device)  # BatchNorm over the global batch
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.method = method.to(self.device, memory_format=fmt)
        self.optimizer = build_optimizer(cfg.optimizer, self.method.param_groups(), lr=0.0,
                                         weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        model = self.method
        if world > 1:  # rank 0's initial weights are broadcast; BatchNorm buffers stay in sync by construction
            model = distributed.wrap_ddp(self.method, self.device)
        if cfg.compile == "on":
            model = compile_model(model, shapes=input_shapes(cfg))
        self.model = model
        self.schedule = train_schedule(cfg, steps_per_epoch)  # the lr (with --lr-scaling) and progress
        self.amp, self.peak_lr = amp_dtype(cfg.amp), self.schedule.peak_lr
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)

    def __call__(self, views, labels, lr: float, at: tuple[int, int]) -> torch.Tensor:
        """One step at learning rate ``lr``; ``at`` = (done, total) is what ``Method.on_step`` sees.
        Returns the loss (detached; reading it syncs with the device)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.peak_lr if group.get("fixed_lr") else lr
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = self.model(views, labels if self.method.uses_labels else None)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.on_step(*at)
        return loss.detach()

    def state_dict(self) -> dict:
        """The method, optimiser and scaler states, under the checkpoint's keys."""
        return dict(method=self.method.state_dict(), optimizer=self.optimizer.state_dict(),
                    scaler=self.scaler.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_loader(cfg, device, images: int | None = None, num_classes: int = 10):
    """A resident loader over random uint8 images: the real augmentation and batch shapes, no dataset."""
    from .augment import TwoViewAugment, policy_pair
    from .loaders.resident import ResidentLoader
    n = images or cfg.batch_size * 4
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)
    y = torch.randint(0, num_classes, (n,), generator=gen).to(device)
    augment = TwoViewAugment(*policy_pair(cfg.aug), (125.0, 123.0, 114.0), (63.0, 62.0, 67.0),
                             channels_last=cfg.channels_last)
    return ResidentLoader(x, y, cfg.batch_size, augment, seed=cfg.seed)


class StepTimer:
    """Training's step (``Step``) run on its own to be timed, over ``loader`` (synthetic if None), epoch
    after epoch, with training's lr schedule and ``on_step`` progress (the epoch mode over ``cfg.epochs``
    epochs of this loader): the same steps, and the same parameters after them, as ``train``'s first ones."""

    def __init__(self, cfg, loader=None):
        self.cfg, self.device = cfg, torch.device(cfg.device)
        self.loader = loader or synthetic_loader(cfg, self.device)
        self.step = Step(cfg, build_method(cfg), self.device, len(self.loader))
        self.method, self.schedule = self.step.method, self.step.schedule
        self.batches, self.done = self._batches(), 0
        self.method.train()

    def _batches(self):
        epoch = 0
        while True:
            begin_epoch(self.loader, self.cfg.seed, epoch)
            yield from self.loader
            epoch += 1

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps (the device synchronised at both ends)."""
        _sync(self.device)
        t0 = time.perf_counter()
        loss = None
        for _ in range(steps):
            views, y = next(self.batches)
            p = self.schedule.progress(self.done, 0.0)
            loss = self.step(views, y, self.schedule.lr(self.done, p), self.schedule.position(self.done, p))
            self.done += 1
        _sync(self.device)
        if loss is not None and not math.isfinite(loss.item()):
            raise RuntimeError(f"{self.cfg.method}: the loss is {loss.item()} while timing")
        return time.perf_counter() - t0

    def eval_rate(self, images: int) -> float:
        """Forward-only feature extraction, images/s (the evaluation passes' cost)."""
        from .eval import extract_features
        x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8).to(self.device)
        kw = dict(channels_last=self.cfg.channels_last, amp_dtype=self.step.amp)
        extract_features(self.method.encoder, x[:64], (125.0,) * 3, (63.0,) * 3, **kw)
        _sync(self.device)
        t0 = time.perf_counter()
        extract_features(self.method.encoder, x, (125.0,) * 3, (63.0,) * 3, **kw)
        _sync(self.device)
        return images / (time.perf_counter() - t0)


def time_train_steps(cfg, loader=None, steps: int = 10, warmup: int = 3, eval_images: int = 0) -> dict:
    """Time ``steps`` training steps of ``cfg`` (resolved) after ``warmup`` untimed ones (``warmup_s``:
    their time, torch.compile included); with ``eval_images``, also the feature-extraction rate."""
    timer = StepTimer(cfg, loader)
    warmup_s = timer.run(warmup)
    elapsed = timer.run(steps)
    out = dict(steps=steps, warmup_steps=warmup, batch_size=cfg.batch_size, step_s=elapsed / steps,
               images_per_s=steps * cfg.batch_size / elapsed, warmup_s=warmup_s)
    if eval_images:
        out["eval_images_per_s"] = timer.eval_rate(eval_images)
    return out
