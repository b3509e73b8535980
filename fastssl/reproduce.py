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

import argparse
import csv
import dataclasses
import datetime as _dt
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

METHODS = ("simclr", "supcon", "triplet", "barlow", "simsiam", "byol", "dare")  # the paper's order
DATASETS = ("cifar10", "cifar100")
ENCODERS = ("resnet18", "resnet50")

# DESIGN section 6: (paper, number the paper quotes from the original work or None), columns
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
# Which linear evaluation produces each budget's "linear" number (fastssl.eval; DESIGN section 5).
LINEAR_PROTOCOL = {"smoke": "probe", "quick": "probe", "full": "standard"}
# The standard protocol's settings (solo-learn's CIFAR linear evaluation, with a cosine schedule).
STANDARD = dict(epochs=100, batch_size=256, lr=0.1)
PROTOCOL_TEXT = {
    "probe": "a linear classifier on features precomputed once, AdamW, 100 epochs (a fast proxy)",
    "standard": "a linear head on the frozen backbone in eval mode, crop + flip, SGD momentum 0.9, cosine schedule",
}
DATASET_SIZE = {"cifar10": (50000, 10000), "cifar100": (50000, 10000)}  # when the data is not at hand


def family(method: str) -> str:
    """Methods of one family cost about the same per step: BYOL also runs an EMA target network."""
    return "ema-target" if method == "byol" else "two-view"


class ReproduceError(Exception):
    """A bad option or an unusable output folder: reported on one line."""


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
    from .config import Config, resolve
    cfg = Config(method=cell.method, dataset=cell.dataset, encoder=cell.encoder, data=data, device=device,
                 progress=progress, out=str(out / "cells" / cell.name), **BUDGETS[budget])
    return resolve(cfg)


# ---- measuring training steps (the plan's estimates; bench/train_step.py) -------------------------

def synthetic_loader(cfg, device, images: int | None = None, num_classes: int = 10):
    """A resident loader over random uint8 images: the real augmentation and batch shapes, no dataset."""
    from .augment import TwoViewAugment, policy_pair
    from .data import ResidentLoader
    n = images or cfg.batch_size * 4
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)
    y = torch.randint(0, num_classes, (n,), generator=gen).to(device)
    augment = TwoViewAugment(*policy_pair(cfg.aug), (125.0, 123.0, 114.0), (63.0, 62.0, 67.0),
                             channels_last=cfg.channels_last)
    return ResidentLoader(x, y, cfg.batch_size, augment, seed=cfg.seed)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """train.py's training step on its own, to be timed: autocast forward of the method on two views,
    backward, optimiser step, ``on_step`` (BYOL's EMA), over ``loader`` (synthetic if None), epoch after epoch."""

    def __init__(self, cfg, loader=None):
        from . import methods
        from .models import build_encoder
        from .optim import build_optimizer

        self.cfg, self.device = cfg, torch.device(cfg.device)
        self.loader = loader or synthetic_loader(cfg, self.device)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        torch.manual_seed(cfg.seed)
        self.method = methods.get_method(cfg.method)(build_encoder(cfg.encoder, cfg.width), cfg).to(
            self.device, memory_format=fmt)
        self.opt = build_optimizer(cfg.optimizer, self.method.param_groups(), lr=cfg.lr * cfg.batch_size / 256,
                                   weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        self.model = torch.compile(self.method) if cfg.compile == "on" else self.method
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.batches, self.done = self._batches(), 0
        self.method.train()

    def _batches(self):
        epoch = 0
        while True:
            self.loader.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps (the device synchronised at both ends)."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            views, y = next(self.batches)
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                loss = self.model(views, y if self.method.uses_labels else None)["loss"]
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.method.on_step(self.done, 1_000_000)
            self.done += 1
        _sync(self.device)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"{self.cfg.method}: the loss is {loss.item()} while timing")
        return time.perf_counter() - t0

    def eval_rate(self, images: int) -> float:
        """Forward-only feature extraction, images/s (the evaluation passes' cost)."""
        from .eval import extract_features
        x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8).to(self.device)
        kw = dict(channels_last=self.cfg.channels_last, amp_dtype=self.amp)
        extract_features(self.method.encoder, x[:64], (125.0,) * 3, (63.0,) * 3, **kw)
        _sync(self.device)
        t0 = time.perf_counter()
        extract_features(self.method.encoder, x, (125.0,) * 3, (63.0,) * 3, **kw)
        _sync(self.device)
        return images / (time.perf_counter() - t0)


def time_train_steps(cfg, loader=None, steps: int = 10, warmup: int = 3, eval_images: int = 0) -> dict:
    """Time ``steps`` training steps of ``cfg`` (resolved) after ``warmup`` untimed ones (``warmup_s``:
    their time, torch.compile included); with ``eval_images``, also the feature-extraction rate."""
    timer = StepTimer(cfg, loader)
    warmup_s = timer.run(warmup)
    elapsed = timer.run(steps)
    out = dict(steps=steps, warmup_steps=warmup, batch_size=cfg.batch_size, step_s=elapsed / steps,
               images_per_s=steps * cfg.batch_size / elapsed, warmup_s=warmup_s)
    if eval_images:
        out["eval_images_per_s"] = timer.eval_rate(eval_images)
    return out


# ---- planning --------------------------------------------------------------------------------------

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
    from .checkpoint import load_checkpoint
    from .train import CHECKPOINT
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


# ---- running ---------------------------------------------------------------------------------------

RESULT = "result.json"


def _write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def run_cell(p: Planned, budget: str) -> dict:
    """Pretrain (or resume) one cell and probe it; writes and returns its result record."""
    from .train import CHECKPOINT, train
    folder = Path(p.cfg.out)
    resumed = (folder / CHECKPOINT).exists()
    summary = train(dataclasses.replace(p.cfg, resume=resumed))
    cfg = summary["config"]
    paper, original = PAPER[(p.cell.method, p.cell.dataset, p.cell.encoder)]
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
                  probe_top1=probe_top1, paper_top1=paper, paper_original_top1=original,
                  diff=None if ours is None else round(ours - paper, 2), knn_top1=summary["knn_top1"],
                  knn_protocol=f"kNN k={cfg['knn_k']}, temperature {cfg['knn_t']}", knn_top1_k20=summary.get("knn_top1_k20"),
                  knn_top1_init=summary["knn_top1_init"], epochs=summary["epochs"], steps=summary["steps"],
                  images_seen=summary["images_seen"], wall_s=summary["wall_s"], device=summary["device"],
                  estimate_s=p.estimate_s, resumed=resumed, width=cfg["width"], batch_size=cfg["batch_size"],
                  train_subset=cfg["train_subset"], knn_bank=cfg["knn_bank"], knn_queries=cfg["knn_queries"],
                  finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    _write_json(record, folder / RESULT)
    return record


def standard_linear_top1(cfg) -> float:
    """The standard linear protocol on a finished cell's checkpoint: full train and test sets."""
    from data_prep import load_dataset

    from .checkpoint import load_checkpoint
    from .data import to_nchw
    from .encoder import encoder_from_checkpoint
    from .eval import standard_linear_eval
    device = torch.device(cfg.device)
    encoder = encoder_from_checkpoint(load_checkpoint(cfg.out), cfg.out).to(device)
    ds = load_dataset(cfg.dataset, cfg.data)
    data = [to_nchw(ds.train_x, device), torch.from_numpy(ds.train_y).to(device),
            to_nchw(ds.test_x, device), torch.from_numpy(ds.test_y).to(device)]
    print(f"standard linear evaluation: {len(ds.train_y)} train / {len(ds.test_y)} test images, "
          f"{STANDARD['epochs']} epochs", flush=True)
    return standard_linear_eval(encoder, *data, ds.mean, ds.std, ds.num_classes, seed=cfg.seed,
                                channels_last=cfg.channels_last, **STANDARD)


def protocol_of(record: dict) -> str:
    """The linear protocol of a result (records written before protocols were recorded: the probe)."""
    return record.get("linear_protocol") or "probe"


def collect(out: Path) -> list[dict]:
    """Every finished cell's record in OUT, in the paper's row order."""
    records = [json.loads(p.read_text()) for p in sorted((out / "cells").glob(f"*/{RESULT}"))]
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(records, key=lambda r: (order.get(r["method"], 99), -ENCODERS.index(r["encoder"]),
                                          DATASETS.index(r["dataset"])))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def versions() -> dict:
    out = dict(python=platform.python_version(), torch=torch.__version__)
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = None
    return out


def results_markdown(results: dict) -> str:
    """The reproduction table (also what scripts/render_results.py puts in the README). Results written
    before protocols were recorded (no ``linear_protocol``) are all probe numbers: the old layout."""
    rows = results["cells"]
    devices = sorted({r["device"] for r in rows})
    recorded = "linear_protocol" in results
    if recorded:
        what = (f"Linear top-1 (%) on frozen features, by the protocol in the table's last column (probe: "
                f"{PROTOCOL_TEXT['probe']}; standard: {PROTOCOL_TEXT['standard']}); kNN: weighted kNN top-1, "
                f"k = {(results.get('budget_settings') or {}).get('knn_k', 200)}; paper")
    else:
        what = "Linear-probe top-1 (%) on frozen features; paper"
    lines = [f"Budget **{results['budget']}**: {BUDGET_NOTES[results['budget']]}. Device: {', '.join(devices) or '-'}. "
             f"{what} = the seed paper's Table 1 (original work's number in parentheses)."
             + _environment_line(results.get("environment")), "",
             "| method | dataset | encoder | ours | paper | ours - paper | kNN | epochs | steps | wall | device |"
             + (" protocol |" if recorded else ""),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("---|" if recorded else "")]
    for r in rows:
        paper = f"{r['paper_top1']:.1f}" + (f" ({r['paper_original_top1']})" if r["paper_original_top1"] else "")
        ours = "-" if r["linear_top1"] is None else f"{r['linear_top1']:.2f}"
        diff = "-" if r["diff"] is None else f"{r['diff']:+.2f}"
        knn = "-" if r["knn_top1"] is None else f"{r['knn_top1']:.2f}"
        lines.append(f"| {r['method']} | {r['dataset']} | {r['encoder']} | {ours} | {paper} | {diff} | {knn} | "
                     f"{r['epochs']} | {r['steps']} | {fmt_s(r['wall_s'])} | {r['device']} |"
                     + (f" {protocol_of(r)} |" if recorded else ""))
    missing = results.get("cells_not_run", [])
    if missing:
        lines += ["", f"Not run in this folder ({len(missing)} of {len(missing) + len(rows)} cells): "
                  + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def _environment_line(env: dict | None) -> str:
    if not env:
        return ""
    parts = [f"{k}={v}" for k, v in env.items() if k != "load_average" and v]
    if env.get("load_average"):
        parts.append(f"load average when written {env['load_average'][0]:.1f}")
    return (" Environment: " + ", ".join(parts) + ".") if parts else ""


def write_results(out: Path, budget: str, command: str) -> dict:
    """results.json, results.csv, results.md and results.png from every finished cell in OUT."""
    rows = collect(out)
    done = {(r["method"], r["dataset"], r["encoder"]) for r in rows}
    results = dict(budget=budget, budget_settings=BUDGETS[budget], note=BUDGET_NOTES[budget], command=command,
                   linear_protocol=LINEAR_PROTOCOL[budget], protocols=PROTOCOL_TEXT,
                   standard_settings=STANDARD if LINEAR_PROTOCOL[budget] == "standard" else None,
                   written=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   versions=versions(), platform=platform.platform(), cells=rows,
                   environment=dict(FASTSSL_DATA=os.environ.get("FASTSSL_DATA"),
                                    OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS"),
                                    load_average=[round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg")
                                    else None),
                   cells_not_run=[c.name for c in grid() if (c.method, c.dataset, c.encoder) not in done])
    _write_json(results, out / "results.json")
    buf = io.StringIO()
    cols = ["method", "dataset", "encoder", "budget", "linear_top1", "linear_protocol", "probe_top1", "paper_top1",
            "paper_original_top1", "diff", "knn_top1", "knn_protocol", "knn_top1_k20", "epochs", "steps", "wall_s",
            "device"]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{**r, "linear_protocol": protocol_of(r)} for r in rows])
    (out / "results.csv").write_text(buf.getvalue())
    (out / "results.md").write_text(f"# Table 1 reproduction\n\n`{command}`\n\n" + results_markdown(results))
    chart(rows, budget, out / "results.png")
    return results


def chart(rows: list[dict], budget: str, path: Path) -> None:
    """Grouped bars: our linear top-1 next to the paper's, per cell."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['method']}\n{r['dataset']}\n{r['encoder'].replace('resnet', 'R')}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 4.0))
    protocols = "/".join(sorted({protocol_of(r) for r in rows})) or LINEAR_PROTOCOL[budget]
    ax.bar([i - 0.2 for i in x], [r["linear_top1"] or 0 for r in rows], 0.4, label=f"ours ({budget}, {protocols})")
    ax.bar([i + 0.2 for i in x], [r["paper_top1"] for r in rows], 0.4, label="paper (Table 1)")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("linear top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(f"Table 1 reproduction, budget {budget}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- command line ----------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="reproduce_table1.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", required=True, choices=tuple(BUDGETS),
                   help="smoke: the machinery on CPU in minutes; quick: one GPU, a few hours; full: public long recipes")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/table1-BUDGET)")
    p.add_argument("--data", default=None, help="dataset location for every cell (else $FASTSSL_DATA, cache, download)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--probe-steps", type=int, default=None, help="timed steps per probe (default: 10 on CUDA, 2 on CPU)")
    p.add_argument("--plan-only", action="store_true", help="print the plan and the estimates, run nothing")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = p.parse_args(argv)
    if args.probe_steps is not None and args.probe_steps < 1:
        p.error(f"--probe-steps must be >= 1, got {args.probe_steps}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python scripts/reproduce_table1.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = args.out or Path("runs") / f"table1-{args.budget}"
    from data_prep import DataError

    from .checkpoint import CheckpointError
    from .config import CLIError
    from .train import TrainingDiverged
    try:
        out.mkdir(parents=True, exist_ok=True)
        meta = out / "budget.json"
        if meta.exists() and json.loads(meta.read_text())["budget"] != args.budget:
            raise ReproduceError(f"{out} holds a --budget {json.loads(meta.read_text())['budget']} run; "
                                 f"use another --out for --budget {args.budget}")
        _write_json(dict(budget=args.budget), meta)
        planned = plan(grid(args.methods, args.datasets, args.encoders), args.budget, out, args.device, args.data,
                       args.progress)
    except (ReproduceError, CLIError, CheckpointError, OSError) as e:
        print(f"reproduce_table1.py: error: {e}", file=sys.stderr)
        return 2
    device = torch.device(planned[0].cfg.device)
    cuda = device.type == "cuda"
    steps = args.probe_steps or (10 if cuda else 2)
    try:
        probes = probe(planned, steps=steps, warmup=3 if cuda else 1)
    except KeyboardInterrupt:
        print("\ninterrupted while measuring; nothing was trained", file=sys.stderr)
        return 130
    print(plan_text(planned, args.budget, out, device_name(device), probes), flush=True)
    _write_json(dict(budget=args.budget, command=command, device=device_name(device), probes=probes,
                     cells=[dict(cell=p.cell.name, status=p.status, epochs=p.cfg.epochs, steps=p.steps,
                                 estimate_s=p.estimate_s) for p in planned]), out / "plan.json")
    if args.plan_only:
        return 0
    failed = []
    for i, p in enumerate(planned):
        if p.status == "done":
            continue
        print(f"\n=== cell {i + 1}/{len(planned)}: {p.cell.name} ({'resuming' if p.status == 'resume' else 'new'}, "
              f"estimated {fmt_s(p.estimate_s)}) ===", flush=True)
        try:
            r = run_cell(p, args.budget)
        except KeyboardInterrupt:
            print(f"\ninterrupted; rerun the same command to resume (finished cells are kept in {out}/cells)",
                  file=sys.stderr)
            write_results(out, args.budget, command)
            return 130
        except (DataError, FileNotFoundError, TrainingDiverged) as e:
            print(f"cell {p.cell.name} failed: {e}", file=sys.stderr)
            failed.append(p.cell.name)
            continue
        print(f"cell {p.cell.name}: linear top-1 {r['linear_top1']:.2f}% ({r['linear_protocol']} protocol; "
              f"paper {r['paper_top1']}, "
              f"{r['diff']:+.2f}) in {fmt_s(r['wall_s'])} (estimated {fmt_s(p.estimate_s)})", flush=True)
    results = write_results(out, args.budget, command)
    print("\n" + results_markdown(results))
    print(f"wrote {out}/results.json, results.csv, results.md, results.png")
    if failed:
        print(f"reproduce_table1.py: {len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
