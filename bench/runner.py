"""Run Quiver index specs and peers on one dataset with the same harness, into one report."""

from __future__ import annotations

import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .datasets import DEFAULT_DENSE_FILE, Dataset, find_data_file, load_dataset
from .engines import Engine, QuiverEngine
from .metrics import recall_at_k
from .peers import PeerUnavailableError, make_peer
from .report import format_params
from .timing import batch_qps, max_threads, single_query_latency, thread_limit, timed

DEFAULT_EFS = (16, 32, 64, 128, 256)
DEFAULT_NPROBES = (1, 4, 16, 64)


@dataclass
class BenchConfig:
    """What to run; ``threads`` is 'both', '1' or 'all' (which QPS columns to measure)."""

    dataset: str = "synthetic"
    indexes: list[str] = field(default_factory=lambda: ["Flat"])
    peers: list[str] = field(default_factory=list)
    efs: list[int] = field(default_factory=lambda: list(DEFAULT_EFS))
    nprobes: list[int] = field(default_factory=lambda: list(DEFAULT_NPROBES))
    k: int = 10
    limit: int | None = None
    queries: int | None = None
    latency_queries: int = 200
    reps: int = 3
    threads: str = "both"

    @property
    def latency_threads(self) -> int:
        return max_threads() if self.threads == "all" else 1


def default_dataset() -> str:
    """The real WordNet file when present (../shared/data or $QUIVER_DATA_DIR), else synthetic."""
    p = find_data_file(DEFAULT_DENSE_FILE)
    return str(p) if p else "synthetic:20000x128"


def environment() -> dict:
    """What the numbers depend on, recorded next to them."""
    import numba

    versions = {"numpy": np.__version__, "numba": numba.__version__}
    for mod in ("faiss", "hnswlib", "usearch"):
        if mod in sys.modules:
            versions[mod] = getattr(sys.modules[mod], "__version__", "?")
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "threads_all": max_threads(), "numba_threading_layer": _threading_layer(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "versions": versions}
    if "faiss" in sys.modules:
        env["faiss_blas_threshold"] = int(sys.modules["faiss"].cvar.distance_compute_blas_threshold)
    return env


def _threading_layer() -> str | None:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


@dataclass
class Row:
    engine: str
    index: str
    params: dict
    recall: float
    qps_1: float | None
    qps_all: float | None
    p50_ms: float
    p99_ms: float
    build_s: float
    bytes_per_vector: float


def measure(eng: Engine, ds: Dataset, cfg: BenchConfig, log: Callable[[str], None],
            failed: list[dict] | None = None) -> list[Row]:
    """Build once, then for every sweep point: recall, batch QPS per thread setting, latency.

    A point that raises (say ef below what an index accepts) is logged into ``failed`` and the
    sweep goes on."""
    build_threads = 1 if cfg.threads == "1" else "all"
    with thread_limit(build_threads, eng.set_threads):
        eng.warmup(ds.train, ds.test)
        _, build_s = timed(lambda: eng.build(ds.train))
    bpv = eng.memory() / max(1, ds.n)
    log(f"  built in {build_s:.2f} s, {bpv:.1f} bytes/vector")
    q, lat_q = ds.test, ds.test[: cfg.latency_queries]
    rows = []
    for params in eng.sweep({"ef": cfg.efs, "nprobe": cfg.nprobes}):
        def search(batch, params=params):
            return eng.search(batch, cfg.k, **params)

        try:
            recall, qps, lat = _measure_point(eng, search, q, lat_q, ds, cfg)
        except Exception as exc:
            log(f"  {format_params(params)}: failed: {type(exc).__name__}: {exc}")
            if failed is not None:
                failed.append({"name": f"{eng.engine} {eng.index} {format_params(params)}",
                               "reason": f"{type(exc).__name__}: {exc}"})
            continue
        row = Row(eng.engine, eng.index, params, recall, qps["1"], qps["all"], lat.p50_ms,
                  lat.p99_ms, build_s, bpv)
        log(f"  {format_params(params)}: recall@{cfg.k}={recall:.4f} qps1={_q(row.qps_1)} "
            f"qps_all={_q(row.qps_all)} p50={lat.p50_ms:.3f} ms")
        rows.append(row)
    return rows


def _measure_point(eng: Engine, search, q, lat_q, ds: Dataset, cfg: BenchConfig):
    qps: dict[str, float | None] = {"1": None, "all": None}
    recall = None
    for t in (["all", "1"] if cfg.threads == "both" else [cfg.threads]):
        with thread_limit(t, eng.set_threads):
            if recall is None:  # the first call also warms JIT compilation and caches
                recall = recall_at_k(search(q), ds.neighbors, cfg.k)
            qps[t] = batch_qps(search, q, cfg.reps)
    with thread_limit(cfg.latency_threads, eng.set_threads):
        search(lat_q[:1])  # the one-query path may be a different kernel: compile it first
        lat = single_query_latency(search, lat_q, cfg.reps)
    return recall, qps, lat


def _q(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _engines(cfg: BenchConfig, ds: Dataset, skipped: list[dict], log):
    """Quiver specs first, then peers; a peer that is missing is skipped with its reason."""
    for spec in cfg.indexes:
        yield QuiverEngine(spec, ds.dim, ds.metric)
    for name in cfg.peers:
        try:
            yield make_peer(name, ds.dim, ds.metric)
        except PeerUnavailableError as exc:
            log(f"skipping peer {name}: {exc}")
            skipped.append({"name": name, "reason": str(exc)})


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] | None = None,
                  dataset: Dataset | None = None) -> dict:
    """Run everything in ``cfg``; returns the report dict (see ``report.write_report``)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if cfg.k <= 0:
        raise ValueError("k must be positive")
    t0 = time.perf_counter()
    ds = dataset or load_dataset(cfg.dataset, limit=cfg.limit, queries=cfg.queries)
    if cfg.queries is not None and ds.nq > cfg.queries:
        ds.test, ds.neighbors = ds.test[: cfg.queries], ds.neighbors[: cfg.queries]
    if ds.neighbors.shape[1] < cfg.k:
        raise ValueError(f"k={cfg.k} exceeds the {ds.neighbors.shape[1]} true neighbors stored")
    log(f"dataset {ds.name}: n={ds.n} dim={ds.dim} nq={ds.nq} metric={ds.metric} "
        f"(loaded in {time.perf_counter() - t0:.1f} s)")
    results: list[dict] = []
    skipped: list[dict] = []
    for eng in _engines(cfg, ds, skipped, log):
        log(f"{eng.engine} {eng.index}")
        try:
            results += [asdict(r) for r in measure(eng, ds, cfg, log, skipped)]
        except Exception as exc:  # one broken engine must not lose the others' numbers
            log(f"  failed: {type(exc).__name__}: {exc}")
            skipped.append({"name": f"{eng.engine} {eng.index}",
                            "reason": f"{type(exc).__name__}: {exc}"})
        finally:
            eng.close()
            gc.collect()
    config = asdict(cfg) | {"latency_threads": cfg.latency_threads}
    return {"dataset": ds.describe(), "config": config, "environment": environment(),
            "results": results, "skipped": skipped,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "wall_s": round(time.perf_counter() - t0, 2)}


def default_out_dir(dataset_name: str, name: str | None = None) -> Path:
    """bench/results/<dataset>-<name or timestamp>/ (cwd/bench-results if bench/ is read-only)."""
    base = Path(__file__).resolve().parent / "results"
    if not os.access(base if base.exists() else base.parent, os.W_OK):
        base = Path.cwd() / "bench-results"
    return base / f"{dataset_name}-{name or time.strftime('%Y%m%d-%H%M%S')}"
