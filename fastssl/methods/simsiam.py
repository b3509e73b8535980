"""SimSiam (Chen & He 2021): a predictor on one branch and a stop-gradient on the other.

    z_i = g(f(x_i)),  p_i = q(z_i),  L = 1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1)),  D = -cos
    (``fastssl.losses.negative_cosine``)

As in the paper: a 3-layer projector ending in a BatchNorm, a bottleneck predictor
(proj_dim -> proj_dim / 4 -> proj_dim, i.e. 2048 -> 512 -> 2048), and the predictor's learning
rate is not decayed (its optimiser groups carry ``fixed_lr=True``: the training loop keeps them
at the peak lr).

Local views (multi-crop): each view's prediction regresses each OTHER global view's (stopped)
projection, as DINO's student and teacher: L = mean over the ordered pairs (v, g), g global, v != g,
of D(p_v, sg(z_g)); with V = 2 the pairs are (1, 2) and (2, 1), the formula above.
"""
import torch
import torch.nn.functional as F

from .. import losses
from ..models import mlp
from .base import Method, predict_pairs, register


@register("simsiam")
class SimSiam(Method):
    # solo-learn's CIFAR recipe: SGD lr 0.5, wd 1e-5, projector 2048 -> 2048, predictor hidden 512.
    recipe = dict(optimizer="sgd", lr=0.5, weight_decay=1e-5, proj_hidden=2048, proj_dim=2048, aug="default")

    # --recipe speedrun (progressive resolution, fastssl.config.RECIPES) against the default at 240 training seconds,
    # kNN top-1 of the CPU --fast model (bench/results/time_to_accuracy-cpu-20261205-240s.md): seed 0 33.45 -> 34.90
    # (+1.45); seed 1 31.85 -> 35.65 (+3.80). Short of +3 on a seed: --fast keeps the default recipe.
    fast_recipe = "default"

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        self.projector = mlp(encoder.dim, cfg.proj_hidden, cfg.proj_dim, layers=3, last_bn=True)
        self.predictor = mlp(cfg.proj_dim, max(1, cfg.proj_dim // 4), cfg.proj_dim)

    def forward(self, views, labels=None):
        zs = self.embed_views(views, lambda v: self.projector(self.encoder(v)))
        ps = [self.predictor(z) for z in zs]
        with torch.autocast(zs[0].device.type, enabled=False):  # the loss in fp32 under --amp
            terms = [losses.negative_cosine(ps[v].float(), zs[g].detach().float()) for v, g in predict_pairs(len(zs))]
            loss = sum(terms) / len(terms)
        # The per-dimension std of normalised z (1/sqrt(d) when healthy, 0 when collapsed).
        z_std = F.normalize(zs[0].detach().float(), dim=1).std(0).mean()
        return {"loss": loss, "z_std": z_std}

    def param_groups(self):
        predictor = {id(p) for p in self.predictor.parameters()}
        groups = []
        for g in super().param_groups():
            rest = [p for p in g["params"] if id(p) not in predictor]
            mine = [p for p in g["params"] if id(p) in predictor]
            groups.append({**g, "params": rest})
            groups.append({**g, "params": mine, "fixed_lr": True})
        return groups
