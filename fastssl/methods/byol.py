"""BYOL (Grill et al. 2020): an online network predicts a slowly moving target network.

    online:  p_i = q(g(f(x_i)))          target:  t_i = g'(f'(x_i))  (no gradient)
    L = byol(p1, t2) + byol(p2, t1),  byol(p, t) = mean over the batch of 2 - 2 cos(p, t)
    (``fastssl.losses.byol_loss``; the sum over both view orders, docs/losses.md)

The target (f', g') starts as a copy of the online encoder and projector and, after every
optimiser step, moves towards them by an exponential moving average,
theta' <- tau theta' + (1 - tau) theta, with tau following the cosine schedule
tau(k) = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, k = 0 .. K - 1 counting optimiser steps: tau_base = 0.99
(``--ema-base``) after the first step, rising towards 1.0 (reached at k = K).
The update is one ``torch._foreach_lerp_`` over all parameters (no Python loop of small kernels).
Target parameters never require grad and are not in the optimiser (so not in its checkpointed
state); they are ordinary submodules, so ``state_dict()`` and therefore the checkpoint carry them
and ``--resume`` restores them exactly. The target's BatchNorm statistics come from its own
forward passes (it runs in training mode like the online network); only parameters are averaged.

Local views (multi-crop): only the global views go through the target network (as DINO's teacher);
every view's prediction regresses each other global view's target:
L = (2 / T) sum over the T ordered pairs (v, g), g global, v != g, of byol(p_v, t_g)
(the mean over pairs, scaled so that V = 2, pairs (1, 2) and (2, 1), is the sum above).
"""
from __future__ import annotations

import copy
import math

import torch

from .. import losses
from ..models import mlp
from .base import Method, Option, predict_pairs, register


def ema_momentum(step: int, total_steps: int, base: float = 0.99) -> float:
    """tau(k) = 1 - (1 - base) (cos(pi k / K) + 1) / 2: base at k = 0, 1.0 at k >= K."""
    t = min(1.0, step / max(1, total_steps))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * t) + 1.0) / 2.0


@register("byol")
class BYOL(Method):
    # solo-learn's CIFAR recipe: LARS lr 1.0, wd 1e-5, projector 2048 -> 256 (predictor hidden = projector
    # hidden), asymmetric views.
    options = (Option("ema_base", float, 0.99, "BYOL: initial EMA momentum of the target network (cosine schedule "
                      "to 1.0)"),)
    recipe = dict(optimizer="lars", lr=1.0, weight_decay=1e-5, proj_hidden=2048, proj_dim=256, aug="asymmetric")
    # CPU --fast: SGD lr 0.25 instead of the preset's 0.5. Measured gains in 400 steps: lr 0.1 / 0.25 / 0.5 / 1.0
    # -> +5.5 / +5.8 / +5.3 / +3.3 kNN points (LARS lr 1.0: +5.5; ema_base 0.95: +5.5), so the short schedule
    # is past its best lr at 0.5; below that the differences are within the 2,000-query kNN noise (~1 point).
    fast_cpu = dict(lr=0.25)

    # --recipe speedrun (progressive resolution, fastssl.config.RECIPES) against the default at 240 training seconds,
    # kNN top-1 of the CPU --fast model (bench/results/time_to_accuracy-cpu-20261205-240s.md): seed 0 31.65 -> 34.25
    # (+2.60); seed 1 29.45 -> 34.15 (+4.70). Short of +3 on a seed: --fast keeps the default recipe.
    fast_recipe = "default"

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        self.projector = mlp(encoder.dim, cfg.proj_hidden, cfg.proj_dim)
        self.predictor = mlp(cfg.proj_dim, cfg.proj_hidden, cfg.proj_dim)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum = cfg.ema_base  # the tau used by the latest update

    def online_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.encoder.parameters(), *self.projector.parameters()]

    def target_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.target_encoder.parameters(), *self.target_projector.parameters()]

    def forward(self, views, labels=None):
        ps = self.embed_views(views, lambda v: self.predictor(self.projector(self.encoder(v))))
        with torch.no_grad():
            ts = [self.target_projector(self.target_encoder(v)) for v in views[:2]]
        with torch.autocast(ps[0].device.type, enabled=False):  # the loss in fp32 under --amp
            terms = [losses.byol_loss(ps[v].float(), ts[g].float()) for v, g in predict_pairs(len(ps))]
            loss = sum(terms) * (2.0 / len(terms))
        return {"loss": loss}

    def param_groups(self):
        target = {id(p) for p in self.target_parameters()}
        return [{**g, "params": [p for p in g["params"] if id(p) not in target]} for g in super().param_groups()]

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """theta' <- momentum * theta' + (1 - momentum) * theta, in place, for all parameters at once."""
        torch._foreach_lerp_(self.target_parameters(), self.online_parameters(), 1.0 - momentum)

    def on_step(self, step: int, total_steps: int) -> None:
        self.momentum = ema_momentum(step, total_steps, self.cfg.ema_base)
        self.update_target(self.momentum)
