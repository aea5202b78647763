"""Benchmark output: JSON (everything), Markdown tables (for issues and READMEs), a PNG plot.

The Markdown leads with how the figures were taken (interleaved rounds and their engine
orders, or a loud "sequential" warning) and with QPS at fixed recall targets, because single
sweep points of engines with different knobs cannot be compared directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from .common import fmt, md_table, write_outputs

COLUMNS = ("engine", "index", "params", "recall@{k}", "QPS 1 thread", "QPS all threads ({t})",
           "p50 ms", "p99 ms", "build s", "bytes/vector")
KEYS = ("engine", "index", "params", "recall", "qps_1", "qps_all", "p50_ms", "p99_ms", "build_s",
        "bytes_per_vector")
THREAD_NAMES = {"1": "1 thread", "all": "all threads ({t})"}


def format_params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "-"


def markdown_table(report: dict) -> str:
    """One row per (engine, index, params) point, in run order; QPS the best over rounds and
    only for the thread settings that were measured."""
    k, t = report["config"]["k"], report["environment"]["threads_all"]
    threads = report["config"].get("threads", "both")
    drop = {"1": {"qps_all"}, "all": {"qps_1"}}.get(threads, set())
    keys = [key for key in KEYS if key not in drop]
    digits = {"recall": 4, "p50_ms": 3, "p99_ms": 3, "build_s": 2, "bytes_per_vector": 1}
    rows = [[format_params(r[key]) if key == "params" else fmt(r[key], digits.get(key, 0))
             for key in keys] for r in report["results"]]
    return md_table([COLUMNS[KEYS.index(key)].format(k=k, t=t) for key in keys], rows)


def _qps_cell(at: dict) -> str:
    if at["qps"] is None:
        return "not reached"
    return (">= " if at["status"] == "lower bound" else "") + fmt(at["qps"], 0)


def _ratio_cell(ratio: dict | None) -> str:
    if ratio is None:
        return "-"
    paired = ratio.get("paired_median")
    text = fmt(ratio["ratio"], 2) + ("*" if ratio["bound"] else "")
    return text + (f" ({fmt(paired, 2)})" if paired is not None else "")


def target_tables(report: dict) -> str:
    """Per thread setting: engine, build time, bytes/vector, QPS at each recall target and
    its ratio to the reference engine."""
    summary = report.get("summary")
    if not summary or not summary["engines"]:
        return ""
    k, t_all = report["config"]["k"], report["environment"]["threads_all"]
    targets = summary["targets"]
    head = ["engine", "index", "build s", "bytes/vector"]
    for x in targets:
        head += [f"QPS @{x:.2f}", "ratio"]
    out = [f"QPS at recall@{k} targets, interpolated linearly in recall between the two sweep "
           f"points that bracket each target. Ratio: QPS over {summary['reference']}'s at the "
           "same target (in brackets the median over rounds of the ratio within each round). "
           ">= : the lowest sweep point already exceeds the target, so the QPS there is a "
           "lower bound; * : a ratio with a bound on one side.", ""]
    for t in sorted(summary["threads"], key=lambda t: t != "1"):
        rows = []
        for e in summary["engines"]:
            row = [e["engine"], e["index"], fmt(e["build_s"], 2), fmt(e["bytes_per_vector"], 1)]
            for x in targets:
                ratio = "ref" if e["label"] == summary["reference"] else _ratio_cell(
                    e["ratio"][t][str(x)])
                row += [_qps_cell(e["at_target"][t][str(x)]), ratio]
            rows.append(row)
        out += [f"**{THREAD_NAMES[t].format(t=t_all)}**", "", md_table(head, rows)]
    return "\n".join(out)


def method(report: dict) -> str:
    """How the QPS and latency figures were taken: the schedule, or the sequential warning."""
    cfg, sched = report["config"], report.get("schedule") or {}
    lat = (f"latency: one query per call over {cfg['latency_queries']} queries, threads: "
           f"{cfg['latency_threads']}, one pass per round, each query's best round kept")
    if sched.get("mode") == "sequential":
        return (f"**{sched['note']}**. Each engine alone: {cfg['rounds']} rounds, QPS the best "
                f"of {cfg['reps']} batch calls per round and the best round kept; {lat}.")
    orders = "; ".join(f"round {i + 1}: {', '.join(o)}"
                       for i, o in enumerate(sched.get("orders", [])))
    return (f"Interleaved: all engines built first, then {cfg['rounds']} rounds, each timing "
            "every engine back to back at each sweep position (engine order rotating: "
            f"{orders}). QPS: the best of {cfg['reps']} batch calls per round, the best round "
            f"kept (every round's value in results.json); {lat}.")


def markdown(report: dict) -> str:
    ds, env = report["dataset"], report["environment"]
    out = [f"## {ds['name']}: n={ds['n']:,}, dim={ds['dim']}, queries={ds['nq']:,}, "
           f"metric={ds['metric']}", "",
           f"{env['cpu_count']} CPUs, all threads = {env['threads_all']}, "
           f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY')}. {method(report)}", ""]
    targets = target_tables(report)
    if targets:
        out += [targets]
    out += ["All sweep points:", "", markdown_table(report)]
    if report.get("skipped"):
        out += ["Skipped: " + "; ".join(f"{s['name']} ({s['reason']})"
                                        for s in report["skipped"]), ""]
    return "\n".join(out)


def plot(report: dict, path: str | os.PathLike) -> None:
    """Recall@k vs QPS (log scale), one line per engine/index; a panel per thread setting;
    the recall targets as dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = f"{report['environment']['threads_all']} threads"
    panels = [(key, label) for key, label in (("qps_1", "1 thread"), ("qps_all", every))
              if any(r.get(key) for r in report["results"])]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.5 * max(1, len(panels)), 4.8),
                             squeeze=False)
    k = report["config"]["k"]
    sched = report.get("schedule") or {}
    how = (f"interleaved, {report['config'].get('rounds', 1)} rounds"
           if sched.get("mode") == "interleaved" else "sequential: ratios not trustworthy")
    for ax, (key, label) in zip(axes[0], panels, strict=False):
        series: dict[str, list] = {}
        for r in report["results"]:
            if r.get(key):
                series.setdefault(r.get("label") or f"{r['engine']} {r['index']}", []).append(
                    (r["recall"], r[key]))
        for name, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for x in (report.get("summary") or {}).get("targets", []):
            ax.axvline(x, ls=":", color="gray", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{k}")
        ax.set_ylabel("queries per second")
        ax.set_title(f"{report['dataset']['name']} ({label}; {how})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """results.json, results.md and recall_qps.png in ``out_dir`` (created)."""
    return write_outputs(report, markdown(report), out_dir, plot, "recall_qps.png")
