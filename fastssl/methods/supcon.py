"""SupCon (Khosla et al. 2020): supervised contrastive loss on the projections of two views.

    z_i = g(f(x_i)),  L = SupCon(z1, z2, y; tau)   (see ``fastssl.losses.supcon_loss``)

Every image with the anchor's label (both views) is a positive. Uses the labels.
"""
import torch

from .. import dispatch

from ..models import mlp
from .base import Method, register


@register("supcon")
class SupCon(Method):
    uses_labels = True
    # solo-learn's CIFAR recipe: SGD lr 0.4; tau 0.1 as in the SupCon paper.
    recipe = dict(optimizer="sgd", lr=0.4, weight_decay=1e-5, temperature=0.1,
                  proj_hidden=2048, proj_dim=256, aug="default")

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        self.projector = mlp(encoder.dim, cfg.proj_hidden, cfg.proj_dim)

    def forward(self, v1, v2, labels=None):
        if labels is None:
            raise ValueError("supcon is supervised: forward needs the labels")
        z1, z2 = self.projector(self.encoder(v1)), self.projector(self.encoder(v2))
        with torch.autocast(z1.device.type, enabled=False):  # similarities in fp32 under --amp
            loss = dispatch.contrastive_loss(z1.float(), z2.float(), self.cfg.temperature, labels=labels,
                                             backend=self.cfg.backend)
        return {"loss": loss}
