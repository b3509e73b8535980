"""The seed paper's Table 1 (methods x datasets x encoders, the numbers it reports), the budgets a
reproduction can run at, and the cells of the grid with their resolved Configs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METHODS = ("simclr", "supcon", "triplet", "barlow", "simsiam", "byol", "dare")  # the paper's order
DATASETS = ("cifar10", "cifar100")
ENCODERS = ("resnet18", "resnet50")

# The seed paper's Table 1: (paper, number the paper quotes from the original work or None), columns
# CIFAR10-R50, CIFAR100-R50, CIFAR10-R18, CIFAR100-R18.
_COLUMNS = (("cifar10", "resnet50"), ("cifar100", "resnet50"), ("cifar10", "resnet18"), ("cifar100", "resnet18"))
_TABLE1 = {
    "simclr": ((87.5, 91.8), (57.7, 68.3), (85.9, 91.8), (55.0, 66.83)),
    "supcon": ((94.0, 96.0), (74.7, 76.5), (93.5, None), (70.4, None)),
    "triplet": ((83.4, None), (76.3, None), (86.0, None), (64.5, None)),
    "barlow": ((81.2, 90.8), (47.7, None), (80.3, 84.7), (45.8, None)),
    "simsiam": ((83.0, 91.3), (47.0, 78.4), (84.8, 83.2), (54.8, None)),
    "byol": ((76.5, None), (34.5, None), (88.6, 91.9), (62.3, None)),
    "dare": ((89.4, None), (62.3, None), (87.3, None), (61.6, None)),
}
PAPER = {(m, d, e): v for m, row in _TABLE1.items() for (d, e), v in zip(_COLUMNS, row)}

# Rows beyond the paper's table: the methods users pick now. The paper has no number for them; the reference
# column holds solo-learn's published ResNet-18 results (CIFAR-10, CIFAR-100), another protocol than ours.
EXTRA_METHODS = ("vicreg", "mocov3", "dino")
_SOLO_LEARN_R18 = {"vicreg": (92.07, 68.54), "mocov3": (93.10, 68.83), "dino": (89.52, 66.76)}
REFERENCE = {(m, d, "resnet18"): top1 for m, row in _SOLO_LEARN_R18.items() for d, top1 in zip(DATASETS, row)}
REFERENCE_PROTOCOL = "solo-learn's published ResNet-18 result: online linear probe, 1000 epochs, batch 256"

# Budgets override the method recipes' schedule (and, for smoke, the sizes); everything else comes
# from Method.recipe through fastssl.config.resolve.
BUDGETS = {
    # The machinery end to end in minutes on a CPU: a narrow net, a data subset, tiny evaluation.
    "smoke": dict(epochs=2, width=8, batch_size=32, train_subset=512, warmup_epochs=0.5, proj_hidden=64,
                  proj_dim=32, knn_bank=512, knn_queries=256, knn_k=20),
    # One GPU: full-width nets on the full data, 50 epochs at batch 512; kNN and probe on full sets. Estimated
    # (FLOP count x an assumed H100 rate, not measured yet) at 2-5 GPU-hours for all 28 cells: see README.
    "quick": dict(epochs=50, batch_size=512, warmup_epochs=5.0, knn_bank=0, knn_queries=0),
    # The public long recipes (solo-learn's CIFAR runs): 1000 epochs at batch 256.
    "full": dict(epochs=1000, batch_size=256, warmup_epochs=10.0, knn_bank=0, knn_queries=0),
}
BUDGET_NOTES = {
    "smoke": "CPU smoke test of the machinery (width 8, 512-image subset, 2 epochs): NOT a reproduction",
    "quick": "single-GPU quick reproduction: full width, full data, 50 epochs at batch 512",
    "full": "public long recipes: full width, full data, 1000 epochs at batch 256",
}
# Which linear evaluation produces each budget's "linear" number (fastssl.eval).
LINEAR_PROTOCOL = {"smoke": "probe", "quick": "probe", "full": "standard"}
# The standard protocol's settings (solo-learn's CIFAR linear evaluation, with a cosine schedule).
STANDARD = dict(epochs=100, batch_size=256, lr=0.1)
PROTOCOL_TEXT = {
    "probe": "a linear classifier on features precomputed once, AdamW, 100 epochs (a fast proxy)",
    "standard": "a linear head on the frozen backbone in eval mode, crop + flip, SGD momentum 0.9, cosine schedule",
}
DATASET_SIZE = {"cifar10": (50000, 10000), "cifar100": (50000, 10000)}  # when the data is not at hand


def family(method: str) -> str:
    """Methods of one family cost about the same per step: BYOL, MoCo v3 and DINO also run an EMA target network."""
    return "ema-target" if method in ("byol", "mocov3", "dino") else "two-view"


@dataclass(frozen=True)
class Cell:
    method: str
    dataset: str
    encoder: str

    @property
    def name(self) -> str:
        return f"{self.method}-{self.dataset}-{self.encoder}"


def grid(methods=METHODS, datasets=DATASETS, encoders=ENCODERS) -> list[Cell]:
    return [Cell(m, d, e) for m in methods for e in reversed(ENCODERS) if e in encoders
            for d in DATASETS if d in datasets]


def cell_config(cell: Cell, budget: str, out: Path, device: str = "auto", data: str | None = None,
                progress: bool = True):
    """The resolved Config of one cell: budget > method recipe > defaults."""
    from ..config import Config, resolve
    cfg = Config(method=cell.method, dataset=cell.dataset, encoder=cell.encoder, data=data, device=device,
                 progress=progress, out=str(out / "cells" / cell.name), **BUDGETS[budget])
    return resolve(cfg)


RESULT = "result.json"  # a finished cell's record, in its folder
