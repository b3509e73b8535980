#!/usr/bin/env python
"""Render the README's results section from the committed JSON under bench/results/ (numbers are never
typed into the README by hand).

    python scripts/render_results.py            # rewrite README.md between the results markers
    python scripts/render_results.py --check    # exit 1 if README.md is not what the JSON renders to
    python scripts/render_results.py --print    # print the section

Reads every JSON under bench/results/ (folders of ``bench/run_all.py --cpu-smoke`` are ignored) and keeps,
per benchmark and device kind (CPU / GPU), the latest record: loaders, kernels, train_step, the latest
bench/run_all.py index and the latest Table 1 reproduction (results.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
RESULTS = ROOT / "bench" / "results"


def kind_of(record: dict) -> str | None:
    """Which benchmark wrote a JSON record (by its content, not its file name)."""
    if not isinstance(record, dict):
        return None
    if record.get("benchmark") == "train_step":
        return "train_step"
    if record.get("benchmark") == "time_to_accuracy":
        return "time_to_accuracy"
    if record.get("benchmark") == "pretrain_fast_transcribed":
        return "pretrain_fast"
    if "cells" in record and "budget" in record and "cells_not_run" in record:
        return "reproduce"
    if "mode" in record and "pieces" in record:
        return "run_all"
    if "environment" in record and ("contrastive" in record or "cpu_reference" in record
                                    or ("rows" in record and "precisions" in record.get("config", {}))):
        return "kernels"
    if isinstance(record.get("results"), list) and record["results"] and "loader" in record["results"][0]:
        return "loaders"
    return None


def _env(record: dict) -> dict:
    return record.get("environment") or record


def when(record: dict) -> str:
    return str(_env(record).get("time") or record.get("written") or "")[:19]


def device_of(record: dict, kind: str) -> str:
    if kind == "reproduce":
        devices = sorted({c["device"] for c in record["cells"]})
        return ", ".join(devices)
    return str(_env(record).get("device", "?"))


def is_gpu(device: str) -> bool:
    return not device.lower().startswith("cpu")


def load_records(results: Path = RESULTS) -> dict:
    """{(kind, 'gpu'|'cpu'): (relative path, record)} keeping the latest of each."""
    latest = {}
    for path in sorted(results.rglob("*.json")):
        rel = path.relative_to(results)
        if any(part.startswith("cpu-smoke") for part in rel.parts[:-1]):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        kind = kind_of(record)
        if kind is None:
            continue
        key = (kind, "gpu" if is_gpu(device_of(record, kind)) else "cpu")
        if key not in latest or when(record) >= when(latest[key][1]):
            latest[key] = (f"bench/results/{rel.as_posix()}", record)
    return latest


def _loaders_md(path: str, r: dict) -> str:
    rows = r["results"]
    base = next((x["pairs_per_s"] for x in rows if x["loader"] == "torch" and "skipped" not in x), None)
    lines = [f"`{r['command']}` on {r['device']}, {r['time'][:10]}; {r['dataset']}, {r['images_per_epoch']} images, "
             f"batch {r['batch_size']}, policy {r['policy']} ([{Path(path).name}]({path})):", "",
             "| loader | pairs/s | vs torch DataLoader |", "|---|---:|---:|"]
    for x in rows:
        if "skipped" in x:
            lines.append(f"| {x['loader']} | skipped: {x['skipped'][:80]} | |")
        else:
            ratio = f"{x['pairs_per_s'] / base:.2f}x" if base else "-"
            lines.append(f"| {x['loader']} | {x['pairs_per_s']:,.0f} | {ratio} |")
    return "\n".join(lines)


def _train_step_md(path: str, r: dict) -> str:
    from bench.train_step import table
    env = r["environment"]
    note = f" Note: {r['note']}." if r.get("note") else ""
    partial = "" if r.get("complete", True) else " (incomplete: the run was stopped early)"
    return (f"`{env['command']}` on {env['device']}, {env['time'][:10]}, torch {env['torch']}; {r['method']}, width "
            f"{r['width']}, batch {r['batch_size']}, per row the median of {r.get('repeats', 1)} passes of {r['steps']} "
            f"steps on {r['data']} "
            f"([{Path(path).name}]({path})){partial}.{note}\n\n" + table(r["results"]))


def _kernels_md(path: str, r: dict) -> str:
    env = r["environment"]
    if not r.get("cuda"):
        return (f"Only a CPU calibration of the eager reference exists ([{Path(path).name}]({path}), {env['device']}); "
                "the fused kernels have not been timed on a GPU.")
    from bench.kernels import markdown
    return f"[{Path(path).name}]({path}):\n\n" + markdown(r)


def _run_all_md(path: str, r: dict) -> str:
    env = r["environment"]
    lines = [f"`{env['command']}` on {env['device']}, {env['time'][:10]}, torch {env['torch']}, triton {env['triton']} "
             f"([{Path(path).parent.name}/]({Path(path).parent.as_posix()}/)):", "",
             "| piece | status | wall (s) | result |", "|---|---|---:|---|"]
    for p in r["pieces"]:
        res = p.get("skip", "")
        pre = p.get("pretrain") or {}
        if pre.get("s_per_epoch") is not None:
            res = f"{pre['epochs_done']} epochs, {pre['s_per_epoch']:.2f} s/epoch (first {pre['first_epoch_s']:.1f} s)"
            res += f", kNN {pre['knn_top1']:.2f}" if pre.get("knn_top1") is not None else ""
        wall = f"{p['wall_s']:.0f}" if p.get("wall_s") is not None else ""
        lines.append(f"| {p['name']} | {p['status']} | {wall} | {res} |")
    return "\n".join(lines)


def _pretrain_fast_md(path: str, r: dict) -> str:
    lines = [f"{r['provenance']} Device: {r['device']}; `{r['command']}`; {r['setup']} ([{Path(path).name}]({path})).", "",
             "| method | kNN before | kNN after | wall (s) |", "|---|---:|---:|---:|"]
    for x in r["results"]:
        lines.append(f"| {x['method']} | {x['knn_top1_init']:.2f} | {x['knn_top1']:.2f} | ~{x['wall_s']:.0f} |")
    return "\n".join(lines + ["", r["note"]])


def _reproduce_md(path: str, r: dict) -> str:
    from fastssl.reproduce import results_markdown
    return f"`{r['command']}` ([{Path(path).parent.name}/]({Path(path).parent.as_posix()}/)):\n\n" + results_markdown(r)


def _time_to_accuracy_md(path: str, r: dict) -> str:
    from bench.time_to_accuracy import summary_markdown
    return f"[{Path(path).name}]({path}), plot [{Path(path).with_suffix('.png').name}]" \
           f"({Path(path).with_suffix('.png').as_posix()}):\n\n" + summary_markdown(r)


RENDER = {"reproduce": _reproduce_md, "train_step": _train_step_md, "loaders": _loaders_md, "kernels": _kernels_md,
          "run_all": _run_all_md, "pretrain_fast": _pretrain_fast_md, "time_to_accuracy": _time_to_accuracy_md}
TITLES = {"reproduce": "Table 1 reproduction (`scripts/reproduce_table1.py`)",
          "train_step": "Training step ladder (`bench/train_step.py`)", "loaders": "Loaders (`bench/loaders.py`)",
          "kernels": "Fused kernels (`bench/kernels.py`)", "run_all": "GPU lease run (`bench/run_all.py`)",
          "pretrain_fast": "CPU `--fast` pretraining",
          "time_to_accuracy": "Time to accuracy (`bench/time_to_accuracy.py`)"}


def render(results: Path = RESULTS) -> str:
    latest = load_records(results)
    gpu = sorted({device_of(rec, k) for (k, g), (_, rec) in latest.items() if g == "gpu"})
    cpu = sorted({device_of(rec, k) for (k, g), (_, rec) in latest.items() if g == "cpu"})
    out = [BEGIN, "<!-- generated by scripts/render_results.py from bench/results/; edit the JSON or the script, "
           "not this section -->", "## Results", "",
           "Only what was run is reported, each figure with its device and command; this section is generated from "
           "the committed JSON under `bench/results/` (`python scripts/render_results.py`). "
           + (f"Measured on GPU: {', '.join(gpu)}. " if gpu else "No GPU has been lent to this project yet: nothing "
              "below was measured on a GPU. ")
           + ("CPU figures name their device and thread count in each table." if cpu else "")]
    missing = []
    if not gpu:
        missing.append("every GPU figure: the fused kernels' speed, the train-step ladder with bf16 / torch.compile / "
                       "fused kernels, the GPU `--fast` preset, seconds per epoch (`bench/run_all.py`), DALI's nvJPEG "
                       "decode")
    repro_gpu = ("reproduce", "gpu") in latest and latest[("reproduce", "gpu")][1]["budget"] in ("quick", "full")
    if not repro_gpu:
        missing.append("the Table 1 reproduction at the `quick` or `full` budget (below: only the CPU `smoke` "
                       "budget, which checks the machinery and is not a reproduction)")
    out += ["", "Not yet measured: " + "; ".join(missing) + "." if missing else "", ""]
    for kind in ("reproduce", "time_to_accuracy", "train_step", "kernels", "loaders", "run_all", "pretrain_fast"):
        entries = [(g, latest[(kind, g)]) for g in ("gpu", "cpu") if (kind, g) in latest]
        out.append(f"### {TITLES[kind]}\n")
        if not entries:
            out.append("Not measured yet.\n")
        for g, (path, rec) in entries:
            out.append(f"**{'GPU' if g == 'gpu' else 'CPU'}.** " + RENDER[kind](path, rec).rstrip("\n") + "\n")
    out.append(END)
    return "\n".join(line for line in out) + "\n"


def replace_section(readme: str, section: str) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise ValueError(f"README.md must hold exactly one {BEGIN} ... {END} pair")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return head + section.rstrip("\n") + tail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when README.md differs from the rendering")
    p.add_argument("--print", dest="show", action="store_true", help="print the section, change nothing")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    section = render(args.results)
    if args.show:
        print(section)
        return 0
    try:
        readme = args.readme.read_text()
        new = replace_section(readme, section)
    except (OSError, ValueError) as e:
        print(f"render_results.py: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if new != readme:
            print("render_results.py: README.md's results section is stale; run python scripts/render_results.py",
                  file=sys.stderr)
            return 1
        print("README.md results section is up to date")
        return 0
    if new != readme:
        args.readme.write_text(new)
        print(f"rewrote the results section of {args.readme}")
    else:
        print("README.md results section already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
