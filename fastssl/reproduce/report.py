"""The results of a reproduction: every finished cell's record collected into results.{json,csv,md} and
a PNG chart of our linear top-1 next to the paper's."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
from pathlib import Path

import torch

from data_prep.atomic import write_json, write_text

from .plan import fmt_s
from .table import (BUDGET_NOTES, BUDGETS, DATASETS, ENCODERS, EXTRA_METHODS, LINEAR_PROTOCOL, METHODS,
                    PROTOCOL_TEXT, REFERENCE_PROTOCOL, RESULT,
                    STANDARD, grid)


def protocol_of(record: dict) -> str:
    """The linear protocol of a result (records written before protocols were recorded: the probe)."""
    return record.get("linear_protocol") or "probe"


def collect(out: Path) -> list[dict]:
    """Every finished cell's record in OUT, in the paper's row order."""
    records = [json.loads(p.read_text()) for p in sorted((out / "cells").glob(f"*/{RESULT}"))]
    order = {m: i for i, m in enumerate(METHODS + EXTRA_METHODS)}
    return sorted(records, key=lambda r: (order.get(r["method"], 99), -ENCODERS.index(r["encoder"]),
                                          DATASETS.index(r["dataset"])))


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
        paper = _paper_cell(r)
        ours = "-" if r["linear_top1"] is None else f"{r['linear_top1']:.2f}"
        diff = "-" if r["diff"] is None else f"{r['diff']:+.2f}"
        knn = "-" if r["knn_top1"] is None else f"{r['knn_top1']:.2f}"
        lines.append(f"| {r['method']} | {r['dataset']} | {r['encoder']} | {ours} | {paper} | {diff} | {knn} | "
                     f"{r['epochs']} | {r['steps']} | {fmt_s(r['wall_s'])} | {r['device']} |"
                     + (f" {protocol_of(r)} |" if recorded else ""))
    if any(r.get("reference_top1") is not None for r in rows):
        lines += ["", f"\\* Beyond the paper's table: {REFERENCE_PROTOCOL} (not the protocol of our column)."]
    missing = results.get("cells_not_run", [])
    if missing:
        lines += ["", f"Not run in this folder ({len(missing)} of {len(missing) + len(rows)} cells): "
                  + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def _paper_cell(r: dict) -> str:
    """The paper's number (the original work's in parentheses), or for an extra row the starred reference."""
    if r.get("paper_top1") is not None:
        return f"{r['paper_top1']:.1f}" + (f" ({r['paper_original_top1']})" if r["paper_original_top1"] else "")
    return "-" if r.get("reference_top1") is None else f"{r['reference_top1']:.2f}\\*"


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
    write_json(out / "results.json", results)
    buf = io.StringIO()
    cols = ["method", "dataset", "encoder", "budget", "linear_top1", "linear_protocol", "probe_top1", "paper_top1",
            "paper_original_top1", "reference_top1", "diff", "knn_top1", "knn_protocol", "knn_top1_k20", "epochs", "steps", "wall_s",
            "device"]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{**r, "linear_protocol": protocol_of(r)} for r in rows])
    write_text(out / "results.csv", buf.getvalue())
    write_text(out / "results.md", f"# Table 1 reproduction\n\n`{command}`\n\n" + results_markdown(results))
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
    ax.bar([i + 0.2 for i in x], [r["paper_top1"] or r.get("reference_top1") or 0 for r in rows], 0.4,
           label="paper (Table 1); extra rows: solo-learn")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("linear top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(f"Table 1 reproduction, budget {budget}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
