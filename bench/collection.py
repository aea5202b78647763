"""Embedded collection: ingest, indexing, restart and hybrid (filtered) queries.

Into a fresh collection in a temporary folder (default segment size, index "HNSW16,F32",
payload indexes on ``pos`` and ``lexname`` created first) the train vectors go through
``Collection.upsert`` in batches of 1000 with payloads ``{"pos": int, "lexname": int}``:

* acknowledged ingest rate (vectors/s up to the last acknowledged upsert);
* time until fully indexed (``wait_indexed`` after the last upsert) and in total from the
  first upsert, against a standalone index of the same spec built over the same data in the
  same run (ratio);
* close, reopen: open time (manifest, memory-mapped segments, WAL replay) and first query;
* hybrid queries: ``lexname`` (match value, or any for a union of categories), ``pos``
  (match value, match any) and ``has_id`` random subsets at ~50/10/1/0.1%, recall@k against
  exact filtered ground truth, batch QPS (1 thread, all threads) and one-query latency,
  beside the unfiltered figures.

    quiver bench-collection                                  # WordNet, full size
    quiver bench-collection --limit 5000 --queries 50 --reps 1 --latency-queries 20
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .args import add_dataset_arguments, float_list, int_list
from .common import (
    DEFAULT_SELECTIVITIES,
    Case,
    category_filter,
    category_name,
    closest_categories,
    filtered_truth,
    fmt,
    ids_matrix,
    load_with_payload,
    log_stderr,
    md_table,
    module_main,
    pct,
    random_subset,
    run_report_cli,
)
from .metrics import recall_at_k
from .timing import best_time, ensure_passive_omp, thread_limit

COLLECTION = "bench"


@dataclass
class CollectionBenchConfig:
    dataset: str | None = None
    limit: int | None = None
    queries: int | None = None
    k: int = 10
    batch: int = 1000
    index: str = "HNSW16,F32"
    segment_size: int | None = None
    """None: the collection default."""
    ef_construction: int = 200
    efs: list[int] = field(default_factory=lambda: [64])
    selectivities: list[float] = field(default_factory=lambda: list(DEFAULT_SELECTIVITIES))
    seed: int = 0
    reps: int = 3
    latency_queries: int = 200
    threads: str = "both"
    flush: bool = False
    """Seal the last, partly filled segment too (timed) before closing."""
    standalone: bool = True
    data_dir: str | None = None
    """Parent folder of the temporary database (default: the system temp folder)."""
    keep: bool = False


# --- cases -----------------------------------------------------------------------------------


def build_cases(payload: dict, n: int, selectivities, seed: int) -> list[Case]:
    """Unfiltered; lexname closest to each selectivity; every pos value and one match any;
    has_id random subsets. Each case carries the collection filter and the allowed rows."""
    cases = [Case("unfiltered", "none", 1.0, None)]
    lex, pos = payload["lexname"], payload["pos"]
    seen = set()
    for s in selectivities:
        cats = closest_categories(lex, s)
        if tuple(cats) in seen:
            continue
        seen.add(tuple(cats))
        cases.append(Case(category_name("lexname", cats), "lexname", s,
                          np.flatnonzero(np.isin(lex, cats)).astype(np.int64),
                          filter=category_filter("lexname", cats), detail={"categories": cats}))
    values, counts = np.unique(pos, return_counts=True)
    order = values[np.argsort(-counts, kind="stable")].tolist()
    for v in order:
        ids = np.flatnonzero(pos == v).astype(np.int64)
        cases.append(Case(f"pos={v}", "pos", ids.shape[0] / n, ids,
                          filter=category_filter("pos", [v]), detail={"values": [v]}))
    if len(order) >= 3:
        pair = sorted(order[-2:])
        ids = np.flatnonzero(np.isin(pos, pair)).astype(np.int64)
        cases.append(Case(f"pos in {{{','.join(map(str, pair))}}}", "pos", ids.shape[0] / n, ids,
                          filter=category_filter("pos", pair), detail={"values": pair}))
    for s in selectivities:
        ids = random_subset(n, s, seed)
        cases.append(Case(f"has_id random {pct(s)}", "has_id", s, ids,
                          filter={"must": [{"has_id": ids.tolist()}]}, detail={"seed": seed}))
    return cases


# --- helpers ---------------------------------------------------------------------------------


def _payloads(payload: dict, n: int) -> list[dict]:
    pos, lex = payload["pos"].tolist(), payload["lexname"].tolist()
    return [{"pos": pos[i], "lexname": lex[i]} for i in range(n)]


def _hnsw_options(spec: str, ef_construction: int) -> dict:
    return ({"ef_construction": ef_construction}
            if spec.split(",")[0].strip().upper().startswith("HNSW") else {})


def warm_up(dim: int, metric: str, spec: str, root: Path, x: np.ndarray, q: np.ndarray) -> float:
    """Run ingest, sealing, every filter kind and reopen on a tiny collection first, so Numba
    compiles (or loads its cache) before anything is timed."""
    import quiver

    from ..engine.index.registry import index as make_index

    t = time.perf_counter()
    m = min(len(x), 600)
    db = quiver.connect(root)
    col = db.create_collection("warm", dim, metric, spec, segment_size=max(64, m // 3))
    col.create_payload_index("pos", "integer")
    col.create_payload_index("lexname", "integer")
    pl = [{"pos": i % 4, "lexname": i % 45} for i in range(m)]
    for s in range(0, m, 200):
        col.upsert(np.arange(s, min(m, s + 200)), x[s : s + 200], pl[s : s + 200])
    col.wait_indexed()
    filters = [None, {"must": [{"key": "pos", "match": {"value": 1}}]},
               {"must": [{"key": "lexname", "match": {"any": [1, 2]}}]},
               {"must": [{"has_id": list(range(0, m, 2))}]}, {"must": [{"has_id": [1, 2, 3]}]}]
    for flt in filters:
        col.search(q[0], 5, filter=flt, explain=True)
        col.search(q[:8], 5, filter=flt)
    db.close()
    db = quiver.connect(root)
    db.get_collection("warm").search(q[0], 5)
    db.close()
    make_index(spec, dim, metric, **_hnsw_options(spec, 200)).add(x[:m])
    return time.perf_counter() - t


def _plan_summary(plan: list[dict]) -> str:
    parts = []
    for p in plan:
        parts.append(f"{'sealed' if p.get('sealed') else 'append'}:{p.get('strategy')}")
    return ", ".join(parts) or "-"


def _segments(info: dict) -> list[dict]:
    return [{"id": s["id"], "sealed": s["sealed"], "points": s["points"]} for s in info["segments"]]


# --- run -------------------------------------------------------------------------------------


def ingest(col, ds, cfg: CollectionBenchConfig, log) -> dict:
    n = ds.n
    payloads = _payloads(ds.payload, n)
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    for s in range(0, n, cfg.batch):
        col.upsert(ids[s : s + cfg.batch], ds.train[s : s + cfg.batch], payloads[s : s + cfg.batch])
    t_ack = time.perf_counter()
    log(f"  acknowledged {n} vectors in {t_ack - t0:.1f} s ({n / (t_ack - t0):,.0f}/s)")
    col.wait_indexed(timeout=24 * 3600)
    t_idx = time.perf_counter()
    info = col.info()
    log(f"  indexed {t_idx - t_ack:.1f} s after the last upsert ({t_idx - t0:.1f} s total); "
        f"segments {[(s['points'], s['sealed']) for s in info['segments']]}")
    out = {"vectors": n, "batch": cfg.batch, "ack_s": t_ack - t0, "ingest_rate": n / (t_ack - t0),
           "indexed_after_last_upsert_s": t_idx - t_ack, "indexed_total_s": t_idx - t0,
           "indexed_points": info["indexed_points"], "segments": _segments(info)}
    if cfg.flush:
        t = time.perf_counter()
        col.flush(timeout=24 * 3600)
        col.wait_indexed(timeout=24 * 3600)
        out["flush_s"] = time.perf_counter() - t
        out["segments_after_flush"] = _segments(col.info())
        out["indexed_points"] = col.info()["indexed_points"]
        log(f"  flush (seal the rest) {out['flush_s']:.1f} s")
    return out


def query_case(col, case: Case, q: np.ndarray, cfg: CollectionBenchConfig, ef: int, n: int,
               log) -> dict:
    params = {"ef": ef}
    row: dict = {"filter": case.name, "family": case.kind, "allowed": case.count or n,
                 "selectivity": case.share(n), "ef": ef, "qps_1": None, "qps_all": None}
    _, plan = col.search(q[0], cfg.k, filter=case.filter, params=params, explain=True)
    row["plan"] = _plan_summary(plan)

    def batch(qq):
        return col.search(qq, cfg.k, filter=case.filter, params=params)

    for t in (["all", "1"] if cfg.threads == "both" else [cfg.threads]):
        with thread_limit(t):
            if "recall" not in row:
                row["recall"] = recall_at_k(ids_matrix(batch(q), cfg.k), case.truth, cfg.k)
            row["qps_1" if t == "1" else "qps_all"] = q.shape[0] / best_time(lambda: batch(q),
                                                                              cfg.reps)
    lat_q = q[: cfg.latency_queries]
    times = np.empty(lat_q.shape[0])
    found = []
    for i in range(lat_q.shape[0]):
        t = time.perf_counter_ns()
        hits = col.search(lat_q[i], cfg.k, filter=case.filter, params=params)
        times[i] = (time.perf_counter_ns() - t) / 1e6
        found.append(hits)
    row["single_recall"] = recall_at_k(ids_matrix(found, cfg.k), case.truth[: lat_q.shape[0]], cfg.k)
    row["p50_ms"] = float(np.percentile(times, 50))
    row["p99_ms"] = float(np.percentile(times, 99))
    row["single_qps"] = 1e3 / float(times.mean())
    log(f"    {case.name:28s} ef={ef:<4d} recall={row['recall']:.4f} qps1={fmt(row['qps_1'], 0)} "
        f"qps_all={fmt(row['qps_all'], 0)} p50={row['p50_ms']:.2f} ms  [{row['plan']}]")
    return row


def run_collection(cfg: CollectionBenchConfig, log: Callable[[str], None] | None = None) -> dict:
    import quiver

    from ..engine.index.registry import index as make_index

    log = log or log_stderr
    ensure_passive_omp()
    t_start = time.perf_counter()
    ds, synthetic_payload = load_with_payload(cfg.dataset, cfg.limit, cfg.queries, cfg.seed)
    n, q = ds.n, ds.test
    log(f"dataset {ds.name}: n={n} dim={ds.dim} nq={ds.nq} metric={ds.metric}"
        + (" (synthetic payload)" if synthetic_payload else ""))
    root = Path(tempfile.mkdtemp(prefix="quiver-bench-collection-", dir=cfg.data_dir))
    try:
        warm_s = warm_up(ds.dim, ds.metric, cfg.index, root / "warm", ds.train, q)
        log(f"warm-up {warm_s:.1f} s; database in {root / 'db'}")
        db = quiver.connect(root / "db")
        opts = {"segment_size": cfg.segment_size} if cfg.segment_size else {}
        col = db.create_collection(COLLECTION, ds.dim, ds.metric, cfg.index,
                                   ef_construction=cfg.ef_construction, **opts)
        col.create_payload_index("pos", "integer")
        col.create_payload_index("lexname", "integer")
        segment_size = col.config.segment_size
        ing = ingest(col, ds, cfg, log)
        t = time.perf_counter()
        db.close()
        ing["close_s"] = time.perf_counter() - t

        if cfg.standalone:
            idx = make_index(cfg.index, ds.dim, ds.metric,
                             **_hnsw_options(cfg.index, cfg.ef_construction))
            t = time.perf_counter()
            idx.add(ds.train)
            ing["standalone_build_s"] = time.perf_counter() - t
            ing["standalone_index"] = repr(idx)
            ing["indexed_total_vs_standalone"] = ing["indexed_total_s"] / ing["standalone_build_s"]
            log(f"  standalone {cfg.index} build {ing['standalone_build_s']:.1f} s "
                f"(collection total / standalone = {ing['indexed_total_vs_standalone']:.2f})")
            del idx
            gc.collect()

        t = time.perf_counter()
        db = quiver.connect(root / "db")
        col = db.get_collection(COLLECTION)
        restart = {"open_s": time.perf_counter() - t}
        t = time.perf_counter()
        col.search(q[0], cfg.k)
        restart["first_query_ms"] = (time.perf_counter() - t) * 1e3
        info = col.info()
        restart.update(points=info["points"], segments=_segments(info))
        log(f"  reopen {restart['open_s']:.2f} s, first query {restart['first_query_ms']:.1f} ms, "
            f"{info['points']} points")
        if info["points"] != n:
            raise RuntimeError(f"reopened collection holds {info['points']} points, expected {n}")

        cases = build_cases(ds.payload, n, cfg.selectivities, cfg.seed)
        rows = []
        for case in cases:
            case.truth = filtered_truth(ds.train, q, case.ids, cfg.k, ds.metric)
            for ef in cfg.efs:
                try:
                    rows.append(query_case(col, case, q, cfg, ef, n, log))
                except Exception as exc:  # keep the other filters' numbers
                    log(f"    {case.name} ef={ef}: failed: {type(exc).__name__}: {exc}")
                    rows.append({"filter": case.name, "family": case.kind, "ef": ef,
                                 "allowed": case.count or n, "selectivity": case.share(n),
                                 "error": f"{type(exc).__name__}: {exc}"})
        db.close()
    finally:
        if cfg.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    from .runner import environment

    return {"benchmark": "collection",
            "dataset": ds.describe() | {"synthetic_payload": synthetic_payload},
            "config": asdict(cfg) | {"segment_size_used": segment_size},
            "environment": environment(), "warmup_s": warm_s, "ingest": ing, "restart": restart,
            "cases": [c.describe(n) | {"filter_kind": c.kind} for c in cases], "results": rows,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "wall_s": round(time.perf_counter() - t_start, 2)}


# --- report ----------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    ds, env, cfg = report["dataset"], report["environment"], report["config"]
    ing, rs = report["ingest"], report["restart"]
    k, t_all = cfg["k"], env["threads_all"]
    out = [f"## Collection: {ds['name']}, n={ds['n']:,}, dim={ds['dim']}, "
           f"queries={ds['nq']:,}, metric={ds['metric']}", "",
           f"Index {cfg['index']} (ef_construction {cfg['ef_construction']}), segment size "
           f"{cfg['segment_size_used']:,}, upsert batches of {cfg['batch']:,} with payloads "
           f"{{pos, lexname}} (integer payload indexes); {env['cpu_count']} CPUs, "
           f"all threads = {t_all}." + (" Payload columns are synthetic (random)."
                                         if ds.get("synthetic_payload") else ""), "",
           "### Ingest, indexing, restart", ""]
    segs = ing.get("segments_after_flush", ing["segments"])
    rows = [["acknowledged ingest", f"{fmt(ing['ingest_rate'], 0)} vectors/s "
             f"({ing['ack_s']:.1f} s for {ing['vectors']:,})"],
            ["indexed after the last upsert (wait_indexed)",
             f"{ing['indexed_after_last_upsert_s']:.1f} s"],
            ["indexed, total from the first upsert", f"{ing['indexed_total_s']:.1f} s"]]
    if "flush_s" in ing:
        rows.append(["flush (seal the partial segment)", f"{ing['flush_s']:.1f} s"])
    rows.append(["indexed points / segments",
                 f"{ing['indexed_points']:,} / " + ", ".join(
                     f"{s['points']:,}{'' if s['sealed'] else ' (appendable)'}" for s in segs)])
    if "standalone_build_s" in ing:
        rows += [[f"standalone {cfg['index']} build, same data", f"{ing['standalone_build_s']:.1f} s"],
                 ["collection total / standalone build", f"{ing['indexed_total_vs_standalone']:.2f}x"]]
    rows += [["close", f"{ing['close_s']:.2f} s"],
             ["reopen (restart)", f"{rs['open_s']:.2f} s"],
             ["first query after reopen", f"{rs['first_query_ms']:.1f} ms"]]
    out += [md_table(["", "value"], rows), "### Hybrid queries", "",
            f"Batch: one `Collection.search` call over all {ds['nq']:,} queries (best of "
            f"{cfg['reps']}); one-query latency over the first {cfg['latency_queries']} queries; "
            "plan: per segment strategy for the first query.", ""]
    head = ["filter", "allowed", "ef", f"recall@{k}", "batch QPS 1 thread",
            f"batch QPS {t_all} threads", "1-query QPS", "p50 ms", "p99 ms", "plan"]
    rows = []
    for r in report["results"]:
        if "error" in r:
            rows.append([r["filter"], pct(r["selectivity"]), r["ef"], "error: " + r["error"],
                         *["-"] * 6])
            continue
        rows.append([r["filter"], pct(r["selectivity"]), r["ef"], fmt(r["recall"], 4),
                     fmt(r["qps_1"], 0), fmt(r["qps_all"], 0), fmt(r["single_qps"], 0),
                     fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2), r["plan"]])
    out.append(md_table(head, rows))
    return "\n".join(out)


def plot(report: dict, path) -> None:
    """Batch QPS per filter (log scale) annotated with recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if "error" not in r]
    key = "qps_all" if any(r.get("qps_all") for r in rows) else "qps_1"
    labels = [f"{r['filter']} ({pct(r['selectivity'])}, ef={r['ef']})" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    ax.barh(range(len(rows)), [r[key] or 0 for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.text(r[key] or 0, i, f" recall {r['recall']:.3f}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"batch QPS ({'all threads' if key == 'qps_all' else '1 thread'})")
    ax.set_title(f"Collection hybrid queries: {report['dataset']['name']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- CLI -------------------------------------------------------------------------------------




def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p, "ingest the first N train vectors")
    p.add_argument("--batch", type=int, default=1000, help="points per upsert (default 1000)")
    p.add_argument("--index", default="HNSW16,F32", help="collection index spec")
    p.add_argument("--segment-size", type=int, help="default: the collection default")
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", type=int_list, help="search ef values (default 64)")
    p.add_argument("--selectivity", type=float_list, help="default 0.5,0.1,0.01,0.001")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3, help="timed batch repetitions, best kept")
    p.add_argument("--latency-queries", type=int, default=200,
                   help="queries timed one per call (default 200)")
    p.add_argument("--threads-only", choices=["1", "all"], help="one batch QPS column only")
    p.add_argument("--flush", action="store_true",
                   help="also seal the last partial segment (timed) before the restart")
    p.add_argument("--no-standalone", action="store_true", help="skip the standalone build")
    p.add_argument("--data-dir", help="parent folder for the temporary database")
    p.add_argument("--keep", action="store_true", help="keep the database folder")
    p.add_argument("--out", help="output folder (default bench/results/collection-<name>)")
    p.add_argument("--name", help="output folder suffix (default: the dataset name)")


def config_from_args(args: argparse.Namespace) -> CollectionBenchConfig:
    cfg = CollectionBenchConfig(dataset=args.dataset, limit=args.limit, queries=args.queries,
                                k=args.k, batch=args.batch, index=args.index,
                                segment_size=args.segment_size,
                                ef_construction=args.ef_construction, seed=args.seed,
                                reps=args.reps, latency_queries=args.latency_queries,
                                threads=args.threads_only or "both", flush=args.flush,
                                standalone=not args.no_standalone, data_dir=args.data_dir,
                                keep=args.keep)
    if args.ef:
        cfg.efs = args.ef
    if args.selectivity:
        cfg.selectivities = args.selectivity
    if cfg.batch < 1:
        raise ValueError("batch must be positive")
    return cfg


def run_cli(args: argparse.Namespace) -> int:
    return run_report_cli("collection", lambda: run_collection(config_from_args(args)), markdown,
                          plot, "qps_by_filter.png", args.out, args.name,
                          lambda r: all("error" not in x for x in r["results"]))


def main(argv=None) -> int:
    return module_main("collection", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
