"""Filtered HNSW search: Quiver's HNSWIndex against faiss IndexHNSWFlat with an ID selector.

One graph per engine (M=16, efConstruction=200) is built once over the whole train set. For
each selectivity (50%, 10%, 1%, 0.1% by default) two allowed sets are tried: a uniform random
subset (fixed seed) and the real ``lexname`` category (or union of the largest categories)
whose share is closest. Ground truth is exact over the allowed rows (NumPy brute force). The
ef sweep reports recall@k and batch QPS (all queries in one call) at 1 thread and all threads:

* Quiver with ``allowed`` as an array of ids (converted per call) and as a ``quiver.Bitset``
  (prepared once), with the strategy its planner chose (``explain=True``);
* faiss with ``SearchParametersHNSW(efSearch, sel=IDSelectorBitmap)``;

plus the unfiltered search of both for reference, and per case the QPS at the lowest ef whose
recall reaches the target (0.95).

    quiver bench-filtered                     # WordNet file, full size
    quiver bench-filtered --limit 5000 --queries 50 --ef 16,64 --reps 1   # smoke test
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from .args import add_dataset_arguments, float_list, int_list
from .common import (
    DEFAULT_SELECTIVITIES,
    Case,
    category_name,
    closest_categories,
    filtered_truth,
    fmt,
    load_with_payload,
    log_stderr,
    md_table,
    module_main,
    pct,
    random_subset,
    run_report_cli,
)
from .metrics import recall_at_k
from .timing import best_time, ensure_passive_omp, thread_limit, timed

DEFAULT_EFS = (16, 32, 64, 128, 256, 512)


@dataclass
class FilteredConfig:
    dataset: str | None = None
    limit: int | None = None
    queries: int | None = None
    k: int = 10
    efs: list[int] = field(default_factory=lambda: list(DEFAULT_EFS))
    selectivities: list[float] = field(default_factory=lambda: list(DEFAULT_SELECTIVITIES))
    category: str = "lexname"
    kinds: list[str] = field(default_factory=lambda: ["random", "category"])
    m: int = 16
    ef_construction: int = 200
    seed: int = 0
    reps: int = 3
    threads: str = "both"
    """'both', '1' or 'all': which QPS columns to measure."""
    faiss: bool = True
    quiver_modes: list[str] = field(default_factory=lambda: ["bitset", "ids"])
    target_recall: float = 0.95


# --- cases -----------------------------------------------------------------------------------


def build_cases(train: np.ndarray, test: np.ndarray, payload: dict, metric: str, k: int,
                selectivities, kinds, category: str, seed: int,
                log: Callable[[str], None]) -> list[Case]:
    n = train.shape[0]
    cases = [Case("unfiltered", "none", 1.0, None)]
    for s in selectivities:
        if "random" in kinds:
            cases.append(Case(f"random {pct(s)}", "random", s, random_subset(n, s, seed),
                              detail={"seed": seed}))
        if "category" in kinds:
            col = payload[category]
            cats = closest_categories(col, s)
            ids = np.flatnonzero(np.isin(col, cats)).astype(np.int64)
            cases.append(Case(f"{category_name(category, cats)} (~{pct(s)})", "category", s, ids,
                              detail={"field": category, "categories": cats}))
    for c in cases:
        t = time.perf_counter()
        c.truth = filtered_truth(train, test, c.ids, k, metric)
        log(f"  ground truth {c.name}: {c.share(n):.4%} allowed "
            f"({time.perf_counter() - t:.1f} s)")
    return cases


# --- engines ---------------------------------------------------------------------------------


class QuiverFiltered:
    engine = "quiver"

    def __init__(self, dim: int, metric: str, m: int, ef_construction: int):
        from ..engine.index import HNSWIndex

        self.make = lambda: HNSWIndex(dim, metric, m=m, ef_construction=ef_construction)
        self.idx = None
        self.spec = f"HNSWIndex(m={m}, ef_construction={ef_construction})"

    def warmup(self, x: np.ndarray, q: np.ndarray) -> None:
        """Compile (or load from Numba's cache) every path on a small graph first."""
        from ..engine.bitset import Bitset

        idx = self.make()
        m = min(len(x), 600)
        idx.add(x[:m])
        for allowed in (None, np.arange(0, m, 2), np.arange(3), Bitset.from_positions(
                np.arange(0, m, 3), m)):
            for batch in (q[:1], q[:8]):
                idx.search(batch, 5, allowed=allowed, ef=16, explain=True)

    def build(self, x: np.ndarray) -> None:
        self.idx = self.make()
        self.idx.add(x)

    def allowed(self, case: Case, mode: str):
        from ..engine.bitset import Bitset

        if case.ids is None:
            return None
        return case.ids if mode == "ids" else Bitset.from_positions(case.ids, self.idx._float.n)

    def searcher(self, case: Case, mode: str, k: int, ef: int):
        allowed = self.allowed(case, mode)
        last: dict = {}

        def search(q):
            _, ids, info = self.idx.search(q, k, allowed=allowed, ef=ef, explain=True)
            last.update(info)
            return ids

        return search, last

    def set_threads(self, n: int) -> None:
        pass


class FaissFiltered:
    engine = "faiss"

    def __init__(self, dim: int, metric: str, m: int, ef_construction: int):
        from .peers import _faiss

        self.faiss = _faiss()  # also sets the BLAS threshold to 20 (FACTS.md)
        self.dim, self.metric, self.m, self.efc = dim, metric, m, ef_construction
        self.idx = None
        self.spec = f"IndexHNSWFlat(M={m}, efConstruction={ef_construction})"
        self._sel: dict[str, tuple] = {}

    def _prep(self, x: np.ndarray) -> np.ndarray:
        from .engines import normalized

        return normalized(x) if self.metric == "cosine" else np.ascontiguousarray(x, np.float32)

    def build(self, x: np.ndarray) -> None:
        f = self.faiss
        fm = f.METRIC_L2 if self.metric == "l2" else f.METRIC_INNER_PRODUCT
        self.idx = f.IndexHNSWFlat(self.dim, self.m, fm)
        self.idx.hnsw.efConstruction = self.efc
        self.idx.add(self._prep(x))

    def selector(self, case: Case):
        """IDSelectorBitmap over a little-endian packed mask; the array is kept alive."""
        if case.ids is None:
            return None
        if case.name not in self._sel:
            mask = np.zeros(self.idx.ntotal, bool)
            mask[case.ids] = True
            bits = np.packbits(mask, bitorder="little")
            self._sel[case.name] = (bits, self.faiss.IDSelectorBitmap(
                self.idx.ntotal, self.faiss.swig_ptr(bits)))
        return self._sel[case.name][1]

    def searcher(self, case: Case, mode: str, k: int, ef: int):
        params = self.faiss.SearchParametersHNSW()
        params.efSearch = int(ef)
        sel = self.selector(case)
        if sel is not None:
            params.sel = sel

        def search(q):
            _, ids = self.idx.search(self._prep(q), k, params=params)
            return ids.astype(np.int64)

        return search, {}

    def set_threads(self, n: int) -> None:
        self.faiss.omp_set_num_threads(n)


# --- run -------------------------------------------------------------------------------------


def _thread_settings(threads: str) -> list[str]:
    return ["all", "1"] if threads == "both" else [threads]


def sweep(eng, label: str, mode: str, case: Case, q: np.ndarray, cfg: FilteredConfig,
          log: Callable[[str], None], n: int) -> list[dict]:
    rows = []
    for ef in cfg.efs:
        search, info = eng.searcher(case, mode, cfg.k, ef)
        row: dict = {"case": case.name, "kind": case.kind, "target": case.target,
                     "selectivity": case.share(n), "engine": label, "ef": ef,
                     "qps_1": None, "qps_all": None}
        try:
            for t in _thread_settings(cfg.threads):
                with thread_limit(t, eng.set_threads):
                    if "recall" not in row:  # first call: recall, and warms caches
                        row["recall"] = recall_at_k(search(q), case.truth, cfg.k)
                        if info:
                            row["strategy"] = info.get("strategy")
                            row["fallback_exact"] = info.get("fallback_exact")
                    row["qps_1" if t == "1" else "qps_all"] = (
                        q.shape[0] / best_time(lambda s=search: s(q), cfg.reps))
        except Exception as exc:  # one failing point must not lose the sweep
            log(f"    {label} ef={ef}: failed: {type(exc).__name__}: {exc}")
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        log(f"    {label:15s} ef={ef:<4d} recall={row['recall']:.4f} "
            f"qps1={fmt(row['qps_1'], 0)} qps_all={fmt(row['qps_all'], 0)}"
            + (f" {row.get('strategy')}" if row.get("strategy") else ""))
        rows.append(row)
    return rows


def best_points(rows: list[dict], target: float) -> list[dict]:
    """Per (case, engine): the lowest ef whose recall reaches ``target`` (None if none)."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["case"], r["engine"])
        cur = out.setdefault(key, {"case": r["case"], "selectivity": r["selectivity"],
                                   "engine": r["engine"], "ef": None, "recall": None,
                                   "qps_1": None, "qps_all": None, "strategy": None,
                                   "best_recall": None})
        rec = r.get("recall")
        if rec is None:
            continue
        if cur["best_recall"] is None or rec > cur["best_recall"]:
            cur["best_recall"] = rec
        if rec >= target and (cur["ef"] is None or r["ef"] < cur["ef"]):
            cur.update(ef=r["ef"], recall=rec, qps_1=r["qps_1"], qps_all=r["qps_all"],
                       strategy=r.get("strategy"))
    return list(out.values())


def run_filtered(cfg: FilteredConfig, log: Callable[[str], None] | None = None) -> dict:
    log = log or log_stderr
    ensure_passive_omp()
    t0 = time.perf_counter()
    ds, synthetic_payload = load_with_payload(cfg.dataset, cfg.limit, cfg.queries, cfg.seed)
    if cfg.category not in ds.payload:
        raise ValueError(f"category: no payload column {cfg.category!r} "
                         f"(have {', '.join(ds.payload)})")
    log(f"dataset {ds.name}: n={ds.n} dim={ds.dim} nq={ds.nq} metric={ds.metric}"
        + (" (synthetic payload)" if synthetic_payload else ""))
    cases = build_cases(ds.train, ds.test, ds.payload, ds.metric, cfg.k, cfg.selectivities,
                        cfg.kinds, cfg.category, cfg.seed, log)
    engines = [QuiverFiltered(ds.dim, ds.metric, cfg.m, cfg.ef_construction)]
    skipped = []
    if cfg.faiss:
        try:
            engines.append(FaissFiltered(ds.dim, ds.metric, cfg.m, cfg.ef_construction))
        except Exception as exc:  # PeerUnavailableError, or a faiss without bitmap selectors
            log(f"skipping faiss: {exc}")
            skipped.append({"name": "faiss", "reason": str(exc)})
    builds = {}
    rows: list[dict] = []
    q = ds.test
    for eng in engines:
        with thread_limit("all", eng.set_threads):
            if hasattr(eng, "warmup"):
                eng.warmup(ds.train, q)
            _, build_s = timed(lambda e=eng: e.build(ds.train))
        builds[eng.engine] = {"index": eng.spec, "build_s": build_s}
        log(f"{eng.engine} {eng.spec}: built in {build_s:.1f} s")
        modes = cfg.quiver_modes if eng.engine == "quiver" else ["bitmap"]
        for case in cases:
            log(f"  {case.name}")
            for mode in (modes[:1] if case.ids is None else modes):
                label = eng.engine if case.ids is None else f"{eng.engine} ({mode})"
                rows += sweep(eng, label, mode, case, q, cfg, log, ds.n)
        eng.idx = None
        gc.collect()
    from .runner import environment

    return {"benchmark": "filtered", "dataset": ds.describe() | {"synthetic_payload":
                                                                  synthetic_payload},
            "config": asdict(cfg), "environment": environment(), "builds": builds,
            "cases": [c.describe(ds.n) for c in cases], "results": rows,
            "best": best_points(rows, cfg.target_recall), "skipped": skipped,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "wall_s": round(time.perf_counter() - t0, 2)}


# --- report ----------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    ds, env, cfg = report["dataset"], report["environment"], report["config"]
    k, t_all, target = cfg["k"], env["threads_all"], cfg["target_recall"]
    out = [f"## Filtered HNSW: {ds['name']}, n={ds['n']:,}, dim={ds['dim']}, "
           f"queries={ds['nq']:,}, metric={ds['metric']}", "",
           "Builds (all threads): " + "; ".join(
               f"{e} {b['index']} {b['build_s']:.1f} s" for e, b in report["builds"].items())
           + ". QPS: one batch call over all queries, best of "
           f"{cfg['reps']}; {env['cpu_count']} CPUs, all threads = {t_all}, "
           f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY')}. Ground truth: exact over the "
           "allowed rows." + (" Payload columns are synthetic (random, uncorrelated)."
                              if ds.get("synthetic_payload") else ""), "",
           f"### Lowest ef reaching recall@{k} >= {target}", ""]
    head = ["filter", "allowed", "engine", "ef", f"recall@{k}", "QPS 1 thread",
            f"QPS {t_all} threads", "quiver strategy", "best recall in sweep"]
    rows = []
    for b in report["best"]:
        rows.append([b["case"], pct(b["selectivity"]), b["engine"],
                     fmt(b["ef"]) if b["ef"] is not None else "not reached",
                     fmt(b["recall"], 4), fmt(b["qps_1"], 0), fmt(b["qps_all"], 0),
                     b["strategy"] or "-", fmt(b["best_recall"], 4)])
    out += [md_table(head, rows), "### Sweep", ""]
    head = ["filter", "allowed", "engine", "ef", f"recall@{k}", "QPS 1 thread",
            f"QPS {t_all} threads", "strategy", "exact fallbacks"]
    rows = [[r["case"], pct(r["selectivity"]), r["engine"], r["ef"],
             fmt(r.get("recall"), 4), fmt(r["qps_1"], 0), fmt(r["qps_all"], 0),
             r.get("strategy") or "-", fmt(r.get("fallback_exact"))]
            for r in report["results"]]
    out.append(md_table(head, rows))
    if report.get("skipped"):
        out += ["Skipped: " + "; ".join(f"{s['name']} ({s['reason']})"
                                        for s in report["skipped"]), ""]
    return "\n".join(out)


_COLORS = {"quiver": "tab:blue", "quiver ids": "tab:orange", "faiss": "tab:green"}


def plot(report: dict, path) -> None:
    """Recall vs QPS (1 thread, else all threads) per filter, one line per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c["name"] for c in report["cases"]]
    ncol = 3
    nrow = (len(cases) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.9 * nrow), squeeze=False)
    k = report["config"]["k"]
    key = "qps_1" if any(r.get("qps_1") for r in report["results"]) else "qps_all"
    for ax, name in zip(axes.ravel(), cases, strict=False):
        series: dict[str, list] = {}
        for r in report["results"]:
            if r["case"] == name and r.get(key) and r.get("recall") is not None:
                series.setdefault(r["engine"], []).append((r["ef"], r["recall"], r[key]))
        for eng, pts in series.items():
            pts.sort()
            ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=eng,
                    color=_COLORS.get(eng.split(" (")[0] + (" ids" if "(ids)" in eng else "")))
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"recall@{k}")
        ax.set_ylabel(f"QPS ({'1 thread' if key == 'qps_1' else 'all threads'})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(cases):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- CLI -------------------------------------------------------------------------------------




def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p, "keep the first N train vectors")
    p.add_argument("--ef", type=int_list, help=f"ef sweep (default {','.join(map(str, DEFAULT_EFS))})")
    p.add_argument("--selectivity", type=float_list,
                   help="allowed shares (default 0.5,0.1,0.01,0.001)")
    p.add_argument("--kinds", default="random,category",
                   help="random, category or both (default random,category)")
    p.add_argument("--category", default="lexname", help="payload column for real categories")
    p.add_argument("--modes", default="bitset,ids",
                   help="how quiver gets the allowed set: bitset, ids or both")
    p.add_argument("--no-faiss", action="store_true", help="quiver only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions, best kept")
    p.add_argument("--threads-only", choices=["1", "all"], help="one QPS column only")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--out", help="output folder (default bench/results/filtered-<name>)")
    p.add_argument("--name", help="output folder suffix (default: the dataset name)")


def config_from_args(args: argparse.Namespace) -> FilteredConfig:
    cfg = FilteredConfig(dataset=args.dataset, limit=args.limit, queries=args.queries, k=args.k,
                         category=args.category, seed=args.seed, reps=args.reps,
                         threads=args.threads_only or "both", faiss=not args.no_faiss,
                         target_recall=args.target_recall,
                         kinds=[v.strip() for v in args.kinds.split(",") if v.strip()],
                         quiver_modes=[v.strip() for v in args.modes.split(",") if v.strip()])
    if args.ef:
        cfg.efs = args.ef
    if args.selectivity:
        cfg.selectivities = args.selectivity
    bad = set(cfg.kinds) - {"random", "category"} or set(cfg.quiver_modes) - {"bitset", "ids"}
    if bad:
        raise ValueError(f"unknown value(s) {sorted(bad)} in --kinds/--modes")
    return cfg


def run_cli(args: argparse.Namespace) -> int:
    return run_report_cli("filtered", lambda: run_filtered(config_from_args(args)), markdown,
                          plot, "recall_qps.png", args.out, args.name, lambda r: bool(r["results"]))


def main(argv=None) -> int:
    return module_main("filtered", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["FilteredConfig", "add_arguments", "main", "markdown", "run_filtered"]
