"""The GPU backend (engine/index/gpu.py): device strings and errors everywhere; the faiss
wrapper's ids, scores, filters and persistence on faiss's CPU twin (``device="cpu"``) and on
a simulated GPU (CPU faiss placed as ``cuda:0``, with and without cuVS filtering); and, marked
``gpu`` and skipped unless faiss sees a GPU, the real thing against the CPU indexes."""

from __future__ import annotations

import subprocess
import sys
import threading
import types

import numpy as np
import pytest
from quiver.engine import planner
from quiver.engine.bitset import Bitset
from quiver.engine.device import DeviceUnavailable, parse_device
from quiver.engine.errors import InvalidArgument
from quiver.engine.index import FaissIndex, FlatIndex, load_index
from quiver.engine.index import gpu as gpu_module
from quiver.engine.params import SearchParams
from quiver.engine.validation import normalize_rows

import quiver

METRICS = ("l2", "ip", "cosine")
DIM = 16


def _gpu_count() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


needs_gpu = pytest.mark.skipif(_gpu_count() == 0, reason="no GPU visible to faiss")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return rng.standard_normal((2000, DIM)).astype(np.float32), \
        rng.standard_normal((25, DIM)).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in
                          zip(found, truth, strict=True)]))


# --- device strings and errors (no GPU, no faiss needed) ---------------------------------


@pytest.mark.parametrize("value, ordinal", [(None, None), ("cpu", None), ("CPU", None),
                                            ("cuda", 0), ("cuda:0", 0), ("cuda:3", 3)])
def test_device_strings(value, ordinal):
    assert parse_device(value) == ordinal


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "cuda:-1", "cuda0", "", 0, 1.0])
def test_bad_device_strings_name_the_field(value):
    with pytest.raises(InvalidArgument, match=r"^device: expected 'cpu', 'cuda' or 'cuda:<n>'"):
        quiver.index("Flat", 4, device=value)


def test_device_cpu_is_the_normal_path():
    idx = quiver.index("Flat", 4, "l2", device="cpu")
    assert isinstance(idx, FlatIndex)
    assert isinstance(quiver.index("HNSW8", 4, device="cpu"), quiver.HNSWIndex)


def test_the_cpu_path_imports_no_faiss(tmp_path):
    code = ("import sys, numpy as np, quiver\n"
            "i = quiver.index('Flat', 4, device='cpu'); i.add(np.eye(4, dtype='float32'))\n"
            f"db = quiver.connect({str(tmp_path)!r}, optimizer=False)\n"
            "db.create_collection('c', vectors={'v': {'dim': 4, 'index': 'Flat', "
            "'device': 'cpu'}})\n"
            "assert 'faiss' not in sys.modules, 'faiss imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cagra_is_gpu_only():
    with pytest.raises(InvalidArgument, match=r"CAGRA32 is a GPU graph .*device='cuda'"):
        quiver.index("CAGRA32", 8)


@pytest.mark.parametrize("spec", ["HNSW16", "Flat,F16", "IVF64,SQ8", "IVF64,PQ8,Refine(F32)",
                                  "OPQ8,IVF64,PQ8", "CAGRA1"])
def test_specs_without_a_gpu_index(spec):
    with pytest.raises(InvalidArgument, match="spec: "):
        quiver.index(spec, 16, device="cuda")


def _fake_faiss(monkeypatch, gpus: int, cuvs: bool = False, gpu_build: bool = True):
    fake = types.SimpleNamespace(__version__="9.9", get_num_gpus=lambda: gpus,
                                 get_compile_options=lambda: "GPU NVIDIA_CUVS" if cuvs else "GPU")
    if gpu_build:
        fake.StandardGpuResources = object
    monkeypatch.setitem(sys.modules, "faiss", fake)


def test_missing_faiss_says_to_install_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(DeviceUnavailable, match=r"faiss is not installed; pip install "
                                                r"'quiver\[gpu-cu12\]'"):
        quiver.index("Flat", 8, device="cuda")


def test_cpu_build_of_faiss_is_named(monkeypatch):
    _fake_faiss(monkeypatch, 0, gpu_build=False)
    with pytest.raises(DeviceUnavailable, match=r"faiss 9.9 is the CPU build .*quiver\[gpu-cu12\]"):
        quiver.index("IVF16,Flat", 8, device="cuda")


def test_installed_faiss_without_a_gpu():
    """Whatever faiss this machine has: the CPU build, or a GPU build seeing no GPU."""
    faiss = pytest.importorskip("faiss")
    if _gpu_count():
        pytest.skip("a GPU is visible")
    want = "no visible GPU" if hasattr(faiss, "StandardGpuResources") else "is the CPU build"
    with pytest.raises(DeviceUnavailable, match=want):
        quiver.index("Flat", 8, "cosine", device="cuda")


def test_no_visible_gpu_out_of_range_and_cagra_without_cuvs(monkeypatch):
    _fake_faiss(monkeypatch, 0)
    with pytest.raises(DeviceUnavailable, match=r"no visible GPU \(faiss.get_num_gpus\(\) == 0\)"):
        quiver.index("Flat", 8, device="cuda")
    _fake_faiss(monkeypatch, 2)
    with pytest.raises(DeviceUnavailable, match=r"device='cuda:3': out of range, 2 GPU\(s\) "
                                                r"visible \(cuda:0..cuda:1\)"):
        quiver.index("Flat", 8, device="cuda:3")
    with pytest.raises(DeviceUnavailable, match=r"CAGRA needs faiss built with cuVS"):
        quiver.index("CAGRA32", 8, device="cuda:1")


# --- collection field option -------------------------------------------------------------


def test_collection_field_device_validation(tmp_path, monkeypatch):
    db = quiver.connect(tmp_path, optimizer=False)
    with pytest.raises(InvalidArgument, match=r"vectors\['v'\].device: expected 'cpu', 'cuda'"):
        db.create_collection("a", vectors={"v": {"dim": 8, "index": "Flat", "device": "tpu"}})
    with pytest.raises(InvalidArgument, match=r"vectors\['v'\].device: only dense fields"):
        db.create_collection("b", vectors={"v": {"dim": 8, "index": "Flat", "device": "cuda",
                                                 "multivector": "max_sim"}})
    with pytest.raises(InvalidArgument, match=r"vectors\['v'\].index: spec: 'HNSW16' has no GPU"):
        db.create_collection("c", vectors={"v": {"dim": 8, "index": "HNSW16", "device": "cuda"}})
    _fake_faiss(monkeypatch, 0)
    with pytest.raises(DeviceUnavailable, match=r"vectors\['v'\].device: device='cuda:0': no "
                                                r"visible GPU"):
        db.create_collection("d", vectors={"v": {"dim": 8, "index": "IVF16,Flat",
                                                 "device": "cuda"}})
    col = db.create_collection("e", vectors={"v": {"dim": 8, "index": "Flat", "device": "cpu"}})
    assert col.fields["v"].device is None  # the CPU is the default, stored as such
    db.close()


def test_rest_field_device(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient
    from quiver.server.app import create_app
    from quiver.server.settings import Settings

    _fake_faiss(monkeypatch, 0)
    with TestClient(create_app(Settings(data=tmp_path, warmup=False))) as client:
        body = {"vectors": {"v": {"dim": 8, "index": "IVF16,Flat", "device": "cuda"}}}
        r = client.put("/collections/g", json=body)
        assert r.status_code == 400 and "device: device='cuda:0': no visible GPU" in r.text
        body["vectors"]["v"]["device"] = "cpu"
        assert client.put("/collections/g", json=body).status_code == 200


# --- the faiss wrapper on the CPU (faiss-cpu is enough) ----------------------------------

@pytest.fixture
def faiss():
    return pytest.importorskip("faiss")


class _SimulatedGpu(gpu_module._Backend):
    """CPU faiss placed as ``cuda:0``: the GPU limits and code paths, CPU arithmetic."""

    def __init__(self, faiss, filters: bool):
        super().__init__(faiss, None)
        self.device, self.cuvs, self._filters = 0, filters, filters
        self.lock = threading.RLock()
        self._cpu = gpu_module._Backend(faiss, None)

    @property
    def filters(self) -> bool:
        return self._filters

    @property
    def max_k(self) -> int:
        return gpu_module.GPU_MAX_K

    def make(self, *args):
        return self._cpu.make(*args)

    def to_cpu(self, index):
        return index

    def from_cpu(self, index):
        return index

    def params(self, *args):
        return self._cpu.params(*args)


@pytest.fixture(params=[True, False], ids=["cuvs", "classic"])
def simulated_gpu(request, faiss, monkeypatch):
    """``device="cuda"`` served by ``_SimulatedGpu``: with cuVS filters, or without them."""
    real = gpu_module.backend_for

    def backend_for(device, cagra=False):
        return real(None) if device is None else _SimulatedGpu(faiss, request.param)

    monkeypatch.setattr(gpu_module, "backend_for", backend_for)
    return request.param


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_flat_matches_flat(faiss, data, metric):
    x, q = data
    ids = np.arange(len(x), dtype=np.int64) * 5 + 3
    ref, fx = FlatIndex(DIM, metric), FaissIndex(DIM, metric, "Flat", device="cpu")
    ref.add(x, ids)
    fx.add(x, ids)
    s1, i1 = ref.search(q, 10)
    s2, i2 = fx.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    s1, i1 = ref.search(q[0], 10)
    s2, i2 = fx.search(q[0], 10)  # one query: 1-D in, 1-D out
    assert i2.shape == (10,)
    np.testing.assert_array_equal(i1, i2)


@pytest.mark.parametrize("metric", METRICS)
def test_padding_and_scores_of_missing_hits(faiss, data, metric):
    x, q = data
    fx = FaissIndex(DIM, metric, "Flat", device="cpu")
    fx.add(x[:3])
    s, i = fx.search(q[:2], 5)
    assert (i[:, 3:] == -1).all() and (i[:, :3] >= 0).all()
    worst = np.inf if metric == "l2" else -np.inf
    assert (s[:, 3:] == worst).all()


def _plan(strategy: str) -> planner.Plan:
    return planner.Plan(strategy, 1, 1, {})


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat"])
def test_filters_on_the_device(simulated_gpu, data, metric, spec):
    """A filter on the (simulated) GPU: a selector with cuVS, over-fetch without; the same
    hits as the exact CPU scan of the allowed rows for Flat, allowed rows only for IVF."""
    x, q = data
    fx = quiver.index(spec, DIM, metric, device="cuda")
    fx.train(x)
    fx.add(x)
    ref = FlatIndex(DIM, metric)
    ref.add(x)
    keep = np.ones(len(x), bool)
    keep[::9] = False  # a permissive filter: the over-fetch path can serve it
    bits = Bitset.from_mask(keep)
    qs = normalize_rows(q) if metric == "cosine" else q
    p = SearchParams(nprobe=16)
    d1, p1, info = fx.search_positions(qs, 10, bits, p, _plan("traversal"))
    assert info["device"] == "cuda:0"
    assert keep[p1].all()
    if spec == "Flat":
        d2, p2, _ = ref.search_positions(qs, 10, bits, p, _plan("exact"))
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_allclose(d1, d2, atol=1e-4)
    # a selective filter: the planner keeps it on the CPU copy
    _, ids, plan = fx.search(q, 5, allowed=np.arange(20), explain=True)
    assert plan["strategy"] == "exact" and set(ids.ravel()) <= set(range(20))


def test_a_filter_the_gpu_cannot_apply_stays_on_the_cpu(faiss, data, monkeypatch):
    _, q = data
    x = np.random.default_rng(3).standard_normal((6000, DIM)).astype(np.float32)
    monkeypatch.setattr(gpu_module, "backend_for",
                        lambda device, cagra=False: _SimulatedGpu(faiss, filters=False))
    fx = quiver.index("Flat", DIM, "l2", device="cuda")
    fx.add(x)
    half = len(x) // 2
    costs = fx.strategy_costs(half, len(x), 10, SearchParams(), True)
    assert "traversal" not in costs  # k + rejected rows exceeds the GPU's k limit
    assert "traversal" in fx.strategy_costs(len(x), len(x), 10, SearchParams(), False)
    _, ids, plan = fx.search(q, 10, allowed=np.arange(half), explain=True)
    assert plan["strategy"] == "exact" and (ids < half).all()


def test_remove_and_ids(simulated_gpu, data):
    x, q = data
    fx = quiver.index("IVF8,Flat", DIM, "l2", device="cuda")
    fx.train(x)
    ids = fx.add(x[:1000])
    fx.add(x[1000:], np.arange(5000, 6000))
    assert len(fx) == 2000 and ids[-1] == 999
    _, top = fx.search(q, 1, nprobe=8)
    assert fx.remove(top[:, 0]) == len(set(top[:, 0]))
    _, again = fx.search(q, 3, nprobe=8)
    assert not set(again.ravel()) & set(top[:, 0])
    assert len(fx) == 2000 - len(set(top[:, 0]))


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "IVF16,PQ4"])
def test_save_and_load(simulated_gpu, data, tmp_path, spec):
    x, q = data
    fx = quiver.index(spec, DIM, "cosine", device="cuda")
    fx.train(x)
    fx.add(x, np.arange(len(x)) + 100)
    fx.remove([100, 101])
    fx.save(tmp_path / "i")
    back = load_index(tmp_path / "i")
    assert isinstance(back, FaissIndex) and back.device == "cuda:0" and len(back) == len(x) - 2
    cpu = back.to_cpu()
    assert cpu.device == "cpu" and "faiss_vectors" in cpu.memory_usage()
    qs, p = normalize_rows(q), SearchParams(nprobe=4)
    want = fx.search_positions(qs, 10, None, p, _plan("traversal"))
    for other in (back, cpu):  # the faiss index itself, not the CPU copy's exact scan
        got = other.search_positions(qs, 10, None, p, _plan("traversal"))
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    assert not np.isin(want[1], [0, 1]).any()  # the removed rows
    usage = back.memory_usage()
    assert usage["host_vectors"] == 0 and usage["gpu_vectors"] > 0  # the copy is mmapped
    np.testing.assert_allclose(back.reconstruct([5]), fx.reconstruct([5]))


def test_load_without_the_device_serves_on_the_cpu(faiss, data, tmp_path, monkeypatch):
    x, q = data
    real = gpu_module.backend_for
    monkeypatch.setattr(gpu_module, "backend_for",
                        lambda device, cagra=False: _SimulatedGpu(faiss, True))
    fx = quiver.index("IVF8,Flat", DIM, "ip", device="cuda")
    fx.train(x)
    fx.add(x)
    fx.save(tmp_path / "i")

    def unavailable(device, cagra=False):
        if device is not None:
            raise DeviceUnavailable("no visible GPU")
        return real(None)

    monkeypatch.setattr(gpu_module, "backend_for", unavailable)
    back = load_index(tmp_path / "i")
    assert back.device == "cpu"
    np.testing.assert_array_equal(back.search(q, 5, nprobe=8)[1], fx.search(q, 5, nprobe=8)[1])


class _CountingLock:
    """A re-entrant lock that knows whether it is held (``depth``)."""

    def __init__(self):
        self._lock, self.depth = threading.RLock(), 0

    def __enter__(self):
        self._lock.acquire()
        self.depth += 1

    def __exit__(self, *exc):
        self.depth -= 1
        self._lock.release()


def test_gpu_indexes_are_made_and_freed_under_the_device_lock(faiss, data, tmp_path,
                                                              monkeypatch):
    """StandardGpuResources' allocMemory / deallocMemory are not thread-safe: every faiss
    index the backend makes is made, replaced and freed holding the device's lock."""
    x, q = data
    events = []

    class Tracked:  # a GPU index stand-in: records whether the lock was held at birth / death
        def __init__(self, index, lock):
            self.__dict__.update(inner=index, lock=lock)
            events.append(("made", lock.depth > 0))

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __del__(self):
            events.append(("freed", self.lock.depth > 0))

    class Backend(_SimulatedGpu):
        make = gpu_module._Backend.make  # the real one: takes the lock, then _make

        def __init__(self):
            super().__init__(faiss, True)
            self.lock = _CountingLock()

        def _make(self, *args):
            return Tracked(self._cpu.make(*args), self.lock)

        def to_cpu(self, index):
            return index.inner if isinstance(index, Tracked) else index

    monkeypatch.setattr(gpu_module, "backend_for", lambda device, cagra=False: Backend())
    fx = quiver.index("IVF64,Flat", DIM, "l2", device="cuda", adapt_nlist=True)
    fx.train(x[:400])  # too few points for 64 lists: a smaller index replaces the first
    fx.add(x[:400])
    assert fx.lists < 64 and [e for e, _ in events] == ["made", "made", "freed"]
    fx.save(tmp_path / "i")
    back = load_index(tmp_path / "i")  # the constructor's empty index, replaced on placement
    assert back.search(q, 3, nprobe=2)[1].shape == (len(q), 3)
    fx.release()  # explicitly
    assert fx.search(q, 3)[1].shape == (len(q), 3)  # the float32 copy still serves
    dropped = quiver.index("Flat", DIM, "l2", device="cuda")
    del dropped  # never released: __del__ frees it under the lock too
    kinds = [e for e, _ in events]
    assert kinds.count("made") == 4 and kinds.count("freed") == 4, events
    assert all(held for _, held in events), events


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat"])
def test_a_failed_placement_serves_on_the_cpu_not_corrupt(faiss, data, tmp_path, monkeypatch,
                                                          caplog, spec):
    """A GPU out of memory at open is no damage: the index is served by faiss on the CPU,
    logged (``quiver repair`` must not quarantine it); only an unreadable blob is CorruptData."""
    from quiver.engine.errors import CorruptData

    x, q = data
    monkeypatch.setattr(gpu_module, "backend_for",
                        lambda device, cagra=False: _SimulatedGpu(faiss, True))
    fx = quiver.index(spec, DIM, "cosine", device="cuda")
    fx.train(x)
    fx.add(x)
    fx.save(tmp_path / "i")
    real = gpu_module.backend_for

    class Oom:  # what a GPU index is when its memory runs out
        ntotal = 0

        def add(self, rows):
            raise RuntimeError("Error: 'err == cudaSuccess' failed: cudaMalloc: out of memory")

    class Full(_SimulatedGpu):
        def make(self, *args):
            return Oom()

        def from_cpu(self, index):
            return Oom().add(None)

    def backend_for(device, cagra=False):
        return gpu_module._Backend(faiss, None) if device is None else Full(faiss, True)

    monkeypatch.setattr(gpu_module, "backend_for", backend_for)
    with caplog.at_level("WARNING", logger="quiver.engine.index.gpu"):
        back = load_index(tmp_path / "i")
    assert back.device == "cpu" and "served by faiss on the CPU" in caplog.text
    assert "out of memory" in caplog.text
    qs = normalize_rows(q)
    want = fx.search_positions(qs, 10, None, SearchParams(nprobe=4), _plan("traversal"))
    got = back.search_positions(qs, 10, None, SearchParams(nprobe=4), _plan("traversal"))
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(DeviceUnavailable, match="faiss cannot place it on cuda:0"):
        FaissIndex.load(tmp_path / "i", device="cuda")  # asked for that device: no fallback
    monkeypatch.setattr(gpu_module, "backend_for", real)
    if spec != "Flat":  # Flat saves no faiss blob (it is refilled from the float32 copy)
        def unreadable(blob):
            raise RuntimeError("Error: 'ret == (size)' failed: read error in <memory>")

        monkeypatch.setattr(faiss, "deserialize_index", unreadable)
        with pytest.raises(CorruptData, match="faiss cannot restore it"):
            FaissIndex.load(tmp_path / "i")


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat"])
def test_a_selector_faiss_ignores_is_caught(faiss, data, monkeypatch, caplog, spec):
    """A cuVS build may still run the classic kernels (compute capability < 7.0,
    FAISS_CUVS_NO_FLAT), which take the selector and ignore it: results are checked against
    the filter, short queries redone exactly, and the device's filters served as without
    cuVS from then on."""
    x, q = data

    class Ignoring(_SimulatedGpu):
        filters = gpu_module._Backend.filters  # the real one: cuVS, unless seen ignoring

        def params(self, spec, nprobe, beam, sel):
            return self._cpu.params(spec, nprobe, beam, None)

    monkeypatch.setattr(gpu_module, "_SELECTOR_IGNORED", set())
    monkeypatch.setattr(gpu_module, "backend_for",
                        lambda device, cagra=False: Ignoring(faiss, True))
    fx = quiver.index(spec, DIM, "l2", device="cuda")
    fx.train(x)
    fx.add(x)
    ref = FlatIndex(DIM, "l2")
    ref.add(x)
    keep = np.ones(len(x), bool)
    keep[::7] = False
    bits, p = Bitset.from_mask(keep), SearchParams(nprobe=16)
    assert fx._mode(10, int((~keep).sum()), p) == "native"
    with caplog.at_level("WARNING", logger="quiver.engine.index.gpu"):
        d1, p1, info = fx.search_positions(q, 10, bits, p, _plan("traversal"))
    assert keep[p1].all() and (p1 >= 0).all() and info["fallback_exact"] > 0
    assert list(gpu_module._SELECTOR_IGNORED) == [0] and "ignore selectors" in caplog.text
    assert fx._mode(10, int((~keep).sum()), p) == "overfetch"  # learnt
    d3, p3, _ = fx.search_positions(q, 10, bits, p, _plan("traversal"))
    assert keep[p3].all()
    if spec == "Flat":
        d2, p2, _ = ref.search_positions(q, 10, bits, p, _plan("exact"))
        for d, pos in ((d1, p1), (d3, p3)):
            np.testing.assert_array_equal(pos, p2)
            np.testing.assert_allclose(d, d2, atol=1e-4)


def test_ivf_nprobe_and_training_checks(faiss, data):
    x, _ = data
    fx = FaissIndex(DIM, "l2", "IVF16,Flat", device="cpu")
    with pytest.raises(InvalidArgument, match="not trained"):
        fx.add(x)
    fx.train(x)
    fx.add(x)
    with pytest.raises(InvalidArgument, match=r"params\.nprobe: 17 exceeds nlist 16"):
        fx.search(x[:1], 5, nprobe=17)
    small = FaissIndex(DIM, "l2", "IVF64,Flat", device="cpu", adapt_nlist=True)
    small.train(x[:400])
    assert small.lists == 400 // 39
    tiny = FaissIndex(DIM, "l2", "IVF8,PQ4", device="cpu", adapt_nlist=True)
    tiny.train(x[:100])  # fewer rows than a PQ codebook: exact scans instead
    tiny.add(x[:100])
    assert tiny.search(x[3], 1)[1][0] == 3


def test_collection_builds_sealed_segments_on_the_device(simulated_gpu, tmp_path, data,
                                                         monkeypatch):
    x, q = data
    loads = []
    real_load = FaissIndex.load.__func__
    monkeypatch.setattr(FaissIndex, "load", classmethod(
        lambda cls, *a, **kw: loads.append(a) or real_load(cls, *a, **kw)))
    db = quiver.connect(tmp_path, optimizer=False)
    vectors = {"v": {"dim": DIM, "metric": "cosine", "index": "Flat", "device": "cuda"}}
    col = db.create_collection("g", vectors=vectors, segment_size=600)
    ref = db.create_collection("r", vectors={"v": {"dim": DIM, "metric": "cosine",
                                                   "index": "Flat"}}, segment_size=600)
    payloads = [{"tag": i % 3} for i in range(len(x))]
    for c in (col, ref):
        c.upsert(list(range(len(x))), {"v": x}, payloads)
        c.flush()
    kinds = {type(f.index).__name__ for s in col._segments for f in s.fields.values()
             if s.sealed}
    assert kinds == {"FaissIndex"}
    # a seal keeps the faiss index it built (no second build from the files), its float32
    # copy memory-mapped from them
    assert loads == []
    assert all(f.index.memory_usage()["host_vectors"] == 0 for s in col._segments if s.sealed
               for f in s.fields.values())
    first = col.search(q[0], 10, using="v")
    for flt in (None, {"must": [{"key": "tag", "match": {"value": 1}}]}):
        got = col.search(q[0], 10, filter=flt, using="v")
        want = ref.search(q[0], 10, filter=flt, using="v")
        assert [p.id for p in got] == [p.id for p in want]
        np.testing.assert_allclose([p.score for p in got], [p.score for p in want], atol=1e-4)
    db.close()
    db = quiver.connect(tmp_path, optimizer=False)  # sealed segments load back on the device
    again = db.get_collection("g").search(q[0], 10, using="v")
    assert [p.id for p in again] == [p.id for p in first]
    assert loads  # those did load
    db.close()


@pytest.mark.parametrize("spec, cpu", [("IVF16,Flat", "IVFIndex"), ("Flat", "FlatIndex")])
def test_a_field_whose_gpu_is_gone_seals_on_the_cpu(faiss, tmp_path, data, monkeypatch, caplog,
                                                    spec, cpu):
    """A collection made on a GPU machine, opened on one without: its GPU-built segments load
    on the CPU, and new seals build Quiver's CPU index (warned once per field) instead of
    failing every flush."""
    x, q = data
    real = gpu_module.backend_for
    monkeypatch.setattr(gpu_module, "backend_for",
                        lambda device, cagra=False: real(None) if device is None
                        else _SimulatedGpu(faiss, True))
    db = quiver.connect(tmp_path, optimizer=False)
    vectors = {"v": {"dim": DIM, "metric": "l2", "index": spec, "device": "cuda"},
               "c": {"dim": DIM, "metric": "l2", "index": "CAGRA32", "device": "cuda"}}
    col = db.create_collection("g", vectors=vectors, segment_size=500)
    col.upsert(list(range(500)), {"v": x[:500], "c": x[:500]})
    col.flush()
    db.close()

    def unavailable(device, cagra=False):
        if device is not None:
            raise DeviceUnavailable(f"device='{device}': no visible GPU")
        return real(None)

    monkeypatch.setattr(gpu_module, "backend_for", unavailable)
    db = quiver.connect(tmp_path, optimizer=False)
    col = db.get_collection("g")
    assert col._field_specs()["c"].index == "HNSW16"  # CAGRA32's CPU stand-in
    with caplog.at_level("WARNING", logger="quiver.engine.collection"):
        for lo in range(500, 2000, 500):  # three more seals
            col.upsert(list(range(lo, lo + 500)), {"v": x[lo:lo + 500]})
            col.flush()
    warned = sorted(r.getMessage().split("field ")[1][:3] for r in caplog.records
                    if "cannot reach" in r.getMessage())
    assert warned == ["'c'", "'v'"]  # once per field, not once per seal
    kinds = [type(s.fields["v"].index).__name__ for s in col._segments if s.sealed]
    assert kinds[0] == "FaissIndex" and set(kinds[1:]) == {cpu} and len(kinds) == 4
    assert col._segments[0].fields["v"].index.device == "cpu"
    ref = FlatIndex(DIM, "l2")
    ref.add(x)
    _, want = ref.search(q[0], 10)
    got = col.search(q[0], 10, using="v", params={"exact": True})
    assert [p.id for p in got] == want.tolist()
    db.close()


def _ground_truth_both_ways(monkeypatch, metric):
    from quiver.bench.datasets import exact_neighbors

    rng = np.random.default_rng(5)
    x, q = rng.standard_normal((3000, DIM)), rng.standard_normal((30, DIM))
    want = exact_neighbors(x, q, 20, metric)
    monkeypatch.setenv("QUIVER_GT_DEVICE", "cuda")
    got = exact_neighbors(x, q, 20, metric)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_bench_ground_truth_on_the_device(simulated_gpu, monkeypatch, metric):
    _ground_truth_both_ways(monkeypatch, metric)


# --- on a GPU ----------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("metric", METRICS)
def test_gpu_bench_ground_truth(monkeypatch, metric):
    _ground_truth_both_ways(monkeypatch, metric)


@pytest.fixture(scope="module")
def clustered():
    """20,000 points in 64 tight clusters (IVF's lists find them), 200 queries near them."""
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((64, 32)).astype(np.float32) * 4
    x = centers[rng.integers(0, 64, 20000)] + rng.standard_normal((20000, 32)).astype(np.float32)
    q = centers[rng.integers(0, 64, 200)] + rng.standard_normal((200, 32)).astype(np.float32)
    return x.astype(np.float32), q.astype(np.float32)


def _truth(x, q, metric, k=10):
    ref = FlatIndex(x.shape[1], metric)
    ref.add(x)
    return ref, ref.search(q, k)


def _assert_same_top_k(x, q, metric, want, got):
    """``got`` (scores, ids) is the exact top-k ``want`` is, up to float32 rounding.

    Both sides compute |q|^2 + |x|^2 - 2 q.x (or q.x) in float32 with different GEMMs
    (cuBLAS, NumPy's BLAS) and summation orders, so a score's error scales with the squared
    norms, not with the score: on ``clustered`` they reach ~1000 each, float32's eps there is
    ~1.2e-4, and L2 scores differ by up to ~5e-4 (an atol of 1e-4 fails). The tolerance is 8
    ulps of |q|^2 + |x|^2 (1e-5 at least: cosine rows are unit). Ids must match rank by rank,
    except where two neighbours tie within that tolerance: there the other id must score as
    well, computed exactly (float64)."""
    (s1, i1), (s2, i2) = want, got
    xs, qs = (normalize_rows(x), normalize_rows(q)) if metric == "cosine" else (x, q)
    xs, qs = xs.astype(np.float64), qs.astype(np.float64)
    scale = float((xs ** 2).sum(1).max() + (qs ** 2).sum(1).max())
    tol = max(1e-5, 8 * float(np.finfo(np.float32).eps) * scale)
    np.testing.assert_allclose(s2, s1, rtol=0, atol=tol)
    for r in np.unique(np.nonzero(i1 != i2)[0]):
        assert len(set(i2[r])) == len(i2[r]), (r, i2[r])
        dots = xs[i2[r]] @ qs[r]
        exact = ((xs[i2[r]] ** 2).sum(1) + (qs[r] ** 2).sum() - 2 * dots if metric == "l2"
                 else dots)
        np.testing.assert_allclose(exact, s1[r], rtol=0, atol=tol,
                                   err_msg=f"query {r}: {i2[r]} is not a top-k of {i1[r]}")


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_flat_on_large_norms(faiss, clustered, metric):
    """The tolerance of the GPU Flat test, on faiss's CPU Flat (its own BLAS calls)."""
    x, q = clustered
    _, want = _truth(x, q, metric)
    fx = FaissIndex(x.shape[1], metric, "Flat", device="cpu")
    fx.add(x)
    _assert_same_top_k(x, q, metric, want, fx.search(q, 10))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("metric", METRICS)
def test_gpu_flat_equals_flat(clustered, metric):
    x, q = clustered
    ref, (s1, i1) = _truth(x, q, metric)
    g = quiver.index("Flat", x.shape[1], metric, device="cuda")
    g.add(x)
    _assert_same_top_k(x, q, metric, (s1, i1), g.search(q, 10))
    assert g.memory_usage()["gpu_vectors"] == 4 * x.size


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("metric", METRICS)
def test_gpu_ivf_recall_matches_cpu_ivf(clustered, metric):
    x, q = clustered
    _, (_, truth) = _truth(x, q, metric)
    cpu = quiver.index("IVF64,Flat", x.shape[1], metric)
    g = quiver.index("IVF64,Flat", x.shape[1], metric, device="cuda")
    for idx in (cpu, g):
        idx.train(x)
        idx.add(x)
    for nprobe in (2, 8):
        r_cpu = recall(cpu.search(q, 10, nprobe=nprobe)[1], truth)
        r_gpu = recall(g.search(q, 10, nprobe=nprobe)[1], truth)
        assert abs(r_gpu - r_cpu) <= 0.01, (nprobe, r_gpu, r_cpu)


@pytest.mark.gpu
@needs_gpu
def test_gpu_ivfpq_builds_and_searches(clustered):
    x, q = clustered
    _, (_, truth) = _truth(x, q, "l2")
    g = quiver.index("IVF64,PQ8", x.shape[1], "l2", device="cuda")
    g.train(x)
    g.add(x)
    assert recall(g.search(q, 10, nprobe=16)[1], truth) >= 0.4


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_gpu_cagra_recall_at_default_params(clustered, metric):
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "GpuIndexCagra"):
        pytest.skip("faiss built without cuVS")
    x, q = clustered
    _, (_, truth) = _truth(x, q, metric)
    g = quiver.index("CAGRA32", x.shape[1], metric, device="cuda")
    g.add(x)
    assert recall(g.search(q, 10)[1], truth) >= 0.9
    hnsw = g.to_cpu()  # faiss's IndexHNSWCagra over the CAGRA graph
    assert recall(hnsw.search(q, 10, ef=64)[1], truth) >= 0.85


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", ["Flat", "IVF64,Flat", "CAGRA32"])
def test_gpu_filters(clustered, spec):
    faiss = pytest.importorskip("faiss")
    if spec.startswith("CAGRA") and not hasattr(faiss, "GpuIndexCagra"):
        pytest.skip("faiss built without cuVS")
    x, q = clustered
    g = quiver.index(spec, x.shape[1], "l2", device="cuda")
    g.train(x)
    g.add(x)
    allowed = np.flatnonzero(np.arange(len(x)) % 3 == 0)
    bits = Bitset.from_positions(allowed, len(x))
    d1, p1, _ = g.search_positions(q, 10, bits, SearchParams(nprobe=16), _plan("traversal"))
    assert np.isin(p1[p1 >= 0], allowed).all() and (p1 >= 0).all()
    if spec == "Flat":
        ref = FlatIndex(x.shape[1], "l2")
        ref.add(x)
        want = ref.search(q, 10, allowed=allowed)
        _assert_same_top_k(x, q, "l2", want, (d1, p1))  # d1: kernel distances = L2 scores


@pytest.mark.gpu
@needs_gpu
def test_gpu_save_load_and_collection(clustered, tmp_path):
    x, q = clustered
    g = quiver.index("IVF64,Flat", x.shape[1], "cosine", device="cuda")
    g.train(x)
    g.add(x)
    g.save(tmp_path / "i")
    back = load_index(tmp_path / "i")
    assert back.device == "cuda:0"
    np.testing.assert_array_equal(back.search(q, 10)[1], g.search(q, 10)[1])
    db = quiver.connect(tmp_path / "db", optimizer=False)
    col = db.create_collection("c", vectors={"v": {"dim": x.shape[1], "index": "IVF64,Flat",
                                                   "device": "cuda"}}, segment_size=5000)
    col.upsert(list(range(len(x))), {"v": x})
    col.flush()
    hits = col.search(q[0], 10, using="v")
    assert len(hits) == 10
    db.close()
