"""The plan of a reproduction: each cell's status (done, resume, run, or data missing), steps left and
evaluation passes, and its estimated wall time from a few real training steps timed per (encoder,
method family) with training's own step (``fastssl.step``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..step import time_train_steps
from .table import (BUDGET_NOTES, DATASET_SIZE, LINEAR_PROTOCOL, PROTOCOL_TEXT, RESULT, STANDARD, Cell, cell_config,
                    family)


@dataclass
class Planned:
    cell: Cell
    cfg: object
    status: str  # "done", "resume", "run", or "download (why the data is not at hand)"
    steps: int = 0
    eval_images: int = 0
    estimate_s: float | None = None


def _sizes(cfg) -> tuple[int, int, str | None]:
    """(train images, test images, None) from the data at hand, else the standard sizes and a note."""
    from data_prep import DataError, load_dataset
    try:
        ds = load_dataset(cfg.dataset, cfg.data, download=False, verbose=False)
        return len(ds.train_y), len(ds.test_y), None
    except DataError as e:
        return (*DATASET_SIZE[cfg.dataset], str(e))


def plan(cells: list[Cell], budget: str, out: Path, device: str, data, progress: bool) -> list[Planned]:
    from ..checkpoint import load_checkpoint
    from ..train import CHECKPOINT
    planned, sizes = [], {}
    for cell in cells:
        cfg = cell_config(cell, budget, out, device, data, progress)
        folder = Path(cfg.out)
        if cell.dataset not in sizes:
            sizes[cell.dataset] = _sizes(cfg)
        n_train, n_test, missing = sizes[cell.dataset]
        status = ("done" if (folder / RESULT).exists() else "resume" if (folder / CHECKPOINT).exists() else "run")
        if missing and status != "done":
            status = f"download ({missing})"
        train_n = min(cfg.train_subset, n_train) if cfg.train_subset else n_train
        bank = min(cfg.knn_bank, n_train) if cfg.knn_bank else n_train
        queries = min(cfg.knn_queries, n_test) if cfg.knn_queries else n_test
        epochs_left = cfg.epochs
        if status == "resume":  # only what is left after the checkpoint's epoch
            epochs_left -= load_checkpoint(folder / CHECKPOINT)["epoch"]  # weights_only: never runs code
        steps = max(0, epochs_left) * (train_n // cfg.batch_size)
        # kNN before and after training, then the linear probe: three feature passes over bank + queries;
        # the standard protocol adds a backbone pass over the train set per epoch
        eval_images = 3 * (bank + queries)
        if LINEAR_PROTOCOL[budget] == "standard":
            eval_images += STANDARD["epochs"] * bank + queries
        planned.append(Planned(cell, cfg, status, steps, eval_images))
    return planned


def probe(planned: list[Planned], steps: int, warmup: int) -> dict:
    """Time a few real training steps per (encoder, family) of the cells still to run; fill estimates."""
    todo = [p for p in planned if p.status != "done"]
    measured = {}
    for p in todo:
        key = (p.cell.encoder, family(p.cell.method))
        if key not in measured:
            print(f"probe: timing {warmup}+{steps} training steps of {p.cell.method} {p.cell.encoder} "
                  f"(batch {p.cfg.batch_size}, width {p.cfg.width}, amp {p.cfg.amp}, compile {p.cfg.compile}) ...",
                  flush=True)
            measured[key] = dict(method=p.cell.method, **time_train_steps(p.cfg, steps=steps, warmup=warmup,
                                                                          eval_images=min(4096, 4 * p.cfg.batch_size)))
        m = measured[key]
        p.estimate_s = m["warmup_s"] + p.steps * m["step_s"] + p.eval_images / m["eval_images_per_s"]
    return {f"{e}/{f}": m for (e, f), m in measured.items()}


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def plan_text(planned: list[Planned], budget: str, out: Path, device_name: str, probes: dict) -> str:
    lines = [f"plan: budget {budget} ({BUDGET_NOTES[budget]}); {len(planned)} cells on {device_name}; output {out}",
             f"  linear evaluation: {LINEAR_PROTOCOL[budget]} ({PROTOCOL_TEXT[LINEAR_PROTOCOL[budget]]}"
             + (f", {STANDARD['epochs']} epochs, batch {STANDARD['batch_size']}, lr {STANDARD['lr']}"
                if LINEAR_PROTOCOL[budget] == "standard" else "") + ")",
             f"  {'cell':28s} {'status':8s} {'epochs':>6s} {'steps left':>10s} {'est. wall':>10s}"]
    for p in planned:
        lines.append(f"  {p.cell.name:28s} {p.status.split(' (')[0]:8s} {p.cfg.epochs:6d} {p.steps:10d} "
                     f"{fmt_s(p.estimate_s) if p.status != 'done' else '-':>10s}")
    for p in planned:
        if "(" in p.status:
            lines.append(f"  note: {p.cell.name}: {p.status}")
    for key, m in probes.items():
        lines.append(f"  measured {key} ({m['method']}): {m['step_s'] * 1e3:.1f} ms/step at batch {m['batch_size']} "
                     f"({m['images_per_s']:.0f} images/s), first {m['warmup_steps']} steps {m['warmup_s']:.1f} s, "
                     f"evaluation {m['eval_images_per_s']:.0f} images/s")
    todo = [p.estimate_s for p in planned if p.status != "done" and p.estimate_s is not None]
    if todo:
        lines.append(f"estimated wall time of the {len(todo)} cells to run: {fmt_s(sum(todo))} "
                     "(measured steps x step count + compile + evaluation; data loading not included)")
    return "\n".join(lines)
