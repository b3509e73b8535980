"""Evaluation of a frozen backbone: the kNN monitor and the linear probe (DESIGN section 5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .augment import normalize


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, mean, std, batch_size: int = 1024,
                     channels_last: bool = True, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Backbone features h for uint8 NCHW ``images`` (no augmentation), float32, on images' device."""
    was_training = encoder.training
    encoder.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i:i + batch_size], mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out.append(encoder(x).float())
    encoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
             num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> float:
    """Weighted kNN top-1 accuracy (%), cosine similarity of L2-normalised features.

    Each query's k nearest bank features vote for their class with weight exp(sim / temperature).
    """
    bank = F.normalize(bank, dim=1)
    queries = F.normalize(queries, dim=1)
    k = min(k, len(bank))
    correct = 0
    for i in range(0, len(queries), chunk):
        sim, idx = (queries[i:i + chunk] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == query_labels[i:i + chunk]).sum().item()
    return 100.0 * correct / len(queries)


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, epochs: int = 100, batch_size: int = 1024,
                 lr: float = 1e-3, weight_decay: float = 1e-6, seed: int = 0) -> float:
    """Top-1 test accuracy (%) of a linear classifier trained on precomputed, frozen features.

    Features are standardised with the training set's statistics; AdamW with a cosine schedule.
    Runs where the features live (seconds on a GPU).
    """
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
    xtr, xte = (train_feats - mean) / std, (test_feats - mean) / std
    gen = torch.Generator(device="cpu").manual_seed(seed)
    clf = nn.Linear(xtr.shape[1], num_classes).to(xtr.device)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(xtr) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen).to(xtr.device)
        for i in range(0, len(xtr), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(clf(xtr[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return 100.0 * (clf(xte).argmax(1) == test_labels).float().mean().item()
