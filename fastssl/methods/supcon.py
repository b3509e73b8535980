"""SupCon (Khosla et al. 2020): supervised contrastive loss on the projections of two views.

    z_i = g(f(x_i)),  L = SupCon(z1, z2, y; tau)   (see ``fastssl.losses.supcon_loss``)

Every image with the anchor's label (both views) is a positive. Uses the labels. With local views
(multi-crop): every view of every same-class image is a positive (``fastssl.losses.multipositive_loss``
with the labels; ``supcon_loss`` when V = 2).
"""
import torch

from .. import dispatch
from .base import register
from .simclr import SimCLR


@register("supcon")
class SupCon(SimCLR):
    """SimCLR's projector; the labels define the positives."""
    uses_labels = True
    # solo-learn's CIFAR recipe: SGD lr 0.4; tau 0.1 as in the SupCon paper.
    recipe = dict(optimizer="sgd", lr=0.4, weight_decay=1e-5, temperature=0.1,
                  proj_hidden=2048, proj_dim=256, aug="default")

    # --recipe speedrun (progressive resolution, fastssl.config.RECIPES) against the default at 240 training seconds,
    # kNN top-1 of the CPU --fast model (bench/results/time_to_accuracy-cpu-20261205-240s.md): seed 0 37.95 -> 47.30
    # (+9.35); seed 1 37.35 -> 45.50 (+8.15). At least +3 on every seed: --fast takes it.
    fast_recipe = "speedrun"

    def forward(self, views, labels=None):
        if labels is None:
            raise ValueError("supcon is supervised: forward needs the labels")
        zs = self.embed_views(views, lambda v: self.projector(self.encoder(v)))
        with torch.autocast(zs[0].device.type, enabled=False):  # similarities in fp32 under --amp
            loss = dispatch.multiview_contrastive_loss([z.float() for z in zs], self.cfg.temperature, labels=labels,
                                                       backend=self.cfg.backend)
        return {"loss": loss}
