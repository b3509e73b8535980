#!/usr/bin/env python
"""Render the results from the committed JSON under bench/results/ (numbers are never typed in by hand):
the full page docs/results.md and a short summary in README.md between its summary markers.

    python scripts/render_results.py            # rewrite docs/results.md and the README's summary
    python scripts/render_results.py --check    # exit 1 if either is not what the JSON renders to
    python scripts/render_results.py --print    # print the page, change nothing

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

from data_prep.atomic import write_text  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SUMMARY_BEGIN, SUMMARY_END = "<!-- results-summary:begin -->", "<!-- results-summary:end -->"
RESULTS = ROOT / "bench" / "results"
PAGE = Path("docs") / "results.md"  # beside the README
UP = "../"  # the page lives in docs/: its links to bench/results/ climb one folder


def kind_of(record: dict) -> str | None:
    """Which benchmark wrote a JSON record (by its content, not its file name)."""
    if not isinstance(record, dict):
        return None
    if record.get("benchmark") == "train_step":
        return "train_step"
    if record.get("benchmark") == "time_to_accuracy":
        return "time_to_accuracy"
    if record.get("benchmark") in ("pretrain_fast", "pretrain_fast_transcribed"):
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


def variant_of(record: dict, kind: str) -> tuple:
    """Records of one benchmark that answer different questions are kept side by side: time to accuracy per
    training budget and seed set (the 240 s sweep, its held-out seed, the 960 s transfer check)."""
    if kind == "time_to_accuracy":
        s = record["settings"]
        return (float(s["budget"]), tuple(s.get("seeds") or sorted({r["seed"] for r in record["runs"]})))
    return ()


def variant_title(variant: tuple) -> str:
    if not variant:
        return ""
    budget, seeds = variant
    return f" {budget:g} s, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}."


def load_records(results: Path = RESULTS, every: bool = False) -> dict:
    """{(kind, 'gpu'|'cpu', variant): (relative path, record)} keeping the latest of each (``every``: a list of
    all of them, oldest first)."""
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
        key = (kind, "gpu" if is_gpu(device_of(record, kind)) else "cpu", variant_of(record, kind))
        entry = (f"bench/results/{rel.as_posix()}", record)
        if every:
            latest.setdefault(key, []).append(entry)
        elif key not in latest or when(record) >= when(latest[key][1]):
            latest[key] = entry
    if every:
        for entries in latest.values():
            entries.sort(key=lambda e: when(e[1]))
    return latest


def entries_of(latest: dict, kind: str, group: str | None = None) -> list[tuple[str, tuple, tuple]]:
    """(device group, variant, (path, record)) of one benchmark: GPU first, then by variant."""
    keys = sorted((k for k in latest if k[0] == kind and (group is None or k[1] == group)),
                  key=lambda k: (k[1] != "gpu", k[2]))
    return [(k[1], k[2], latest[k]) for k in keys]


def _link(path: str) -> str:
    """A markdown link from the page (in docs/) to a file under bench/results/, named by the file."""
    return f"[{Path(path).name}]({UP}{path})"


def _folder_link(path: str) -> str:
    folder = Path(path).parent
    return f"[{folder.name}/]({UP}{folder.as_posix()}/)"


def _loaders_md(path: str, r: dict) -> str:
    rows = r["results"]
    base = next((x["pairs_per_s"] for x in rows if x["loader"] == "torch" and "skipped" not in x), None)
    lines = [f"`{r['command']}` on {r['device']}, {r['time'][:10]}; {r['dataset']}, {r['images_per_epoch']} images, "
             f"batch {r['batch_size']}, policy {r['policy']} ({_link(path)}):", "",
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
            f"({_link(path)}){partial}.{note}\n\n" + table(r["results"]))


def _kernels_md(path: str, r: dict) -> str:
    env = r["environment"]
    if not r.get("cuda"):
        return (f"Only a CPU calibration of the eager reference exists ({_link(path)}, {env['device']}); "
                "the fused kernels have not been timed on a GPU.")
    from bench.kernels import markdown
    return f"{_link(path)}:\n\n" + markdown(r)


def _run_all_md(path: str, r: dict) -> str:
    env = r["environment"]
    lines = [f"`{env['command']}` on {env['device']}, {env['time'][:10]}, torch {env['torch']}, triton {env['triton']} "
             f"({_folder_link(path)}):", "",
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


def _pretrain_fast_md(path: str, r: dict, older: list | None = None) -> str:
    if "environment" in r:  # bench/pretrain_fast.py's record: every row from a run folder
        from bench.pretrain_fast import markdown
        text = f"{_link(path)}: " + markdown(r)
        carried = _older_fast_rows(r, older or [])
        if carried:
            text += ("\nMethods that command did not run, from earlier records (run output where the last column "
                     "says so):\n\n| method | kNN before | kNN after | linear | record | source |\n"
                     "|---|---:|---:|---:|---|---|\n")
            text += "".join(f"| {x['method']} | {x['knn_top1_init']:.2f} | {x['knn_top1']:.2f} | "
                            f"{_num(x.get('linear_top1'))} | {_link(p)} | {x.get('source', '')} |\n" for p, x in carried)
        return text
    sourced = any("source" in x for x in r["results"])  # a record that mixes run output and transcribed rows
    lines = [f"{r['provenance']} Device: {r['device']}; `{r['command']}`; {r['setup']} ({_link(path)}).", "",
             "| method | kNN before | kNN after | wall (s) |" + (" source |" if sourced else ""),
             "|---|---:|---:|---:|" + ("---|" if sourced else "")]
    for x in r["results"]:
        lines.append(f"| {x['method']} | {x['knn_top1_init']:.2f} | {x['knn_top1']:.2f} | ~{x['wall_s']:.0f} |"
                     + (f" {x.get('source', '')} |" if sourced else ""))
    return "\n".join(lines + ["", r["note"]])


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _older_fast_rows(r: dict, older: list) -> list[tuple[str, dict]]:
    """Rows of earlier --fast records for methods (or encoders) the latest record did not run, newest first."""
    have = {x["method"] for x in r["results"] if x.get("status", "ok") == "ok"}
    out = []
    for path, rec in reversed(older):
        for x in rec["results"]:
            if x["method"] not in have and x.get("knn_top1") is not None:
                have.add(x["method"])
                out.append((path, x))
    return out


def _reproduce_md(path: str, r: dict) -> str:
    from fastssl.reproduce import results_markdown
    return f"`{r['command']}` ({_folder_link(path)}):\n\n" + results_markdown(r)


def _time_to_accuracy_md(path: str, r: dict) -> str:
    from bench.tta_report import summary_markdown
    return f"{_link(path)}, plot {_link(Path(path).with_suffix('.png').as_posix())}:\n\n" + summary_markdown(r)


RENDER = {"reproduce": _reproduce_md, "train_step": _train_step_md, "loaders": _loaders_md, "kernels": _kernels_md,
          "run_all": _run_all_md, "pretrain_fast": _pretrain_fast_md, "time_to_accuracy": _time_to_accuracy_md}
TITLES = {"reproduce": "Table 1 reproduction (`scripts/reproduce_table1.py`)",
          "train_step": "Training step ladder (`bench/train_step.py`)", "loaders": "Loaders (`bench/loaders.py`)",
          "kernels": "Fused kernels (`bench/kernels.py`)", "run_all": "GPU lease run (`bench/run_all.py`)",
          "pretrain_fast": "CPU `--fast` pretraining",
          "time_to_accuracy": "Time to accuracy (`bench/time_to_accuracy.py`)"}


ORDER = ("reproduce", "time_to_accuracy", "train_step", "kernels", "loaders", "run_all", "pretrain_fast")
GENERATED = "<!-- generated by scripts/render_results.py from bench/results/; edit the JSON or the script, not this {} -->"


def _devices(latest: dict, kind: str) -> list[str]:
    return sorted({device_of(rec, k) for (k, g, _), (_, rec) in latest.items() if g == kind})


def _not_measured(latest: dict) -> str:
    """The sentence naming what has no measurement yet ('' when everything has one)."""
    missing = []
    if not _devices(latest, "gpu"):
        missing.append("every GPU figure: the fused kernels' speed, the train-step ladder with bf16 / torch.compile / "
                       "fused kernels, the GPU `--fast` preset, seconds per epoch (`bench/run_all.py`), DALI's nvJPEG "
                       "decode")
    repro_gpu = any(rec["budget"] in ("quick", "full") for _, _, (_, rec) in entries_of(latest, "reproduce", "gpu"))
    if not repro_gpu:
        missing.append("the Table 1 reproduction at the `quick` or `full` budget (so far only the CPU `smoke` "
                       "budget, which checks the machinery and is not a reproduction)")
    return "Not yet measured: " + "; ".join(missing) + "." if missing else ""


def render(results: Path = RESULTS) -> str:
    """The page docs/results.md: every benchmark's latest CPU and GPU record, with its device and command."""
    every = load_records(results, every=True)
    latest = {key: entries[-1] for key, entries in every.items()}  # the newest of each (load_records' choice)
    gpu, cpu = _devices(latest, "gpu"), _devices(latest, "cpu")
    out = [BEGIN, GENERATED.format("page"), "# Results", "",
           "Only what was run is reported, each figure with its device and command; this page is generated from "
           "the committed JSON under `bench/results/` (`python scripts/render_results.py`). "
           + (f"Measured on GPU: {', '.join(gpu)}. " if gpu else "No GPU has been lent to this project yet: nothing "
              "below was measured on a GPU. ")
           + ("CPU figures name their device and thread count in each table." if cpu else "")]
    out += ["", _not_measured(latest), ""]
    for kind in ORDER:
        entries = entries_of(latest, kind)
        out.append(f"### {TITLES[kind]}\n")
        if not entries:
            out.append("Not measured yet.\n")
        for g, variant, (path, rec) in entries:
            extra = {}
            if kind == "pretrain_fast":
                extra = dict(older=[e for e in every[(kind, g, variant)] if e[0] != path])
            out.append(f"**{'GPU' if g == 'gpu' else 'CPU'}.{variant_title(variant)}** "
                       + RENDER[kind](path, rec, **extra).rstrip("\n") + "\n")
    out.append(END)
    return "\n".join(out) + "\n"


def summary(results: Path = RESULTS) -> str:
    """The README's short section: which benchmark was measured where and when, linking to the page; then the
    speedrun recipe's gains and the CPU --fast table."""
    latest = load_records(results)
    out = [SUMMARY_BEGIN, GENERATED.format("section"), "",
           f"Every figure, with its device, command and raw JSON, is in [{PAGE.as_posix()}]({PAGE.as_posix()}). "
           "Latest record per benchmark:", "",
           "| benchmark | CPU | GPU |", "|---|---|---|"]
    for kind in ORDER:
        cells = ["; ".join(f"{when(rec)[:10]}, [{Path(path).name}]({path})" for _, _, (path, rec)
                           in entries_of(latest, kind, g)) or "not measured" for g in ("cpu", "gpu")]
        out.append(f"| {TITLES[kind]} | {cells[0]} | {cells[1]} |")
    out += _speedrun_gains(latest) + _fast_table(latest)
    note = _not_measured(latest)
    out += (["", note] if note else []) + [SUMMARY_END]
    return "\n".join(out) + "\n"


def _speedrun_gains(latest: dict) -> list[str]:
    """``--recipe speedrun`` against the default at equal training seconds, per method, budget and seed."""
    rows = []
    for _, variant, (path, rec) in entries_of(latest, "time_to_accuracy", "cpu"):
        knn = {(r["method"], r["candidate"], r["seed"]): r.get("knn_top1") for r in rec["runs"]}
        for g in rec["gains"]:
            if g["candidate"] != "speedrun":
                continue
            pairs = ", ".join(f"{knn[(g['method'], 'default', s)]:.2f} -> {knn[(g['method'], 'speedrun', s)]:.2f} "
                              f"({d:+.2f})" for s, d in zip(g["seeds"], g["gain_per_seed"]))
            rows.append(f"| {g['method']} | {variant[0]:g} | {', '.join(map(str, g['seeds']))} | {pairs} | "
                        f"[json]({path}) |")
    if not rows:
        return []
    return ["", "CPU time to accuracy: kNN top-1 (%) of `--recipe default -> speedrun` at the same training seconds "
            "(`--fast` model, one pinned core a run, default and speedrun side by side):", "",
            "| method | budget (s) | seeds | default -> speedrun (gain) per seed | record |", "|---|---:|---|---|---|",
            *rows]


def _fast_table(latest: dict) -> list[str]:
    """The CPU ``--fast`` table of the latest bench/pretrain_fast.py record."""
    entries = [(path, rec) for _, _, (path, rec) in entries_of(latest, "pretrain_fast", "cpu") if "environment" in rec]
    if not entries:
        return []
    path, rec = entries[0]
    lines = ["", f"CPU `--fast`, `scripts/pretrain.py --method M --fast` as `bench/pretrain_fast.py` runs it "
             f"({rec['setup']}; [json]({path})): kNN top-1 (%), k = 200:", "",
             "| method | recipe | before | after | linear probe |", "|---|---|---:|---:|---:|"]
    lines += [f"| {x['method']} | {x.get('recipe') or '-'} | {_num(x.get('knn_top1_init'))} | {_num(x.get('knn_top1'))} | "
              f"{_num(x.get('linear_top1'))} |" for x in rec["results"]]
    return lines


def replace_section(text: str, section: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with everything from ``begin`` to ``end`` (markers included) replaced by ``section``."""
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"the file must hold exactly one {begin} ... {end} pair")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return head + section.rstrip("\n") + tail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when the page or the README differs from the rendering")
    p.add_argument("--print", dest="show", action="store_true", help="print the page, change nothing")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README holding the summary markers")
    p.add_argument("--page", type=Path, default=None, help="the results page (default: docs/results.md beside "
                   "--readme)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    page = args.page or args.readme.parent / PAGE
    if args.show:
        print(render(args.results), end="")
        return 0
    try:
        readme = args.readme.read_text()
        wanted = {args.readme: replace_section(readme, summary(args.results), SUMMARY_BEGIN, SUMMARY_END),
                  page: render(args.results)}
    except (OSError, ValueError) as e:
        print(f"render_results.py: error: {args.readme}: {e}", file=sys.stderr)
        return 2
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"render_results.py: {path} is stale; run python scripts/render_results.py", file=sys.stderr)
        if not stale:
            print("the results page and the README summary are up to date")
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, wanted[path])
        print(f"rewrote {path}")
    if not stale:
        print("the results page and the README summary are already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
