"""faiss indexes on a GPU behind Quiver's Index protocol: ``quiver.index(spec, dim, metric,
device="cuda")`` (or ``"cuda:1"``).

Specs: ``Flat`` -> GpuIndexFlat (L2 or IP), ``IVF<nlist>,Flat`` -> GpuIndexIVFFlat,
``IVF<nlist>,PQ<m>[x<bits>]`` -> GpuIndexIVFPQ, ``CAGRA<degree>`` -> GpuIndexCagra (faiss built
with cuVS). Cosine is IP over normalised rows, as on the CPU; scores, ids and -1 padding follow
``engine.metric`` exactly as the CPU indexes do.

Rows keep their insertion positions 0..n-1 as faiss labels. A float32 copy by position (a
``FlatIndex``, memory-mapped once saved) serves ``reconstruct`` (segment merges), exact scans
and the filters the GPU cannot apply. Filters: faiss 1.15 GPU indexes honour
``SearchParameters.sel`` only on their cuVS paths (the classic GPU Flat/IVF kernels take the
selector and ignore it), and the Python configs default to ``use_cuvs=False`` even in a cuVS
build, so this module sets ``use_cuvs`` itself. With cuVS the allowed rows go to the GPU as an
``IDSelectorBitmap`` (a ``Bitset``'s words are that bitmap byte for byte); without it a filter
that rejects few rows is over-fetched (k + rejected, within the GPU's k limit) and
post-filtered, and any other runs on the CPU copy. ``strategy_costs`` tells the planner which,
so a collection keeps such segments on the CPU.

``to_cpu()`` gives the same index served by faiss on the CPU (CAGRA becomes faiss's
IndexHNSWCagra: the CAGRA graph as HNSW's base level, ``GpuIndexCagra.copyTo``); ``save``
writes faiss's CPU form and ``load`` puts it back on the device it was built for (on the CPU,
with a warning, where that device is missing). faiss is imported here only, lazily, when such
an index is made or loaded: the CPU path never imports it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import planner
from ..bitset import Bitset
from ..device import DeviceUnavailable, device_name, parse_device
from ..errors import CorruptData, InvalidArgument
from ..idmap import IdMap
from ..kmeans import MAX_POINTS_PER_CENTROID, SEED, sample_rows
from ..metric import Metric
from ..params import SearchParams
from ..persist import load_arrays, save_arrays
from ..validation import as_ids, as_vectors, check_dim, normalize_rows
from .base import live_words, mark_removed, search_by_ids
from .flat import FlatIndex
from .ivf import MIN_POINTS_PER_LIST, scaled_nprobe

log = logging.getLogger(__name__)

GPU_SPECS = "Flat, IVF<nlist>,Flat, IVF<nlist>,PQ<m>[x<bits>], CAGRA<degree>"
GPU_MAX_K = 2048
"""faiss's GPU_MAX_SELECTION_K (faiss/gpu/utils/DeviceDefs.cuh, CUDA >= 9.2): GPU faiss refuses
a k or an nprobe above it; such searches run on the CPU copy."""
GPU_US_PER_QUERY = 20.0
"""Cost model: microseconds a GPU search costs per query of a batch. An estimate, not yet
measured (no GPU machine was lent): it only decides when a selective filter's exact CPU scan
of the allowed rows is cheaper."""
CAGRA_DEFAULT_DEGREE = 32
CAGRA_MIN_ROWS = 1000
"""Fewer rows (or fewer than 4x the intermediate degree) get no graph: an exact scan is as
cheap, and cuVS's graph build wants more rows than its degrees."""
INSTALL_HINT = ("pip install 'quiver[gpu-cu12]' (CUDA 12 driver) or 'quiver[gpu-cu13]' "
                "(CUDA 13 driver, with cuVS: CAGRA and GPU filters), after pip uninstall "
                "faiss-cpu: both install the same faiss module")

_RESOURCES: dict[int, Any] = {}
"""One StandardGpuResources per device for the process (each reserves temporary device memory;
faiss's resources are not thread-safe, so each device's lock guards its own)."""
_LOCKS: dict[int, threading.RLock] = {}
"""Per device: held around every call that touches its resources, creating and freeing an
index included (StandardGpuResources' allocMemory / deallocMemory are not thread-safe).
Re-entrant: making an index under a held lock, or freeing one while a call holds it."""
_GUARD = threading.Lock()
_SELECTOR_IGNORED: set[int] = set()
"""Devices whose faiss returned rows a selector rejects: a cuVS build still runs the classic
kernels (which ignore ``sel``) on GPUs below compute capability 7.0 or when built with
FAISS_CUVS_NO_FLAT. Their filters are served as without cuVS from then on."""


def has_cuvs(faiss: Any) -> bool:
    """Whether this faiss was built with NVIDIA cuVS (filtered GPU search; CAGRA where the
    build also has ``GpuIndexCagra``)."""
    return "NVIDIA_CUVS" in faiss.get_compile_options().split()


def gpu_faiss(device: int, cagra: bool = False) -> Any:
    """The faiss module, checked to reach GPU ``device`` (and cuVS for ``cagra``); otherwise
    a ``DeviceUnavailable`` that says exactly what is missing and how to get it."""
    where = f"device={device_name(device)!r}"
    try:
        import faiss
    except ImportError:
        raise DeviceUnavailable(f"{where}: faiss is not installed; {INSTALL_HINT}") from None
    if not hasattr(faiss, "StandardGpuResources"):
        raise DeviceUnavailable(f"{where}: faiss {getattr(faiss, '__version__', '?')} is the CPU "
                                f"build (faiss-cpu, no GPU support); {INSTALL_HINT}")
    visible = int(faiss.get_num_gpus())
    if visible == 0:
        raise DeviceUnavailable(f"{where}: no visible GPU (faiss.get_num_gpus() == 0): check the "
                                f"NVIDIA driver (nvidia-smi), CUDA_VISIBLE_DEVICES and that the "
                                f"driver serves the wheel's CUDA version")
    if device >= visible:
        raise DeviceUnavailable(f"{where}: out of range, {visible} GPU(s) visible "
                                f"(cuda:0..cuda:{visible - 1})")
    if cagra and not hasattr(faiss, "GpuIndexCagra"):
        raise DeviceUnavailable(f"{where}: CAGRA needs faiss built with cuVS (faiss "
                                f"{faiss.__version__} has no GpuIndexCagra): pip install "
                                f"'quiver[gpu-cu13]' (faiss-gpu-cuvs), or use IVF<nlist>,Flat")
    return faiss


def cpu_faiss() -> Any:
    """faiss for serving on the CPU (``to_cpu``, or a GPU-built index loaded without a GPU)."""
    try:
        import faiss
    except ImportError:
        raise DeviceUnavailable("device='cpu' for a faiss index: faiss is not installed (pip "
                                "install faiss-cpu, or a GPU extra)") from None
    return faiss


@dataclass(frozen=True)
class FaissSpec:
    """A spec with a GPU index: ``family`` flat, ivf, ivfpq or cagra and its numbers."""

    family: str
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    degree: int = 0

    def __str__(self) -> str:
        return {"flat": "Flat", "ivf": f"IVF{self.nlist},Flat",
                "ivfpq": f"IVF{self.nlist},PQ{self.m}x{self.nbits}",
                "cagra": f"CAGRA{self.degree}"}[self.family]

    @property
    def ivf(self) -> bool:
        return self.family in ("ivf", "ivfpq")

    @classmethod
    def parse(cls, spec: str, dim: int) -> FaissSpec:
        """The GPU reading of a spec string (``engine.spec`` grammar, the registry's roles)."""
        from ..codecs import codec_from_spec
        from ..pq import PQCodec
        from .registry import parse_index_spec

        parsed = parse_index_spec(spec)
        head = parsed.index
        if parsed.transform is None and not parsed.options and not head.args:
            codec = codec_from_spec(parsed.codec, dim)
            f32 = codec.name == "f32"
            if head.family == "FLAT" and not head.numbers and f32:
                return cls("flat")
            if head.family == "IVF" and len(head.numbers) == 1 and f32:
                return cls("ivf", nlist=head.numbers[0])
            if head.family == "IVF" and len(head.numbers) == 1 and isinstance(codec, PQCodec):
                return cls("ivfpq", nlist=head.numbers[0], m=codec.m, nbits=codec.nbits)
            if head.family == "CAGRA" and len(head.numbers) <= 1 and f32:
                degree = head.numbers[0] if head.numbers else CAGRA_DEFAULT_DEGREE
                if degree < 2:
                    raise InvalidArgument(f"spec: CAGRA<degree> needs a degree >= 2, got {head}")
                return cls("cagra", degree=degree)
        raise InvalidArgument(f"spec: {spec!r} has no GPU index; on a GPU: {GPU_SPECS} (float32 "
                              f"rows or PQ codes, no OPQ, no Refine)")


class _Backend:
    """Where the faiss index lives, GPU ``device`` or the CPU (None): every faiss call that
    differs between the two is here."""

    def __init__(self, faiss: Any, device: int | None):
        self.faiss = faiss
        self.device = device
        self.cuvs = device is not None and has_cuvs(faiss)
        self.lock: Any = contextlib.nullcontext()
        """GPU resources and indexes are not thread-safe: one call at a time per device (faiss
        CPU searches may overlap)."""
        if device is not None:
            lock = threading.RLock()
            with _GUARD:
                self.lock = _LOCKS.setdefault(device, lock)

    @property
    def filters(self) -> bool:
        """Whether a selector is honoured: always on the CPU, through cuVS on a GPU (unless
        this device's results showed faiss ignoring it, ``_SELECTOR_IGNORED``)."""
        return self.device is None or (self.cuvs and self.device not in _SELECTOR_IGNORED)

    @property
    def max_k(self) -> int:
        return GPU_MAX_K if self.device is not None else 1 << 30

    def resources(self) -> Any:
        """The device's StandardGpuResources, made on first use; callers hold its lock (so
        one is made per device, and no other lock is held while faiss allocates)."""
        res = _RESOURCES.get(self.device)
        if res is None:
            res = _RESOURCES.setdefault(self.device, self.faiss.StandardGpuResources())
        return res

    def make(self, spec: FaissSpec, dim: int, fmetric: int, lists: int) -> Any:
        """An empty faiss index of ``spec`` with ``lists`` lists (IVF); a GPU one is made
        under the device's lock."""
        with self.lock:
            return self._make(spec, dim, fmetric, lists)

    def _make(self, spec: FaissSpec, dim: int, fmetric: int, lists: int) -> Any:
        f = self.faiss
        if self.device is None:
            if spec.family == "flat":
                return f.IndexFlat(dim, fmetric)
            quantizer = f.IndexFlat(dim, fmetric)  # the Python wrapper keeps it referenced
            if spec.family == "ivf":
                return f.IndexIVFFlat(quantizer, dim, lists, fmetric)
            if spec.family == "ivfpq":
                return f.IndexIVFPQ(quantizer, dim, lists, spec.m, spec.nbits, fmetric)
            raise InvalidArgument("spec: CAGRA builds on a GPU only (device='cuda'); to_cpu() "
                                  "turns a built one into faiss's IndexHNSWCagra")
        res = self.resources()
        if spec.family == "flat":
            cfg = f.GpuIndexFlatConfig()
        elif spec.family == "ivf":
            cfg = f.GpuIndexIVFFlatConfig()
        elif spec.family == "ivfpq":
            cfg = f.GpuIndexIVFPQConfig()
        else:
            cfg = f.GpuIndexCagraConfig()
            cfg.graph_degree = spec.degree
            cfg.intermediate_graph_degree = 2 * spec.degree
        cfg.device = self.device
        if hasattr(cfg, "use_cuvs"):
            cfg.use_cuvs = self.cuvs or spec.family == "cagra"  # False by default in Python
        if spec.family == "flat":
            return f.GpuIndexFlat(res, dim, fmetric, cfg)
        if spec.family == "ivf":
            return f.GpuIndexIVFFlat(res, dim, lists, fmetric, cfg)
        if spec.family == "ivfpq":
            return f.GpuIndexIVFPQ(res, dim, lists, spec.m, spec.nbits, fmetric, cfg)
        return f.GpuIndexCagra(res, dim, fmetric, cfg)

    def to_cpu(self, index: Any) -> Any:
        return index if self.device is None else self.faiss.index_gpu_to_cpu(index)

    def from_cpu(self, index: Any) -> Any:
        if self.device is None:
            return index
        co = self.faiss.GpuClonerOptions()
        if hasattr(co, "use_cuvs"):
            co.use_cuvs = self.cuvs
        return self.faiss.index_cpu_to_gpu(self.resources(), self.device, index, co)

    def params(self, spec: FaissSpec, nprobe: int, beam: int, sel: Any) -> Any:
        """Per-call search parameters of the right class: GPU IVF refuses any but
        SearchParametersIVF, GPU CAGRA reads SearchParametersCagra (itopk_size, the beam)."""
        f = self.faiss
        extra = {} if sel is None else {"sel": sel}
        if spec.ivf:
            return f.SearchParametersIVF(nprobe=nprobe, **extra)
        if spec.family == "cagra":
            if self.device is None:
                return f.SearchParametersHNSW(efSearch=beam, **extra)
            return f.SearchParametersCagra(itopk_size=beam, **extra)
        return f.SearchParameters(**extra) if extra else None

    def memory_info(self) -> dict:
        """faiss's own allocator report (``StandardGpuResources.getMemoryInfo``), by device."""
        res = _RESOURCES.get(self.device)
        return {} if res is None else dict(res.getMemoryInfo())


def backend_for(device: int | None, cagra: bool = False) -> _Backend:
    """The placement ``device`` names, its faiss checked first (``gpu_faiss``)."""
    faiss = cpu_faiss() if device is None else gpu_faiss(device, cagra)
    return _Backend(faiss, device)


class FaissIndex:
    """A faiss index on a GPU (or its CPU twin, ``device="cpu"``: what ``to_cpu`` serves) with
    Quiver's protocol: external int64 ids, ``SearchParams`` per call (``nprobe`` for IVF,
    ``ef`` as CAGRA's itopk_size / HNSW's efSearch), ``allowed`` filters, ``remove`` by a
    deletion bitmap, ``save``/``load``. See the module docstring for filters and placement.

    ``adapt_nlist`` (collections set it): with too few training points, train fewer lists, as
    ``IVFIndex`` does; with too few rows for any structure (fewer than the PQ codebook size,
    or a handful for CAGRA), searches scan the float32 copy exactly."""

    kind = "faiss"

    def __init__(self, dim: int, metric: str | Metric = "l2", spec: str = "Flat",
                 device: str | None = "cuda", adapt_nlist: bool = False):
        self.dim = check_dim(dim)
        self.metric = Metric.parse(metric)
        self.spec = FaissSpec.parse(spec, self.dim)
        if not isinstance(adapt_nlist, bool):
            raise InvalidArgument(f"adapt_nlist: expected true or false, got {adapt_nlist!r}")
        self.adapt_nlist = adapt_nlist
        self._backend = backend_for(parse_device(device), self.spec.family == "cagra")
        f = self._backend.faiss
        self._fmetric = f.METRIC_L2 if self.metric is Metric.L2 else f.METRIC_INNER_PRODUCT
        self._lists = self.spec.nlist
        self._trained = not self.spec.ivf
        self._exact_only = False
        self._index = None if self.spec.family == "cagra" else self._make(self._lists)
        self._host = FlatIndex(self.dim, self.metric.kernel_metric)
        self._ids = np.zeros(0, np.int64)
        self._idmap = IdMap()
        self._deleted = np.zeros(0, np.uint64)
        self._n_deleted = 0
        self._n = 0

    def _make(self, lists: int) -> Any:
        """An empty faiss index (made under the device's lock: ``_Backend.make``)."""
        try:
            return self._backend.make(self.spec, self.dim, self._fmetric, lists)
        except RuntimeError as exc:  # faiss's checks (PQ m and bits, device, memory)
            raise InvalidArgument(f"spec: faiss cannot build {self.spec} on "
                                  f"{self.device}: {_faiss_message(exc)}") from None

    def _set_index(self, index: Any) -> None:
        """Replace the faiss index; the one it replaces is freed here, under the device's
        lock (its destructor returns GPU memory to the shared resources)."""
        with self._backend.lock:
            self._index = index

    def release(self) -> None:
        """Free the faiss index now (its GPU memory; under the device's lock). The float32
        copy still serves exact searches and ``reconstruct`` (not ``save``: save first);
        ``__del__`` calls this, so an index dropped without it is freed under the lock too."""
        backend = self.__dict__.get("_backend")
        if backend is not None and self.__dict__.get("_index") is not None:
            with backend.lock:
                self._index = None  # searches scan the copy from now on (``_mode``)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the lock may be gone
            self.release()

    # --- sizes ------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return device_name(self._backend.device)

    def __len__(self) -> int:
        return self._n - self._n_deleted

    @property
    def ntotal(self) -> int:
        return len(self)

    @property
    def needs_training(self) -> bool:
        return not self._trained

    @property
    def lists(self) -> int:
        """IVF lists actually trained (fewer than nlist with ``adapt_nlist``)."""
        return self._lists if self.spec.ivf and self._trained else 0

    def memory_usage(self) -> dict[str, int]:
        """Bytes by kind. ``gpu_*`` (``faiss_*`` on the CPU) are the faiss index's, estimated
        from sizes: faiss reports no per-index byte count (``device_memory_info`` has its GPU
        allocator's totals). ``host_vectors``: the float32 copy while in RAM (0 while it is
        memory-mapped from a saved index, untouched unless a CPU search reads it)."""
        n, d, s = self._n, self.dim, self.spec
        copy = self._host._store.view()[0]
        host = 0 if isinstance(copy, np.memmap) or isinstance(copy.base, np.memmap) else 4 * n * d
        if self._exact_only or self._index is None:
            vectors = structure = 0
        elif s.family == "ivfpq":
            vectors = n * math.ceil(s.m * s.nbits / 8)
            structure = 4 * self._lists * d + 8 * n + 4 * d * (1 << s.nbits)
        else:
            vectors = 4 * n * d
            structure = {"flat": 4 * n if self.metric is Metric.L2 else 0,
                         "ivf": 4 * self._lists * d + 8 * n, "cagra": 4 * n * s.degree}[s.family]
        where = "faiss" if self._backend.device is None else "gpu"
        return {"host_vectors": host, f"{where}_vectors": vectors, f"{where}_structure": structure,
                "ids": 8 * n, "id_map": self._idmap.nbytes(), "deleted": 8 * ((n + 63) >> 6)}

    def device_memory_info(self) -> dict:
        """faiss's GPU allocator report by device (empty on the CPU)."""
        return self._backend.memory_info()

    # --- build ------------------------------------------------------------------------

    def _rows(self, x: Any, name: str = "vectors") -> np.ndarray:
        v = as_vectors(x, self.dim, name)
        return normalize_rows(v) if self.metric is Metric.COSINE else v

    def train(self, x: Any, queries: Any = None) -> None:
        """IVF: learn the coarse lists (and PQ codebooks) from ``x`` on the device, at most
        256 points per list (a seeded sample beyond). Flat and CAGRA need no training."""
        if self._trained:
            return
        v = as_vectors(x, self.dim, "vectors")
        n, nlist = v.shape[0], self.spec.nlist
        lists = nlist
        if self.adapt_nlist and n < nlist * MIN_POINTS_PER_LIST:
            lists = max(1, min(nlist, n // MIN_POINTS_PER_LIST))
            log.info("%s: %d training points, fewer than %d per list; training %d lists",
                     self.spec, n, MIN_POINTS_PER_LIST, lists)
        elif n < nlist:
            raise InvalidArgument(f"nlist: {nlist} lists need at least {nlist} training points, "
                                  f"got {n}")
        if self.spec.family == "ivfpq" and n < (1 << self.spec.nbits):
            if not self.adapt_nlist:
                raise InvalidArgument(f"train: PQ codebooks of {1 << self.spec.nbits} centroids "
                                      f"need at least that many training points, got {n}")
            self._exact_only, self._trained, self._index = True, True, None  # scans exactly
            return
        v = sample_rows(v, MAX_POINTS_PER_CENTROID * lists, SEED)
        if self.metric is Metric.COSINE:
            v = normalize_rows(v)
        with self._backend.lock:
            if lists != self._lists:
                self._index, self._lists = self._make(lists), lists  # the old one freed here
            self._faiss_call("train", self._index.train, v)
        self._trained = True

    def add(self, x: Any, ids: Any = None) -> np.ndarray:
        """Append rows; ``ids`` default to consecutive integers after the largest so far.
        CAGRA rebuilds its graph over all rows (a CAGRA graph cannot be extended)."""
        if not self._trained:
            raise InvalidArgument(f"add: the {self.spec} index is not trained; train first "
                                  f"(index.train(x) with a sample of the data)")
        v = self._rows(x)
        if ids is None:
            start = int(self._ids.max()) + 1 if self._n else 0
            ids = np.arange(start, start + v.shape[0], dtype=np.int64)
        ids = as_ids(ids, v.shape[0])
        self._idmap.check_new(ids)
        if v.shape[0] == 0:
            return ids
        n0, n1 = self._n, self._n + v.shape[0]
        if self.spec.family == "cagra":
            self._build_cagra(v, n1)
        elif not self._exact_only:
            with self._backend.lock:
                self._faiss_call("add", self._index.add, v)
        self._host.add(v, np.arange(n0, n1, dtype=np.int64))
        self._ids = np.concatenate([self._ids[:n0], ids])
        words = np.zeros((n1 + 63) >> 6, np.uint64)
        words[: self._deleted.shape[0]] = self._deleted
        self._deleted, self._n = words, n1
        self._idmap.assign(ids, np.arange(n0, n1, dtype=np.int64))
        return ids

    def _build_cagra(self, new: np.ndarray, n1: int) -> None:
        """The graph over the rows so far plus ``new``; too few rows for a graph: exact."""
        self._exact_only = n1 < max(CAGRA_MIN_ROWS, 4 * 2 * self.spec.degree)
        if self._exact_only:
            self._set_index(None)
            return
        rows = new if self._n == 0 else np.concatenate(
            [self._host.reconstruct(np.arange(self._n)), new])
        with self._backend.lock:  # made, trained, swapped in and the old graph freed under it
            index = self._make(0)
            try:
                self._faiss_call("train", index.train, rows)
            except BaseException:
                del index  # freed here, not later with the traceback's frame
                raise
            self._index = index
            del index

    def remove(self, ids: Any) -> int:
        """Mark ids deleted (unknown ones are ignored); returns how many were removed."""
        self._deleted, n = mark_removed(self._idmap, ids, self._ids, self._deleted)
        self._n_deleted += n
        return n

    def reconstruct(self, positions: Any) -> np.ndarray:
        """Float32 vectors stored at row positions (normalised for cosine)."""
        return self._host.reconstruct(positions)

    def to_cpu(self) -> FaissIndex:
        """The same index served by faiss on the CPU (CAGRA: faiss's IndexHNSWCagra, the
        graph as its base level), with its own copy of rows, ids and deletions."""
        out = object.__new__(FaissIndex)
        out.__dict__.update(self.__dict__)
        out._backend, out._index = backend_for(None), None
        if self._index is not None:
            with self._backend.lock:
                out._index = self._faiss_call("to_cpu", self._backend.to_cpu, self._index)
        out._host = FlatIndex(self.dim, self.metric.kernel_metric)
        if self._n:
            out._host.add(self._host.reconstruct(np.arange(self._n)), np.arange(self._n))
        out._ids, out._deleted = self._ids.copy(), self._deleted.copy()
        out._idmap = IdMap.from_array(out._ids, self._live())
        return out

    def _live(self) -> np.ndarray:
        return ~Bitset(self._deleted, self._n).to_mask() if self._n else np.zeros(0, bool)

    # --- search -----------------------------------------------------------------------

    def search(self, queries: Any, k: int, allowed: Any = None,
               params: SearchParams | dict | None = None, explain: bool = False, **knobs: Any):
        """Top-k per query (1-D in, 1-D out; 2-D batches in one device call). ``params``:
        ``nprobe`` (IVF; default as ``IVFIndex``), ``ef`` (CAGRA's itopk_size, default
        max(64, k)), ``exact`` (scan every allowed row of the float32 copy). ``allowed``: ids
        or a Bitset. With ``explain`` a third value is the plan."""
        return search_by_ids(self, queries, k, allowed, params, explain, knobs, self._n)

    def nprobe_for(self, params: SearchParams) -> int:
        """Lists a search probes, as ``IVFIndex`` (``scaled_nprobe``)."""
        return scaled_nprobe(params, self.spec.nlist, self._lists)

    def _mode(self, k: int, rejected: int, params: SearchParams) -> str | None:
        """How the faiss index can serve a search whose filter and deletions reject
        ``rejected`` of its rows: ``plain``, ``native`` (a selector), ``overfetch`` (k +
        rejected hits, then filtered), or None (the CPU copy must: no structure, or a k or
        nprobe beyond the GPU's limit)."""
        if self._exact_only or self._index is None or k > self._n:
            return None
        limit = self._backend.max_k
        if k > limit or (self.spec.ivf and self.nprobe_for(params) > limit):
            return None
        if rejected <= 0:
            return "plain"
        if self._backend.filters:
            return "native"
        return "overfetch" if k + rejected <= limit else None

    def strategy_costs(self, allowed: int, points: int, k: int, params: SearchParams,
                       filtered: bool) -> dict[str, float]:
        """The planner's cost model (microseconds per query): ``exact`` scans the allowed rows
        of the float32 copy on the CPU; ``traversal`` is the faiss search, offered only where
        it can honour the filter (``_mode``)."""
        costs = {"exact": planner.scan_cost(allowed, 4 * self.dim)}
        if self._mode(k, self._n - allowed, params) is None:
            return costs
        if self._backend.device is not None:
            costs["traversal"] = GPU_US_PER_QUERY
        elif self.spec.ivf:
            rows = points * self.nprobe_for(params) / max(self._lists, 1)
            bpv = 4 * self.dim if self.spec.family == "ivf" else self.spec.m
            costs["traversal"] = (planner.scan_cost(self._lists, 4 * self.dim)
                                  + planner.scan_cost(rows, bpv))
        elif self.spec.family == "cagra":
            costs["traversal"] = planner.scan_cost(params.beam(k) * self.spec.degree, 4 * self.dim)
        else:
            costs["traversal"] = costs["exact"] * points / max(allowed, 1)
        return costs

    def search_positions(self, q: np.ndarray, k: int, bits: Bitset | None, params: SearchParams,
                         plan: planner.Plan | None = None, filtered: bool | None = None):
        """(kernel distances, row positions, plan info) for validated float32 queries (unit
        rows for cosine) and a Bitset of allowed positions: the path segments call."""
        if not self._trained:
            raise InvalidArgument("search: the IVF index is not trained; train first "
                                  "(index.train(x) with a sample of the data)")
        n = self._n
        words, n_ok, use_ok = live_words(bits, self._deleted, self._n_deleted, n)
        if plan is None:
            plan = planner.choose(self, n_ok, n, k, params,
                                  bits is not None if filtered is None else filtered)
        info = {**plan.explain(), "fallback_exact": 0, "device": self.device}
        allowed = Bitset(words, n) if use_ok else None
        rejected = n - n_ok if use_ok else 0
        mode = None if plan.strategy == "exact" or n_ok == 0 else self._mode(k, rejected, params)
        if mode is None:
            dist, pos, _ = self._host.search_positions(q, k, allowed, params, plan)
            return dist, pos, info
        if self.spec.ivf:
            info["nprobe"] = self.nprobe_for(params)
        fetch = k + rejected if mode == "overfetch" else k
        dist, pos = self._faiss_search(q, fetch, params, words if mode == "native" else None)
        if mode != "plain":
            # native too: faiss may have ignored the selector (a cuVS build's classic kernels,
            # compute capability < 7.0 or FAISS_CUVS_NO_FLAT), so the filter is re-applied
            found = int((pos >= 0).sum())
            dist, pos = _keep_allowed(dist, pos, words, k)
            if mode == "native" and self.spec.family != "cagra" \
                    and int((pos >= 0).sum()) < found:  # (CAGRA has no classic kernels)
                self._selector_ignored()
        redo = np.flatnonzero((pos >= 0).sum(axis=1) < min(k, n_ok))
        if redo.size:  # a filter the probed lists / graph miss, or one faiss ignored
            info["fallback_exact"] = int(redo.size)
            d2, p2, _ = self._host.search_positions(q[redo], k, allowed, params, plan)
            dist[redo], pos[redo] = d2, p2
        return dist, pos, info

    def _selector_ignored(self) -> None:
        """faiss returned rows the selector rejects: this device's filters are served as
        without cuVS from now on (over-fetched, or on the CPU copy), with a warning once."""
        device = self._backend.device
        if device is not None and device not in _SELECTOR_IGNORED:
            _SELECTOR_IGNORED.add(device)
            log.warning("%s: faiss on %s returned rows a filter excludes (its classic GPU "
                        "kernels ignore selectors: compute capability < 7.0, or faiss built "
                        "with FAISS_CUVS_NO_FLAT); filtered searches there are post-filtered "
                        "or run on the CPU copy from now on", self.spec, self.device)

    def _faiss_search(self, q: np.ndarray, k: int, params: SearchParams,
                      words: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """faiss's top-k as kernel distances (smaller is closer) and positions (-1 missing)."""
        f = self._backend.faiss
        bitmap = None if words is None else np.ascontiguousarray(words).view(np.uint8)
        sel = None if bitmap is None else f.IDSelectorBitmap(bitmap)  # bitmap outlives the call
        nprobe = self.nprobe_for(params) if self.spec.ivf else 0
        p = self._backend.params(self.spec, nprobe, params.beam(k), sel)
        with self._backend.lock:
            D, I = self._faiss_call("search", self._index.search, q, k, params=p)
        pos = np.asarray(I, np.int64)
        pos[pos >= self._n] = -1
        dist = np.asarray(D, np.float32) if self.metric is Metric.L2 else -np.asarray(D, np.float32)
        dist[pos < 0] = np.inf
        if self.metric is Metric.L2:
            np.maximum(dist, 0, out=dist)
        return dist, pos

    def _faiss_call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a faiss call; its RuntimeError (faiss's checks) becomes an InvalidArgument."""
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:
            raise InvalidArgument(f"{what}: faiss {self.spec} on {self.device}: "
                                  f"{_faiss_message(exc)}") from None

    # --- persistence --------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """faiss's CPU form of the index (none for Flat, rebuilt from the rows), the float32
        copy under ``host/``, ids and deletions; the manifest last."""
        d = Path(directory)
        blob = np.zeros(0, np.uint8)
        if self._index is not None and self.spec.family != "flat" and self._trained \
                and not self._exact_only:
            with self._backend.lock:
                cpu = self._faiss_call("save", self._backend.to_cpu, self._index)
            blob = np.asarray(self._backend.faiss.serialize_index(cpu), np.uint8)
        self._host.save(d / "host")
        n = self._n
        meta = {"dim": self.dim, "metric": self.metric.value, "spec": str(self.spec),
                "device": self.device, "adapt_nlist": self.adapt_nlist, "lists": self._lists,
                "trained": self._trained, "exact_only": self._exact_only, "n": n,
                "n_deleted": self._n_deleted}
        save_arrays(d, self.kind, meta, {"faiss": blob, "ids": self._ids[:n],
                                         "deleted": self._deleted[: (n + 63) >> 6]})

    def serve_saved(self, directory: str | os.PathLike) -> FaissIndex:
        """This index once ``save``d to ``directory``, served as ``load`` would serve it but
        without building its faiss index a second time: the float32 copy is swapped for the
        memory-mapped one just written (its RAM freed); the faiss index stays as built."""
        host = FlatIndex.load(Path(directory) / "host", mmap=True)
        if len(host) != self._n:
            raise CorruptData(f"{directory}: {len(host)} rows in host/, {self._n} built")
        self._host = host
        return self

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True,
             device: str | None = None) -> FaissIndex:
        """A saved index, on ``device`` (default: the one it was built for; the CPU, with a
        warning, where that one is missing). The float32 copy is memory-mapped."""
        d = Path(directory)
        meta, a = load_arrays(d, cls.kind, mmap=mmap)
        try:
            where = device if device is not None else meta["device"]
            dim, metric, spec = meta["dim"], meta["metric"], meta["spec"]
            n, n_deleted, lists = int(meta["n"]), int(meta["n_deleted"]), int(meta["lists"])
            trained, exact_only = bool(meta["trained"]), bool(meta["exact_only"])
            adapt = bool(meta["adapt_nlist"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptData(f"{d}: bad faiss index metadata ({exc})") from None
        try:
            index = cls(dim, metric, spec, device=where, adapt_nlist=adapt)
        except InvalidArgument as exc:  # DeviceUnavailable, or faiss failing on the GPU
            if device is not None:
                raise
            log.warning("%s: built for %s, served by faiss on the CPU (%s)", d, where, exc)
            index = cls(dim, metric, spec, device="cpu", adapt_nlist=adapt)  # bad metadata: raises
        host = FlatIndex.load(d / "host", mmap=mmap)
        if len(host) != n or a["ids"].shape != (n,) or a["deleted"].shape != ((n + 63) >> 6,):
            raise CorruptData(f"{d}: {len(host)} rows in host/, {a['ids'].shape[0]} ids, the "
                              f"manifest says {n}")
        index._host, index._n, index._lists = host, n, lists
        index._ids, index._deleted, index._n_deleted = a["ids"], a["deleted"], n_deleted
        index._trained, index._exact_only = trained, exact_only
        index._idmap = IdMap.from_array(index._ids, index._live())
        cpu = None  # faiss's CPU form (IVF, CAGRA): only a failure to read it is damage
        if trained and not exact_only and index.spec.family != "flat" \
                and not (index.spec.family == "cagra" and not n):
            try:
                cpu = index._backend.faiss.deserialize_index(np.ascontiguousarray(a["faiss"]))
            except RuntimeError as exc:
                raise CorruptData(f"{d / 'faiss.npy'}: faiss cannot restore it "
                                  f"({_faiss_message(exc)})") from None
        try:
            index._place(cpu)
        except (RuntimeError, MemoryError) as exc:  # on the GPU: out of memory, a CUDA error
            msg = f"faiss cannot place it on {index.device}: {_faiss_message(exc)}"
            if device is not None:
                raise DeviceUnavailable(f"{d}: {msg}") from None
            log.warning("%s: built for %s, served by faiss on the CPU (%s)", d, where, msg)
            index._set_index(None)  # what the GPU holds of it, freed under its lock
            index._backend = backend_for(None)
            if index.spec.family == "flat" or (index.spec.ivf and not trained):
                index._index = index._make(lists)
            index._place(cpu)
        if trained and index._index is not None and index._index.ntotal != n:
            raise CorruptData(f"{d / 'faiss.npy'}: {index._index.ntotal} rows, expected {n}")
        return index

    def _place(self, cpu: Any) -> None:
        """Put a loaded index's faiss index on its backend: ``cpu`` (faiss's CPU form, IVF
        and CAGRA) moved there, Flat refilled from the float32 copy, none where searches scan
        exactly. faiss's RuntimeError (GPU memory, CUDA) propagates: ``load`` falls back."""
        n = self._n
        if self._exact_only or (self.spec.family == "cagra" and not n):
            self._set_index(None)
        elif not self._trained:
            pass  # the empty index the constructor made
        elif self.spec.family == "flat":
            if n:
                rows = np.ascontiguousarray(self._host.reconstruct(np.arange(n)))
                with self._backend.lock:
                    self._index.add(rows)
        else:
            with self._backend.lock:
                self._index = self._backend.from_cpu(cpu)

    def __repr__(self) -> str:
        return (f"FaissIndex(dim={self.dim}, metric={self.metric.value!r}, spec={str(self.spec)!r}, "
                f"device={self.device!r}, n={len(self)})")


def _keep_allowed(dist: np.ndarray, pos: np.ndarray, words: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k hits per row whose position is set in ``words`` (order kept), -1 padded."""
    safe = np.maximum(pos, 0)
    ok = (pos >= 0) & (((words[safe >> 6] >> (safe & 63).astype(np.uint64)) & np.uint64(1)) == 1)
    order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(dist, order, axis=1)
    pos = np.take_along_axis(pos, order, axis=1)
    keep = np.take_along_axis(ok, order, axis=1)
    dist[~keep], pos[~keep] = np.inf, -1
    return np.ascontiguousarray(dist), np.ascontiguousarray(pos)


def _faiss_message(exc: Exception) -> str:
    """faiss's error text without its C++ file/line preamble: the failed check and, where
    faiss adds one (a GPU allocation's size and CUDA error), its detail."""
    text = str(exc).strip()
    if "Error: '" not in text:
        return text
    check, _, detail = text.split("Error: '", 1)[1].partition("' failed")
    detail = detail.lstrip(":").strip()
    return f"{check}: {detail}" if detail else check
