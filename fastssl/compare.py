"""Compare finished (or running) pretraining runs: a markdown table and kNN-against-wall-time curves.

    python scripts/compare_runs.py runs/simclr-cifar10-resnet18 runs/dare-cifar10-resnet18 --out compare.png

Reads each run folder's ``summary.json`` (written at the end of a run) and ``metrics.jsonl`` (an
``"event": "epoch"`` row per epoch and an ``"event": "knn"`` row per kNN measurement, each with its
``wall_s``). A run still training has no summary: its numbers come from the metrics so far. ``linear_eval.py`` results in the folder are shown with their protocol.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = ("run", "method", "dataset", "encoder", "epochs", "wall", "images/s", "kNN", "linear")


class RunError(ValueError):
    """A folder that is not a readable run (the message is one line)."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: cannot be read as JSON ({type(e).__name__})") from None


def read_run(folder: str | Path) -> dict:
    """One run's numbers: summary (may be empty), metric rows, kNN curve [(wall_s, knn_top1)], linear results."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"no run folder at {folder}")
    summary_path, metrics_path = folder / "summary.json", folder / "metrics.jsonl"
    if not summary_path.is_file() and not metrics_path.is_file():
        raise RunError(f"{folder} holds neither summary.json nor metrics.jsonl: not a pretraining run folder")
    summary = _read_json(summary_path) if summary_path.is_file() else {}
    if not summary and (folder / "checkpoint.pt").is_file():  # still training: name it from its checkpoint
        from .checkpoint import CheckpointError, load_checkpoint
        try:
            summary = {"config": load_checkpoint(folder)["config"], "running": True}
        except CheckpointError:
            pass
    rows = []
    if metrics_path.is_file():
        for n, line in enumerate(metrics_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise RunError(f"{metrics_path}: line {n} is not JSON") from None
            if not isinstance(row, dict) or "event" not in row or "wall_s" not in row:
                raise RunError(f"{metrics_path}: line {n} is not a fastssl metrics row (no event or wall_s)")
            rows.append(row)
    linear = {}
    for path in sorted(folder.glob("linear_eval-*.json")):
        result = _read_json(path)
        linear[result.get("protocol", path.stem.split("-", 1)[1])] = result.get("linear_top1")
    if summary.get("linear_top1") is not None:
        linear.setdefault("probe", summary["linear_top1"])
    return dict(folder=folder, summary=summary, rows=rows, curve=knn_curve(summary, rows), linear=linear)


def knn_curve(summary: dict, rows: list[dict]) -> list[tuple[float, float]]:
    """(wall seconds, kNN top-1) points, starting at (0, kNN before training) when known."""
    points = []
    if summary.get("knn_top1_init") is not None:
        points.append((0.0, float(summary["knn_top1_init"])))
    for row in rows:
        if row["event"] not in ("epoch", "knn") or row.get("knn_top1") is None:
            continue
        point = (float(row["wall_s"]), float(row["knn_top1"]))
        if not points or points[-1] != point:  # an epoch row and a knn row of one step
            points.append(point)
    return sorted(points)


def _cell(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _fmt_wall(seconds) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def table_row(run: dict) -> dict:
    s, rows = run["summary"], run["rows"]
    cfg = s.get("config") or {}
    epoch_rows = [r for r in rows if r["event"] == "epoch"]
    if s.get("images_seen") and s.get("train_s"):
        rate = s["images_seen"] / s["train_s"]
    else:  # still training (no summary): the epochs' own rates
        rates = [r["images_per_s"] for r in epoch_rows if r.get("images_per_s")]
        rate = sum(rates) / len(rates) if rates else None
    wall = s.get("wall_s")
    if wall is None and rows:  # still training: the last row's wall
        wall = rows[-1]["wall_s"]
    knn = s.get("knn_top1")
    if knn is None and run["curve"]:
        knn = run["curve"][-1][1]
    epochs = s.get("epochs") or cfg.get("epochs")
    done = len(epoch_rows)
    return dict(run=run["folder"].name, method=s.get("method") or cfg.get("method") or "?",
                dataset=s.get("dataset") or cfg.get("dataset") or "?", encoder=s.get("encoder") or cfg.get("encoder") or "?",
                epochs=f"{done} of {epochs} so far" if s.get("running") else str(epochs) if s else f"{done} so far", wall=_fmt_wall(wall), **{"images/s": _cell(rate, "{:.0f}")},
                kNN=_cell(knn), linear=" / ".join(f"{v:.2f} ({k})" for k, v in sorted(run["linear"].items())
                                                 if v is not None) or "-")


def markdown(runs: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---:" if c in ("epochs", "wall", "images/s", "kNN")
                                                              else "---" for c in COLUMNS) + "|"]
    for run in runs:
        row = table_row(run)
        lines.append("| " + " | ".join(row[c] for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: str | Path) -> None:
    """kNN top-1 against wall time, one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        row = table_row(run)
        if run["curve"]:
            xs, ys = zip(*run["curve"])
            ax.plot([x / 60 for x in xs], ys, marker="o", markersize=3,
                    label=f"{row['run']} ({row['method']}, {row['encoder']})")
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title("kNN accuracy against wall time", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="compare_runs.py", description="Compare pretraining runs: a markdown table "
                                "(method, dataset, encoder, epochs, wall, images/s, kNN, linear) on stdout and an "
                                "overlay PNG of kNN against wall time.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by pretrain.py")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="PNG to write (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        runs = [read_run(folder) for folder in args.runs]
        print(markdown(runs), end="")
        plot(runs, args.out)
    except (RunError, OSError) as e:
        print(f"compare_runs.py: error: {e}", file=sys.stderr)
        return 2
    print(f"\nwrote {args.out}")
    return 0
