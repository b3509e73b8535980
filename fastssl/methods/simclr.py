"""SimCLR (Chen et al. 2020): NT-Xent between the projections of two views.

    z_i = g(f(x_i)),  L = NT-Xent(z1, z2; tau)   (see ``fastssl.losses.ntxent_loss``)

With local views (multi-crop) every view of an image is a positive of every other:
L = multi-positive loss over all V views (``fastssl.losses.multipositive_loss``; NT-Xent when V = 2).
"""
from .. import dispatch

from ..models import mlp
from .base import Method, register


@register("simclr")
class SimCLR(Method):
    recipe = dict(optimizer="lars", lr=0.4, weight_decay=1e-5, temperature=0.2,
                  proj_hidden=2048, proj_dim=256, aug="default")

    # --recipe speedrun (progressive resolution, fastssl.config.RECIPES) against the default at 240 training seconds,
    # kNN top-1 of the CPU --fast model (bench/results/time_to_accuracy-cpu-20261205-240s.md): seed 0 38.30 -> 44.25
    # (+5.95); seed 1 40.30 -> 43.30 (+3.00); at 960 s seed 0 47.45 -> 53.70. At least +3 on every seed: --fast takes
    # it.
    fast_recipe = "speedrun"

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        self.projector = mlp(encoder.dim, cfg.proj_hidden, cfg.proj_dim)

    def forward(self, views, labels=None):
        zs = [z.float() for z in self.embed_views(views, lambda v: self.projector(self.encoder(v)))]
        loss = dispatch.multiview_contrastive_loss(zs, self.cfg.temperature, backend=self.cfg.backend)
        return {"loss": loss}
