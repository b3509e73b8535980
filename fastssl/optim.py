"""Optimisers (SGD, LARS, AdamW); the warmup + cosine schedule lives in fastssl.schedule (re-exported here)."""
from __future__ import annotations

import torch

from .schedule import lr_at  # noqa: F401  (re-exported: the step-counted schedule)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017).

    For each parameter tensor w with gradient g (weight decay folded in, g <- g + wd * w)::

        trust = eta * ||w|| / ||g||   (1 when either norm is 0)
        v <- momentum * v + lr * trust * g;   w <- w - v

    Groups marked ``lars_exclude`` (biases, norm parameters) skip the trust ratio, as in the
    public CIFAR recipes (eta = 0.02).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g * trust
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(group["momentum"]).add_(g, alpha=group["lr"])
                p.sub_(buf)


OPTIMIZERS = ("sgd", "lars", "adamw")
# AdamW's betas: the PyTorch default (0.9, 0.999), as DINO and MoCo v3 train their ViTs; MAE-style
# recipes use (0.9, 0.95) (pass ``betas``). The ViT recipe: AdamW, weight decay 0.05, warmup then cosine.
ADAMW_BETAS = (0.9, 0.999)


def build_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float, momentum: float = 0.9,
                    betas: tuple[float, float] = ADAMW_BETAS):
    """``momentum`` is SGD's and LARS's, ``betas`` AdamW's (decoupled weight decay; biases and norm
    parameters, the groups with weight_decay 0, are not decayed)."""
    for g in groups:
        g.setdefault("weight_decay", weight_decay)
    clean = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(clean, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(clean, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}")
