"""curves.png: a run's loss, kNN top-1, learning rate and images/s, against epoch (top row) and
against wall-clock seconds (bottom row), from its metrics.jsonl rows (docs/architecture.md, "Artefacts")."""
from __future__ import annotations

from pathlib import Path

from data_prep.atomic import atomic_path

PANELS = (("loss", "loss"), ("knn_top1", "kNN top-1 (%)"), ("lr", "learning rate"), ("images_per_s", "images/s"))


def _series(rows: list[dict], key: str, x: str) -> tuple[list[float], list[float]]:
    """(x, y) points of ``key``: kNN from every measurement (kNN rows, else epoch rows), the rest from epoch rows."""
    knn_rows = [r for r in rows if r.get("event") == "knn"]
    source = knn_rows if key == "knn_top1" and knn_rows else [r for r in rows if r.get("event", "epoch") == "epoch"]
    points = [(r[x], r[key]) for r in source if r.get(key) is not None and r.get(x) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Write the 2 x 4 panel figure of ``rows`` (metrics.jsonl rows; old rows without "event" count as
    epoch rows) to ``path`` atomically; returns the path."""
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7), constrained_layout=True)
    for row, (x, x_label) in enumerate((("epoch", "epoch"), ("wall_s", "wall time (s)"))):
        for col, (key, label) in enumerate(PANELS):
            ax = axes[row][col]
            xs, ys = _series(rows, key, x)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if not xs:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray")
    if title:
        fig.suptitle(title)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path
