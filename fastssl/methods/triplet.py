"""Triplet margin loss (FaceNet, Schroff et al. 2015) with in-batch mining; supervised.

    e_i = normalise(g(f(x_i))),  L = triplet([e1; e2], [y; y]; m)   (``fastssl.losses.triplet_loss``)

Both views of an image are positives of each other, as are all same-class images; negatives are
the other classes. Local views (multi-crop) join the batch the same way: all V views of an image, and
of its class, are positives (embeddings [e_0; ...; e_{V-1}], labels [y; ...; y]). Semi-hard mining
by default (``--triplet-mining batch_hard`` for the hardest positive/negative per anchor), margin
m = 0.2 on squared distances of L2-normalised embeddings.

Recipe (no public CIFAR reference; our choice): SGD lr 0.4 per 256 images, weight decay 1e-5,
projector 2048 -> 256, like SupCon, so the two supervised methods differ only in the loss.
"""
import torch

from .. import distributed, losses
from ..models import mlp
from .base import Method, Option, register


@register("triplet")
class Triplet(Method):
    uses_labels = True
    options = (
        Option("triplet_margin", float, 0.2, "Triplet: margin m on squared distances of L2-normalised embeddings"),
        Option("triplet_mining", str, "semihard", "Triplet: negative mining", choices=("semihard", "batch_hard")),
    )
    recipe = dict(optimizer="sgd", lr=0.4, weight_decay=1e-5, proj_hidden=2048, proj_dim=256, aug="default")

    # --recipe speedrun (progressive resolution, fastssl.config.RECIPES) against the default at 240 training seconds,
    # kNN top-1 of the CPU --fast model (bench/results/time_to_accuracy-cpu-20261205-240s.md): seed 0 38.60 -> 43.30
    # (+4.70); seed 1 38.10 -> 44.05 (+5.95). At least +3 on every seed: --fast takes it.
    fast_recipe = "speedrun"

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        self.projector = mlp(encoder.dim, cfg.proj_hidden, cfg.proj_dim)

    def forward(self, views, labels=None):
        if labels is None:
            raise ValueError("triplet is supervised: forward needs the labels")
        zs = self.embed_views(views, lambda v: self.projector(self.encoder(v)))
        with torch.autocast(zs[0].device.type, enabled=False):  # distances vs a 0.2 margin: fp32, not bf16
            # Data-parallel: mining over the global batch (gathered, gradient-correct; the same loss on every rank).
            z = torch.cat([distributed.all_gather_with_grad(z.float()) for z in zs])
            labels = distributed.all_gather_nograd(labels)
            loss = losses.triplet_loss(z, labels.repeat(len(zs)), margin=self.cfg.triplet_margin,
                                       mining=self.cfg.triplet_mining)
        return {"loss": loss}
