"""Reproduce the seed paper's Table 1: methods x {cifar10, cifar100} x {resnet18, resnet50}.

    python scripts/reproduce_table1.py --budget quick                       # the whole grid
    python scripts/reproduce_table1.py --budget smoke --methods simclr dare --datasets cifar10

Each cell pretrains with ``fastssl.train.train`` (the method's recipe, overridden by the budget) in
``OUT/cells/<method>-<dataset>-<encoder>/`` and ends with a linear evaluation on the full train/test
sets (subsets for ``smoke``): the fast probe on precomputed features for ``smoke``/``quick``, the
standard protocol (linear head on the frozen backbone, crop + flip, SGD, 100 epochs, cosine) for
``full``. Every number in the results names the protocol that produced it. A cell is finished when its ``result.json`` exists; a cell
with a checkpoint but no result resumes from it, so rerunning the same command picks up where it
stopped. Before starting, the plan is printed with an estimated wall time per cell on this device,
from a few real training steps timed per (encoder, method family). ``OUT`` then holds
``results.{json,csv,md}`` (our linear top-1 next to the paper's, and the difference) and a PNG chart.
"""
from __future__ import annotations

from .cli import ReproduceError, main, parse_args
from .plan import Planned, plan, plan_text, probe
from .report import collect, protocol_of, results_markdown, write_results
from .run import run_cell, standard_linear_top1
from .table import (BUDGET_NOTES, BUDGETS, DATASETS, ENCODERS, LINEAR_PROTOCOL, METHODS, PAPER, PROTOCOL_TEXT,
                    RESULT, STANDARD, Cell, cell_config, grid)

__all__ = ["BUDGETS", "BUDGET_NOTES", "Cell", "DATASETS", "ENCODERS", "LINEAR_PROTOCOL", "METHODS", "PAPER",
           "PROTOCOL_TEXT", "Planned", "RESULT", "ReproduceError", "STANDARD", "cell_config", "collect", "grid",
           "main", "parse_args", "plan", "plan_text", "probe", "protocol_of", "results_markdown", "run_cell",
           "standard_linear_top1", "write_results"]
