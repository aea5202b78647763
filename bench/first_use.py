"""First use on a fresh install: how long until the first search result, and until a new
``quiver serve`` is ready, with an empty Numba cache (a new machine, container or CI runner)
and with a warm one.

Each measurement is a fresh subprocess with its own ``NUMBA_CACHE_DIR``:

1. *embedded, cold*: ``import quiver``, ``quiver.index("HNSW16", dim)``, ``add`` of N vectors
   (default 10,000 WordNet rows, 384-d), the first ``search``; with a per-kernel breakdown of
   compile time (Numba's compile events, top-level kernels only);
2. *embedded, warm*: the same again over the cache the cold run filled;
3. *serve, cold / warm*: ``quiver serve`` on an empty data folder: seconds until ``/healthz``
   answers and until ``/readyz`` answers 200.

Cold and warm runs alternate (cold, warm, cold, warm, ...) so both see the same machine noise;
min / median / max over ``--runs`` are reported.

    quiver bench-first-use                    # 3 runs of each
    quiver bench-first-use --runs 1 --no-serve
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
from collections import defaultdict
from numba.core import event

compile_s = defaultdict(float)
depth = [0]
starts = []

class _Top(event.Listener):
    def on_start(self, ev):
        depth[0] += 1
        starts.append(time.perf_counter())
    def on_end(self, ev):
        depth[0] -= 1
        took = time.perf_counter() - starts.pop()
        if depth[0] == 0:
            fn = ev.data["dispatcher"].py_func
            fn = getattr(fn.__globals__.get("KERNEL"), "py_func", fn)  # a per-kind entry
            compile_s[f"{fn.__module__.split('.')[-1]}.{fn.__qualname__}"] += took

event.register("numba:compile", _Top())
import numpy as np
import quiver
t_import = time.perf_counter() - t0
n, dim, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if path:
    import h5py
    with h5py.File(path, "r") as f:
        x = np.asarray(f["train"][:n], np.float32)
        q = np.asarray(f["test"][:1], np.float32)
else:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = x[:1] + 0.01
t1 = time.perf_counter()
index = quiver.index("HNSW16", dim=x.shape[1], metric="cosine")
index.add(x)
t_add = time.perf_counter() - t1
t2 = time.perf_counter()
scores, ids = index.search(q, 10)
t_search = time.perf_counter() - t2
print(json.dumps({"import_s": t_import, "add_s": t_add, "first_search_s": t_search,
                  "to_first_result_s": time.perf_counter() - t0,
                  "compile_s": dict(sorted(compile_s.items(), key=lambda kv: -kv[1]))}))
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=3, help="cold/warm pairs (default 3)")
    p.add_argument("--n", type=int, default=10_000, help="vectors added (default 10,000)")
    p.add_argument("--dataset", help="HDF5 file with train/test (default the WordNet file in "
                                     "../shared/data, else synthetic 384-d)")
    p.add_argument("--no-serve", action="store_true", help="skip the quiver serve timings")
    p.add_argument("--out", help="write the figures as JSON here")


def _dataset(arg: str | None) -> str:
    if arg:
        return arg
    from .datasets import find_data_file

    found = find_data_file()
    return str(found) if found else ""


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), OMP_WAIT_POLICY="PASSIVE")
    env.pop("NUMBA_DISABLE_JIT", None)
    return env


def embedded(cache: Path, n: int, dataset: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), "384", dataset], env=_env(cache),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def serve(cache: Path, data: Path, timeout: float = 600) -> dict:
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "quiver.cli", "serve", "--data", str(data),
                             "--port", str(port), "--log-level", "warning"], env=_env(cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base, health, ready = f"http://127.0.0.1:{port}", None, None
    try:
        while time.perf_counter() - t0 < timeout and ready is None:
            if proc.poll() is not None:
                raise RuntimeError(f"quiver serve exited with {proc.returncode}")
            if health is None and _status(base + "/healthz") == 200:
                health = time.perf_counter() - t0
            if health is not None and _status(base + "/readyz") == 200:
                ready = time.perf_counter() - t0
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"healthz_s": health, "readyz_s": ready}


def _summary(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def run(args: argparse.Namespace) -> dict:
    dataset = _dataset(args.dataset)
    rows: dict[str, list[dict]] = {"embedded cold": [], "embedded warm": [],
                                   "serve cold": [], "serve warm": []}
    with tempfile.TemporaryDirectory(prefix="quiver-first-use-") as tmp:
        for r in range(args.runs):
            cache = Path(tmp) / f"cache-{r}"
            rows["embedded cold"].append(embedded(cache, args.n, dataset))
            rows["embedded warm"].append(embedded(cache, args.n, dataset))
            if not args.no_serve:
                scache = Path(tmp) / f"serve-cache-{r}"
                rows["serve cold"].append(serve(scache, Path(tmp) / f"data-{r}"))
                rows["serve warm"].append(serve(scache, Path(tmp) / f"data-{r}"))
            shutil.rmtree(Path(tmp) / f"data-{r}", ignore_errors=True)
    print(f"dataset: {dataset or 'synthetic'}, n={args.n}, runs={args.runs} (min / median / max s)")
    for name in ("embedded cold", "embedded warm"):
        for key in ("import_s", "add_s", "first_search_s", "to_first_result_s"):
            print(f"  {name:14s} {key:18s} {_summary([row[key] for row in rows[name]])}")
    for name in ("serve cold", "serve warm"):
        if rows[name]:
            for key in ("healthz_s", "readyz_s"):
                print(f"  {name:14s} {key:18s} {_summary([row[key] for row in rows[name]])}")
    print("  cold compile by kernel (median s):")
    kernels = sorted({k for row in rows["embedded cold"] for k in row["compile_s"]})
    med = {k: statistics.median(row["compile_s"].get(k, 0.0) for row in rows["embedded cold"])
           for k in kernels}
    for k, v in sorted(med.items(), key=lambda kv: -kv[1]):
        print(f"    {k:40s} {v:6.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


def run_cli(args: argparse.Namespace) -> int:
    run(args)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run_cli(parser.parse_args()))
