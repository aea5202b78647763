"""REST server overhead: a real ``quiver serve`` process against the same searches in-process.

Steps (all on 127.0.0.1, the server is a subprocess started before this process runs any
parallel kernel):

1. start ``python -m quiver.cli serve --data <tmp> --port <free>`` (with the JIT warm-up unless
   ``--no-server-warmup``) and wait for ``/readyz``;
2. load N vectors (default 20,000 of WordNet) with the binary upsert
   (``application/vnd.quiver.points``) into a collection whose segment size is N by default,
   so it ends as one sealed HNSW segment, and wait until it is indexed;
3. single-vector ``/points/search`` requests (JSON, bodies encoded beforehand) at concurrency
   1, 4 and 16 (httpx.AsyncClient), a bounded number per level: throughput, p50/p99 latency,
   and the server process's CPU time (``/proc/<pid>/stat`` utime+stime) per request;
4. upsert throughput of JSON against binary bodies for 384-d vectors (fresh collections), and
   batch search with a JSON body against a ``.npy`` body (answered in JSON, or as ``.npz``
   arrays with ``Accept: application/x-npz``);
5. stop the server, open the same data folder in-process (``quiver.connect``) and run the same
   searches: CPU per search (process time) and throughput at the same concurrency (threads).

Per-request overhead = server CPU per request - in-process CPU per search. The client runs
on the same machine and competes for its cores, so throughput is a lower bound; the CPU
figures are the server's own.

    quiver bench-server                                   # 20,000 WordNet vectors
    quiver bench-server --limit 2000 --requests 300 --upsert-vectors 2000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

from ..engine.hits import NPZ, SearchArrays
from ..server.schemas import BINARY_POINTS, NPY
from .args import add_dataset_arguments, int_list
from .common import fmt, load_with_payload, log_stderr, md_table, module_main, run_report_cli
from .metrics import recall_at_k
from .timing import ensure_passive_omp

COLLECTION = "bench"


@dataclass
class ServerBenchConfig:
    dataset: str | None = None
    limit: int = 20_000
    """N: vectors loaded into the server."""
    queries: int | None = None
    k: int = 10
    ef: int = 64
    requests: int = 2000
    """Single-vector searches per concurrency level (queries cycle)."""
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    warmup_requests: int = 50
    load_batch: int = 1000
    index: str = "HNSW16,F32"
    segment_size: int | None = None
    """None: N (the loaded data ends as one sealed, indexed segment)."""
    upsert_vectors: int | None = None
    """None: min(N, 10000) vectors for each of the JSON and binary upsert runs."""
    upsert_batch: int = 1000
    batch_size: int = 100
    batch_requests: int = 50
    batch_rounds: int = 5
    server_warmup: bool = True
    startup_timeout: float = 900.0
    data_dir: str | None = None
    keep: bool = False
    seed: int = 0


# --- server process --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc, else psutil, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except Exception:
        return None


class ServerProcess:
    """``quiver serve`` in a subprocess, on 127.0.0.1 and a free port."""

    def __init__(self, data: Path, log_path: Path, warmup: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "quiver.cli", "serve", "--data", str(data),
               "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        if not warmup:
            cmd.append("--no-warmup")
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
        self.cmd = cmd

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float | None:
        return process_cpu_seconds(self.pid)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> float:
        import httpx

        t0 = time.perf_counter()
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                       f"{self.log_tail()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return time.perf_counter() - t0
                except httpx.TransportError:
                    pass
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


# --- HTTP driving ----------------------------------------------------------------------------


@dataclass
class Level:
    wall_s: float
    latencies_ms: np.ndarray
    server_cpu_s: float | None
    client_cpu_s: float
    responses: list


def drive(url: str, method: str, path: str, bodies: list[bytes], headers: dict,
          concurrency: int, warm: list[bytes], server: ServerProcess | None) -> Level:
    """Send ``bodies`` with ``concurrency`` requests in flight (asyncio + httpx), after
    ``warm`` untimed ones on the same connections; server CPU is read around the timed part."""
    import httpx

    async def go() -> Level:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        lat = np.zeros(len(bodies))
        out: list = [None] * len(bodies)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
            async def run(items: list[bytes], record: bool) -> None:
                nxt = 0

                async def worker() -> None:
                    nonlocal nxt
                    while nxt < len(items):
                        i = nxt
                        nxt += 1
                        t = time.perf_counter()
                        r = await client.request(method, path, content=items[i], headers=headers)
                        dt = time.perf_counter() - t
                        if r.status_code != 200:
                            raise RuntimeError(f"{method} {path}: HTTP {r.status_code}: "
                                               f"{r.text[:500]}")
                        if record:
                            lat[i] = dt
                            out[i] = r.content

                await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))

            if warm:
                await run(warm, False)
            cpu0 = server.cpu() if server else None
            c0 = time.process_time()
            t0 = time.perf_counter()
            await run(bodies, True)
            wall = time.perf_counter() - t0
            c1 = time.process_time()
            cpu1 = server.cpu() if server else None
        scpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        return Level(wall, lat * 1e3, scpu, c1 - c0, out)

    return asyncio.run(go())


def _json(obj) -> bytes:
    return orjson.dumps(obj)


def _get(url: str, path: str) -> dict:
    import httpx

    r = httpx.get(url + path, timeout=60)
    r.raise_for_status()
    return r.json()


def _put(url: str, path: str, body: dict) -> dict:
    import httpx

    r = httpx.put(url + path, content=_json(body), timeout=300,
                  headers={"content-type": "application/json"})
    if r.status_code != 200:
        raise RuntimeError(f"PUT {path}: HTTP {r.status_code}: {r.text[:500]}")
    return r.json()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, np.float32), allow_pickle=False)
    return buf.getvalue()


def _search_ids(raw: bytes, k: int) -> list[int]:
    hits = orjson.loads(raw)["result"]
    return [h["id"] for h in hits][:k]


def _body_handling_us(name: str, bodies: list[bytes], raw_answers: list[bytes],
                      answers: list[SearchArrays], dim: int) -> float:
    """Server-side cost of the formats themselves, per request (µs): reading the body into
    query vectors and writing the answer, timed in-process on the bodies and answers of the
    run, exactly as the server's batch route does it (the search is not included)."""
    from ..engine.collection import Point
    from ..engine.validation import as_vectors
    from ..server.app import JSON, _load_npy
    from ..server.schemas import SearchBatch

    t0 = time.perf_counter()
    if name == "json":
        for raw in bodies:
            req = SearchBatch.model_validate_json(raw)
            [as_vectors(r.vector, dim, "vector") for r in req.searches]
    else:
        for raw in bodies:
            _load_npy(raw)
    parse = time.perf_counter() - t0
    if name == "npz":
        t0 = time.perf_counter()
        for a in answers:
            a.to_npz()
    else:  # the JSON answer: Point objects rendered by the server's response class
        points = [[[Point(h["id"], h["score"]) for h in row] for row in orjson.loads(r)["result"]]
                  for r in raw_answers]
        t0 = time.perf_counter()
        for pts in points:
            JSON({"result": pts, "time": 0.0})
    return (parse + time.perf_counter() - t0) / len(bodies) * 1e6


def _merge_levels(levels: list[Level]) -> Level:
    cpu = [lv.server_cpu_s for lv in levels]
    return Level(sum(lv.wall_s for lv in levels),
                 np.concatenate([lv.latencies_ms for lv in levels]),
                 None if any(c is None for c in cpu) else sum(cpu),
                 sum(lv.client_cpu_s for lv in levels),
                 [x for lv in levels for x in lv.responses])


def _batch_answer(raw: bytes, npz: bool, k: int) -> SearchArrays:
    """A batch-search answer as id / score matrices (what an evaluation wants)."""
    if npz:
        return SearchArrays.from_npz(raw)
    res = orjson.loads(raw)["result"]
    return SearchArrays.from_rows([[h["id"] for h in r] for r in res],
                                  [[h["score"] for h in r] for r in res], k)


def _stats(lat_ms: np.ndarray) -> dict:
    return {"p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "mean_ms": float(lat_ms.mean())}


# --- in-process ------------------------------------------------------------------------------


def inprocess_level(col, queries: np.ndarray, n_req: int, k: int, ef: int, concurrency: int,
                    warm: int) -> dict:
    params = {"ef": ef}
    nq = queries.shape[0]

    def one(i: int) -> tuple[float, list]:
        t = time.perf_counter()
        hits = col.search(queries[i % nq], k, params=params)
        return time.perf_counter() - t, hits

    for i in range(warm):
        one(i)
    c0 = time.process_time()
    t0 = time.perf_counter()
    if concurrency <= 1:
        res = [one(i) for i in range(n_req)]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            res = list(pool.map(one, range(n_req)))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    lat = np.array([r[0] for r in res]) * 1e3
    ids = [[h.id for h in r[1]] for r in res[:nq]]
    return {"concurrency": concurrency, "requests": n_req, "qps": n_req / wall,
            "cpu_ms_per_search": cpu / n_req * 1e3, **_stats(lat), "ids": ids}


# --- run -------------------------------------------------------------------------------------


def run_server_bench(cfg: ServerBenchConfig, log: Callable[[str], None] | None = None) -> dict:
    log = log or log_stderr
    ensure_passive_omp()
    t_start = time.perf_counter()
    ds, _ = load_with_payload(cfg.dataset, cfg.limit, cfg.queries, cfg.seed)
    n, dim, q = ds.n, ds.dim, ds.test
    nq = q.shape[0]
    log(f"dataset {ds.name}: n={n} dim={dim} nq={nq} metric={ds.metric}")
    seg = cfg.segment_size or n
    m_up = min(cfg.upsert_vectors or min(n, 10_000), n)
    root = Path(tempfile.mkdtemp(prefix="quiver-bench-server-", dir=cfg.data_dir))
    try:
        return _run(cfg, ds, root, seg, m_up, log, t_start)
    finally:
        if cfg.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _run(cfg: ServerBenchConfig, ds, root: Path, seg: int, m_up: int, log, t_start: float) -> dict:
    n, dim, q = ds.n, ds.dim, ds.test
    nq = q.shape[0]
    data = root / "data"
    server = ServerProcess(data, root / "server.log", cfg.server_warmup)
    report: dict = {"benchmark": "server", "dataset": ds.describe(),
                    "config": asdict(cfg) | {"segment_size_used": seg, "upsert_vectors_used": m_up},
                    "server": {"cmd": " ".join(server.cmd), "pid": server.pid}}
    try:
        ready_s = server.wait_ready(cfg.startup_timeout)
        report["server"]["ready_s"] = ready_s
        log(f"server pid {server.pid} on {server.url} ready in {ready_s:.1f} s")
        url = server.url

        # --- load N vectors with the binary upsert ---------------------------------------
        _put(url, f"/collections/{COLLECTION}", {"dim": dim, "metric": ds.metric,
                                                 "index": cfg.index, "segment_size": seg})
        from ..engine.frame import encode_batch

        pl = [{"pos": int(p), "lexname": int(x)} for p, x in
              zip(ds.payload["pos"].tolist(), ds.payload["lexname"].tolist(), strict=True)]
        ids = np.arange(n, dtype=np.uint64)
        load_bodies = [encode_batch(ids[s : s + cfg.load_batch], ds.train[s : s + cfg.load_batch],
                                    pl[s : s + cfg.load_batch]) for s in range(0, n, cfg.load_batch)]
        lv = drive(url, "PUT", f"/collections/{COLLECTION}/points", load_bodies,
                   {"content-type": BINARY_POINTS}, 1, [], server)
        t0 = time.perf_counter()
        while True:
            info = _get(url, f"/collections/{COLLECTION}")["result"]
            if info["status"] == "green" and (seg > n or info["indexed_points"] >= n):
                break
            if time.perf_counter() - t0 > 24 * 3600:
                raise TimeoutError("collection not indexed")
            time.sleep(0.2)
        report["load"] = {"vectors": n, "batch": cfg.load_batch, "ack_s": lv.wall_s,
                          "rate": n / lv.wall_s, "indexed_after_s": time.perf_counter() - t0,
                          "points": info["points"], "indexed_points": info["indexed_points"],
                          "segments": [(s["points"], s["sealed"]) for s in info["segments"]]}
        log(f"loaded {n} vectors (binary) in {lv.wall_s:.1f} s, indexed "
            f"{report['load']['indexed_after_s']:.1f} s later: {report['load']['segments']}")

        # --- single-vector searches at each concurrency ----------------------------------
        bodies = [_json({"vector": q[i].tolist(), "limit": cfg.k, "params": {"ef": cfg.ef}})
                  for i in range(nq)]
        path = f"/collections/{COLLECTION}/points/search"
        hdr = {"content-type": "application/json"}
        rest_levels = []
        rest_ids = None
        for c in cfg.concurrency:
            reqs = [bodies[i % nq] for i in range(cfg.requests)]
            warm = [bodies[i % nq] for i in range(cfg.warmup_requests)]
            lev = drive(url, "POST", path, reqs, hdr, c, warm, server)
            row = {"concurrency": c, "requests": cfg.requests, "qps": cfg.requests / lev.wall_s,
                   **_stats(lev.latencies_ms),
                   "server_cpu_ms_per_request": (None if lev.server_cpu_s is None
                                                 else lev.server_cpu_s / cfg.requests * 1e3),
                   "client_cpu_ms_per_request": lev.client_cpu_s / cfg.requests * 1e3}
            if rest_ids is None:
                rest_ids = [_search_ids(r, cfg.k) for r in lev.responses[:nq]]
            rest_levels.append(row)
            log(f"REST c={c:<3d} {row['qps']:,.0f} req/s p50={row['p50_ms']:.2f} "
                f"p99={row['p99_ms']:.2f} ms server cpu/req="
                f"{fmt(row['server_cpu_ms_per_request'], 3)} ms")
        report["rest"] = rest_levels

        # --- batch search: JSON vs .npy -------------------------------------------------
        b = min(cfg.batch_size, nq)
        starts = [(j * b) % max(1, nq - b + 1) for j in range(cfg.batch_requests)]
        encode = {"json": lambda m: _json({"searches": [
                      {"vector": v.tolist(), "limit": cfg.k, "params": {"ef": cfg.ef}} for v in m]}),
                  "npy": _npy, "npz": _npy}
        enc_s, bodies = {}, {}
        for name, fn in encode.items():  # what a client spends turning its matrix into bodies
            t0 = time.perf_counter()
            bodies[name] = [fn(q[s : s + b]) for s in starts]
            enc_s[name] = time.perf_counter() - t0
        bpath = f"/collections/{COLLECTION}/points/search/batch"
        batch = {}
        npy_path = f"{bpath}?limit={cfg.k}&ef={cfg.ef}"
        formats = (("json", hdr, bpath), ("npy", {"content-type": NPY}, npy_path),
                   ("npz", {"content-type": NPY, "accept": NPZ}, npy_path))
        # formats take turns in rounds, so a slow spell of this shared machine lands on all
        rounds = max(1, min(cfg.batch_rounds, cfg.batch_requests))
        parts: dict[str, list[Level]] = {name: [] for name, _, _ in formats}
        for r in range(rounds):
            for name, h, p in formats:
                chunk = bodies[name][r::rounds]
                parts[name].append(drive(url, "POST", p, chunk, h, 1, chunk[:1], server))
        for name, _, _ in formats:
            bod = bodies[name]
            lev = _merge_levels(parts[name])
            nqs = b * len(bod)
            batch[name] = {"batch": b, "requests": len(bod), "queries_per_s": nqs / lev.wall_s,
                           "body_bytes": int(np.mean([len(x) for x in bod])),
                           "server_cpu_ms_per_query": (None if lev.server_cpu_s is None
                                                       else lev.server_cpu_s / nqs * 1e3),
                           **_stats(lev.latencies_ms)}
            # ... and turning the answers into id / score matrices
            t0 = time.perf_counter()
            answers = [_batch_answer(raw, name == "npz", cfg.k) for raw in lev.responses]
            dec_s = time.perf_counter() - t0
            batch[name].update({
                "client_encode_ms_per_request": enc_s[name] / len(bod) * 1e3,
                "client_decode_ms_per_request": dec_s / len(bod) * 1e3,
                "end_to_end_queries_per_s": nqs / (lev.wall_s + enc_s[name] + dec_s)})
            arrs = answers[0]  # the first chunk's first answer: bodies[name][0]
            batch[name]["ids_first"] = [row[:c] for row, c in zip(
                arrs.ids.tolist(), arrs.counts.tolist(), strict=True)]
            log(f"batch search {name}: {batch[name]['queries_per_s']:,.0f} queries/s, "
                f"{batch[name]['body_bytes']:,} bytes/request")
            batch[name]["body_handling_us_per_query"] = _body_handling_us(
                name, bod, lev.responses, answers, ds.dim) / b
        for name in ("npy", "npz"):
            batch[f"{name}_body_handling_vs_json"] = (batch["json"]["body_handling_us_per_query"]
                                                      / batch[name]["body_handling_us_per_query"])
            batch[f"{name}_vs_json"] = (batch[name]["queries_per_s"]
                                        / batch["json"]["queries_per_s"])
            batch[f"{name}_vs_json_end_to_end"] = (batch[name]["end_to_end_queries_per_s"]
                                                   / batch["json"]["end_to_end_queries_per_s"])
        report["batch_search"] = batch

        # --- upsert: JSON vs binary -----------------------------------------------------
        xs = ds.train[:m_up]
        up = {}
        t = time.perf_counter()
        json_bodies = [_json({"points": [{"id": int(i), "vector": xs[i].tolist(), "payload": pl[i]}
                                         for i in range(s, min(m_up, s + cfg.upsert_batch))]})
                       for s in range(0, m_up, cfg.upsert_batch)]
        enc_json = time.perf_counter() - t
        t = time.perf_counter()
        uids = np.arange(m_up, dtype=np.uint64)
        bin_bodies = [encode_batch(uids[s : s + cfg.upsert_batch], xs[s : s + cfg.upsert_batch],
                                   pl[s : s + cfg.upsert_batch]) for s in range(0, m_up, cfg.upsert_batch)]
        enc_bin = time.perf_counter() - t
        # one untimed single-point upsert first: a fresh collection's first write also
        # creates and syncs its WAL file, which is not what the body formats are compared on
        warm_id = 1 << 40
        warm = {"json": [_json({"points": [{"id": warm_id, "vector": xs[0].tolist(), "payload": {}}]})],
                "binary": [encode_batch(np.array([warm_id], np.uint64), xs[:1], [{}])]}
        for name, bod, ctype, enc in (("json", json_bodies, "application/json", enc_json),
                                      ("binary", bin_bodies, BINARY_POINTS, enc_bin)):
            cname = f"upsert_{name}"
            _put(url, f"/collections/{cname}", {"dim": dim, "metric": ds.metric,
                                                "index": cfg.index, "segment_size": 10_000_000})
            lev = drive(url, "PUT", f"/collections/{cname}/points", bod, {"content-type": ctype},
                        1, warm[name], server)
            cnt = _get(url, f"/collections/{cname}")["result"]["points"] - 1
            if cnt != m_up:
                raise RuntimeError(f"{cname}: {cnt} points after upserting {m_up}")
            up[name] = {"vectors": m_up, "batch": cfg.upsert_batch, "vectors_per_s": m_up / lev.wall_s,
                        "body_bytes_per_vector": sum(len(x) for x in bod) / m_up,
                        "server_cpu_us_per_vector": (None if lev.server_cpu_s is None
                                                     else lev.server_cpu_s / m_up * 1e6),
                        "client_encode_us_per_vector": enc / m_up * 1e6,
                        **_stats(lev.latencies_ms)}
            log(f"upsert {name}: {up[name]['vectors_per_s']:,.0f} vectors/s, "
                f"{up[name]['body_bytes_per_vector']:,.0f} bytes/vector")
        up["binary_vs_json"] = up["binary"]["vectors_per_s"] / up["json"]["vectors_per_s"]
        report["upsert"] = up
        report["server"]["log_tail"] = server.log_tail(1500)
    finally:
        rc = server.stop()
        report["server"]["exit_code"] = rc
    # --- the same searches in-process ----------------------------------------------------
    import quiver

    db = quiver.connect(data, optimizer=False)
    try:
        col = db.get_collection(COLLECTION)
        inproc = []
        for c in cfg.concurrency:
            row = inprocess_level(col, q, cfg.requests, cfg.k, cfg.ef, c, cfg.warmup_requests)
            inproc.append(row)
            log(f"in-process c={c:<3d} {row['qps']:,.0f} searches/s p50={row['p50_ms']:.3f} ms "
                f"cpu/search={row['cpu_ms_per_search']:.3f} ms")
        # one search per call, sequential: the CPU the search itself costs
        cpu_search = inproc[0]["cpu_ms_per_search"] if cfg.concurrency[0] == 1 else \
            inprocess_level(col, q, cfg.requests, cfg.k, cfg.ef, 1, 0)["cpu_ms_per_search"]
        inproc_ids = inproc[0].pop("ids")
        for r in inproc:
            r.pop("ids", None)
        bq = np.concatenate([q[s : s + b] for s in starts])
        for key, call in (("inprocess", col.search), ("inprocess_arrays", col.search_arrays)):
            call(bq[:b], cfg.k, params={"ef": cfg.ef})
            c0, t0 = time.process_time(), time.perf_counter()
            for j in range(len(starts)):
                call(bq[j * b : (j + 1) * b], cfg.k, params={"ef": cfg.ef})
            report["batch_search"][key] = {
                "queries_per_s": bq.shape[0] / (time.perf_counter() - t0),
                "cpu_ms_per_query": (time.process_time() - c0) / bq.shape[0] * 1e3}
    finally:
        db.close()

    report["inprocess"] = inproc
    report["inprocess_cpu_ms_per_search"] = cpu_search
    for r in report["rest"]:
        s = r["server_cpu_ms_per_request"]
        r["overhead_ms_per_request"] = None if s is None else s - cpu_search
    # sanity: REST answers = in-process answers = (approximately) exact neighbors
    m = min(len(rest_ids or []), len(inproc_ids))
    truth = ds.neighbors[:m, : cfg.k]
    rest_m = np.full((m, cfg.k), -1, np.int64)
    inp_m = np.full((m, cfg.k), -1, np.int64)
    for i, (a, bb) in enumerate(zip((rest_ids or [])[:m], inproc_ids[:m], strict=True)):
        rest_m[i, : len(a)] = a
        inp_m[i, : len(bb)] = bb
    report["checks"] = {"rest_recall": recall_at_k(rest_m, truth, cfg.k),
                        "inprocess_recall": recall_at_k(inp_m, truth, cfg.k),
                        "rest_equals_inprocess": float((rest_m == inp_m).all(axis=1).mean()),
                        "batch_json_equals_npy": (report["batch_search"]["json"]["ids_first"]
                                                  == report["batch_search"]["npy"]["ids_first"]
                                                  == report["batch_search"]["npz"]["ids_first"])}
    from .runner import environment

    report["environment"] = environment()
    report["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    report["wall_s"] = round(time.perf_counter() - t_start, 2)
    return report


# --- report ----------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    ds, cfg, env = report["dataset"], report["config"], report["environment"]
    ld, ch = report["load"], report["checks"]
    out = [f"## REST server: {ds['name']}, n={ds['n']:,}, dim={ds['dim']}, metric={ds['metric']}",
           "",
           f"`{report['server']['cmd']}` (ready in {report['server']['ready_s']:.1f} s); "
           f"{env['cpu_count']} CPUs shared by server and client. Index {cfg['index']}, segment "
           f"size {cfg['segment_size_used']:,}; loaded with the binary upsert in batches of "
           f"{ld['batch']:,}: {fmt(ld['rate'], 0)} vectors/s acknowledged, indexed "
           f"{ld['indexed_after_s']:.1f} s later (segments {ld['segments']}). Searches: k="
           f"{cfg['k']}, ef={cfg['ef']}, {cfg['requests']:,} requests per level after "
           f"{cfg['warmup_requests']} untimed. Recall@{cfg['k']}: REST {ch['rest_recall']:.4f}, "
           f"in-process {ch['inprocess_recall']:.4f}; identical answers "
           f"{ch['rest_equals_inprocess']:.1%}; JSON, .npy and .npz batch answers identical: "
           f"{ch['batch_json_equals_npy']}.", "",
           "### Single-vector search", ""]
    cpu_s = report["inprocess_cpu_ms_per_search"]
    head = ["concurrency", "REST req/s", "REST p50 ms", "REST p99 ms", "in-process searches/s",
            "in-process p50 ms", "in-process p99 ms", "server CPU ms/request",
            "in-process CPU ms/search", "overhead ms/request", "client CPU ms/request"]
    rows = []
    for r, p in zip(report["rest"], report["inprocess"], strict=True):
        rows.append([r["concurrency"], fmt(r["qps"], 0), fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2),
                     fmt(p["qps"], 0), fmt(p["p50_ms"], 3), fmt(p["p99_ms"], 3),
                     fmt(r["server_cpu_ms_per_request"], 3), fmt(cpu_s, 3),
                     fmt(r["overhead_ms_per_request"], 3), fmt(r["client_cpu_ms_per_request"], 3)])
    out += [md_table(head, rows),
            "Overhead = server process CPU time per request (utime+stime over the level) minus "
            "the in-process CPU time of the same `Collection.search` (sequential).", "",
            "### Batch search: JSON body vs .npy body", ""]
    bs = report["batch_search"]
    head = ["body -> answer", "queries/request", "bytes/request", "queries/s", "p50 ms/request",
            "server CPU ms/query", "body + answer handling µs/query",
            "client encode ms/request", "client decode ms/request", "end-to-end queries/s"]
    label = {"json": "JSON -> JSON", "npy": ".npy -> JSON", "npz": ".npy -> .npz"}
    rows = [[label[name], bs[name]["batch"], fmt(bs[name]["body_bytes"]),
             fmt(bs[name]["queries_per_s"], 0), fmt(bs[name]["p50_ms"], 2),
             fmt(bs[name]["server_cpu_ms_per_query"], 3),
             fmt(bs[name].get("body_handling_us_per_query"), 1),
             fmt(bs[name].get("client_encode_ms_per_request"), 2),
             fmt(bs[name].get("client_decode_ms_per_request"), 2),
             fmt(bs[name].get("end_to_end_queries_per_s"), 0)]
            for name in ("json", "npy", "npz") if name in bs]
    for key, what in (("inprocess", "`search(matrix)`"), ("inprocess_arrays", "`search_arrays`")):
        if key in bs:
            rows.append([f"in-process {what}", bs["json"]["batch"], "-",
                         fmt(bs[key]["queries_per_s"], 0), "-", fmt(bs[key]["cpu_ms_per_query"], 3),
                         "-", "-", "-", "-"])

    def ratios(suffix: str) -> str:
        key = "{n}_body_handling_vs_json" if suffix == "_body_handling" else "{n}_vs_json" + suffix
        return ", ".join(f"{label[n]} {bs[key.format(n=n)]:.2f}x" for n in ("npy", "npz")
                         if key.format(n=n) in bs)

    out += [md_table(head, rows),
            f"Against JSON, requests only (bodies encoded beforehand, answers kept as bytes): "
            f"{ratios('')}; end to end, from a query matrix to id / score matrices (the "
            f"client's encode and decode added to the wall time; client and server take turns "
            f"at concurrency 1): {ratios('_end_to_end')}; the formats' own server-side cost "
            f"(reading the body into query vectors and writing the answer, timed in-process on "
            f"the same bodies and answers, no search): {ratios('_body_handling')} less than "
            f"JSON. Both run one batched search per request here (a JSON batch groups its "
            f"entries that share filter, limit and parameters; these all do).", "",
            "### Upsert: JSON body vs binary body", ""]
    up = report["upsert"]
    head = ["body", "vectors", "batch", "vectors/s", "bytes/vector", "server CPU µs/vector",
            "client encode µs/vector", "p50 ms/request"]
    rows = [[name, fmt(up[name]["vectors"]), up[name]["batch"], fmt(up[name]["vectors_per_s"], 0),
             fmt(up[name]["body_bytes_per_vector"], 0), fmt(up[name]["server_cpu_us_per_vector"], 1),
             fmt(up[name]["client_encode_us_per_vector"], 1), fmt(up[name]["p50_ms"], 1)]
            for name in ("json", "binary")]
    out += [md_table(head, rows), f"binary / JSON: {up['binary_vs_json']:.2f}x vectors/s.", ""]
    return "\n".join(out)


def plot(report: dict, path) -> None:
    """Throughput and p99 latency vs concurrency, REST against in-process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [r["concurrency"] for r in report["rest"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax, label in (("qps", axes[0], "requests/s"), ("p99_ms", axes[1], "p99 latency ms")):
        ax.plot(cs, [r[key] for r in report["rest"]], marker="o", label="REST")
        ax.plot(cs, [r[key] for r in report["inprocess"]], marker="o", label="in-process")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"REST vs in-process single-vector search: {report['dataset']['name']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- CLI -------------------------------------------------------------------------------------



def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p, "N vectors loaded (default 20000)", 20_000,
                          "distinct queries (default all; they cycle)")
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--requests", type=int, default=2000,
                   help="single-vector searches per concurrency level (default 2000)")
    p.add_argument("--concurrency", type=int_list, default=[1, 4, 16],
                   help="levels (default 1,4,16)")
    p.add_argument("--warmup-requests", type=int, default=50)
    p.add_argument("--load-batch", type=int, default=1000)
    p.add_argument("--index", default="HNSW16,F32")
    p.add_argument("--segment-size", type=int, help="default: N (one sealed HNSW segment)")
    p.add_argument("--upsert-vectors", type=int,
                   help="vectors per JSON/binary upsert run (default min(N, 10000))")
    p.add_argument("--upsert-batch", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100, help="queries per batch request")
    p.add_argument("--batch-requests", type=int, default=50)
    p.add_argument("--batch-rounds", type=int, default=5,
                   help="the batch formats take turns in this many rounds")
    p.add_argument("--no-server-warmup", action="store_true",
                   help="start the server with --no-warmup")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--data-dir", help="parent folder for the temporary server data")
    p.add_argument("--keep", action="store_true", help="keep the data folder and server log")
    p.add_argument("--out", help="output folder (default bench/results/server-<name>)")
    p.add_argument("--name", help="output folder suffix (default: the dataset name)")


def config_from_args(args: argparse.Namespace) -> ServerBenchConfig:
    cfg = ServerBenchConfig(dataset=args.dataset, limit=args.limit, queries=args.queries,
                            k=args.k, ef=args.ef, requests=args.requests,
                            concurrency=args.concurrency, warmup_requests=args.warmup_requests,
                            load_batch=args.load_batch, index=args.index,
                            segment_size=args.segment_size, upsert_vectors=args.upsert_vectors,
                            upsert_batch=args.upsert_batch, batch_size=args.batch_size,
                            batch_requests=args.batch_requests, batch_rounds=args.batch_rounds,
                            server_warmup=not args.no_server_warmup,
                            startup_timeout=args.startup_timeout, data_dir=args.data_dir,
                            keep=args.keep)
    if cfg.requests < 1 or not cfg.concurrency or min(cfg.concurrency) < 1:
        raise ValueError("requests and concurrency levels must be positive")
    return cfg


def run_cli(args: argparse.Namespace) -> int:
    return run_report_cli("server", lambda: run_server_bench(config_from_args(args)), markdown,
                          plot, "rest_vs_inprocess.png", args.out, args.name)


def main(argv=None) -> int:
    return module_main("server", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
