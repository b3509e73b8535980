"""bench/time_to_accuracy.py's report: kNN gains over ``default`` paired by seed, the winners, the markdown
tables, the kNN-against-training-seconds chart, and the JSON record that scripts/render_results.py reads."""
from __future__ import annotations

import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository root first and not this folder: bench/kernels.py would shadow the kernels package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

from bench._common import environment, write_result  # noqa: E402
from bench.tta_sweep import candidate_args, cell, git_commit, read_run, runs_text  # noqa: E402


def gains(records: list[dict], baseline: str = "default", target_gain: float = 3.0) -> list[dict]:
    """Per method and candidate: kNN minus the baseline's on the same seed, over the seeds both finished;
    and, where both reached the target on a seed, the baseline's time to target over the candidate's."""
    final = {(r["method"], r["candidate"], r["seed"]): r["knn_top1"] for r in records
             if r["status"] == "ok" and r.get("knn_top1") is not None}
    reached = {(r["method"], r["candidate"], r["seed"]): r["time_to_target_s"] for r in records
               if r["status"] == "ok" and r.get("time_to_target_s")}
    out = []
    methods = list(dict.fromkeys(r["method"] for r in records))
    candidates = list(dict.fromkeys(r["candidate"] for r in records))
    for method in methods:
        for cand in candidates:
            if cand == baseline:
                continue
            per_seed = {seed: round(k - final[(method, baseline, seed)], 2) for (m, c, seed), k in final.items()
                        if m == method and c == cand and (method, baseline, seed) in final}
            if not per_seed:
                continue
            seeds = sorted(per_seed)
            speedups = [reached[(method, baseline, s)] / reached[(method, cand, s)] for s in seeds
                        if (method, baseline, s) in reached and (method, cand, s) in reached]
            out.append(dict(method=method, candidate=cand, seeds=seeds, gain_per_seed=[per_seed[s] for s in seeds],
                            mean_gain=round(statistics.fmean(per_seed.values()), 2), min_gain=min(per_seed.values()),
                            target_gain=target_gain,
                            meets_target=len(seeds) >= 2 and min(per_seed.values()) >= target_gain,
                            time_to_target_speedup=round(statistics.fmean(speedups), 3) if speedups else None))
    return out


def winners(gain_rows: list[dict], methods: list[str]) -> list[str]:
    """Single candidates (not combinations, not speedrun) whose mean gain is positive for every method."""
    by_cand = {}
    for g in gain_rows:
        by_cand.setdefault(g["candidate"], {})[g["method"]] = g["mean_gain"]
    return [c for c, per in by_cand.items() if "+" not in c and c != "speedrun"
            and set(methods) <= set(per) and all(v > 0 for v in per.values())]

# ---- the report -----------------------------------------------------------------------------------

def summary_markdown(record: dict) -> str:
    """The results table, the gains over default and the candidate table (scripts/render_results.py may reuse it)."""
    env, s = record["environment"], record["settings"]
    target = s.get("target_knn")
    lines = [f"`{env['command']}` on {env['device']}, {env['time'][:10]}, torch {env['torch']}; {s['mode']} mode, "
             f"time budget {s['budget']:g} s of training per run (evaluation not charged), kNN every "
             f"{s['knn_every_steps']} steps, {s['threads']} threads, "
             + ("runs one at a time" if s.get("jobs", 1) == 1 else f"{s['jobs']} runs side by side, one pinned core each")
             + (f", target {target:g}% kNN" if target else "") + "."
             + (f" Note: {record['note']}" if record.get("note") else ""), "",
             "| recipe | method | seed | kNN at budget | kNN before | train_s | steps | images | "
             + ("time to target (s) | " if target else "") + "status |",
             "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if target else "") + "---|"]
    methods = list(dict.fromkeys(r["method"] for r in record["runs"]))
    recipes = list(dict.fromkeys(r["candidate"] for r in record["runs"]))
    order = lambda r: (methods.index(r["method"]), recipes.index(r["candidate"]), r["seed"])  # noqa: E731
    for r in sorted(record["runs"], key=order):
        note = r["status"] + (" (stopped before the budget)" if r.get("stopped_early") else "")
        lines.append(f"| {r['candidate']} | {r['method']} | {r['seed']} | {cell(r.get('knn_top1'))} | "
                     f"{cell(r.get('knn_top1_init'))} | {cell(r.get('train_s'), '{:.0f}')} | {cell(r.get('steps'), '{}')} | "
                     f"{cell(r.get('images_seen'), '{:,}')} | "
                     + (f"{cell(r.get('time_to_target_s'), '{:.0f}', 'not reached')} | " if target else "")
                     + f"{note} |")
    if record["gains"]:
        lines += ["", "kNN gain over `default` at the same budget, paired by seed (same data and evaluation "
                  "subsets)" + (f"; a run stops when it reaches {target:g}%, so there the gain compares final kNN "
                                f"and speedup = default's time to {target:g}% over the recipe's, where both reached it"
                                if target else "") + ":", "",
                  "| recipe | method | seeds | mean gain | per seed | >= "
                  f"{record['gains'][0]['target_gain']:g} on >= 2 seeds |" + (" speedup |" if target else ""),
                  "|---|---|---|---:|---|---|" + ("---:|" if target else "")]
        for g in record["gains"]:
            lines.append(f"| {g['candidate']} | {g['method']} | {', '.join(map(str, g['seeds']))} | "
                         f"{g['mean_gain']:+.2f} | {', '.join(f'{x:+.2f}' for x in g['gain_per_seed'])} | "
                         f"{'yes' if g['meets_target'] else 'no'} |"
                         + (f" {cell(g.get('time_to_target_speedup'), '{:.2f}x')} |" if target else ""))
    commits = [r["commit"][:12] for r in record["runs"] if r.get("commit")]
    if len(set(commits)) > 1:  # e.g. speedrun measured after it was set: say so next to the numbers
        lines += ["", f"The runs come from {len(set(commits))} commits: "
                  + ", ".join(f"{c} ({runs_text(commits.count(c))})" for c in dict.fromkeys(commits)) + "."]
    if record.get("winners") is not None:
        lines += ["", "Single changes with a positive mean gain for every method: "
                  + (", ".join(record["winners"]) if record["winners"] else "none") + "."
                  + (f" Their combination (measure it before adopting it): `--candidates default "
                     f"{'+'.join(record['winners'])}`." if len(record["winners"]) > 1 else "")]
    lines += ["", "Candidates (extra `scripts/pretrain.py` arguments):", "", "| recipe | arguments |", "|---|---|"]
    for name in dict.fromkeys(r["candidate"] for r in record["runs"]):
        lines.append(f"| {name} | `{shlex.join(candidate_args(name))}` |")
    return "\n".join(lines) + "\n"


def chart(record: dict, path: Path) -> None:
    """kNN top-1 against training seconds: one panel per method, one colour per recipe, one line per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in record["runs"] if r["curve"]]
    methods = list(dict.fromkeys(r["method"] for r in record["runs"]))
    recipes = list(dict.fromkeys(r["candidate"] for r in record["runs"]))
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(recipes)}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(5.0 * max(1, len(methods)), 4.0), squeeze=False)
    budget, target = record["settings"]["budget"], record["settings"].get("target_knn")
    for ax, method in zip(axes[0], methods):
        seeds = sorted({r["seed"] for r in record["runs"] if r["method"] == method})
        for r in (r for r in runs if r["method"] == method):
            t, k = zip(*r["curve"])
            ax.plot(t, k, styles[seeds.index(r["seed"]) % len(styles)], color=colours[r["candidate"]], marker=".",
                    label=f"{r['candidate']} (seed {r['seed']})")
        ax.axvline(budget, color="grey", lw=0.8, ls=":")
        if target:
            ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("training seconds (evaluation excluded)")
        ax.set_ylabel("kNN top-1 (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"Time to accuracy, {record['environment']['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_record(args, runs: list[dict], command: str) -> dict:
    target = args.target_knn or None
    records = [read_run(r, target) for r in runs]
    gain_rows = gains(records, target_gain=args.target_gain)
    settings = dict(mode="gpu" if args.gpu else "fast", budget=args.budget, knn_every_steps=args.knn_every_steps,
                    target_knn=target, threads=args.threads, jobs=args.jobs, methods=args.methods, seeds=args.seeds,
                    candidates=args.candidates, runs_dir=str(args.runs_dir), pretrain_args=args.pretrain_args,
                    time_limit=args.time_limit, commit=git_commit())
    return dict(benchmark="time_to_accuracy", environment=environment(command), settings=settings,
                candidate_args={c: candidate_args(c) for c in args.candidates}, runs=records, gains=gain_rows,
                winners=winners(gain_rows, args.methods), **({"note": args.note} if args.note else {}))


def write_report(args, runs: list[dict], command: str) -> dict:
    record = build_record(args, runs, command)
    md = f"# Time to accuracy ({record['settings']['mode']})\n\n" + summary_markdown(record)
    write_result(record, md, args.out)
    chart(record, args.out.with_suffix(".png"))
    print(md)
    return record

