"""Benchmark datasets: ann-benchmarks HDF5 files, the multi-vector token layout, synthetic data.

Every loader returns float32 C-contiguous arrays (the kernels' input contract) and exact ground
truth. When ``limit`` keeps only the first rows of the train set, the file's neighbors no longer
apply, so they are recomputed exactly with NumPy in blocks (the oracle every test trusts).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.metric import Metric

DEFAULT_DENSE_FILE = "wordnet-minilm-384-angular.hdf5"
DEFAULT_TOKEN_FILE = "wordnet-minilm-tokens-128.hdf5"
PAYLOAD_COLUMNS = ("pos", "lexname")
GT_K = 100
_BLOCK_ELEMENTS = 1 << 24  # ~64 MiB of float32 scores per brute-force block

_DISTANCE_TO_METRIC = {
    "angular": "cosine", "cosine": "cosine", "cos": "cosine",
    "euclidean": "l2", "l2": "l2", "sqeuclidean": "l2",
    "dot": "ip", "ip": "ip", "inner_product": "ip",
}


@dataclass
class Dataset:
    """Dense vectors, queries and exact top-``neighbors.shape[1]`` ground truth (ids by row)."""

    name: str
    train: np.ndarray
    test: np.ndarray
    neighbors: np.ndarray
    metric: str
    distances: np.ndarray | None = None
    """ann-benchmarks convention: angular 1 - cos, euclidean sqrt(l2), dot -ip."""
    payload: dict[str, np.ndarray] = field(default_factory=dict)
    path: str | None = None
    learn: np.ndarray | None = None
    """A sample of queries from the test queries' distribution, disjoint from them (for
    query-aware codecs: LeanVec-OOD)."""

    @property
    def n(self) -> int:
        return int(self.train.shape[0])

    @property
    def nq(self) -> int:
        return int(self.test.shape[0])

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    def describe(self) -> dict:
        return {"name": self.name, "n": self.n, "nq": self.nq, "dim": self.dim,
                "metric": self.metric, "gt_k": int(self.neighbors.shape[1]), "path": self.path}


@dataclass
class MultiVectorDataset:
    """Ragged token-vector sets (CSR offsets) for documents and queries, Chamfer ground truth."""

    name: str
    doc_vectors: np.ndarray
    doc_offsets: np.ndarray
    query_vectors: np.ndarray
    query_offsets: np.ndarray
    neighbors: np.ndarray
    scores: np.ndarray
    metric: str = "chamfer"
    path: str | None = None

    @property
    def n_docs(self) -> int:
        return int(self.doc_offsets.shape[0] - 1)

    @property
    def nq(self) -> int:
        return int(self.query_offsets.shape[0] - 1)

    @property
    def dim(self) -> int:
        return int(self.doc_vectors.shape[1])

    def doc(self, i: int) -> np.ndarray:
        return self.doc_vectors[self.doc_offsets[i] : self.doc_offsets[i + 1]]

    def query(self, i: int) -> np.ndarray:
        return self.query_vectors[self.query_offsets[i] : self.query_offsets[i + 1]]


# --- paths -----------------------------------------------------------------------------------


def data_dirs() -> list[Path]:
    """Where real data may live: $QUIVER_DATA_DIR, then ../shared/data beside the project."""
    dirs = []
    if os.environ.get("QUIVER_DATA_DIR"):
        dirs.append(Path(os.environ["QUIVER_DATA_DIR"]))
    dirs.append(Path.cwd() / ".." / "shared" / "data")
    dirs.append(Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    return dirs


def find_data_file(name: str = DEFAULT_DENSE_FILE) -> Path | None:
    """The first existing ``name`` in :func:`data_dirs`, or None."""
    for d in data_dirs():
        p = d / name
        if p.is_file():
            return p.resolve()
    return None


# --- ground truth ----------------------------------------------------------------------------


def metric_from_distance(distance: str) -> str:
    """ann-benchmarks' ``distance`` attribute -> our metric name."""
    key = _DISTANCE_TO_METRIC.get(str(distance).lower())
    if key is None:
        raise ValueError(f"distance: unsupported {distance!r}; expected angular, euclidean or dot")
    return key


def ann_distances(scores: np.ndarray, metric: str) -> np.ndarray:
    """Engine scores (squared l2, similarity) -> ann-benchmarks' stored ``distances``."""
    m = Metric.parse(metric)
    if m is Metric.L2:
        return np.sqrt(np.maximum(scores, 0)).astype(np.float32)
    return ((1 - scores) if m is Metric.COSINE else -scores).astype(np.float32)


def _normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1).astype(np.float32)


def _topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest scores descending, ties broken by lower column index."""
    n = scores.shape[1]
    k = min(k, n)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def exact_neighbors(train: np.ndarray, test: np.ndarray, k: int, metric: str | Metric
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by NumPy brute force in query blocks -> (ids int64, scores float32).

    Scores follow the engine's convention: squared L2 ascending, ip/cosine similarity descending.
    With ``QUIVER_GT_DEVICE=cuda`` (or ``cuda:<n>``) a faiss GPU Flat index computes them
    instead (``engine.index.gpu``; ties may then come in another order).
    """
    device = os.environ.get("QUIVER_GT_DEVICE")
    if device and device != "cpu" and k <= 2048:
        from ..engine.index import index as make_index

        flat = make_index("Flat", np.shape(train)[1], metric, device=device)
        flat.add(train)
        scores, ids = flat.search(test, min(k, len(flat)))
        return ids, scores
    m = Metric.parse(metric)
    x = np.ascontiguousarray(train, np.float32)
    q = np.ascontiguousarray(test, np.float32)
    if m is Metric.COSINE:
        x, q = _normalized(x), _normalized(q)
    sq = np.einsum("ij,ij->i", x, x) if m is Metric.L2 else None
    k = min(k, x.shape[0])
    ids = np.empty((q.shape[0], k), np.int64)
    out = np.empty((q.shape[0], k), np.float32)
    block = max(1, _BLOCK_ELEMENTS // max(1, x.shape[0]))
    for s in range(0, q.shape[0], block):
        qb = q[s : s + block]
        sim = qb @ x.T
        if sq is not None:  # maximise -(|x|^2 - 2 q.x); |q|^2 is constant per row
            sim = 2 * sim - sq
        i, v = _topk_rows(sim, k)
        ids[s : s + block] = i
        if sq is not None:
            v = np.maximum(np.einsum("ij,ij->i", qb, qb)[:, None] - v, 0)
        out[s : s + block] = v
    return ids, out


def chamfer_scores(query: np.ndarray, doc_vectors: np.ndarray, doc_offsets: np.ndarray
                   ) -> np.ndarray:
    """Chamfer/MaxSim of one query token set against every document: sum_q max_d <q, d>."""
    sims = query @ doc_vectors.T
    starts = doc_offsets[:-1]
    empty = doc_offsets[1:] == starts
    best = np.maximum.reduceat(sims, np.minimum(starts, max(0, sims.shape[1] - 1)), axis=1)
    best[:, empty] = 0.0
    out = best.sum(axis=0, dtype=np.float32)
    out[empty] = -np.inf
    return out


def exact_chamfer_neighbors(ds: MultiVectorDataset, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Chamfer top-k of every query over every document -> (ids, scores) descending."""
    k = min(k, ds.n_docs)
    ids = np.empty((ds.nq, k), np.int64)
    scores = np.empty((ds.nq, k), np.float32)
    for i in range(ds.nq):
        s = chamfer_scores(ds.query(i), ds.doc_vectors, ds.doc_offsets)
        a, b = _topk_rows(s[None, :], k)
        ids[i], scores[i] = a[0], b[0]
    return ids, scores


# --- loaders ---------------------------------------------------------------------------------


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading HDF5 datasets needs h5py: pip install 'quiver[bench]'") from None
    return h5py


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def load_hdf5(path: str | os.PathLike, limit: int | None = None, queries: int | None = None,
              gt_k: int = GT_K) -> Dataset:
    """Load an ann-benchmarks file (train/test/neighbors/distances + ``distance`` attribute).

    ``limit`` keeps the first N train rows and recomputes exact ground truth; ``queries`` keeps
    the first N test rows. Payload columns ``pos``/``lexname`` come along when present."""
    h5py = _h5py()
    path = Path(path)
    with h5py.File(path, "r") as f:
        metric = metric_from_distance(f.attrs.get("distance", "euclidean"))
        learn = _f32(f["learn"][:]) if "learn" in f else None
        if "train" in f:
            source = f["train"]
        else:  # a query file (e.g. out-of-distribution) naming the train file beside it
            other = path.parent / str(f.attrs.get("train_file", ""))
            if not f.attrs.get("train_file") or not other.is_file():
                raise FileNotFoundError(f"{path}: no train set, and no train_file beside it")
            source = h5py.File(other, "r")["train"]
        n_total = source.shape[0]
        cut = n_total if limit is None or limit >= n_total else int(limit)
        train = _f32(source[:cut])
        nq = f["test"].shape[0] if queries is None else min(int(queries), f["test"].shape[0])
        test = _f32(f["test"][:nq])
        payload = {c: np.asarray(f[c][:cut]) for c in PAYLOAD_COLUMNS if c in f}
        has_gt = "neighbors" in f and cut == n_total
        neighbors = np.asarray(f["neighbors"][:nq], np.int64) if has_gt else None
        distances = (_f32(f["distances"][:nq]) if has_gt and "distances" in f else None)
    name = path.stem if cut == n_total else f"{path.stem}-first{cut}"
    if neighbors is None:
        neighbors, scores = exact_neighbors(train, test, gt_k, metric)
        distances = ann_distances(scores, metric)
    return Dataset(name, train, test, neighbors, metric, distances, payload, str(path), learn)


def load_multivector(path: str | os.PathLike, limit: int | None = None,
                     queries: int | None = None, gt_k: int = GT_K) -> MultiVectorDataset:
    """Load the token layout (doc_vectors/doc_offsets/query_vectors/query_offsets/neighbors/
    scores). ``limit`` keeps the first N documents and recomputes exact Chamfer ground truth."""
    h5py = _h5py()
    path = Path(path)
    with h5py.File(path, "r") as f:
        doc_off = np.asarray(f["doc_offsets"][:], np.int64)
        n_docs = doc_off.shape[0] - 1
        cut = n_docs if limit is None or limit >= n_docs else int(limit)
        doc_off = doc_off[: cut + 1]
        docs = _f32(f["doc_vectors"][: doc_off[-1]])
        q_off = np.asarray(f["query_offsets"][:], np.int64)
        nq = q_off.shape[0] - 1 if queries is None else min(int(queries), q_off.shape[0] - 1)
        q_off = q_off[: nq + 1]
        qv = _f32(f["query_vectors"][: q_off[-1]])
        full = cut == n_docs
        neighbors = np.asarray(f["neighbors"][:nq], np.int64) if full else None
        scores = _f32(f["scores"][:nq]) if full else None
    name = path.stem if cut == n_docs else f"{path.stem}-first{cut}"
    ds = MultiVectorDataset(name, docs, doc_off, qv, q_off, np.zeros((nq, 0), np.int64),
                            np.zeros((nq, 0), np.float32), path=str(path))
    if neighbors is None:
        neighbors, scores = exact_chamfer_neighbors(ds, gt_k)
    ds.neighbors, ds.scores = neighbors, scores
    return ds


def synthetic(n: int = 20_000, nq: int = 1000, dim: int = 128, seed: int = 0,
              metric: str = "l2", clusters: int | None = None, gt_k: int = GT_K) -> Dataset:
    """A clustered Gaussian mixture (queries from the same mixture) with exact ground truth.

    Clusters make the data harder than isotropic noise for graphs and IVF, closer to real
    embeddings, while staying reproducible and free of files."""
    rng = np.random.default_rng(seed)
    c = clusters or max(1, int(np.sqrt(n) / 2))
    centers = rng.standard_normal((c, dim), dtype=np.float32)
    spread = rng.uniform(0.3, 0.8, c).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        lab = rng.integers(0, c, m)
        pts = centers[lab] + spread[lab, None] * rng.standard_normal((m, dim), dtype=np.float32)
        return np.ascontiguousarray(pts, np.float32)

    train, test = draw(n), draw(nq)
    metric = Metric.parse(metric).value
    neighbors, scores = exact_neighbors(train, test, gt_k, metric)
    return Dataset(f"synthetic-{n}x{dim}", train, test, neighbors, metric,
                   ann_distances(scores, metric))


_SYNTH = re.compile(r"synthetic(?::(\d+)x(\d+))?(?::(l2|ip|cosine))?", re.IGNORECASE)


def load_dataset(spec: str | os.PathLike, limit: int | None = None,
                 queries: int | None = None, seed: int = 0) -> Dataset:
    """A path to an HDF5 file, or ``synthetic[:NxD][:metric]`` (default 20000x128, l2)."""
    m = _SYNTH.fullmatch(str(spec))
    if m:
        n = int(m.group(1) or 20_000)
        if limit is not None:
            n = min(n, int(limit))
        return synthetic(n, queries or 1000, int(m.group(2) or 128), seed,
                         (m.group(3) or "l2").lower())
    if not Path(spec).is_file():
        raise FileNotFoundError(f"dataset: no such file {str(spec)!r} "
                                "(use a path to an HDF5 file or 'synthetic[:NxD]')")
    return load_hdf5(spec, limit=limit, queries=queries)


def write_hdf5(path: str | os.PathLike, ds: Dataset, distance: str | None = None) -> None:
    """Write ``ds`` in the ann-benchmarks layout (used by tests and to export synthetic data)."""
    h5py = _h5py()
    names = {"cosine": "angular", "l2": "euclidean", "ip": "dot"}
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = distance or names[ds.metric]
        f.create_dataset("train", data=ds.train)
        f.create_dataset("test", data=ds.test)
        f.create_dataset("neighbors", data=ds.neighbors.astype(np.int32))
        if ds.distances is not None:
            f.create_dataset("distances", data=ds.distances.astype(np.float32))
        for k, v in ds.payload.items():
            f.create_dataset(k, data=v)
