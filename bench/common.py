"""Shared pieces of the filtered, collection and server benchmarks.

Datasets with payload columns (``pos``, ``lexname``; synthesised with a fixed seed when a file
lacks them), selectivity cases (random subsets and real categories), exact filtered ground
truth by NumPy brute force over the allowed rows, recall that tolerates fewer than k allowed
rows, result folders and Markdown tables.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import DEFAULT_DENSE_FILE, Dataset, exact_neighbors, find_data_file, load_dataset

DEFAULT_SELECTIVITIES = (0.5, 0.1, 0.01, 0.001)
CATEGORY_TOLERANCE = 1.5
"""A single category whose share is within this factor of the target is used as is; else the
union of the largest categories whose share comes closest (a ``match any`` filter)."""


# --- datasets --------------------------------------------------------------------------------


def default_dataset() -> str:
    """The WordNet file (../shared/data or $QUIVER_DATA_DIR) when present, else synthetic."""
    p = find_data_file(DEFAULT_DENSE_FILE)
    return str(p) if p else "synthetic:20000x384:cosine"


def synthetic_payload(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``lexname`` (45 Zipf-like categories) and ``pos`` (4 values, WordNet's shares), drawn
    independently of the vectors: for data files that carry no payload columns."""
    rng = np.random.default_rng([seed, 7])
    w = 1.0 / np.arange(1, 46) ** 1.1
    lex = rng.choice(45, size=n, p=w / w.sum()).astype(np.int8)
    pos = rng.choice(4, size=n, p=[0.70, 0.117, 0.153, 0.03]).astype(np.int8)
    return {"pos": pos, "lexname": lex}


def load_with_payload(spec: str | None, limit: int | None = None, queries: int | None = None,
                      seed: int = 0) -> tuple[Dataset, bool]:
    """(dataset, payload_is_synthetic); payload columns as int64 arrays aligned with train."""
    ds = load_dataset(spec or default_dataset(), limit=limit, queries=queries, seed=seed)
    if queries is not None and ds.nq > queries:
        ds.test, ds.neighbors = ds.test[:queries], ds.neighbors[:queries]
    synthetic = not all(c in ds.payload for c in ("pos", "lexname"))
    if synthetic:
        ds.payload = synthetic_payload(ds.n, seed)
    ds.payload = {k: np.asarray(v, np.int64) for k, v in ds.payload.items()}
    return ds, synthetic


# --- selectivity cases -----------------------------------------------------------------------


@dataclass
class Case:
    """One filter: the allowed row ids (None = unfiltered) and its exact ground truth."""

    name: str
    kind: str
    """'none', 'random', 'category' (filtered bench) or the filter family (collection)."""
    target: float
    ids: np.ndarray | None
    truth: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.int64))
    filter: dict | None = None
    detail: dict = field(default_factory=dict)

    @property
    def count(self) -> int | None:
        return None if self.ids is None else int(self.ids.shape[0])

    def share(self, n: int) -> float:
        return 1.0 if self.ids is None else self.ids.shape[0] / max(1, n)

    def describe(self, n: int) -> dict:
        return {"name": self.name, "kind": self.kind, "target": self.target,
                "allowed": self.count if self.ids is not None else n,
                "selectivity": self.share(n), **self.detail}


def pct(x: float) -> str:
    """0.5 -> '50%', 0.001 -> '0.1%'."""
    return f"{x * 100:.3g}%"


def random_subset(n: int, share: float, seed: int) -> np.ndarray:
    """Sorted ids of a uniform random subset of round(share * n) rows (at least one)."""
    rng = np.random.default_rng([seed, int(round(share * 1e6))])
    m = max(1, min(n, int(round(share * n))))
    return np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64)


def closest_categories(column: np.ndarray, target: float) -> list[int]:
    """The category (or union of the largest categories) whose share is closest to ``target``
    on a log scale; see ``CATEGORY_TOLERANCE``."""
    values, counts = np.unique(column, return_counts=True)
    share = counts / column.shape[0]
    err = np.abs(np.log(share / target))
    best = int(np.argmin(err))
    if err[best] <= math.log(CATEGORY_TOLERANCE):
        return [int(values[best])]
    order = np.argsort(-share, kind="stable")
    cum = np.cumsum(share[order])
    err_u = np.abs(np.log(cum / target))
    j = int(np.argmin(err_u))
    if err_u[j] < err[best]:
        return sorted(int(v) for v in values[order[: j + 1]])
    return [int(values[best])]


def category_filter(key: str, cats: Sequence[int]) -> dict:
    cond = ({"key": key, "match": {"value": int(cats[0])}} if len(cats) == 1
            else {"key": key, "match": {"any": [int(c) for c in cats]}})
    return {"must": [cond]}


def category_name(key: str, cats: Sequence[int]) -> str:
    if len(cats) == 1:
        return f"{key}={cats[0]}"
    return f"{key} in {{{','.join(str(c) for c in cats)}}}"


def filtered_truth(train: np.ndarray, test: np.ndarray, ids: np.ndarray | None, k: int,
                   metric: str) -> np.ndarray:
    """Exact top-k over the allowed rows (NumPy brute force), as row ids, -1 padded when
    fewer than k rows are allowed; ties by lower id as in the dataset files."""
    if ids is None:
        return exact_neighbors(train, test, k, metric)[0]
    out = np.full((test.shape[0], k), -1, np.int64)
    if ids.shape[0] == 0:
        return out
    sub, _ = exact_neighbors(train[ids], test, k, metric)
    out[:, : sub.shape[1]] = ids[sub]
    return out


def ids_matrix(results: Sequence[Sequence], k: int) -> np.ndarray:
    """Collection results (lists of Points, or of dicts with 'id') -> int64 (nq, k), -1 padded."""
    out = np.full((len(results), k), -1, np.int64)
    for i, hits in enumerate(results):
        row = [h["id"] if isinstance(h, dict) else h.id for h in hits][:k]
        out[i, : len(row)] = row
    return out


# --- output ----------------------------------------------------------------------------------


def results_dir(kind: str, name: str | None) -> Path:
    """bench/results/<kind>-<name>/ (cwd/bench-results/... if bench/ is read-only)."""
    base = Path(__file__).resolve().parent / "results"
    if not os.access(base if base.exists() else base.parent, os.W_OK):
        base = Path.cwd() / "bench-results"
    return base / f"{kind}-{name or time.strftime('%Y%m%d-%H%M%S')}"


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "-"
        return f"{v:,.{digits}f}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


def md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, markdown: str, out_dir: str | os.PathLike,
                  plot: Callable[[dict, Path], None] | None = None,
                  png_name: str = "plot.png") -> dict[str, Path]:
    """results.json, results.md and (when matplotlib is there) a PNG in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    paths["md"].write_text(markdown)
    if plot is not None:
        try:
            plot(report, out / png_name)
            paths["png"] = out / png_name
        except ImportError:
            pass
    return paths


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def run_report_cli(kind: str, run: Callable[[], dict], markdown: Callable[[dict], str],
                   plot: Callable, png: str, out: str | None, name: str | None,
                   ok: Callable[[dict], bool] = lambda report: True) -> int:
    """The common tail of every ``quiver bench-<kind>`` command: run, write JSON/Markdown/PNG
    into bench/results/<kind>-<name>/, print the table. Exit 2 on bad input, 1 if not ok."""
    import sys

    try:
        report = run()
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"quiver bench-{kind}: {exc}", file=sys.stderr)
        return 2
    md = markdown(report)
    paths = write_outputs(report, md, out or results_dir(kind, name or report["dataset"]["name"]),
                          plot, png)
    print(md)
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0 if ok(report) else 1


def module_main(module: str, doc: str | None, add_arguments: Callable,
                run_cli: Callable, argv=None) -> int:
    """``python -m quiver.bench.<module>``: the same flags and run as ``quiver bench-<kind>``."""
    import argparse
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = argparse.ArgumentParser(prog=f"python -m quiver.bench.{module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run_cli(p.parse_args(argv))


def log_stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)
