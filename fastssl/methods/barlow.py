"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of the two views' embeddings,
standardised over the batch, close to the identity.

    z_i = g(f(x_i)),  L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2   (``fastssl.losses.barlow_twins_loss``)

lambda = 0.0051 (the official value). The projector has three layers (Linear-BN-ReLU twice, then
Linear), as in the official code. No labels, no negatives, no stop-gradient.

Local views (multi-crop): the loss is averaged over the view pairs of ``cross_pairs`` (the global
pair, and each local view with each global view): L = mean_{(a, b)} barlow(z_a, z_b); V = 2 is the above.
"""
import torch

from .. import distributed, losses
from ..models import mlp
from .base import Method, cross_pairs, register


@register("barlow")
class BarlowTwins(Method):
    # solo-learn's CIFAR recipe: LARS lr 0.3, wd 1e-4, projector 2048 -> 2048, asymmetric views.
    recipe = dict(optimizer="lars", lr=0.3, weight_decay=1e-4, proj_hidden=2048, proj_dim=2048, aug="asymmetric")
    lambd = 0.0051
    # CPU --fast: Barlow's gradients are ~40x those of the contrastive losses, so the preset's plain SGD
    # (lr 0.5) thrashes (+1.7 kNN points in 400 steps); LARS, the recipe's optimiser, sizes each layer's
    # step to its weights, and a 512-d output (not 128) leaves the cross-correlation something to
    # decorrelate: +8.9 points (measured; SGD lr 0.05: +4.4; LARS with 128-d: +6.0).
    fast_cpu = dict(optimizer="lars", lr=0.3, proj_dim=512)

    # --recipe speedrun (progressive resolution, fastssl.config.RECIPES) against the default at 240 training seconds,
    # kNN top-1 of the CPU --fast model (bench/results/time_to_accuracy-cpu-20261205-240s.md): seed 0 34.85 -> 36.90
    # (+2.05); seed 1 35.20 -> 37.75 (+2.55). Short of +3 on a seed: --fast keeps the default recipe.
    fast_recipe = "default"

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        self.projector = mlp(encoder.dim, cfg.proj_hidden, cfg.proj_dim, layers=3)

    def forward(self, views, labels=None):
        zs = self.embed_views(views, lambda v: self.projector(self.encoder(v)))
        with torch.autocast(zs[0].device.type, enabled=False):  # C_ii ~ 1 needs fp32, not a bf16 matmul
            # Data-parallel: standardisation and C over the global batch (gathered, gradient-correct);
            # every rank computes the same global loss (a D x D matrix: cheap next to the network).
            zs = [distributed.all_gather_with_grad(z.float()) for z in zs]
            pairs = cross_pairs(len(zs))
            loss = sum(self.pair_loss(zs[a], zs[b]) for a, b in pairs) / len(pairs)
        return {"loss": loss}

    def pair_loss(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        """The loss of one view pair's global-batch embeddings (VICReg, a subclass, has its own)."""
        return losses.barlow_twins_loss(za, zb, self.lambd)
