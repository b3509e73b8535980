"""MoCo v3 (Chen, Xie, He 2021): queries from an online network contrast with keys from a momentum network.

    online:  q_i = h(g(f(x_i)))          momentum:  k_i = g'(f'(x_i))  (no gradient)
    L = ctr(q1, k2) + ctr(q2, k1),   ctr(q, k) = 2 tau * CE(u w^T / tau, diagonal)
    u = q / |q|, w = k / |k| over the batch's keys (``fastssl.losses.mocov3_loss``), tau = ``--temperature``

The projector g is Linear-BN-ReLU-Linear-BN (the last BatchNorm without affine), the predictor h
Linear-BN-ReLU-Linear, as in the official ResNet code. The momentum network (f', g') follows the online
one by BYOL's EMA, theta' <- tau theta' + (1 - tau) theta after every optimiser step, tau rising from
``--ema-base`` (0.99) to 1.0 on a cosine schedule (``fastssl.methods.byol``, whose target machinery this
class reuses: the target is not in the optimiser, is checkpointed and resumes exactly).

Data-parallel: each rank's queries contrast with the keys of every rank (gathered without gradient,
as in the official code); query i of rank r has key r * n + i as its positive. The per-rank loss is the
mean over its own queries, so the mean over ranks is the single-process loss.

Local views (multi-crop): keys come from the global views only; every view's query contrasts with each
other global view's keys: L = (2 / T) sum over the T ordered pairs (v, g), g global, v != g, of
ctr(q_v, k_g) (V = 2: the symmetric sum above).
"""
from __future__ import annotations

import copy

import torch

from .. import dispatch
from ..models import mlp
from .base import Method, predict_pairs, register
from .byol import BYOL


def contrastive(q: torch.Tensor, k: torch.Tensor, temperature: float, backend: str = "torch") -> torch.Tensor:
    """ctr(q, k) of this rank's queries against every rank's keys (gathered without gradient), through the
    dispatcher: the fused query-key kernel on CUDA (``--kernels``), else the reference cross-entropy."""
    return 2 * temperature * dispatch.cross_contrastive(q, k, temperature, backend=backend)


@register("mocov3")
class MoCoV3(BYOL):
    # solo-learn's CIFAR recipe: LARS lr 0.3, wd 1e-6, temperature 0.2, projector 4096 -> 256, predictor
    # hidden 4096, momentum 0.99 -> 1.0, asymmetric views.
    recipe = dict(optimizer="lars", lr=0.3, weight_decay=1e-6, temperature=0.2, proj_hidden=4096, proj_dim=256,
                  aug="asymmetric", ema_base=0.99)
    fast_cpu: dict = {}  # the preset as it is (BYOL's lr override was measured for BYOL, not inherited)

    def __init__(self, encoder, cfg):
        Method.__init__(self, encoder, cfg)  # not BYOL's heads: MoCo v3 ends its projector with a BatchNorm
        self.projector = mlp(encoder.dim, cfg.proj_hidden, cfg.proj_dim, last_bn=True)
        self.predictor = mlp(cfg.proj_dim, cfg.proj_hidden, cfg.proj_dim)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum = cfg.ema_base

    def forward(self, views, labels=None):
        qs = self.embed_views(views, lambda v: self.predictor(self.projector(self.encoder(v))))
        with torch.no_grad():
            ks = [self.target_projector(self.target_encoder(v)) for v in views[:2]]
        with torch.autocast(qs[0].device.type, enabled=False):  # the logits in fp32 under --amp
            terms = [contrastive(qs[v].float(), ks[g].float(), self.cfg.temperature, self.cfg.backend)
                     for v, g in predict_pairs(len(qs))]
            loss = sum(terms) * (2.0 / len(terms))
        return {"loss": loss}
