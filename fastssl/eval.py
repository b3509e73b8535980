"""Evaluation of a backbone: the kNN monitor, the fast linear probe on precomputed
features, the standard linear protocol (a linear head on the frozen backbone with crop + flip) and
full fine-tuning, optionally on a class-balanced fraction of the labels (semi-supervised)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .augment import normalize
from .data import to_nchw
from .runtime import amp_dtype


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


KNN_KS = (20, 200)  # the two neighbourhood sizes reported (200 is the monitor's default --knn-k)


@torch.no_grad()
def knn_accuracies(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                   query_labels: torch.Tensor, num_classes: int, ks=KNN_KS, temperature: float = 0.1,
                   chunk: int = 1024) -> dict[int, float]:
    """Weighted kNN top-1 accuracy (%) for every k in ``ks``, from one similarity search.

    Cosine similarity of L2-normalised features; each query's k nearest bank features vote for their
    class with weight exp(sim / temperature). ``topk`` returns neighbours sorted by similarity, so the
    k nearest for a small k are the first k columns of the search for the largest k.
    """
    bank = F.normalize(bank, dim=1)
    queries = F.normalize(queries, dim=1)
    asked = [int(k) for k in ks]
    ks = [min(k, len(bank)) for k in asked]  # a bank smaller than k: every bank feature votes
    correct = [0] * len(ks)
    for i in range(0, len(queries), chunk):
        sim, idx = (queries[i:i + chunk] @ bank.T).topk(max(ks), dim=1)
        weights, neighbour_labels = (sim / temperature).exp(), bank_labels[idx]
        for j, k in enumerate(ks):
            votes = torch.zeros(len(sim), num_classes, device=bank.device)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            correct[j] += (votes.argmax(1) == query_labels[i:i + chunk]).sum().item()
    return {k: 100.0 * c / len(queries) for k, c in zip(asked, correct)}


def knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
             num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> float:
    """Weighted kNN top-1 accuracy (%) for one ``k`` (see ``knn_accuracies``)."""
    return next(iter(knn_accuracies(bank, bank_labels, queries, query_labels, num_classes, (k,), temperature,
                                    chunk).values()))


def _seeded_linear(din: int, dout: int, seed: int) -> nn.Linear:
    """A linear layer whose initial weights depend only on ``seed`` (not on the global RNG's state, which
    differs between a training run's end and a separate evaluation: +-1 point on a short probe)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(din, dout)


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
    clf = _seeded_linear(xtr.shape[1], num_classes, seed).to(xtr.device)
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


# ---- protocols that train on the backbone's output (standard linear evaluation, fine-tuning) ----------

def pad_crop_flip(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """The classic CIFAR training augmentation on a uint8 (B, 3, H, W) batch, batched on its device:
    zero-pad by ``padding`` pixels, take a random H x W crop, flip horizontally with probability 1/2."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dev = images.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    rows = top[:, None] + torch.arange(h, device=dev)                    # (B, H)
    cols = left[:, None] + torch.arange(w, device=dev)                   # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)                # a flip reads the columns backwards
    batch = torch.arange(n, device=dev)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()  # (B,H,W,C)->NCHW


def balanced_subset(labels, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a class-balanced random subset holding ``fraction`` of the labels: the same
    number of images per class (round(fraction N / classes), at least 1, at most what a class has),
    drawn with ``seed`` (the same seed gives the same subset)."""
    labels = torch.as_tensor(labels).cpu()
    if not 0 < fraction <= 1:
        raise ValueError(f"the labels fraction must be in (0, 1], got {fraction}")
    classes = labels.unique()
    per_class = max(1, round(fraction * len(labels) / len(classes)))
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(chosen).sort().values


def _batches(n: int, batch_size: int, gen: torch.Generator, device, min_size: int = 1):
    perm = torch.randperm(n, generator=gen).to(device)
    for i in range(0, n, batch_size):
        idx = perm[i:i + batch_size]
        if len(idx) >= min_size:
            yield idx


@torch.no_grad()
def _accuracy(model: nn.Module, images, labels, mean, std, batch_size: int = 1024, channels_last: bool = True) -> float:
    logits = extract_features(model, images, mean, std, batch_size=batch_size, channels_last=channels_last)
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


@dataclass(frozen=True)
class LabelledSplits:
    """What a supervised protocol trains and tests on: uint8 NCHW images and int64 labels on the device
    where it runs, the per-channel ``mean``/``std`` (0-255) the backbone was trained with, the class count."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple
    std: tuple
    num_classes: int

    @classmethod
    def of(cls, ds, device, train_rows=None, test_rows=None) -> LabelledSplits:
        """The rows ``train_rows`` / ``test_rows`` (index tensors; all when None) of a data_prep dataset."""
        def split(x, y, rows):
            rows = slice(None) if rows is None else rows.numpy()
            return to_nchw(x[rows], device), torch.from_numpy(y[rows]).to(device)
        return cls(*split(ds.train_x, ds.train_y, train_rows), *split(ds.test_x, ds.test_y, test_rows),
                   ds.mean, ds.std, ds.num_classes)


@dataclass(frozen=True)
class SupervisedSchedule:
    """The supervised training of a protocol: SGD with momentum, a per-step cosine schedule over ``epochs``."""
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int = 256
    momentum: float = 0.9
    seed: int = 0
    channels_last: bool = True


STANDARD_LINEAR = SupervisedSchedule(epochs=100, lr=0.1, weight_decay=0.0)  # solo-learn's CIFAR linear evaluation
FINETUNE = SupervisedSchedule(epochs=30, lr=0.05, weight_decay=5e-4)


def _train_augmented(model: nn.Module, params, data: LabelledSplits, schedule: SupervisedSchedule, log, what: str,
                     min_size: int = 1) -> None:
    """The supervised loop both protocols share: random crop (4-px padding) + flip drawn afresh every
    epoch, cross-entropy, SGD with momentum on ``params`` and a per-step cosine schedule."""
    s, train_x, train_y = schedule, data.train_x, data.train_y
    device = train_x.device
    opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, s.epochs * ((len(train_x) + s.batch_size - 1) // s.batch_size))
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    aug_gen = torch.Generator(device=device).manual_seed(s.seed + 1)
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    for epoch in range(s.epochs):
        loss_sum, n = 0.0, 0
        for idx in _batches(len(train_x), s.batch_size, gen, device, min_size=min_size):
            x = normalize(pad_crop_flip(train_x[idx], generator=aug_gen), data.mean, data.std).contiguous(memory_format=fmt)
            loss = F.cross_entropy(model(x), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum, n = loss_sum + loss.item() * len(idx), n + len(idx)
        if log:
            log(f"{what}: epoch {epoch + 1}/{s.epochs} loss {loss_sum / max(n, 1):.4f}")


def _test_accuracy(model: nn.Module, data: LabelledSplits, schedule: SupervisedSchedule) -> float:
    return _accuracy(model, data.test_x, data.test_y, data.mean, data.std, channels_last=schedule.channels_last)


def standard_linear_eval(encoder: nn.Module, data: LabelledSplits, schedule: SupervisedSchedule = STANDARD_LINEAR,
                         log=None) -> float:
    """Top-1 test accuracy (%) of the standard linear protocol (solo-learn's CIFAR linear evaluation):
    a linear head on the frozen backbone, BatchNorm in eval mode, random crop (4-px padding) + flip
    drawn afresh every epoch, SGD with momentum and a per-step cosine schedule.

    Every epoch runs the backbone forward over the augmented images (no gradient reaches it), so it
    costs ``epochs`` feature passes over the train set: minutes on a GPU, much longer on a CPU.
    """
    was_training = encoder.training
    frozen = [p.requires_grad for p in encoder.parameters()]
    encoder.eval().requires_grad_(False)  # eval: BatchNorm uses (and keeps) its running statistics
    head = _seeded_linear(encoder.dim, data.num_classes, schedule.seed).to(data.train_x.device)
    model = nn.Sequential(encoder, head)
    try:
        _train_augmented(model, head.parameters(), data, schedule, log, "standard linear")
        return _test_accuracy(model, data, schedule)
    finally:
        for p, flag in zip(encoder.parameters(), frozen):
            p.requires_grad_(flag)
        encoder.train(was_training)


def finetune(encoder: nn.Module, data: LabelledSplits, schedule: SupervisedSchedule = FINETUNE, log=None) -> float:
    """Top-1 test accuracy (%) after full fine-tuning: backbone (BatchNorm in train mode) and a new
    linear head trained together with random crop (4-px padding) + flip, SGD with momentum and a
    per-step cosine schedule. Changes ``encoder`` in place."""
    model = nn.Sequential(encoder, _seeded_linear(encoder.dim, data.num_classes, schedule.seed)).to(data.train_x.device)
    model.requires_grad_(True).train()
    _train_augmented(model, model.parameters(), data, schedule, log, "finetune", min_size=2)  # BatchNorm needs 2 images
    return _test_accuracy(model, data, schedule)


def fixed_subset(n: int, size: int, seed: int) -> torch.Tensor:
    """A fixed random subset of range(n), sorted (all of it when size is 0 or >= n). With the seeds
    the trainer uses (run seed + 1 for the kNN bank, + 2 for the queries) it picks the same images."""
    if size <= 0 or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


class Evaluator:
    """kNN monitor (and, at the end, the linear probe) on fixed subsets of train (bank) and test.

    ``mean``/``std`` (default: the dataset's) normalise the images as in training: pass the training set's
    when evaluating on another labelled set (``--eval-data``). A labelled set without a test split gives
    a fixed fifth of its images as queries and the rest as the bank."""

    def __init__(self, ds, cfg, device, mean=None, std=None):
        train_x, train_y, test_x, test_y = ds.train_x, ds.train_y, ds.test_x, ds.test_y
        if len(test_y) == 0:
            order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.seed + 3)).numpy()
            held = order[:max(1, len(order) // 5)]
            kept = order[len(held):]
            train_x, train_y, test_x, test_y = train_x[kept], train_y[kept], train_x[held], train_y[held]
        bank = fixed_subset(len(train_y), cfg.knn_bank, cfg.seed + 1).numpy()
        queries = fixed_subset(len(test_y), cfg.knn_queries, cfg.seed + 2).numpy()
        self.bank_x, self.bank_y = to_nchw(train_x[bank], device), torch.from_numpy(train_y[bank]).to(device)
        self.query_x, self.query_y = to_nchw(test_x[queries], device), torch.from_numpy(test_y[queries]).to(device)
        self.mean = ds.mean if mean is None else mean
        self.std = ds.std if std is None else std
        self.num_classes, self.cfg = ds.num_classes, cfg
        self.amp = amp_dtype(cfg.amp)

    def features(self, encoder):
        kw = dict(channels_last=self.cfg.channels_last, amp_dtype=self.amp)
        return (extract_features(encoder, self.bank_x, self.mean, self.std, **kw),
                extract_features(encoder, self.query_x, self.mean, self.std, **kw))

    def knn(self, encoder) -> dict[int, float]:
        """kNN top-1 (%) at k = 20 and at --knn-k (200 by default), from one similarity search."""
        bank, queries = self.features(encoder)
        return knn_accuracies(bank, self.bank_y, queries, self.query_y, self.num_classes, ks=(20, self.cfg.knn_k),
                              temperature=self.cfg.knn_t)

    def linear(self, encoder) -> float:
        bank, queries = self.features(encoder)
        return linear_probe(bank, self.bank_y, queries, self.query_y, self.num_classes, seed=self.cfg.seed)
