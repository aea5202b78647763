"""Benchmark output: JSON (everything), a Markdown table (for issues and READMEs), a PNG plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

COLUMNS = ("engine", "index", "params", "recall@{k}", "QPS 1 thread", "QPS all threads ({t})",
           "p50 ms", "p99 ms", "build s", "bytes/vector")


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def format_params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "-"


def markdown_table(report: dict) -> str:
    """One row per (engine, index, params) point, in run order."""
    k, t = report["config"]["k"], report["environment"]["threads_all"]
    head = [c.format(k=k, t=t) for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in report["results"]:
        cells = [r["engine"], r["index"], format_params(r["params"]), _fmt(r["recall"], 4),
                 _fmt(r["qps_1"], 0), _fmt(r["qps_all"], 0), _fmt(r["p50_ms"], 3),
                 _fmt(r["p99_ms"], 3), _fmt(r["build_s"], 2), _fmt(r["bytes_per_vector"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
    ds, env = report["dataset"], report["environment"]
    out = [f"## {ds['name']}: n={ds['n']:,}, dim={ds['dim']}, queries={ds['nq']:,}, "
           f"metric={ds['metric']}", "",
           f"{env['cpu_count']} CPUs, all threads = {env['threads_all']}, "
           f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY')}; QPS is the best of "
           f"{report['config']['reps']} batch runs; latency is one query per call over "
           f"{report['config']['latency_queries']} queries, "
           f"threads: {report['config']['latency_threads']}.", "",
           markdown_table(report)]
    if report.get("skipped"):
        out += ["", "Skipped: " + "; ".join(f"{s['name']} ({s['reason']})"
                                            for s in report["skipped"]), ""]
    return "\n".join(out)


def plot(report: dict, path: str | os.PathLike) -> None:
    """Recall@k vs QPS (log scale), one line per engine/index; a panel per thread setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = f"{report['environment']['threads_all']} threads"
    panels = [(key, label) for key, label in (("qps_1", "1 thread"), ("qps_all", every))
              if any(r.get(key) for r in report["results"])]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.5 * max(1, len(panels)), 4.8),
                             squeeze=False)
    k = report["config"]["k"]
    for ax, (key, label) in zip(axes[0], panels, strict=False):
        series: dict[str, list] = {}
        for r in report["results"]:
            if r.get(key):
                series.setdefault(f"{r['engine']} {r['index']}", []).append(
                    (r["recall"], r[key]))
        for name, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{k}")
        ax.set_ylabel("queries per second")
        ax.set_title(f"{report['dataset']['name']} ({label})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """results.json, results.md and recall_qps.png in ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md",
             "png": out / "recall_qps.png"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths["md"].write_text(markdown(report))
    try:
        plot(report, paths["png"])
    except ImportError:
        del paths["png"]
    return paths
