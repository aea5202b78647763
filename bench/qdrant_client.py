"""qdrant-client against ``quiver.Client``: upsert and query throughput on one ``quiver serve``.

An application that already speaks Qdrant reaches ``quiver serve`` through the real
``qdrant_client.QdrantClient(url=..., prefer_grpc=False)`` (REST, JSON bodies, pydantic
models); Quiver's own ``quiver.Client`` sends binary upserts and ``.npy`` batch searches.
Both clients drive the same server process, started once on 127.0.0.1, from this process,
one call at a time (concurrency 1), timed in interleaved rounds (the engine order rotates:
A B, B A, ...), so a slow spell of this shared machine lands on every client alike.

1. **Upsert** (points/s): each round, each client writes the first ``--upsert-vectors`` rows
   (default N) with their ``pos`` / ``lexname`` payloads into a fresh collection of its own
   (created through that client: Qdrant's ``VectorParams`` + ``hnsw_config m=16``, or
   ``HNSW16,F32``), ``--upsert-batch`` points a call (default 256), waiting for each write
   (``wait=True``). qdrant-client sends both its forms: a ``PointStruct`` list and the
   columnar ``Batch``. Collections are dropped after each round.
2. **Query**: one collection of N points (loaded by ``quiver.Client``, one sealed HNSW
   segment, indexed before timing) answers both clients: single queries
   (``query_points(query=vector, limit=k, search_params=SearchParams(hnsw_ef=ef))`` against
   ``RemoteCollection.search(vector, k, params={"ef": ef})``) and batches of
   ``--batch-size`` queries (``query_batch_points`` against ``search(matrix)``, a ``.npy``
   body answered as ``.npz``): calls/s, queries/s, p50/p99 latency per call, and the CPU
   time of this process (the client) and of the server per call. Recall@k against the
   dataset's ground truth and the share of identical answers check both clients return the
   same hits.

Figures: totals over all rounds (points or queries / summed wall time); per-round figures
are in the JSON. The client and the server share the machine's cores.

    quiver bench-qdrant-client                                   # 20,000 WordNet vectors
    quiver bench-qdrant-client --limit 2000 --requests 300 --upsert-vectors 2000
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .args import add_dataset_arguments
from .common import fmt, load_with_payload, log_stderr, md_table, module_main, run_report_cli
from .metrics import recall_at_k
from .server import ServerProcess
from .timing import ensure_passive_omp, rotated

QUERY_COLLECTION = "bench"
UPSERT_ENGINES = ("qdrant-client PointStruct", "qdrant-client Batch", "quiver.Client")
QUERY_ENGINES = ("qdrant-client", "quiver.Client")


@dataclass
class QdrantClientBenchConfig:
    dataset: str | None = None
    limit: int = 20_000
    """N: vectors in the query collection."""
    queries: int | None = None
    k: int = 10
    ef: int = 64
    upsert_vectors: int | None = None
    """None: N points per client and round."""
    upsert_batch: int = 256
    upsert_rounds: int = 3
    requests: int = 2000
    """Single-query calls per client, over all rounds (queries cycle)."""
    warmup_requests: int = 50
    batch_size: int = 100
    batch_requests: int = 40
    """Batch calls per client, over all rounds."""
    rounds: int = 5
    """Interleaved rounds of the query part."""
    load_batch: int = 1000
    index: str = "HNSW16,F32"
    timeout: float = 300.0
    server_warmup: bool = True
    startup_timeout: float = 900.0
    data_dir: str | None = None
    keep: bool = False
    seed: int = 0


# --- the two clients -------------------------------------------------------------------------


class QdrantSide:
    """The real qdrant-client, REST only."""

    def __init__(self, url: str, timeout: float):
        from qdrant_client import QdrantClient, models

        self.m = models
        self.client = QdrantClient(url=url, prefer_grpc=False, timeout=int(timeout))

    def create(self, name: str, dim: int, distance: str) -> None:
        m = self.m
        self.client.create_collection(
            name, vectors_config=m.VectorParams(size=dim, distance=getattr(m.Distance, distance)),
            hnsw_config=m.HnswConfigDiff(m=16))

    def upsert_points(self, name: str, ids: np.ndarray, xs: np.ndarray, payloads: list) -> None:
        pts = [self.m.PointStruct(id=int(i), vector=v, payload=p)
               for i, v, p in zip(ids.tolist(), xs.tolist(), payloads, strict=True)]
        self.client.upsert(name, points=pts, wait=True)

    def upsert_batch(self, name: str, ids: np.ndarray, xs: np.ndarray, payloads: list) -> None:
        self.client.upsert(name, points=self.m.Batch(ids=ids.tolist(), vectors=xs.tolist(),
                                                     payloads=payloads), wait=True)

    def count(self, name: str) -> int:
        return self.client.count(name, exact=True).count

    def drop(self, name: str) -> None:
        self.client.delete_collection(name)

    def query(self, name: str, v: np.ndarray, k: int, ef: int) -> list[int]:
        res = self.client.query_points(name, query=v.tolist(), limit=k, with_payload=False,
                                       search_params=self.m.SearchParams(hnsw_ef=ef))
        return [p.id for p in res.points]

    def query_batch(self, name: str, q: np.ndarray, k: int, ef: int) -> list[list[int]]:
        params = self.m.SearchParams(hnsw_ef=ef)
        reqs = [self.m.QueryRequest(query=v, limit=k, params=params, with_payload=False)
                for v in q.tolist()]
        return [[p.id for p in r.points] for r in self.client.query_batch_points(name, reqs)]

    def close(self) -> None:
        self.client.close()


class QuiverSide:
    """``quiver.Client``: binary upserts, JSON single searches, ``.npy`` -> ``.npz`` batches."""

    def __init__(self, url: str, timeout: float):
        import quiver

        self.client = quiver.Client(url, timeout=timeout)
        self.cols: dict = {}

    def col(self, name: str):
        if name not in self.cols:
            self.cols[name] = self.client.get_collection(name)
        return self.cols[name]

    def create(self, name: str, dim: int, metric: str, index: str,
               segment_size: int = 50_000) -> None:
        self.cols[name] = self.client.create_collection(name, dim, metric, index,
                                                        segment_size=segment_size)

    def upsert(self, name: str, ids: np.ndarray, xs: np.ndarray, payloads: list) -> None:
        self.col(name).upsert(ids.tolist(), xs, payloads)

    def count(self, name: str) -> int:
        return self.col(name).count()

    def drop(self, name: str) -> None:
        self.client.drop_collection(name)
        self.cols.pop(name, None)

    def query(self, name: str, v: np.ndarray, k: int, ef: int) -> list[int]:
        return [h.id for h in self.col(name).search(v, k, params={"ef": ef})]

    def query_batch(self, name: str, q: np.ndarray, k: int, ef: int) -> list[list[int]]:
        return [[h.id for h in row] for row in self.col(name).search(q, k, params={"ef": ef})]

    def close(self) -> None:
        self.client.close()


# --- timing ----------------------------------------------------------------------------------


@dataclass
class Timed:
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = 0.0
    calls: int = 0
    latencies: list | None = None

    def __post_init__(self):
        self.latencies = self.latencies or []


def timed_calls(fn: Callable[[int], object], n: int, acc: Timed, server: ServerProcess,
                out: list | None = None) -> None:
    """Call ``fn(0..n-1)`` one after another; per-call wall time, and the client's (this
    process) and the server's CPU time over the whole run, added to ``acc``."""
    s0 = server.cpu()
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        r = fn(i)
        acc.latencies.append(time.perf_counter() - t)
        if out is not None:
            out.append(r)
    acc.wall_s += time.perf_counter() - t0
    acc.client_cpu_s += time.process_time() - c0
    s1 = server.cpu()
    acc.server_cpu_s = None if acc.server_cpu_s is None or s0 is None or s1 is None \
        else acc.server_cpu_s + (s1 - s0)
    acc.calls += n


def _summary(acc: Timed, items_per_call: float, unit: str) -> dict:
    lat = np.asarray(acc.latencies) * 1e3
    total = acc.calls * items_per_call
    return {"calls": acc.calls, f"{unit}_per_call": items_per_call,
            f"{unit}_per_s": total / acc.wall_s, "calls_per_s": acc.calls / acc.wall_s,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(lat.mean()),
            "client_cpu_ms_per_call": acc.client_cpu_s / acc.calls * 1e3,
            "server_cpu_ms_per_call": (None if acc.server_cpu_s is None
                                       else acc.server_cpu_s / acc.calls * 1e3)}


def _split(n: int, parts: int) -> list[range]:
    """0..n-1 in ``parts`` consecutive ranges (sizes differ by at most one)."""
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in itertools.pairwise(edges)]


# --- run -------------------------------------------------------------------------------------


def run_qdrant_client_bench(cfg: QdrantClientBenchConfig,
                            log: Callable[[str], None] | None = None) -> dict:
    log = log or log_stderr
    ensure_passive_omp()
    if cfg.requests < 1 or cfg.batch_requests < 1 or cfg.rounds < 1 or cfg.upsert_rounds < 1 \
            or cfg.upsert_batch < 1 or cfg.batch_size < 1:
        raise ValueError("requests, batch sizes and rounds must be positive")
    t_start = time.perf_counter()
    ds, _ = load_with_payload(cfg.dataset, cfg.limit, cfg.queries, cfg.seed)
    log(f"dataset {ds.name}: n={ds.n} dim={ds.dim} nq={ds.test.shape[0]} metric={ds.metric}")
    if ds.metric not in ("cosine", "ip", "l2"):
        raise ValueError(f"metric {ds.metric}: no Qdrant distance for it")
    root = Path(tempfile.mkdtemp(prefix="quiver-bench-qdrant-client-", dir=cfg.data_dir))
    try:
        return _run(cfg, ds, root, log, t_start)
    finally:
        if cfg.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _run(cfg: QdrantClientBenchConfig, ds, root: Path, log, t_start: float) -> dict:
    import importlib.metadata as md

    n, dim, q = ds.n, ds.dim, ds.test
    nq = q.shape[0]
    distance = {"cosine": "COSINE", "ip": "DOT", "l2": "EUCLID"}[ds.metric]
    m_up = min(cfg.upsert_vectors or n, n)
    pl = [{"pos": int(p), "lexname": int(x)} for p, x in
          zip(ds.payload["pos"].tolist(), ds.payload["lexname"].tolist(), strict=True)]
    server = ServerProcess(root / "data", root / "server.log", cfg.server_warmup)
    report: dict = {"benchmark": "qdrant-client", "dataset": ds.describe(),
                    "config": asdict(cfg) | {"upsert_vectors_used": m_up},
                    "qdrant_client_version": md.version("qdrant-client"),
                    "server": {"cmd": " ".join(server.cmd), "pid": server.pid}}
    qc = qv = None
    try:
        report["server"]["ready_s"] = server.wait_ready(cfg.startup_timeout)
        log(f"server pid {server.pid} on {server.url} ready in {report['server']['ready_s']:.1f} s")
        qc, qv = QdrantSide(server.url, cfg.timeout), QuiverSide(server.url, cfg.timeout)

        # --- upsert ----------------------------------------------------------------------
        ids = np.arange(m_up, dtype=np.int64)
        xs = np.ascontiguousarray(ds.train[:m_up], np.float32)
        up_pl = pl[:m_up]
        starts = list(range(0, m_up, cfg.upsert_batch))
        calls = {"qdrant-client PointStruct": (qc.create, qc.upsert_points, qc.count, qc.drop),
                 "qdrant-client Batch": (qc.create, qc.upsert_batch, qc.count, qc.drop),
                 "quiver.Client": (None, qv.upsert, qv.count, qv.drop)}
        up_acc = {e: Timed() for e in UPSERT_ENGINES}
        up_rounds: dict[str, list[float]] = {e: [] for e in UPSERT_ENGINES}
        for r in range(cfg.upsert_rounds):
            for e in rotated(UPSERT_ENGINES, r):
                create, upsert, count, drop = calls[e]
                name = f"upsert_{r}_{e.split()[-1].replace('.', '_').lower()}"
                if create is None:
                    qv.create(name, dim, ds.metric, cfg.index)
                else:
                    create(name, dim, distance)
                # an untimed point first: a fresh collection's first write creates its WAL
                upsert(name, np.array([1 << 40]), xs[:1], [{}])
                before = up_acc[e].wall_s

                def one(j, upsert=upsert, name=name):
                    s = starts[j]
                    return upsert(name, ids[s : s + cfg.upsert_batch],
                                  xs[s : s + cfg.upsert_batch], up_pl[s : s + cfg.upsert_batch])

                timed_calls(one, len(starts), up_acc[e], server)
                up_rounds[e].append(m_up / (up_acc[e].wall_s - before))
                got = count(name) - 1
                if got != m_up:
                    raise RuntimeError(f"{e}: {got} points after upserting {m_up}")
                drop(name)
                log(f"upsert round {r} {e}: {up_rounds[e][-1]:,.0f} points/s")
        up = {}
        for e in UPSERT_ENGINES:
            up[e] = _summary(up_acc[e], m_up / len(starts), "points")
            up[e]["points_per_s_rounds"] = up_rounds[e]
        for e in UPSERT_ENGINES[:2]:
            up[f"quiver.Client_vs_{e}"] = (up["quiver.Client"]["points_per_s"]
                                           / up[e]["points_per_s"])
        report["upsert"] = up

        # --- the query collection --------------------------------------------------------
        qv.create(QUERY_COLLECTION, dim, ds.metric, cfg.index, segment_size=n)
        t0 = time.perf_counter()
        all_ids = np.arange(n, dtype=np.int64)
        for s in range(0, n, cfg.load_batch):
            qv.upsert(QUERY_COLLECTION, all_ids[s : s + cfg.load_batch],
                      ds.train[s : s + cfg.load_batch], pl[s : s + cfg.load_batch])
        qv.col(QUERY_COLLECTION).wait_indexed(timeout=24 * 3600)
        info = qv.col(QUERY_COLLECTION).info()
        report["load"] = {"vectors": n, "loaded_and_indexed_s": time.perf_counter() - t0,
                          "points": info["points"], "indexed_points": info["indexed_points"],
                          "segments": [(g["points"], g["sealed"]) for g in info["segments"]]}
        log(f"query collection: {n} points loaded and indexed in "
            f"{report['load']['loaded_and_indexed_s']:.1f} s: {report['load']['segments']}")

        # --- queries: single and batch, interleaved --------------------------------------
        sides = {"qdrant-client": qc, "quiver.Client": qv}
        for side in sides.values():  # untimed: connections, the client's first-call costs
            for i in range(cfg.warmup_requests):
                side.query(QUERY_COLLECTION, q[i % nq], cfg.k, cfg.ef)
            side.query_batch(QUERY_COLLECTION, q[: min(cfg.batch_size, nq)], cfg.k, cfg.ef)
        b = min(cfg.batch_size, nq)
        bstarts = [(j * b) % max(1, nq - b + 1) for j in range(cfg.batch_requests)]
        single = {e: Timed() for e in QUERY_ENGINES}
        batch = {e: Timed() for e in QUERY_ENGINES}
        answers: dict[str, list] = {e: [] for e in QUERY_ENGINES}
        batch_first: dict[str, list] = {}
        s_parts, b_parts = _split(cfg.requests, cfg.rounds), _split(cfg.batch_requests, cfg.rounds)
        for r in range(cfg.rounds):
            for e in rotated(QUERY_ENGINES, r):
                side = sides[e]
                part = s_parts[r]
                timed_calls(lambda i, side=side, part=part: side.query(
                    QUERY_COLLECTION, q[(part.start + i) % nq], cfg.k, cfg.ef),
                    len(part), single[e], server, answers[e])
                bpart = b_parts[r]
                got: list = []
                timed_calls(lambda j, side=side, bpart=bpart: side.query_batch(
                    QUERY_COLLECTION, q[bstarts[bpart.start + j] : bstarts[bpart.start + j] + b],
                    cfg.k, cfg.ef), len(bpart), batch[e], server, got)
                if r == 0 and got:
                    batch_first[e] = got[0]
            log(f"query round {r}: " + ", ".join(
                f"{e} {single[e].calls / single[e].wall_s:,.0f} calls/s single, "
                f"{batch[e].calls * b / batch[e].wall_s:,.0f} queries/s batch"
                for e in QUERY_ENGINES))
        qres: dict = {"single": {}, "batch": {}}
        for e in QUERY_ENGINES:
            qres["single"][e] = _summary(single[e], 1, "queries")
            qres["batch"][e] = _summary(batch[e], b, "queries")
        for kind in ("single", "batch"):
            qres[kind]["quiver.Client_vs_qdrant-client"] = (
                qres[kind]["quiver.Client"]["queries_per_s"]
                / qres[kind]["qdrant-client"]["queries_per_s"])
        report["query"] = qres

        # --- checks: the same hits, and recall -------------------------------------------
        m = min(nq, cfg.requests)
        truth = ds.neighbors[:m, : cfg.k]
        mats = {}
        for e in QUERY_ENGINES:
            mat = np.full((m, cfg.k), -1, np.int64)
            for i, row in enumerate(answers[e][:m]):
                mat[i, : len(row)] = row[: cfg.k]
            mats[e] = mat
        report["checks"] = {
            **{f"recall_{e}": recall_at_k(mats[e], truth, cfg.k) for e in QUERY_ENGINES},
            "single_identical": float((mats["qdrant-client"] == mats["quiver.Client"])
                                      .all(axis=1).mean()),
            "batch_first_identical": batch_first.get("qdrant-client")
            == batch_first.get("quiver.Client")}
        report["server"]["log_tail"] = server.log_tail(1500)
    finally:
        for side in (qc, qv):
            if side is not None:
                side.close()
        report["server"]["exit_code"] = server.stop()
    from .runner import environment

    report["environment"] = environment()
    report["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    report["wall_s"] = round(time.perf_counter() - t_start, 2)
    return report


# --- report ----------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    ds, cfg, env, ch = report["dataset"], report["config"], report["environment"], report["checks"]
    up, qr = report["upsert"], report["query"]
    out = [f"## qdrant-client vs quiver.Client: {ds['name']}, n={ds['n']:,}, dim={ds['dim']}, "
           f"metric={ds['metric']}", "",
           f"One `quiver serve` (`{report['server']['cmd']}`, ready in "
           f"{report['server']['ready_s']:.1f} s); qdrant-client {report['qdrant_client_version']} "
           f"(`QdrantClient(url=..., prefer_grpc=False)`) and `quiver.Client(url)` in one process, "
           f"one call at a time, interleaved rounds (order rotating); {env['cpu_count']} CPUs "
           f"shared by server and client. Index {cfg['index']}.", "",
           f"### Upsert: {cfg['upsert_vectors_used']:,} points with payload per client and round, "
           f"{cfg['upsert_batch']} a call, `wait=True`, {cfg['upsert_rounds']} rounds", ""]
    head = ["client", "body", "points/s", "best round points/s", "p50 ms/call", "p99 ms/call",
            "client CPU ms/call", "server CPU ms/call"]
    body = {"qdrant-client PointStruct": "JSON `points`", "qdrant-client Batch": "JSON `batch`",
            "quiver.Client": "binary frame"}
    rows = [[e, body[e], fmt(up[e]["points_per_s"], 0), fmt(max(up[e]["points_per_s_rounds"]), 0),
             fmt(up[e]["p50_ms"], 2), fmt(up[e]["p99_ms"], 2), fmt(up[e]["client_cpu_ms_per_call"], 2),
             fmt(up[e]["server_cpu_ms_per_call"], 2)] for e in UPSERT_ENGINES]
    ratios = ", ".join(f"{up[f'quiver.Client_vs_{e}']:.2f}x {e}" for e in UPSERT_ENGINES[:2])
    out += [md_table(head, rows), f"quiver.Client points/s: {ratios}.", "",
            f"### Query: k={cfg['k']}, hnsw_ef={cfg['ef']}, {report['load']['points']:,} points in "
            f"one sealed HNSW segment, {cfg['rounds']} rounds", ""]
    head = ["call", "client", "calls", "queries/call", "queries/s", "p50 ms/call", "p99 ms/call",
            "client CPU ms/call", "server CPU ms/call"]
    what = {("single", "qdrant-client"): "`query_points`",
            ("single", "quiver.Client"): "`search(vector)` (JSON)",
            ("batch", "qdrant-client"): "`query_batch_points`",
            ("batch", "quiver.Client"): "`search(matrix)` (.npy -> .npz)"}
    rows = []
    for kind in ("single", "batch"):
        for e in QUERY_ENGINES:
            r = qr[kind][e]
            rows.append([what[kind, e], e, fmt(r["calls"]), r["queries_per_call"],
                         fmt(r["queries_per_s"], 0), fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2),
                         fmt(r["client_cpu_ms_per_call"], 3), fmt(r["server_cpu_ms_per_call"], 3)])
    out += [md_table(head, rows),
            f"quiver.Client / qdrant-client queries/s: single "
            f"{qr['single']['quiver.Client_vs_qdrant-client']:.2f}x, batch "
            f"{qr['batch']['quiver.Client_vs_qdrant-client']:.2f}x. Recall@{cfg['k']}: "
            f"qdrant-client {ch['recall_qdrant-client']:.4f}, quiver.Client "
            f"{ch['recall_quiver.Client']:.4f}; identical single answers "
            f"{ch['single_identical']:.1%}; first batch identical: {ch['batch_first_identical']}. "
            f"Client CPU is this process's CPU time per call (building and parsing the bodies "
            f"and models); server CPU is the server process's utime+stime per call.", ""]
    return "\n".join(out)


def plot(report: dict, path) -> None:
    """points/s and queries/s of each client, as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    up = report["upsert"]
    axes[0].bar([e.replace("qdrant-client ", "qdrant\n") for e in UPSERT_ENGINES],
                [up[e]["points_per_s"] for e in UPSERT_ENGINES], color=["C0", "C0", "C1"])
    axes[0].set_title("upsert points/s")
    for ax, kind in ((axes[1], "single"), (axes[2], "batch")):
        ax.bar(QUERY_ENGINES, [report["query"][kind][e]["queries_per_s"] for e in QUERY_ENGINES],
               color=["C0", "C1"])
        ax.set_title(f"{kind} query: queries/s")
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"qdrant-client vs quiver.Client on quiver serve: {report['dataset']['name']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- CLI -------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p, "N vectors in the query collection (default 20000)", 20_000,
                          "distinct queries (default all; they cycle)")
    p.add_argument("--ef", type=int, default=64, help="hnsw_ef of every query (default 64)")
    p.add_argument("--upsert-vectors", type=int,
                   help="points each client upserts per round (default N)")
    p.add_argument("--upsert-batch", type=int, default=256, help="points per upsert call (256)")
    p.add_argument("--upsert-rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=2000,
                   help="single-query calls per client over all rounds (default 2000)")
    p.add_argument("--warmup-requests", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=100, help="queries per batch call (100)")
    p.add_argument("--batch-requests", type=int, default=40,
                   help="batch calls per client over all rounds (default 40)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the query part")
    p.add_argument("--load-batch", type=int, default=1000)
    p.add_argument("--index", default="HNSW16,F32")
    p.add_argument("--no-server-warmup", action="store_true",
                   help="start the server with --no-warmup")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--data-dir", help="parent folder for the temporary server data")
    p.add_argument("--keep", action="store_true", help="keep the data folder and server log")
    p.add_argument("--out", help="output folder (default bench/results/qdrant-client-<name>)")
    p.add_argument("--name", help="output folder suffix (default: the dataset name)")


def config_from_args(args: argparse.Namespace) -> QdrantClientBenchConfig:
    return QdrantClientBenchConfig(
        dataset=args.dataset, limit=args.limit, queries=args.queries, k=args.k, ef=args.ef,
        upsert_vectors=args.upsert_vectors, upsert_batch=args.upsert_batch,
        upsert_rounds=args.upsert_rounds, requests=args.requests,
        warmup_requests=args.warmup_requests, batch_size=args.batch_size,
        batch_requests=args.batch_requests, rounds=args.rounds, load_batch=args.load_batch,
        index=args.index, server_warmup=not args.no_server_warmup,
        startup_timeout=args.startup_timeout, data_dir=args.data_dir, keep=args.keep)


def run_cli(args: argparse.Namespace) -> int:
    return run_report_cli("qdrant-client", lambda: run_qdrant_client_bench(config_from_args(args)),
                          markdown, plot, "throughput.png", args.out, args.name)


def main(argv=None) -> int:
    return module_main("qdrant_client", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
