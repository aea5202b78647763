"""Run Quiver index specs and peers on one dataset with the same harness, into one report.

Engines timed one after another on this shared, noisy 2-core box disagree by 25-40%, so
``quiver bench`` times them interleaved, as ``bench/ab.py`` does for two builds of Quiver:

1. every engine is built (each build timed on its own; its memory read right after it);
2. recall is measured once per (engine, sweep point); that call also warms JIT code and caches;
3. ``rounds`` rounds follow. A round walks the sweep *positions* (the i-th ef of an HNSW, the
   i-th nprobe of an IVF, the only point of a Flat: an engine with fewer points sits out the
   later positions) and at each position takes each measurement (batch QPS per thread
   setting, best of ``reps`` calls; then one single-query latency pass) for every engine back
   to back. The engine order rotates each round (A B C, B C A, C A B: ``timing.rotated``).

Positions rather than parameter values are interleaved because the knobs differ between
engines; what makes a ratio trustworthy is that its two sides are timed seconds apart.
Per (engine, point) the best QPS over rounds is kept (noise only adds time) next to every
round's value, and each query's best latency over rounds.

All indexes are alive at once. When a generous estimate of their memory exceeds 60% of RAM
(``MEMORY_SHARE``) the run falls back to one engine at a time (same rounds, not interleaved),
logs it and marks the report "sequential: ratios not trustworthy".
"""

from __future__ import annotations

import gc
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

import numpy as np

from .common import results_dir
from .datasets import DEFAULT_DENSE_FILE, Dataset, find_data_file, load_dataset
from .engines import Engine, QuiverEngine
from .metrics import at_target, recall_at_k
from .peers import PeerUnavailableError, make_peer
from .report import format_params
from .timing import Latency, max_threads, rotated, thread_limit

DEFAULT_EFS = (16, 32, 64, 128, 256)
DEFAULT_NPROBES = (1, 4, 16, 64)
DEFAULT_ROUNDS = 3
TARGETS = (0.90, 0.95, 0.99)
MEMORY_SHARE = 0.6
"""Interleave only while all indexes are estimated to fit in this share of RAM."""

Log = Callable[[str], None]


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
    rounds: int = DEFAULT_ROUNDS
    targets: list[float] = field(default_factory=lambda: list(TARGETS))

    @property
    def latency_threads(self) -> int:
        return max_threads() if self.threads == "all" else 1

    @property
    def qps_threads(self) -> list[str]:
        return ["all", "1"] if self.threads == "both" else [self.threads]

    def validate(self) -> None:
        if self.k <= 0:
            raise ValueError("k must be positive")
        if self.rounds <= 0 or self.reps <= 0:
            raise ValueError("--rounds and --reps must be positive")
        if self.latency_queries < 0:
            raise ValueError("--latency-queries must not be negative")


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
    """One (engine, sweep point): best over rounds, and every round's value (``*_rounds``)."""

    engine: str
    index: str
    params: dict
    recall: float
    qps_1: float | None
    qps_all: float | None
    p50_ms: float | None
    p99_ms: float | None
    build_s: float
    bytes_per_vector: float
    label: str = ""
    qps_1_rounds: list[float] = field(default_factory=list)
    qps_all_rounds: list[float] = field(default_factory=list)
    p50_ms_rounds: list[float] = field(default_factory=list)


@dataclass
class _Point:
    params: dict
    recall: float
    qps: dict[str, list[float]]
    lat_ms: np.ndarray | None = None  # each query's best so far
    p50_rounds: list[float] = field(default_factory=list)
    failed: bool = False


@dataclass
class _Built:
    eng: Engine
    label: str
    build_s: float
    bpv: float
    points: list[_Point] = field(default_factory=list)


def schedule(n_points: Sequence[int], rounds: int,
             kinds: Sequence[str]) -> Iterator[tuple[int, int, int, str]]:
    """(round, engine, position, kind) in timing order: round > position > kind > engine, the
    engines in ``rotated`` order, an engine without a point at a position skipped there."""
    for r in range(rounds):
        order = rotated(range(len(n_points)), r)
        for pos in range(max(n_points, default=0)):
            for kind in kinds:
                for e in order:
                    if pos < n_points[e]:
                        yield r, e, pos, kind


def _searcher(eng: Engine, k: int, params: dict) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: eng.search(batch, k, **params)


def _failure(failed: list[dict] | None, log: Log, name: str, exc: Exception) -> None:
    reason = f"{type(exc).__name__}: {exc}"
    log(f"  {name}: failed: {reason}")
    if failed is not None:
        failed.append({"name": name, "reason": reason})


def _build(eng: Engine, label: str, ds: Dataset, cfg: BenchConfig, log: Log) -> _Built:
    build_threads = 1 if cfg.threads == "1" else "all"
    with thread_limit(build_threads, eng.set_threads):
        eng.warmup(ds.train, ds.test)
        build_s = eng.timed_build(ds.train)
    bpv = eng.memory() / max(1, ds.n)
    log(f"{label}: built in {build_s:.2f} s, {bpv:.1f} bytes/vector")
    return _Built(eng, label, build_s, bpv)


def _calibrate(b: _Built, ds: Dataset, cfg: BenchConfig, log: Log,
               failed: list[dict] | None) -> None:
    """Recall per sweep point, untimed; the same calls compile and warm the batch path and,
    with one query, the single-query path (which may be another kernel)."""
    for params in b.eng.sweep({"ef": cfg.efs, "nprobe": cfg.nprobes}):
        search = _searcher(b.eng, cfg.k, params)
        try:
            with thread_limit(cfg.qps_threads[0], b.eng.set_threads):
                recall = recall_at_k(search(ds.test), ds.neighbors, cfg.k)
            if cfg.latency_queries:
                with thread_limit(cfg.latency_threads, b.eng.set_threads):
                    search(ds.test[:1])
        except Exception as exc:  # say ef below what an index accepts: the sweep goes on
            _failure(failed, log, f"{b.label} {format_params(params)}", exc)
            continue
        b.points.append(_Point(params, recall, {t: [] for t in cfg.qps_threads}))
    log(f"  recall@{cfg.k} " + " ".join(f"{format_params(p.params)}:{p.recall:.4f}"
                                        for p in b.points))


def _time_point(b: _Built, p: _Point, kind: str, ds: Dataset, cfg: BenchConfig) -> None:
    if kind == "latency":
        with thread_limit(cfg.latency_threads, b.eng.set_threads):
            ms = b.eng.latency_ms(ds.test[: cfg.latency_queries], cfg.k, p.params)
        p.lat_ms = ms if p.lat_ms is None else np.minimum(p.lat_ms, ms)
        p.p50_rounds.append(float(np.percentile(ms, 50)))
    else:
        with thread_limit(kind, b.eng.set_threads):
            p.qps[kind].append(b.eng.batch_qps(ds.test, cfg.k, p.params, cfg.reps))


def _rows(b: _Built) -> list[Row]:
    rows = []
    for p in b.points:
        if p.failed:
            continue
        lat = Latency.of(p.lat_ms) if p.lat_ms is not None else None
        q1, qa = p.qps.get("1", []), p.qps.get("all", [])
        rows.append(Row(b.eng.engine, b.eng.index, p.params, p.recall,
                        max(q1) if q1 else None, max(qa) if qa else None,
                        lat.p50_ms if lat else None, lat.p99_ms if lat else None,
                        b.build_s, b.bpv, b.label, q1, qa, p.p50_rounds))
    return rows


def labels_for(engines: Sequence[Engine]) -> list[str]:
    """'engine index', with '#2', '#3' appended to repeats so every engine keeps its rows."""
    seen: dict[str, int] = {}
    out = []
    for eng in engines:
        name = f"{eng.engine} {eng.index}"
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def measure_engines(engines: Sequence[Engine], ds: Dataset, cfg: BenchConfig, log: Log,
                    failed: list[dict] | None = None,
                    labels: Sequence[str] | None = None) -> tuple[list[Row], list[list[str]]]:
    """Build all ``engines``, take recall, then time them in interleaved rounds (module doc).

    Returns (rows in engine then sweep order, each round's engine order). An engine whose
    build fails, or a point that raises, is logged into ``failed`` and the rest go on. The
    caller closes the engines."""
    labels = list(labels or labels_for(engines))
    built: list[_Built] = []
    for eng, label in zip(engines, labels, strict=True):
        try:
            b = _build(eng, label, ds, cfg, log)
            _calibrate(b, ds, cfg, log, failed)
        except Exception as exc:  # one broken engine must not lose the others' numbers
            _failure(failed, log, label, exc)
            eng.close()
            continue
        built.append(b)
    kinds = cfg.qps_threads + (["latency"] if cfg.latency_queries else [])
    n_points = [len(b.points) for b in built]
    orders = [[built[e].label for e in rotated(range(len(built)), r)] for r in range(cfg.rounds)]
    gc.collect()
    gc.disable()  # a collection inside one engine's timing would be charged to it alone
    try:
        t_round, last = time.perf_counter(), 0
        for r, e, pos, kind in schedule(n_points, cfg.rounds, kinds):
            if r != last:
                log(f"round {last + 1}/{cfg.rounds} ({', '.join(orders[last])}): "
                    f"{time.perf_counter() - t_round:.1f} s")
                t_round, last = time.perf_counter(), r
            b = built[e]
            p = b.points[pos]
            if p.failed:
                continue
            try:
                _time_point(b, p, kind, ds, cfg)
            except Exception as exc:
                p.failed = True
                _failure(failed, log, f"{b.label} {format_params(p.params)}", exc)
        if built:
            log(f"round {last + 1}/{cfg.rounds} ({', '.join(orders[last])}): "
                f"{time.perf_counter() - t_round:.1f} s")
    finally:
        gc.enable()
    rows = [row for b in built for row in _rows(b)]
    for row in rows:
        log(f"  {row.label} {format_params(row.params)}: recall@{cfg.k}={row.recall:.4f} "
            f"qps1={_q(row.qps_1)} qps_all={_q(row.qps_all)} p50={_ms(row.p50_ms)} ms")
    return rows, orders


def measure(eng: Engine, ds: Dataset, cfg: BenchConfig, log: Log,
            failed: list[dict] | None = None) -> list[Row]:
    """One engine alone: its rounds are not interleaved with anything."""
    return measure_engines([eng], ds, cfg, log, failed)[0]


def _q(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _engines(cfg: BenchConfig, ds: Dataset, skipped: list[dict], log: Log) -> Iterator[Engine]:
    """Quiver specs first, then peers; a peer that is missing is skipped with its reason."""
    for spec in cfg.indexes:
        eng = QuiverEngine(spec, ds.dim, ds.metric)
        eng.learn = ds.learn
        yield eng
    for name in cfg.peers:
        try:
            eng = make_peer(name, ds.dim, ds.metric)
            eng.learn = ds.learn
            yield eng
        except PeerUnavailableError as exc:
            log(f"skipping peer {name}: {exc}")
            skipped.append({"name": name, "reason": str(exc)})


def estimate_memory(ds: Dataset, n_engines: int) -> int:
    """A generous guess at all indexes alive at once: each holds about twice the float32 data
    (its copy of the vectors, or a normalized one, plus graph, lists or codes)."""
    return int(n_engines * 2 * ds.train.nbytes)


def memory_budget() -> int | None:
    """``MEMORY_SHARE`` of physical RAM, None where the OS does not say."""
    try:
        return int(MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def summarize(results: Sequence[dict], targets: Sequence[float],
              threads: Sequence[str]) -> dict:
    """Per engine: build time, bytes/vector and, per thread setting and recall target, QPS
    (``metrics.at_target`` over its points sorted by recall) and its ratio to the reference,
    the first Quiver engine (else the first engine). ``ratio``: best-over-rounds QPS over the
    reference's; ``paired_median``: the median over rounds of the ratio within each round,
    whose two sides were timed back to back; ``bound``: one side is a lower bound."""
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["label"], []).append(r)
    for pts in by.values():
        pts.sort(key=lambda r: r["recall"])
    ref = next((lab for lab, pts in by.items() if pts[0]["engine"] == "quiver"),
               next(iter(by), None))

    def at(pts: list[dict], key: str, target: float, rnd: int | None = None) -> dict:
        if rnd is not None:
            vals = [p[f"{key}_rounds"] for p in pts]
            if any(len(v) <= rnd for v in vals):
                return {"qps": None, "status": "not reached", "between": []}
            pts = [p | {key: v[rnd]} for p, v in zip(pts, vals, strict=True)]
        return at_target(pts, target, qps=key, param="params")

    engines = []
    for lab, pts in by.items():
        entry = {"label": lab, "engine": pts[0]["engine"], "index": pts[0]["index"],
                 "build_s": pts[0]["build_s"], "bytes_per_vector": pts[0]["bytes_per_vector"],
                 "at_target": {}, "ratio": {}}
        for t in threads:
            key = f"qps_{t}"
            entry["at_target"][t] = {str(x): at(pts, key, x) for x in targets}
            entry["ratio"][t] = {}
            for x in targets:
                mine, theirs = entry["at_target"][t][str(x)], at(by[ref], key, x)
                if mine["qps"] is None or not theirs["qps"]:
                    entry["ratio"][t][str(x)] = None
                    continue
                rounds = min(len(p[f"{key}_rounds"]) for p in pts + by[ref])
                paired = [a["qps"] / b["qps"] for a, b in
                          ((at(pts, key, x, i), at(by[ref], key, x, i)) for i in range(rounds))
                          if a["qps"] is not None and b["qps"]]
                entry["ratio"][t][str(x)] = {
                    "ratio": mine["qps"] / theirs["qps"],
                    "paired_median": median(paired) if paired else None,
                    "bound": "lower bound" in (mine["status"], theirs["status"])}
        engines.append(entry)
    return {"reference": ref, "targets": list(targets), "threads": list(threads),
            "engines": engines}


def run_benchmark(cfg: BenchConfig, log: Log | None = None,
                  dataset: Dataset | None = None) -> dict:
    """Run everything in ``cfg``, interleaved (module doc); returns the report dict (see
    ``report.write_report``)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    cfg.validate()
    t0 = time.perf_counter()
    ds = dataset or load_dataset(cfg.dataset, limit=cfg.limit, queries=cfg.queries)
    if cfg.queries is not None and ds.nq > cfg.queries:
        ds.test, ds.neighbors = ds.test[: cfg.queries], ds.neighbors[: cfg.queries]
    if ds.neighbors.shape[1] < cfg.k:
        raise ValueError(f"k={cfg.k} exceeds the {ds.neighbors.shape[1]} true neighbors stored")
    log(f"dataset {ds.name}: n={ds.n} dim={ds.dim} nq={ds.nq} metric={ds.metric} "
        f"(loaded in {time.perf_counter() - t0:.1f} s)")
    skipped: list[dict] = []
    engines = list(_engines(cfg, ds, skipped, log))
    labels = labels_for(engines)
    estimate, budget = estimate_memory(ds, len(engines)), memory_budget()
    interleaved = budget is None or estimate <= budget
    note = None
    if not interleaved:
        note = (f"sequential: ratios not trustworthy (all {len(engines)} indexes, estimated "
                f"{estimate / 2**30:.1f} GiB, exceed {MEMORY_SHARE:.0%} of RAM, "
                f"{budget / MEMORY_SHARE / 2**30:.1f} GiB, so engines ran one after another)")
        log(f"WARNING: {note}")
    groups = [list(range(len(engines)))] if interleaved else [[i] for i in range(len(engines))]
    rows: list[Row] = []
    orders: list[list[list[str]]] = []
    try:
        for group in groups:
            r, o = measure_engines([engines[i] for i in group], ds, cfg, log, skipped,
                                   [labels[i] for i in group])
            rows += r
            orders.append(o)
            if not interleaved:
                engines[group[0]].close()
                gc.collect()
    finally:
        for eng in engines:
            eng.close()
        gc.collect()
    results = [asdict(r) for r in rows]
    config = asdict(cfg) | {"latency_threads": cfg.latency_threads}
    sched = {"mode": "interleaved" if interleaved else "sequential", "rounds": cfg.rounds,
             # sequential: one "order", the engines' run order, each doing all its rounds
             "orders": orders[0] if interleaved else [[o[0][0] for o in orders if o and o[0]]],
             "note": note, "estimated_memory_bytes": estimate, "memory_budget_bytes": budget}
    return {"dataset": ds.describe(), "config": config, "environment": environment(),
            "schedule": sched, "results": results,
            "summary": summarize(results, cfg.targets, cfg.qps_threads), "skipped": skipped,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "wall_s": round(time.perf_counter() - t0, 2)}


def default_out_dir(dataset_name: str, name: str | None = None) -> Path:
    """bench/results/<dataset>-<name or timestamp>/ (cwd/bench-results if bench/ is read-only)."""
    return results_dir(dataset_name, name)
