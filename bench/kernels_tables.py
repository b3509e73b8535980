"""Markdown tables of bench/kernels.py's record (rewritten after every row, so a stopped run keeps its tables)."""
from __future__ import annotations

PRECISION_ORDER = ("tf32", "ieee", "bf16", "fp16")
VARIANT_ORDER = ("simclr", "decoupled", "supcon", "cross")
IMPLS = ("eager", "compile", "fused", "fused-unsplit", "lightly")


def _fmt(x, digits=3):
    return f"{x:.{digits}f}" if isinstance(x, float) else ("-" if x is None else str(x))


def _cell(row, key, digits=3):
    if row is None:
        return ""
    if "error" in row:
        return "OOM" if row["error"] == "OOM" else "error"
    if "skipped" in row:
        return "skipped"
    return _fmt(row.get(key), digits)


def _ratio(a, b):
    ok = all(r is not None and isinstance(r.get("fwd_bwd_ms"), float) for r in (a, b))
    return f"{a['fwd_bwd_ms'] / b['fwd_bwd_ms']:.2f}x" if ok and b["fwd_bwd_ms"] > 0 else "-"


def contrastive_table(rows: list[dict]) -> str:
    """One markdown table per (precision, variant): per (2N, d) every implementation's fwd, fwd+bwd, peak MiB."""
    out = []
    rows = [r for r in rows if r.get("bench") == "contrastive"]
    groups = sorted({(r["precision"], r["variant"]) for r in rows}, key=lambda g: (PRECISION_ORDER.index(g[0]),
                                                                                   VARIANT_ORDER.index(g[1])))
    for precision, variant in groups:
        mine = [r for r in rows if (r["precision"], r["variant"]) == (precision, variant)]
        impls = [i for i in IMPLS if any(r["impl"] == i for r in mine)]
        head = ["2N", "d", "splits f/b"] + [f"{i} fwd ms" for i in impls] + [f"{i} f+b ms" for i in impls] \
            + [f"{i} peak MiB" for i in impls] + ["fused vs eager (f+b)"] \
            + (["fused vs unsplit (f+b)"] if "fused-unsplit" in impls else []) \
            + (["fused vs compile (f+b)"] if "compile" in impls else [])
        lines = [f"#### {variant}, {precision}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for two_n, d in sorted({(r["two_n"], r["d"]) for r in mine}, key=lambda k: (k[1], k[0])):
            by = {r["impl"]: r for r in mine if (r["two_n"], r["d"]) == (two_n, d)}
            splits = (by.get("fused") or {}).get("splits")
            cells = [str(two_n), str(d), "/".join(map(str, splits)) if splits else "-"]
            cells += [_cell(by.get(i), "fwd_ms") for i in impls] + [_cell(by.get(i), "fwd_bwd_ms") for i in impls]
            cells += [_cell(by.get(i), "peak_extra_mib", 1) for i in impls]
            cells.append(_ratio(by.get("eager"), by.get("fused")))
            if "fused-unsplit" in impls:
                cells.append(_ratio(by.get("fused-unsplit"), by.get("fused")))
            if "compile" in impls:
                cells.append(_ratio(by.get("compile"), by.get("fused")))
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def dare_table(rows: list[dict]) -> str:
    rows = [r for r in rows if r.get("bench") == "dare"]
    impls = [i for i in ("eager", "compile", "fused") if any(r["impl"] == i for r in rows)]
    head = ["precision", "N", "d"] + [f"{i} fwd ms" for i in impls] + [f"{i} f+b ms" for i in impls] \
        + [f"{i} peak MiB" for i in impls] + ["fused vs eager (f+b)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for precision, n, d in sorted({(r["precision"], r["n"], r["d"]) for r in rows},
                                  key=lambda k: (PRECISION_ORDER.index(k[0]), k[1])):
        by = {r["impl"]: r for r in rows if (r["precision"], r["n"], r["d"]) == (precision, n, d)}
        cells = [precision, str(n), str(d)] + [_cell(by.get(i), "fwd_ms", 4) for i in impls] \
            + [_cell(by.get(i), "fwd_bwd_ms", 4) for i in impls] \
            + [_cell(by.get(i), "peak_extra_mib", 1) for i in impls] \
            + [_ratio(by.get("eager"), by.get("fused"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def errors_list(rows: list[dict]) -> str:
    bad = [r for r in rows if "error" in r or "skipped" in r]
    if not bad:
        return ""
    keys = ("bench", "precision", "variant", "two_n", "n", "d", "impl")
    return "\n".join(["Rows that failed or were skipped:", ""] + [
        "- " + " ".join(f"{k}={r[k]}" for k in keys if k in r) + ": " + (r.get("error") or r.get("skipped"))
        for r in bad])


def markdown(record: dict) -> str:
    env = {k: record.get("environment", {}).get(k, "?") for k in ("command", "device", "time", "torch", "triton")}
    parts = [f"`{env['command']}` on {env['device']}, {env['time']}, torch {env['torch']}, triton {env['triton']}, "
             f"tau {record.get('config', {}).get('temperature', '?')}; median ms (do_bench), peak extra MiB of "
             "forward+backward." + ("" if record.get("complete") or not record.get("cuda") else
                                    " Partial: the run is in progress or was stopped.")]
    if record.get("cuda"):
        training = [r for r in record["rows"] if r.get("training_config")]
        if training:
            parts += ["### Training configuration (d = 256, fp32 inputs with tf32, 2N = 1024)",
                      contrastive_table(training)]
        sweep = [r for r in record["rows"] if r.get("bench") == "contrastive" and not r.get("training_config")]
        if sweep:
            parts += ["### Contrastive losses", contrastive_table(sweep)]
        if any(r.get("bench") == "dare" for r in record["rows"]):
            parts += ["### DARe reparameterisation + Gaussian JSD", dare_table(record["rows"])]
        parts.append(errors_list(record["rows"]))
    else:
        parts.append("No CUDA: eager reference on the CPU only (a calibration point, not a kernel benchmark).")
    return "\n\n".join(p for p in parts if p) + "\n"
