"""Sharded collections on Ray against the embedded collection: the cost of the actor hop,
batch-search scaling over 1, 2 and 4 shards, ingest, and the per-shard figures the README's
capacity model is built from.

One ``ClusterDatabase`` on a local Ray cluster holds an embedded collection and one sharded
collection per shard count (replicas 1, or ``--replicas``), all loaded with the same first N
vectors and sealed into HNSW segments. Each round then times every collection in turn, the
order rotating (A B C D, B C D A, ...), so a slow spell of this shared machine lands on all:

- **single**: one query at a time (``search(vector)``): queries/s and p50/p99 latency; the
  hop cost is a sharded collection's mean latency minus the embedded one's;
- **batch**: ``search_arrays`` of ``--batch-size`` queries, one actor call per shard;
- recall@k against the dataset's ground truth (sharding must not change it: each shard
  searches its own graph, the merge keeps the best k).

Ingest (points/s, batches of ``--load-batch``, every replica's WAL has each batch before it
returns) and the resident bytes per shard (``info()`` segments) are reported per collection.
On a 2-core machine the shards share the cores: more shards cannot raise throughput here;
the figures give the per-shard cost and the fixed cost per request that a capacity plan needs.

    quiver bench-cluster                             # 50,000 WordNet vectors, shards 1 2 4
    quiver bench-cluster --limit 5000 --single-requests 100 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .args import add_dataset_arguments, int_list
from .common import fmt, load_with_payload, log_stderr, md_table, module_main, run_report_cli
from .metrics import recall_at_k
from .timing import ensure_passive_omp, rotated


@dataclass
class ClusterBenchConfig:
    dataset: str | None = None
    limit: int | None = 50_000
    queries: int | None = None
    k: int = 10
    ef: int = 64
    shards: list[int] = field(default_factory=lambda: [1, 2, 4])
    replicas: int = 1
    index: str = "HNSW16,F32"
    rounds: int = 3
    single_requests: int = 300
    batch_size: int = 200
    batch_requests: int = 10
    load_batch: int = 2000
    data_dir: str | None = None
    seed: int = 0


def _collections(cfg: ClusterBenchConfig) -> list[tuple[str, int | None]]:
    return [("embedded", None), *((f"shards-{s}", s) for s in cfg.shards)]


def run_cluster_bench(cfg: ClusterBenchConfig, log: Callable[[str], None] | None = None) -> dict:
    log = log or log_stderr
    ensure_passive_omp()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster, this process's own
    import quiver

    ds, _ = load_with_payload(cfg.dataset, cfg.limit, cfg.queries, cfg.seed)
    log(f"dataset {ds.name}: n={ds.n} dim={ds.dim} nq={ds.test.shape[0]} metric={ds.metric}")
    root = Path(tempfile.mkdtemp(prefix="quiver-bench-cluster-", dir=cfg.data_dir))
    t0 = time.perf_counter()
    db = quiver.connect(root / "data", cluster="local", num_cpus=os.cpu_count())
    ray_start_s = time.perf_counter() - t0
    try:
        return _run(cfg, ds, db, ray_start_s, log)
    finally:
        db.close()
        shutil.rmtree(root, ignore_errors=True)


def _run(cfg: ClusterBenchConfig, ds, db, ray_start_s: float, log) -> dict:
    n, q = ds.n, ds.test
    ids = np.arange(n, dtype=np.int64)
    cols, ingest = {}, {}
    for name, shards in _collections(cfg):
        kwargs = {} if shards is None else {"shards": shards, "replicas": cfg.replicas}
        t = time.perf_counter()
        col = db.create_collection(name, dim=ds.dim, metric=ds.metric, index=cfg.index,
                                   segment_size=n + 1, **kwargs)
        create_s = time.perf_counter() - t
        t = time.perf_counter()
        for start in range(0, n, cfg.load_batch):
            stop = min(n, start + cfg.load_batch)
            col.upsert(ids[start:stop], ds.train[start:stop])
        upsert_s = time.perf_counter() - t
        t = time.perf_counter()
        col.flush()
        seal_s = time.perf_counter() - t
        info = col.info()
        per_shard: dict[int, int] = {}
        for seg in info["segments"]:
            per_shard[seg.get("shard", 0)] = per_shard.get(seg.get("shard", 0), 0) + \
                seg["memory_bytes"]
        ingest[name] = {"create_s": create_s, "upsert_s": upsert_s,
                        "points_per_s": n / upsert_s, "seal_s": seal_s,
                        "resident_bytes_per_shard": [per_shard[s] for s in sorted(per_shard)]}
        log(f"{name}: created in {create_s:.1f} s, {n / upsert_s:,.0f} points/s, sealed in "
            f"{seal_s:.1f} s")
        cols[name] = col
    params = {"ef": cfg.ef}
    for col in cols.values():  # compile and touch every kernel before timing
        col.search(q[0], cfg.k, params=params)
        col.search_arrays(q[: cfg.batch_size], cfg.k, params=params)
    names = list(cols)
    single = {m: [] for m in names}
    batch = {m: 0.0 for m in names}
    found: dict[str, list] = {m: [] for m in names}
    per_round = max(1, cfg.single_requests // cfg.rounds)
    batches = max(1, cfg.batch_requests // cfg.rounds)
    nq = q.shape[0]
    for r in range(cfg.rounds):
        for m in rotated(names, r):
            col = cols[m]
            for i in range(per_round):
                t = time.perf_counter()
                col.search(q[(r * per_round + i) % nq], cfg.k, params=params)
                single[m].append(time.perf_counter() - t)
            t = time.perf_counter()
            for b in range(batches):
                start = ((r * batches + b) * cfg.batch_size) % max(1, nq - cfg.batch_size + 1)
                res = col.search_arrays(q[start : start + cfg.batch_size], cfg.k, params=params)
                if r == 0 and b == 0:
                    found[m] = [start, res]
            batch[m] += time.perf_counter() - t
        log(f"round {r + 1}/{cfg.rounds} done")
    out = {}
    base = np.mean(single["embedded"])
    for m in names:
        lat = np.asarray(single[m]) * 1e3
        start, res = found[m]
        got = res.ids.astype(np.int64)
        truth = ds.neighbors[start : start + cfg.batch_size]
        out[m] = {"single_qps": len(lat) / (lat.sum() / 1e3), "p50_ms": float(np.percentile(lat, 50)),
                  "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
                  "hop_ms": float(lat.mean() - base * 1e3),
                  "batch_qps": cfg.rounds * batches * cfg.batch_size / batch[m],
                  f"recall@{cfg.k}": recall_at_k(got, truth, cfg.k), **ingest[m]}
        log(f"{m}: single {out[m]['single_qps']:,.0f} q/s (p50 {out[m]['p50_ms']:.2f} ms), batch "
            f"{out[m]['batch_qps']:,.0f} q/s, recall {out[m][f'recall@{cfg.k}']:.4f}")
    import ray

    return {"kind": "cluster", "dataset": {"name": ds.name, "n": n, "dim": ds.dim,
                                           "metric": ds.metric, "nq": nq},
            "config": asdict(cfg), "ray_version": ray.__version__, "ray_start_s": ray_start_s,
            "environment": {"cpu_count": os.cpu_count()}, "results": out}


# --- report ----------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    ds, cfg, res = report["dataset"], report["config"], report["results"]
    k = cfg["k"]
    out = [f"## Sharded collections on Ray: {ds['name']}, n={ds['n']:,}, dim={ds['dim']}, "
           f"metric={ds['metric']}", "",
           f"One local Ray {report['ray_version']} cluster ({report['environment']['cpu_count']} "
           f"CPUs, started in {report['ray_start_s']:.1f} s); index {cfg['index']}, ef "
           f"{cfg['ef']}, k {k}, replicas {cfg['replicas']}; {cfg['rounds']} interleaved rounds. "
           f"Hop = mean single-query latency minus the embedded collection's.", ""]
    head = ["collection", "single q/s", "p50 ms", "p99 ms", "hop ms", f"batch q/s ({cfg['batch_size']}"
            "/call)", f"recall@{k}", "ingest points/s", "seal s", "resident MB per shard"]
    rows = [[m, fmt(r["single_qps"], 0), fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2),
             fmt(r["hop_ms"], 2), fmt(r["batch_qps"], 0), f"{r[f'recall@{k}']:.4f}",
             fmt(r["points_per_s"], 0), fmt(r["seal_s"], 1),
             " / ".join(f"{b / 1e6:.1f}" for b in r["resident_bytes_per_shard"])]
            for m, r in res.items()]
    return "\n".join([*out, md_table(head, rows), ""])


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "single_qps", "single query q/s"),
                           (axes[1], "batch_qps", "batch q/s")):
        ax.bar(list(res), [r[key] for r in res.values()], color="C0")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- CLI -------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p, "N vectors in each collection (default 50000)", 50_000,
                          "distinct queries (default all; they cycle)")
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--shards", type=int_list, default=[1, 2, 4],
                   help="shard counts to compare, comma-separated (default 1,2,4)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--index", default="HNSW16,F32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--single-requests", type=int, default=300,
                   help="single queries per collection over all rounds (300)")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--batch-requests", type=int, default=10,
                   help="batch calls per collection over all rounds (10)")
    p.add_argument("--load-batch", type=int, default=2000)
    p.add_argument("--data-dir", help="parent folder for the temporary data")
    p.add_argument("--out", help="output folder (default bench/results/cluster-<name>)")
    p.add_argument("--name", help="output folder suffix (default: the dataset name)")


def config_from_args(args: argparse.Namespace) -> ClusterBenchConfig:
    return ClusterBenchConfig(
        dataset=args.dataset, limit=args.limit, queries=args.queries, k=args.k, ef=args.ef,
        shards=args.shards, replicas=args.replicas, index=args.index, rounds=args.rounds,
        single_requests=args.single_requests, batch_size=args.batch_size,
        batch_requests=args.batch_requests, load_batch=args.load_batch, data_dir=args.data_dir)


def run_cli(args: argparse.Namespace) -> int:
    return run_report_cli("cluster", lambda: run_cluster_bench(config_from_args(args)), markdown,
                          plot, "throughput.png", args.out, args.name)


def main(argv=None) -> int:
    return module_main("cluster", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
