"""Running one cell: pretrain (or resume) it with ``fastssl.train.train``, evaluate it by the budget's
linear protocol and write its ``result.json``."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from pathlib import Path

import torch

from data_prep.atomic import write_json

from .plan import Planned
from .table import LINEAR_PROTOCOL, PAPER, REFERENCE, RESULT, STANDARD


def run_cell(p: Planned, budget: str) -> dict:
    """Pretrain (or resume) one cell and probe it; writes and returns its result record."""
    from ..train import CHECKPOINT, train
    folder = Path(p.cfg.out)
    resumed = (folder / CHECKPOINT).exists()
    summary = train(dataclasses.replace(p.cfg, resume=resumed))
    cfg = summary["config"]
    key = (p.cell.method, p.cell.dataset, p.cell.encoder)
    paper, original = PAPER.get(key, (None, None))  # an extra row (EXTRA_METHODS) has a reference instead
    reference = REFERENCE.get(key)
    protocol, probe_top1, standard_s = LINEAR_PROTOCOL[budget], summary["linear_top1"], None
    if protocol == "standard":
        t0 = time.perf_counter()
        ours = standard_linear_top1(p.cfg)
        standard_s = time.perf_counter() - t0
    else:
        ours = probe_top1
    record = dict(method=p.cell.method, dataset=p.cell.dataset, encoder=p.cell.encoder, budget=budget,
                  linear_top1=ours, linear_protocol=protocol,
                  linear_settings=STANDARD if protocol == "standard" else None, linear_s=standard_s,
                  probe_top1=probe_top1, paper_top1=paper, paper_original_top1=original, reference_top1=reference,
                  diff=None if ours is None or (paper or reference) is None else round(ours - (paper or reference), 2), knn_top1=summary["knn_top1"],
                  knn_protocol=f"kNN k={cfg['knn_k']}, temperature {cfg['knn_t']}", knn_top1_k20=summary.get("knn_top1_k20"),
                  knn_top1_init=summary["knn_top1_init"], epochs=summary["epochs"], steps=summary["steps"],
                  images_seen=summary["images_seen"], wall_s=summary["wall_s"], device=summary["device"],
                  estimate_s=p.estimate_s, resumed=resumed, width=cfg["width"], batch_size=cfg["batch_size"],
                  train_subset=cfg["train_subset"], knn_bank=cfg["knn_bank"], knn_queries=cfg["knn_queries"],
                  finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    write_json(folder / RESULT, record)
    return record


def standard_linear_top1(cfg) -> float:
    """The standard linear protocol on a finished cell's checkpoint: full train and test sets."""
    from data_prep import load_dataset

    from ..checkpoint import load_checkpoint
    from ..encoder import encoder_from_checkpoint
    from ..eval import STANDARD_LINEAR, LabelledSplits, standard_linear_eval
    device = torch.device(cfg.device)
    encoder = encoder_from_checkpoint(load_checkpoint(cfg.out), cfg.out).to(device)
    ds = load_dataset(cfg.dataset, cfg.data)
    print(f"standard linear evaluation: {len(ds.train_y)} train / {len(ds.test_y)} test images, "
          f"{STANDARD['epochs']} epochs", flush=True)
    schedule = dataclasses.replace(STANDARD_LINEAR, seed=cfg.seed, channels_last=cfg.channels_last, **STANDARD)
    return standard_linear_eval(encoder, LabelledSplits.of(ds, device), schedule)
