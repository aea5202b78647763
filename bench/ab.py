"""Old vs new: one index spec on two builds of Quiver, measured in one process, interleaved.

Engines timed one after another on this shared 2-core box disagree by 25-40%, so both builds
live in the same process: the base (a git commit, checked out as a worktree under
/tmp/quiver-ab and imported as ``quiver_base``) and the head (this working tree, ``quiver``).
Both build the same index on the same data, then every round sweeps every ef with the two
builds back to back, base first in even rounds and head first in odd ones. Per (build, ef)
the best QPS over rounds is kept. QPS is the project's "QPS 1 thread" figure (see
``runner.measure_engines``, which schedules ``quiver bench`` the same way): all queries in
one batch ``search`` call, Numba/BLAS pinned to ``--threads``, best of ``--reps`` calls per
round. Each build's QPS at the target recall is interpolated linearly in recall between the
two sweep points that bracket it (``metrics.at_target``); head/base is the result.

    python -m quiver.bench.ab --base HEAD~1 --limit 20000 --queries 200 --rounds 2   # quick
    python -m quiver.bench.ab --base main --spec HNSW16,LVQ8                         # full file
"""

from __future__ import annotations

import argparse
import gc
import importlib
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

import numpy as np

from ..engine.index import index as head_index
from .args import int_list
from .common import fmt, log_stderr, md_table, module_main, results_dir, write_outputs
from .datasets import DEFAULT_DENSE_FILE, data_dirs, find_data_file, load_dataset
from .engines import QuiverEngine
from .metrics import at_target, recall_at_k
from .runner import environment
from .timing import batch_qps, ensure_passive_omp, rotated, thread_limit, timed

DEFAULT_EFS = (16, 24, 32, 48, 64, 96, 128)
AB_ROOT = Path("/tmp/quiver-ab")
BASE_PACKAGE = "quiver_base"
SUBPACKAGES = ("engine", "kernels")
"""What the base build needs from its worktree: the index code and the kernels it imports."""


class ABError(ValueError):
    """A bad --base, a broken worktree, or a base build that cannot be imported."""


@dataclass
class ABConfig:
    base: str
    spec: str = "HNSW16"
    data: str | None = None
    limit: int | None = None
    queries: int | None = None
    efs: list[int] = field(default_factory=lambda: list(DEFAULT_EFS))
    rounds: int = 5
    reps: int = 3
    target: float = 0.95
    k: int = 10
    threads: int = 1
    saved: bool = False
    """Search each index saved and loaded back by its own build, as a sealed segment is."""

    def validate(self) -> None:
        if self.k <= 0 or self.rounds <= 0 or self.reps <= 0 or self.threads <= 0:
            raise ValueError("--k, --rounds, --reps and --threads must be positive")
        if not self.efs or min(self.efs) <= 0:
            raise ValueError(f"--efs: expected positive integers, got {self.efs}")
        if not 0 < self.target <= 1:
            raise ValueError(f"--target: expected a recall in (0, 1], got {self.target}")
        for name in ("limit", "queries"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"--{name}: expected a positive count, got {v}")


# --- the base build: a worktree imported under another top-level name ------------------------


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                             text=True)
    except FileNotFoundError:
        raise ABError("git is not installed") from None
    except subprocess.CalledProcessError as exc:
        raise ABError(f"git {' '.join(args)}: {exc.stderr.strip() or exc}") from None
    return out.stdout.strip()


def repo_root() -> Path:
    """The git checkout this (head) build is imported from."""
    here = Path(__file__).resolve().parents[1]
    return Path(_git(here, "rev-parse", "--show-toplevel"))


def resolve_commit(repo: Path, commitish: str) -> str:
    """Full sha of ``commitish``, or ABError if it names no commit."""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{commitish}^{{commit}}")
    except ABError:
        raise ABError(f"--base: {commitish!r} is not a commit in {repo}") from None


def ensure_worktree(repo: Path, sha: str, root: Path = AB_ROOT) -> Path:
    """``root/<sha>``: a detached worktree of ``sha``, added once and reused afterwards."""
    path = root / sha
    if path.exists():
        try:
            at = _git(path, "rev-parse", "HEAD")
        except ABError:
            at = None
        if at != sha:
            raise ABError(f"{path} exists but is not a worktree at {sha[:12]}; remove it "
                          "(git worktree remove --force) and retry")
        return path
    root.mkdir(parents=True, exist_ok=True)
    # --force: re-adds a worktree whose folder was deleted by hand but is still registered
    _git(repo, "worktree", "add", "--force", "--detach", str(path), sha)
    return path


def shadow_package(worktree: Path, root: Path = AB_ROOT) -> Path:
    """``root/<sha>-pkg/quiver_base/`` with an empty ``__init__.py`` and engine/, kernels/
    symlinked to the worktree (their imports are relative); returns the folder for sys.path."""
    missing = [s for s in SUBPACKAGES if not (worktree / s / "__init__.py").is_file()]
    if missing:
        raise ABError(f"base commit {worktree.name[:12]} has no {', '.join(missing)} package "
                      "(too old for this layout)")
    top = root / f"{worktree.name}-pkg"
    pkg = top / BASE_PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").touch()
    for sub in SUBPACKAGES:
        link = pkg / sub
        if link.is_symlink() and link.resolve() == (worktree / sub).resolve():
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(worktree / sub, target_is_directory=True)
    return top


def import_base(top: Path) -> Callable:
    """``quiver_base.engine.index.index`` (the spec factory) from the shadow package in ``top``.

    Numba caches by source path, so the base's kernels compile and cache apart from head's."""
    loaded = sys.modules.get(BASE_PACKAGE)
    if loaded is not None and Path(loaded.__path__[0]).parent != top:
        raise ABError(f"{BASE_PACKAGE} is already imported from {loaded.__path__[0]}")
    sys.path.insert(0, str(top))
    try:
        mod = importlib.import_module(f"{BASE_PACKAGE}.engine.index")
    except Exception as exc:
        raise ABError(f"importing the base build from {top}: {type(exc).__name__}: {exc}") from exc
    return mod.index


def base_factory(repo: Path, commitish: str) -> tuple[Callable, dict]:
    """(spec factory, description) of the base build at ``commitish``."""
    sha = resolve_commit(repo, commitish)
    worktree = ensure_worktree(repo, sha)
    factory = import_base(shadow_package(worktree))
    return factory, {"commit": commitish, "sha": sha, "worktree": str(worktree),
                     "subject": _git(repo, "log", "-1", "--format=%s", sha)}


def head_description(repo: Path) -> dict:
    """HEAD's sha, and whether engine/ or kernels/ differ from it (head is the working tree)."""
    sha = _git(repo, "rev-parse", "HEAD")
    dirty = bool(_git(repo, "status", "--porcelain", "--", *SUBPACKAGES))
    return {"commit": "working tree", "sha": sha, "dirty": dirty,
            "subject": _git(repo, "log", "-1", "--format=%s", sha)}


class BuildEngine(QuiverEngine):
    """QuiverEngine whose indexes come from a given build's factory (base or head)."""

    def __init__(self, label: str, factory: Callable, spec: str, dim: int, metric: str,
                 saved: bool = False):
        super().__init__(spec, dim, metric)
        self.label = label
        self.factory = factory
        self.saved = saved

    def build(self, x: np.ndarray) -> None:
        self.idx = self.factory(self.index, self.dim, self.metric, **self.options)
        self.idx.train(x)
        self.idx.add(x)
        if self.saved:  # that build's own save and load (``registry.load_index``)
            self._serve_from_files(importlib.import_module(self.factory.__module__).load_index)

    def memory(self) -> int | None:
        try:
            return super().memory()
        except AttributeError:  # an old base without memory_usage()
            return None


# --- measurement -----------------------------------------------------------------------------


def run_ab(cfg: ABConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Set up the base build, load the data, build both, run the interleaved rounds."""
    cfg.validate()
    t0 = time.perf_counter()
    repo = repo_root()
    resolve_commit(repo, cfg.base)  # a typo fails before the data is read
    data = cfg.data or find_data_file(DEFAULT_DENSE_FILE)
    if data is None:
        raise FileNotFoundError(f"no {DEFAULT_DENSE_FILE} in {', '.join(map(str, data_dirs()))}; "
                                "pass --data PATH")
    ds = load_dataset(data, limit=cfg.limit, queries=cfg.queries)
    if cfg.queries is not None and ds.nq > cfg.queries:
        ds.test, ds.neighbors = ds.test[: cfg.queries], ds.neighbors[: cfg.queries]
    if ds.neighbors.shape[1] < cfg.k:
        raise ValueError(f"k={cfg.k} exceeds the {ds.neighbors.shape[1]} true neighbors stored")
    log(f"dataset {ds.name}: n={ds.n} dim={ds.dim} nq={ds.nq} metric={ds.metric}")

    factory, base = base_factory(repo, cfg.base)
    head = head_description(repo)
    log(f"base {base['sha'][:12]} ({base['subject']}) from {base['worktree']}")
    log(f"head {head['sha'][:12]}{' + uncommitted engine/kernels changes' if head['dirty'] else ''}")

    engines = [BuildEngine("base", factory, cfg.spec, ds.dim, ds.metric, cfg.saved),
               BuildEngine("head", head_index, cfg.spec, ds.dim, ds.metric, cfg.saved)]
    efs = sorted(set(cfg.efs))
    builds: dict[str, dict] = {}
    recall: dict[str, dict[int, float]] = {e.label: {} for e in engines}
    qps: dict[str, dict[int, list[float]]] = {e.label: {ef: [] for ef in efs} for e in engines}
    with thread_limit(cfg.threads) as threads:
        for eng in engines:
            eng.warmup(ds.train, ds.test)
            _, build_s = timed(lambda eng=eng: eng.build(ds.train))
            mem = eng.memory()
            builds[eng.label] = {"build_s": build_s,
                                 "bytes_per_vector": None if mem is None else mem / ds.n}
            for ef in efs:  # recall, and the first call at each ef warms whatever it touches
                recall[eng.label][ef] = recall_at_k(eng.search(ds.test, cfg.k, ef=ef),
                                                    ds.neighbors, cfg.k)
            log(f"{eng.label}: built in {build_s:.2f} s; recall@{cfg.k} "
                + " ".join(f"ef={ef}:{recall[eng.label][ef]:.4f}" for ef in efs))
        gc.collect()
        gc.disable()
        try:
            for r in range(cfg.rounds):
                order = rotated(engines, r)
                for ef in efs:
                    for eng in order:
                        def search(q, eng=eng, ef=ef):
                            return eng.search(q, cfg.k, ef=ef)

                        qps[eng.label][ef].append(batch_qps(search, ds.test, cfg.reps))
                log(f"round {r + 1}/{cfg.rounds} ({'-'.join(e.label for e in order)}): "
                    + " ".join(f"ef={ef}:{qps['head'][ef][-1] / qps['base'][ef][-1]:.3f}"
                               for ef in efs) + " head/base")
        finally:
            gc.enable()
    for eng in engines:
        eng.close()

    points = {lab: [{"ef": ef, "recall": recall[lab][ef], "qps": max(qps[lab][ef]),
                     "qps_rounds": qps[lab][ef]} for ef in efs] for lab in ("base", "head")}
    ratios = [{"ef": ef, "best": max(qps["head"][ef]) / max(qps["base"][ef]),
               "paired_median": median(h / b for h, b in zip(qps["head"][ef], qps["base"][ef],
                                                                strict=True))}
              for ef in efs]
    target = {lab: at_target(points[lab], cfg.target) for lab in points}
    qb, qh = target["base"]["qps"], target["head"]["qps"]
    return {"dataset": ds.describe(), "config": asdict(cfg) | {"threads": threads, "efs": efs},
            "environment": environment(), "base": base, "head": head, "builds": builds,
            "points": points, "ratios": ratios, "at_target": target,
            "ratio_at_target": qh / qb if qb and qh else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "wall_s": round(time.perf_counter() - t0, 2)}


# --- output ----------------------------------------------------------------------------------


def _target_text(t: dict) -> str:
    if t["qps"] is None:
        return "not reached"
    ef = t["between"]
    note = f"between ef={ef[0]} and ef={ef[1]}" if len(ef) == 2 else (
        f">=, already reached at the lowest ef={ef[0]}")
    return f"{fmt(t['qps'], 0)} ({note})"


def markdown(report: dict) -> str:
    """Header, one row per ef (recall and best QPS of each build, head/base), QPS at target."""
    ds, cfg, env = report["dataset"], report["config"], report["environment"]
    base, head, builds = report["base"], report["head"], report["builds"]
    k = cfg["k"]
    head_name = f"`{head['sha'][:12]}`" + (" + uncommitted changes" if head["dirty"] else "")
    rows = []
    for b, h, r in zip(report["points"]["base"], report["points"]["head"], report["ratios"],
                       strict=True):
        rows.append([b["ef"], fmt(b["recall"], 4), fmt(h["recall"], 4), fmt(b["qps"], 0),
                     fmt(h["qps"], 0), fmt(r["best"], 3), fmt(r["paired_median"], 3)])
    ratio = report["ratio_at_target"]
    out = [f"## A/B {cfg['spec']} on {ds['name']}: n={ds['n']:,}, dim={ds['dim']}, "
           f"queries={ds['nq']:,}, metric={ds['metric']}", "",
           f"base: `{base['sha'][:12]}` ({base['commit']}: {base['subject']}); "
           f"head: {head_name} (working tree).", "",
           f"{env['cpu_count']} CPUs, {cfg['threads']} thread(s) (Numba/BLAS), "
           f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY')}. QPS: one batch search call over all "
           f"queries, best of {cfg['reps']} per round, best of {cfg['rounds']} interleaved "
           "rounds (base/head order alternating). Paired median: the median over rounds of "
           "head/base measured back to back.", "",
           f"Build: base {fmt(builds['base']['build_s'], 2)} s, head "
           f"{fmt(builds['head']['build_s'], 2)} s (sequential, one each)"
           + ("; each index saved and loaded back by its own build before the searches."
              if cfg.get("saved") else "."), "",
           md_table(["ef", f"recall@{k} base", f"recall@{k} head", "QPS base", "QPS head",
                     "head/base", "paired median"], rows),
           f"QPS at recall@{k} = {cfg['target']}:", "",
           f"- base: {_target_text(report['at_target']['base'])}",
           f"- head: {_target_text(report['at_target']['head'])}",
           f"- head/base: {fmt(ratio, 3) if ratio else 'n/a'}", ""]
    return "\n".join(out)


def plot(report: dict, path: Path) -> None:
    """Recall@k vs best QPS (log scale), one line per build, the target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for lab, pts in report["points"].items():
        sha = report[lab]["sha"][:10] + ("+" if report[lab].get("dirty") else "")
        ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], marker="o",
                label=f"{lab} {sha}")
    ax.axvline(report["config"]["target"], ls="--", color="gray", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{report['config']['k']}")
    ax.set_ylabel(f"queries per second ({report['config']['threads']} thread)")
    ax.set_title(f"{report['config']['spec']} on {report['dataset']['name']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- CLI -------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="git commit-ish of the old build")
    p.add_argument("--spec", default="HNSW16", help="index spec (default HNSW16)")
    p.add_argument("--data", help=f"HDF5 path or synthetic[:NxD][:metric] (default: "
                                  f"{DEFAULT_DENSE_FILE} in ../shared/data)")
    p.add_argument("--limit", type=int, help="keep the first N train vectors (exact ground "
                                             "truth is recomputed)")
    p.add_argument("--queries", type=int, help="use the first N queries")
    p.add_argument("--efs", type=int_list, default=list(DEFAULT_EFS),
                   help=f"ef sweep (default {','.join(map(str, DEFAULT_EFS))})")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per round, best kept")
    p.add_argument("--target", type=float, default=0.95, help="recall for the QPS figure")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="Numba/BLAS threads (default 1)")
    p.add_argument("--saved", action="store_true", help="search each index saved and loaded "
                   "back by its own build (as a collection's sealed segments are)")
    p.add_argument("--out", help="output folder (default bench/results/ab-<dataset>-<spec>)")


def run_cli(args: argparse.Namespace) -> int:
    """Run, print the Markdown, write results.json/.md/recall_qps.png; exit 2 on bad input."""
    ensure_passive_omp()
    cfg = ABConfig(base=args.base, spec=args.spec, data=args.data, limit=args.limit,
                   queries=args.queries, efs=args.efs, rounds=args.rounds, reps=args.reps,
                   target=args.target, k=args.k, threads=args.threads, saved=args.saved)
    try:
        report = run_ab(cfg)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"quiver.bench.ab: {exc}", file=sys.stderr)
        return 2
    slug = re.sub(r"[^a-z0-9]+", "-", cfg.spec.lower()).strip("-")
    md = markdown(report)
    out = args.out or results_dir("ab", f"{report['dataset']['name']}-{slug}")
    paths = write_outputs(report, md, out, plot, "recall_qps.png")
    print(md)
    log_stderr("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main("ab", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ABConfig", "add_arguments", "at_target", "main", "markdown", "run_ab"]
