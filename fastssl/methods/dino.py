"""DINO (Caron et al. 2021): self-distillation of a student into an EMA teacher over K prototypes.

    student:  s_v = head(f(x_v)) for every view v     teacher:  t_g = head'(f'(x_g)) for the 2 global views
    P_t(g) = softmax((t_g - c) / T_t),  log P_s(v) = log_softmax(s_v / T_s)
    L = mean over the ordered pairs (v, g), g global, v != g, of mean_batch -sum_K P_t(g) log P_s(v)
    (``fastssl.losses.dino_loss``)

The head is an MLP (Linear-BN-GELU twice, then Linear) to a 256-d bottleneck, L2-normalised, then a
weight-normalised linear layer with unit-norm rows to K prototypes (``--dino-prototypes``, 4096 for CIFAR
as in solo-learn; ``fastssl.models.PrototypeHead``). Centering: c <- m c + (1 - m) mean over the global
batch of the teacher logits of both global views, after each optimiser step (``on_step``; the next
forward sees the new centre, as in DINO; m = ``--dino-center-momentum``, 0.9). Sharpening: the teacher temperature T_t rises linearly from ``--dino-teacher-temp-warmup`` (0.04) to
``--dino-teacher-temp`` (0.07) over the first ``--dino-teacher-warmup`` fraction of the optimiser steps
(DINO's 30 of 100 epochs); the student's T_s is ``--dino-student-temp`` (0.1). The teacher (f', head')
follows the student by BYOL's EMA (cosine from ``--ema-base`` to 1.0; solo-learn's CIFAR 0.9995), not in
the optimiser, checkpointed with the centre and the current teacher temperature (buffers).

Multi-crop: ``--local-crops K`` local views go through the student only; every view is compared with each
other global view (2 pairs for two views, 2 + 2K with K local views). Data-parallel: the loss is a mean
over this rank's images (the mean over ranks is the single-process loss) and the centre is updated with
the mean over every rank's batch, so all ranks keep one centre.
Not included: DINO's freezing of the last layer in the first epoch and its gradient clipping.
"""
from __future__ import annotations

import copy

import torch

from .. import distributed, losses
from ..models import PrototypeHead
from .base import Method, Option, register
from .byol import BYOL


def teacher_temperature(step: int, total_steps: int, start: float, end: float, warmup: float) -> float:
    """Linear from ``start`` at step 0 to ``end`` at step warmup * total_steps, then ``end``."""
    ramp = warmup * total_steps
    return end if ramp <= 0 else start + (end - start) * min(1.0, step / ramp)


@register("dino")
class DINO(BYOL):
    # solo-learn's CIFAR recipe: LARS lr 0.3, wd 1e-6, head 2048 hidden -> 256 bottleneck -> 4096 prototypes,
    # teacher momentum 0.9995 -> 1.0, asymmetric views.
    recipe = dict(optimizer="lars", lr=0.3, weight_decay=1e-6, proj_hidden=2048, proj_dim=256, aug="asymmetric",
                  ema_base=0.9995)
    options = (
        Option("dino_prototypes", int, 4096, "DINO: number K of prototypes (the head's output size)"),
        Option("dino_student_temp", float, 0.1, "DINO: student temperature"),
        Option("dino_teacher_temp", float, 0.07, "DINO: teacher temperature after its warmup"),
        Option("dino_teacher_temp_warmup", float, 0.04, "DINO: teacher temperature at the start of training"),
        Option("dino_teacher_warmup", float, 0.3, "DINO: fraction of the steps over which the teacher "
               "temperature rises linearly"),
        Option("dino_center_momentum", float, 0.9, "DINO: EMA momentum of the teacher centre"),
    )
    # CPU --fast (~400 steps): a teacher at 0.9995 barely moves in so few steps; 0.99 is BYOL's base.
    fast_cpu = dict(ema_base=0.99)

    def __init__(self, encoder, cfg):
        Method.__init__(self, encoder, cfg)  # BYOL's target machinery, DINO's head instead of BYOL's heads
        temps = (cfg.dino_student_temp, cfg.dino_teacher_temp, cfg.dino_teacher_temp_warmup)
        if min(temps) <= 0 or not 0 <= cfg.dino_center_momentum <= 1 or not 0 <= cfg.dino_teacher_warmup <= 1:
            raise ValueError(f"DINO: temperatures must be > 0 (got {temps}), --dino-center-momentum and "
                             "--dino-teacher-warmup within [0, 1]")
        # The head is ``projector`` so that BYOL's online/target parameter lists, EMA and groups apply unchanged.
        self.projector = PrototypeHead(encoder.dim, cfg.proj_hidden, cfg.proj_dim, cfg.dino_prototypes)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum = cfg.ema_base
        self.register_buffer("center", torch.zeros(1, cfg.dino_prototypes))
        # The centre moves in on_step, outside the (compiled) forward: mutating a buffer that the forward also
        # reads gave inductor (torch 2.13) wrong gradients (its backward recomputed the targets from the
        # updated centre; aot_eager was exact). The forward only writes the batch mean here.
        self.register_buffer("batch_center", torch.zeros(1, cfg.dino_prototypes), persistent=False)
        # A tensor, not a Python float: a compiled step reads the current value without recompiling.
        self.register_buffer("teacher_temp", torch.tensor(cfg.dino_teacher_temp_warmup))

    def forward(self, views, labels=None):
        student = self.embed_views(views, lambda v: self.projector(self.encoder(v)))
        with torch.no_grad():
            teacher = [self.target_projector(self.target_encoder(v)) for v in views[:2]]
        with torch.autocast(student[0].device.type, enabled=False):  # softmax over K in fp32 under --amp
            teacher = [t.float() for t in teacher]
            loss = losses.dino_loss([s.float() for s in student], teacher, self.center, self.cfg.dino_student_temp,
                                    self.teacher_temp)
            with torch.no_grad():
                self.batch_center.copy_(torch.cat(teacher).mean(0, keepdim=True))
        return {"loss": loss}

    @torch.no_grad()
    def update_center(self) -> None:
        """c <- m c + (1 - m) (mean of the latest forward's teacher logits over every rank's batch)."""
        batch_mean = distributed.all_reduce_mean(self.batch_center)
        self.center.lerp_(batch_mean, 1.0 - self.cfg.dino_center_momentum)

    def on_step(self, step: int, total_steps: int) -> None:
        super().on_step(step, total_steps)
        self.update_center()
        cfg = self.cfg
        self.teacher_temp.fill_(teacher_temperature(step + 1, total_steps, cfg.dino_teacher_temp_warmup,
                                                    cfg.dino_teacher_temp, cfg.dino_teacher_warmup))
