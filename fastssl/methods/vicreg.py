"""VICReg (Bardes, Ponce, LeCun 2022): variance-invariance-covariance regularisation of two views' embeddings.

    z_i = g(f(x_i)),  L = lambda inv(z1, z2) + mu [var(z1) + var(z2)] + nu [cov(z1) + cov(z2)]
    inv = mean of (z1 - z2)^2;  var(z) = (1/d) sum_j max(0, 1 - sqrt(Var_j(z) + 1e-4));
    cov(z) = (1/d) sum_{i != j} Cov(z)_ij^2            (``fastssl.losses.vicreg_loss``)

lambda, mu, nu = 25, 25, 1 (the published weights: ``--vicreg-sim``, ``--vicreg-var``, ``--vicreg-cov``).
The expander has three layers (Linear-BN-ReLU twice, then Linear), 2048 wide for CIFAR (solo-learn's
recipe). No negatives, no stop-gradient, no momentum network.

Local views (multi-crop): the loss is averaged over the view pairs of ``cross_pairs`` (the global pair,
and each local view with each global view): L = mean_{(a, b)} vicreg(z_a, z_b); V = 2 is the above.
Data-parallel: variance and covariance are over the global batch (gathered with gradient); every rank
computes the same global loss, as Barlow Twins does.
"""
import torch

from .. import losses
from .barlow import BarlowTwins
from .base import Option, register


@register("vicreg")
class VICReg(BarlowTwins):
    """Barlow Twins' expander, recipe, CPU preset, multi-crop pairs and global-batch gathering; VICReg's loss."""
    # solo-learn's CIFAR recipe is Barlow's: LARS lr 0.3, wd 1e-4, expander 2048 -> 2048, solarisation on one
    # view; and so is the CPU --fast preset (LARS sizes each layer's step to its weights, and a 512-d output
    # leaves the covariance term something to decorrelate).
    options = (
        Option("vicreg_sim", float, 25.0, "VICReg: weight of the invariance (MSE) term"),
        Option("vicreg_var", float, 25.0, "VICReg: weight of the variance (std hinge) term"),
        Option("vicreg_cov", float, 1.0, "VICReg: weight of the covariance (off-diagonal) term"),
    )

    def pair_loss(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return losses.vicreg_loss(za, zb, cfg.vicreg_sim, cfg.vicreg_var, cfg.vicreg_cov)
