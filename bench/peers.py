"""Peer engines (FAISS, hnswlib, usearch) behind the common ``Engine`` interface.

Each is imported lazily; a missing package raises ``PeerUnavailableError`` with the install hint
and the runner skips that peer. Settings follow shared/FACTS.md so comparisons are fair:
faiss' BLAS threshold at 20, OMP_WAIT_POLICY=PASSIVE, explicit thread counts, and the same
graph parameters (M=16, construction ef 200) for every HNSW.
"""

from __future__ import annotations

import importlib

import numpy as np

from .engines import Engine, normalized, pad_ids
from .isolated import IsolatedEngine

HNSW_M = 16
EF_CONSTRUCTION = 200


class PeerUnavailableError(RuntimeError):
    """The peer's package is not installed (or the peer name is unknown)."""


def _require(module: str, pip_name: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PeerUnavailableError(f"{module} is not installed (pip install {pip_name})") from None


def _faiss():
    faiss = _require("faiss", "faiss-cpu")
    # Default 128000 sends batches of < 128k queries down a ~10x slower non-BLAS path.
    faiss.cvar.distance_compute_blas_threshold = 20
    return faiss


class _Faiss(Engine):
    engine = "faiss"

    def __init__(self, dim: int, metric: str):
        super().__init__(dim, metric)
        self.faiss = _faiss()
        self.fmetric = (self.faiss.METRIC_L2 if self.metric == "l2"
                        else self.faiss.METRIC_INNER_PRODUCT)
        self.idx = None

    def _prep(self, x: np.ndarray) -> np.ndarray:
        return normalized(x) if self.metric == "cosine" else np.ascontiguousarray(x, np.float32)

    def set_threads(self, n: int) -> None:
        self.faiss.omp_set_num_threads(n)

    def _set_params(self, params: dict) -> None:
        """Search knobs; faiss keeps them on the index, so set them before every call."""

    def search(self, q: np.ndarray, k: int, **params) -> np.ndarray:
        self._set_params(params)
        _, ids = self.idx.search(self._prep(q), k)
        return pad_ids(ids, k)

    def memory(self) -> int:
        return int(self.faiss.serialize_index(self.idx).nbytes)

    def close(self) -> None:
        self.idx = None


class FaissFlat(_Faiss):
    """IndexFlatL2 / IndexFlatIP: the exact baseline."""

    def __init__(self, dim: int, metric: str):
        super().__init__(dim, metric)
        self.index = "IndexFlatL2" if self.metric == "l2" else "IndexFlatIP"

    def build(self, x: np.ndarray) -> None:
        self.idx = getattr(self.faiss, self.index)(self.dim)
        self.idx.add(self._prep(x))

    def memory(self) -> int:
        return int(self.idx.ntotal * self.idx.code_size)


class FaissHNSW(_Faiss):
    """IndexHNSWFlat(M), efConstruction 200, sweeping efSearch."""

    param = "ef"

    def __init__(self, dim: int, metric: str, m: int = HNSW_M):
        super().__init__(dim, metric)
        self.m = int(m)
        self.index = f"IndexHNSWFlat(M={self.m})"

    def build(self, x: np.ndarray) -> None:
        self.idx = self.faiss.IndexHNSWFlat(self.dim, self.m, self.fmetric)
        self.idx.hnsw.efConstruction = EF_CONSTRUCTION
        self.idx.add(self._prep(x))

    def _set_params(self, params: dict) -> None:
        if "ef" in params:
            self.idx.hnsw.efSearch = int(params["ef"])


class FaissHNSWSQ8(FaissHNSW):
    """IndexHNSWSQ(M, QT_8bit): the graph over 8-bit scalar codes (no float32 kept)."""

    def __init__(self, dim: int, metric: str, m: int = HNSW_M):
        super().__init__(dim, metric, m)
        self.index = f"IndexHNSWSQ(M={self.m},SQ8)"

    def build(self, x: np.ndarray) -> None:
        self.idx = self.faiss.IndexHNSWSQ(self.dim, self.faiss.ScalarQuantizer.QT_8bit, self.m,
                                          self.fmetric)
        self.idx.hnsw.efConstruction = EF_CONSTRUCTION
        x = self._prep(x)
        self.idx.train(x)
        self.idx.add(x)


class SvsVamana(Engine):
    """Intel SVS Vamana over float16 (or float32) rows, graph degree R (default 32), alpha 0.95
    for ip/cosine and 1.2 for l2, build window 64 (shared/FACTS.md's settings); ``ef`` is the
    search window. LVQ/LeanVec are left out: they exit the process on non-Intel CPUs."""

    engine = "svs"
    param = "ef"

    def __init__(self, dim: int, metric: str, r: int = 32, bits: int = 16):
        super().__init__(dim, metric)
        self.svs = _require("svs", "scalable-vs")
        self.r, self.dtype = int(r), np.float16 if int(bits) == 16 else np.float32
        self.index = f"Vamana(R={self.r},{'float16' if bits == 16 else 'float32'})"
        self.idx = None
        self.threads = 1

    def set_threads(self, n: int) -> None:
        self.threads = n
        if self.idx is not None:
            self.idx.num_threads = n

    def _build_args(self, x: np.ndarray):
        """(float32 rows, build parameters, distance): the settings every SVS build shares."""
        l2 = self.metric == "l2"
        params = self.svs.VamanaBuildParameters(alpha=1.2 if l2 else 0.95,
                                                graph_max_degree=self.r, window_size=64)
        dist = self.svs.DistanceType.L2 if l2 else self.svs.DistanceType.MIP
        data = normalized(x) if self.metric == "cosine" else np.ascontiguousarray(x, np.float32)
        self.n = data.shape[0]
        return data, params, dist

    def build(self, x: np.ndarray) -> None:
        data, params, dist = self._build_args(x)
        self.idx = self.svs.Vamana.build(params, data.astype(self.dtype), dist,
                                         num_threads=max(self.threads, 2))
        self.idx.num_threads = self.threads

    def search(self, q: np.ndarray, k: int, **params) -> np.ndarray:
        if "ef" in params:
            self.idx.search_window_size = max(int(params["ef"]), k)
        q = normalized(q) if self.metric == "cosine" else np.ascontiguousarray(q, np.float32)
        ids, _ = self.idx.search(np.atleast_2d(q).astype(np.float32), k)
        return pad_ids(np.asarray(ids, np.int64), k)

    def memory(self) -> int:
        """Rows plus a full-degree graph of uint32 neighbours (SVS reports no footprint)."""
        return int(self.n * (self.dim * np.dtype(self.dtype).itemsize + 4 * self.r))

    def close(self) -> None:
        self.idx = None


def _is_intel() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "GenuineIntel" in f.read(65536)
    except OSError:
        return False


class _SvsCompressed(SvsVamana):
    """SVS Vamana over its own compressed codes, built from a loader over a float32 file (its
    Python API takes compressed datasets only that way). Run it through ``IsolatedEngine``:
    on a non-Intel CPU SVS ends the process. ``memory`` counts the codes at SVS's 32-byte
    alignment plus the graph; SVS reports no footprint."""

    ALIGN = 32
    CONSTANTS = 8  # an LVQ vector's scale and bias (float16), with its padding

    def __init__(self, dim: int, metric: str, r: int = 32):
        super().__init__(dim, metric, r, 32)

    def _loader(self, source, data: np.ndarray):
        raise NotImplementedError

    def build(self, x: np.ndarray) -> None:
        import tempfile
        from pathlib import Path

        data, params, dist = self._build_args(x)
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "data.fvecs")
            self.svs.write_vecs(data, path)
            source = self.svs.VectorDataLoader(path, self.svs.DataType.float32, dims=self.dim)
            self.idx = self.svs.Vamana.build(params, self._loader(source, data), dist,
                                             num_threads=max(self.threads, 2))
        self.idx.num_threads = self.threads

    def _codes(self, dims: int, bits: int) -> int:
        return -(-(dims * bits // 8 + self.CONSTANTS) // self.ALIGN) * self.ALIGN

    def memory(self) -> int:
        return int(self.n * (self._vector_bytes() + 4 * self.r))

    def _vector_bytes(self) -> int:
        raise NotImplementedError


class SvsLVQ(_SvsCompressed):
    """SVS Vamana LVQ-B1 (one level) or LVQ-B1xB2 (a residual for re-ranking), degree R."""

    def __init__(self, dim: int, metric: str, primary: int = 8, residual: int = 0,
                 r: int = 32):
        super().__init__(dim, metric, r)
        self.primary, self.residual = int(primary), int(residual)
        codec = f"LVQ{self.primary}" + (f"x{self.residual}" if self.residual else "")
        self.index = f"Vamana(R={self.r},{codec})"

    def _loader(self, source, data: np.ndarray):
        return self.svs.LVQLoader(source, self.primary, self.residual, padding=self.ALIGN)

    def _vector_bytes(self) -> int:
        extra = self._codes(self.dim, self.residual) if self.residual else 0
        return self._codes(self.dim, self.primary) + extra


class SvsLeanVec(_SvsCompressed):
    """SVS LeanVec(d', LVQ8, LVQ8): traversal on LVQ8 codes of the projected vectors,
    re-ranking on LVQ8 codes of the full ones. ID: SVS's PCA projection; OOD (``ood``): the
    query-aware matrices of ``svs.compute_leanvec_matrices`` from the dataset's learn
    queries."""

    def __init__(self, dim: int, metric: str, dims: int = 160, r: int = 32, ood: bool = False):
        super().__init__(dim, metric, r)
        self.dims, self.ood = int(dims), bool(ood)
        self.index = f"Vamana(R={self.r},LeanVec{'-OOD' if ood else ''}({self.dims},LVQ8,LVQ8))"

    def _loader(self, source, data: np.ndarray):
        kind = self.svs.LeanVecKind.lvq8
        if not self.ood:
            return self.svs.LeanVecLoader(source, self.dims, kind, kind, alignment=self.ALIGN)
        if self.learn is None:
            raise ValueError(f"{self.index}: the dataset has no learn queries")
        sample = data[np.random.default_rng(0).permutation(self.n)[:100_000]]
        learn = normalized(self.learn) if self.metric == "cosine" else self.learn
        data_m, query_m = self.svs.compute_leanvec_matrices(
            sample, np.ascontiguousarray(learn, np.float32), self.dims)
        return self.svs.LeanVecLoader(source, self.dims, kind, kind, data_matrix=data_m,
                                      query_matrix=query_m, alignment=self.ALIGN)

    def _vector_bytes(self) -> int:
        return self._codes(self.dims, 8) + self._codes(self.dim, 8)


class SvsLeanVecOOD(SvsLeanVec):
    def __init__(self, dim: int, metric: str, dims: int = 160, r: int = 32):
        super().__init__(dim, metric, dims, r, ood=True)


def _isolated(cls: type[_SvsCompressed]):
    """The peer's factory: checked here (an unknown CPU would end the child), run there."""
    def make(dim: int, metric: str, *args: int) -> Engine:
        _require("svs", "scalable-vs")
        if not _is_intel():
            raise PeerUnavailableError(f"{cls.__name__}: SVS LVQ/LeanVec run only on Intel "
                                       f"CPUs (they end the process on others)")
        return IsolatedEngine(cls, dim, metric, *args)
    return make


def default_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, with at least 39 training points per list as faiss wants."""
    return int(max(1, min(4 * int(np.sqrt(n)), n // 39)))


class _FaissIVF(_Faiss):
    param = "nprobe"

    def __init__(self, dim: int, metric: str, nlist: int | None = None):
        super().__init__(dim, metric)
        self.nlist = nlist

    def _make(self, quantizer, nlist: int):
        raise NotImplementedError

    def build(self, x: np.ndarray) -> None:
        x = self._prep(x)
        nlist = int(self.nlist or default_nlist(x.shape[0]))
        cls = self.faiss.IndexFlatL2 if self.metric == "l2" else self.faiss.IndexFlatIP
        self._quantizer = cls(self.dim)
        self.idx = self._make(self._quantizer, nlist)
        rng = np.random.default_rng(0)
        sample = x if x.shape[0] <= 256 * nlist else x[rng.choice(x.shape[0], 256 * nlist,
                                                                  replace=False)]
        self.idx.train(sample)
        self.idx.add(x)

    def _set_params(self, params: dict) -> None:
        if "nprobe" in params:
            self.idx.nprobe = int(params["nprobe"])


class FaissIVFFlat(_FaissIVF):
    """IndexIVFFlat(nlist), sweeping nprobe."""

    @property
    def index(self) -> str:
        return f"IndexIVFFlat(nlist={self.nlist or 'auto'})"

    def _make(self, quantizer, nlist: int):
        self.nlist = nlist
        return self.faiss.IndexIVFFlat(quantizer, self.dim, nlist, self.fmetric)


def default_pq_m(dim: int) -> int:
    """About one 8-bit code per 8 dimensions, rounded down to a divisor of ``dim``."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


class FaissIVFPQ(_FaissIVF):
    """IndexIVFPQ(nlist, m, 8 bits), sweeping nprobe; no re-ranking (compressed peer)."""

    def __init__(self, dim: int, metric: str, nlist: int | None = None, m: int | None = None):
        super().__init__(dim, metric, nlist)
        self.m = int(m or default_pq_m(dim))
        if dim % self.m:
            raise ValueError(f"faiss-ivfpq: m={self.m} does not divide dim={dim}")

    @property
    def index(self) -> str:
        return f"IndexIVFPQ(nlist={self.nlist or 'auto'},m={self.m},nbits=8)"

    def _make(self, quantizer, nlist: int):
        self.nlist = nlist
        return self.faiss.IndexIVFPQ(quantizer, self.dim, nlist, self.m, 8, self.fmetric)


class FaissIVFPQRefine(FaissIVFPQ):
    """IndexIVFPQ(nlist, m, 8 bits) inside IndexRefineFlat: the best ``k_factor`` * k PQ
    candidates re-scored on the float32 vectors (k_factor 10, as Quiver's Refine default)."""

    def __init__(self, dim: int, metric: str, nlist: int | None = None, m: int | None = None,
                 k_factor: int = 10):
        super().__init__(dim, metric, nlist, m)
        self.k_factor = int(k_factor)

    @property
    def index(self) -> str:
        return (f"IndexIVFPQ(nlist={self.nlist or 'auto'},m={self.m},nbits=8)"
                f"+IndexRefineFlat(k_factor={self.k_factor})")

    def _make(self, quantizer, nlist: int):
        self._ivf = super()._make(quantizer, nlist)
        idx = self.faiss.IndexRefineFlat(self._ivf)
        idx.k_factor = self.k_factor
        return idx

    def _set_params(self, params: dict) -> None:
        if "nprobe" in params:
            self._ivf.nprobe = int(params["nprobe"])


class FaissIVFPQFastScanRefine(FaissIVFPQRefine):
    """IndexIVFPQFastScan(nlist, m, 4 bits) inside IndexRefineFlat: the peer of
    ``IVF<nlist>,PQ<m>x4fs,Refine(F32)`` (faiss's fastest IVF-PQ on CPU)."""

    def __init__(self, dim: int, metric: str, nlist: int | None = None, m: int | None = None,
                 k_factor: int = 10):
        super().__init__(dim, metric, nlist, m or 2 * default_pq_m(dim), k_factor)

    @property
    def index(self) -> str:
        return (f"IndexIVFPQFastScan(nlist={self.nlist or 'auto'},m={self.m},nbits=4)"
                f"+IndexRefineFlat(k_factor={self.k_factor})")

    def _make(self, quantizer, nlist: int):
        self.nlist = nlist
        self._ivf = self.faiss.IndexIVFPQFastScan(quantizer, self.dim, nlist, self.m, 4,
                                                  self.fmetric)
        idx = self.faiss.IndexRefineFlat(self._ivf)
        idx.k_factor = self.k_factor
        return idx


class FaissOPQIVFPQRefine(FaissIVFPQRefine):
    """OPQMatrix(dim, m) before IndexIVFPQ (IndexPreTransform), inside IndexRefineFlat: the
    peer of ``OPQ<m>,IVF<nlist>,PQ<m>x8,Refine(F32)``."""

    @property
    def index(self) -> str:
        return f"OPQ{self.m}+{super().index}"

    def _make(self, quantizer, nlist: int):
        self._ivf = FaissIVFPQ._make(self, quantizer, nlist)
        self._opq = self.faiss.OPQMatrix(self.dim, self.m)
        self._pre = self.faiss.IndexPreTransform(self._opq, self._ivf)  # refs kept: faiss
        idx = self.faiss.IndexRefineFlat(self._pre)                      # does not own them
        idx.k_factor = self.k_factor
        return idx


class Hnswlib(Engine):
    """hnswlib HNSW (M=16, ef_construction=200), sweeping ef via set_ef."""

    engine = "hnswlib"
    param = "ef"

    def __init__(self, dim: int, metric: str, m: int = HNSW_M):
        super().__init__(dim, metric)
        self.hnswlib = _require("hnswlib", "hnswlib")
        self.m = int(m)
        self.index = f"HNSW(M={self.m},efC={EF_CONSTRUCTION})"
        self.idx = None
        self.threads = 1

    def set_threads(self, n: int) -> None:
        self.threads = n
        if self.idx is not None:
            self.idx.set_num_threads(n)

    def build(self, x: np.ndarray) -> None:
        space = {"l2": "l2", "ip": "ip", "cosine": "cosine"}[self.metric]
        self.idx = self.hnswlib.Index(space=space, dim=self.dim)
        self.idx.init_index(max_elements=x.shape[0], ef_construction=EF_CONSTRUCTION, M=self.m,
                            random_seed=100)
        self.idx.set_num_threads(self.threads)
        self.idx.add_items(x, np.arange(x.shape[0]))

    def search(self, q: np.ndarray, k: int, **params) -> np.ndarray:
        if "ef" in params:
            self.idx.set_ef(int(params["ef"]))
        labels, _ = self.idx.knn_query(q, k=k)
        return pad_ids(labels, k)

    def memory(self) -> int:
        return int(self.idx.index_file_size())

    def close(self) -> None:
        self.idx = None


class USearch(Engine):
    """usearch HNSW with float32 storage (connectivity 16, expansion_add 200)."""

    engine = "usearch"
    param = "ef"

    def __init__(self, dim: int, metric: str, m: int = HNSW_M):
        super().__init__(dim, metric)
        self.usearch = _require("usearch.index", "usearch")
        self.m = int(m)
        self.index = f"HNSW(M={self.m},efC={EF_CONSTRUCTION},f32)"
        self.idx = None
        self.threads = 1

    def set_threads(self, n: int) -> None:
        self.threads = n

    def build(self, x: np.ndarray) -> None:
        metric = {"l2": "l2sq", "ip": "ip", "cosine": "cos"}[self.metric]
        self.idx = self.usearch.Index(ndim=self.dim, metric=metric, dtype="f32",
                                      connectivity=self.m, expansion_add=EF_CONSTRUCTION)
        self.idx.add(np.arange(x.shape[0]), np.ascontiguousarray(x, np.float32),
                     threads=self.threads)

    def search(self, q: np.ndarray, k: int, **params) -> np.ndarray:
        if "ef" in params:
            self.idx.expansion_search = int(params["ef"])
        m = self.idx.search(np.ascontiguousarray(q, np.float32), k, threads=self.threads)
        if not hasattr(m, "counts"):  # one query comes back as Matches, trimmed to its count
            return pad_ids(np.asarray(m.keys, np.int64)[None, :], k)
        keys = np.asarray(m.keys, np.int64)
        keys[np.arange(keys.shape[1])[None, :] >= np.asarray(m.counts)[:, None]] = -1
        return pad_ids(keys, k)

    def memory(self) -> int:
        return int(self.idx.serialized_length)

    def close(self) -> None:
        self.idx = None


PEERS: dict[str, type[Engine]] = {
    "faiss": FaissFlat,
    "faiss-flat": FaissFlat,
    "faiss-hnsw": FaissHNSW,
    "faiss-hnsw-sq8": FaissHNSWSQ8,
    "faiss-ivf": FaissIVFFlat,
    "faiss-ivfpq": FaissIVFPQ,
    "faiss-ivfpq-refine": FaissIVFPQRefine,
    "faiss-ivfpqfs-refine": FaissIVFPQFastScanRefine,
    "faiss-opq-ivfpq-refine": FaissOPQIVFPQRefine,
    "hnswlib": Hnswlib,
    "usearch": USearch,
    "svs": SvsVamana,
    "svs-lvq": _isolated(SvsLVQ),
    "svs-leanvec": _isolated(SvsLeanVec),
    "svs-leanvec-ood": _isolated(SvsLeanVecOOD),
}


def make_peer(spec: str, dim: int, metric: str) -> Engine:
    """``name[:arg[:arg]]``: faiss, faiss-hnsw[:M], faiss-hnsw-sq8[:M], faiss-ivf[:nlist],
    faiss-ivfpq[:nlist[:m]], faiss-ivfpq-refine[:nlist[:m[:k_factor]]],
    faiss-ivfpqfs-refine[:nlist[:m[:k_factor]]] (4-bit fast scan),
    faiss-opq-ivfpq-refine[:nlist[:m[:k_factor]]], hnswlib[:M],
    usearch[:M], svs[:R[:16|32]] (Vamana float16/32), and, on Intel CPUs only, each in its
    own process: svs-lvq[:B1[:B2[:R]]] (LVQ8 default, B2 a residual), svs-leanvec[:d[:R]] and
    svs-leanvec-ood[:d[:R]] (LeanVec(d, LVQ8, LVQ8), d 160 default).
    Raises PeerUnavailableError for unknown names or missing packages."""
    name, *args = spec.strip().lower().split(":")
    cls = PEERS.get(name)
    if cls is None:
        raise PeerUnavailableError(f"unknown peer {name!r}; known: {', '.join(sorted(PEERS))}")
    try:
        values = [int(a) for a in args if a]
    except ValueError:
        raise ValueError(f"peer {spec!r}: arguments must be integers") from None
    try:
        return cls(dim, metric, *values)
    except TypeError:
        raise ValueError(f"peer {spec!r}: too many arguments") from None
