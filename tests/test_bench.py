"""quiver.bench: datasets (synthetic, ann-benchmarks and token HDF5), recall, harness, runner, CLI."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from quiver.bench import datasets as dsm  # noqa: E402
from quiver.bench import runner  # noqa: E402
from quiver.bench.engines import Engine, QuiverEngine  # noqa: E402
from quiver.bench.metrics import at_target, recall_at_k, recall_per_query  # noqa: E402
from quiver.bench.report import markdown, write_report  # noqa: E402
from quiver.bench.runner import BenchConfig, measure, run_benchmark  # noqa: E402
from quiver.bench.timing import rotated, single_query_latency, thread_limit  # noqa: E402

HAS_FAISS = importlib.util.find_spec("faiss") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def naive_topk(train: np.ndarray, test: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Independent oracle: full sort per query, ties by lower id."""
    x, q = train.astype(np.float64), test.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        key = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    else:
        key = -(q @ x.T)
    return np.array([np.lexsort((np.arange(x.shape[0]), row))[:k] for row in key])


# --- datasets ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_synthetic_ground_truth_is_exact(metric):
    ds = dsm.synthetic(n=400, nq=15, dim=12, seed=3, metric=metric, gt_k=20)
    assert ds.train.dtype == np.float32 and ds.train.flags.c_contiguous
    assert ds.train.shape == (400, 12) and ds.test.shape == (15, 12)
    assert ds.neighbors.shape == (15, 20) and ds.metric == metric
    np.testing.assert_array_equal(ds.neighbors, naive_topk(ds.train, ds.test, 20, metric))
    again = dsm.synthetic(n=400, nq=15, dim=12, seed=3, metric=metric, gt_k=20)
    np.testing.assert_array_equal(ds.train, again.train)


def test_exact_neighbors_blocks_and_l2_scores(monkeypatch):
    monkeypatch.setattr(dsm, "_BLOCK_ELEMENTS", 500)  # force many query blocks
    rng = np.random.default_rng(1)
    x, q = rng.standard_normal((200, 8), np.float32), rng.standard_normal((23, 8), np.float32)
    ids, scores = dsm.exact_neighbors(x, q, 7, "l2")
    np.testing.assert_array_equal(ids, naive_topk(x, q, 7, "l2"))
    true = ((q[:, None, :] - x[ids]) ** 2).sum(-1)
    np.testing.assert_allclose(scores, true, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) >= 0)


@pytest.mark.parametrize(("attr", "metric"), [("angular", "cosine"), ("euclidean", "l2"),
                                              ("dot", "ip"), ("ip", "ip")])
def test_distance_attribute_mapping(attr, metric):
    assert dsm.metric_from_distance(attr) == metric


def test_unknown_distance_attribute_is_rejected():
    with pytest.raises(ValueError, match="hamming"):
        dsm.metric_from_distance("hamming")


def write_ann_file(path, n=300, nq=12, dim=16, seed=5):
    """A tiny ann-benchmarks file stored as float16 with payload columns, like the real one."""
    ds = dsm.synthetic(n=n, nq=nq, dim=dim, seed=seed, metric="cosine", gt_k=30)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = "angular"
        f.create_dataset("train", data=ds.train.astype(np.float16))
        f.create_dataset("test", data=ds.test.astype(np.float16))
        f16_train = ds.train.astype(np.float16).astype(np.float32)
        f16_test = ds.test.astype(np.float16).astype(np.float32)
        nb, _ = dsm.exact_neighbors(f16_train, f16_test, 30, "cosine")
        f.create_dataset("neighbors", data=nb.astype(np.int32))
        f.create_dataset("distances", data=np.zeros((nq, 30), np.float32))
        f.create_dataset("pos", data=rng.integers(0, 4, n).astype(np.int8))
        f.create_dataset("lexname", data=rng.integers(0, 45, n).astype(np.int8))
    return f16_train, f16_test, nb


def test_load_ann_benchmarks_file(tmp_path):
    path = tmp_path / "tiny-angular.hdf5"
    train, _, nb = write_ann_file(path)
    ds = dsm.load_hdf5(path)
    assert ds.metric == "cosine" and ds.name == "tiny-angular"
    assert ds.train.dtype == np.float32 and ds.train.flags.c_contiguous
    np.testing.assert_array_equal(ds.train, train)
    np.testing.assert_array_equal(ds.neighbors, nb)
    assert ds.neighbors.dtype == np.int64
    assert set(ds.payload) == {"pos", "lexname"} and ds.payload["pos"].shape == (300,)

    few = dsm.load_hdf5(path, queries=5)
    assert few.nq == 5
    np.testing.assert_array_equal(few.neighbors, nb[:5])


def test_limit_recomputes_ground_truth(tmp_path):
    path = tmp_path / "tiny-angular.hdf5"
    train, test, _ = write_ann_file(path)
    ds = dsm.load_hdf5(path, limit=120, gt_k=10)
    assert ds.n == 120 and ds.name.endswith("first120")
    assert ds.payload["lexname"].shape == (120,)
    np.testing.assert_array_equal(ds.neighbors, naive_topk(train[:120], test, 10, "cosine"))
    assert ds.distances.shape == (12, 10) and np.all(ds.distances >= -1e-6)


def test_load_dataset_specs(tmp_path):
    ds = dsm.load_dataset("synthetic:300x8:cosine", queries=7)
    assert (ds.n, ds.dim, ds.nq, ds.metric) == (300, 8, 7, "cosine")
    with pytest.raises(FileNotFoundError):
        dsm.load_dataset(tmp_path / "missing.hdf5")


def test_write_hdf5_round_trip(tmp_path):
    ds = dsm.synthetic(n=200, nq=5, dim=6, seed=2, metric="l2", gt_k=10)
    dsm.write_hdf5(tmp_path / "s.hdf5", ds)
    back = dsm.load_hdf5(tmp_path / "s.hdf5")
    assert back.metric == "l2"
    np.testing.assert_array_equal(back.neighbors, ds.neighbors)


def test_multivector_file_and_chamfer_ground_truth(tmp_path):
    rng = np.random.default_rng(9)
    lens, qlens = rng.integers(1, 6, 40), rng.integers(1, 4, 6)
    doc_off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    q_off = np.concatenate([[0], np.cumsum(qlens)]).astype(np.int64)
    docs = dsm._normalized(rng.standard_normal((doc_off[-1], 8), np.float32)).astype(np.float16)
    qv = dsm._normalized(rng.standard_normal((q_off[-1], 8), np.float32)).astype(np.float16)
    d32, q32 = docs.astype(np.float32), qv.astype(np.float32)

    def chamfer(qi, di):
        Q, D = q32[q_off[qi]:q_off[qi + 1]], d32[doc_off[di]:doc_off[di + 1]]
        return (Q @ D.T).max(axis=1).sum()

    full = np.array([[chamfer(i, j) for j in range(40)] for i in range(6)])
    order = np.array([np.lexsort((np.arange(40), -row)) for row in full])
    with h5py.File(tmp_path / "tok.hdf5", "w") as f:
        f.attrs["distance"] = "chamfer"
        for name, arr in [("doc_vectors", docs), ("doc_offsets", doc_off),
                          ("query_vectors", qv), ("query_offsets", q_off),
                          ("neighbors", order[:, :10].astype(np.int32)),
                          ("scores", np.take_along_axis(full, order[:, :10], 1))]:
            f.create_dataset(name, data=arr)
    mv = dsm.load_multivector(tmp_path / "tok.hdf5")
    assert (mv.n_docs, mv.nq, mv.dim) == (40, 6, 8)
    assert mv.doc_vectors.dtype == np.float32 and mv.doc(3).shape == (lens[3], 8)
    np.testing.assert_array_equal(mv.neighbors, order[:, :10])

    sub = dsm.load_multivector(tmp_path / "tok.hdf5", limit=25, queries=4, gt_k=8)
    assert sub.n_docs == 25 and sub.nq == 4
    sub_order = np.array([np.lexsort((np.arange(25), -row[:25])) for row in full[:4]])
    np.testing.assert_array_equal(sub.neighbors, sub_order[:, :8])
    np.testing.assert_allclose(sub.scores, np.take_along_axis(full[:4], sub_order[:, :8], 1),
                               rtol=1e-5)


# --- recall and harness ------------------------------------------------------------------


def test_recall_at_k():
    truth = np.array([[1, 2, 3, 9], [4, 5, 6, 9]])
    found = np.array([[3, 2, 7], [-1, -1, -1]])
    np.testing.assert_allclose(recall_per_query(found, truth, 3), [2 / 3, 0.0])
    assert recall_at_k(found, truth, 3) == pytest.approx(1 / 3)
    assert recall_at_k(np.array([[5, 5, 5]]), np.array([[5, 6, 7]]), 3) == pytest.approx(1 / 3)
    assert recall_at_k(truth[:, ::-1], truth, 4) == 1.0
    with pytest.raises(ValueError, match="neighbors"):
        recall_at_k(found, truth[:, :2], 3)


def test_thread_limit_restores_numba_threads():
    import numba

    before = numba.get_num_threads()
    seen = []
    with thread_limit(1, seen.append) as n:
        assert n == 1 and numba.get_num_threads() == 1
    assert seen == [1] and numba.get_num_threads() == before


def test_single_query_latency_calls_one_row_at_a_time():
    shapes = []
    lat = single_query_latency(lambda q: shapes.append(q.shape), np.zeros((7, 3), np.float32),
                               reps=2)
    assert shapes == [(1, 3)] * 14
    assert 0 <= lat.p50_ms <= lat.p99_ms


def test_quiver_engine_sweeps_by_spec():
    assert QuiverEngine("Flat", 8, "l2").sweep({"ef": [16, 32]}) == [{}]
    assert QuiverEngine("HNSW16,LVQ8", 8, "l2").sweep({"ef": [16, 32]}) == [{"ef": 16},
                                                                            {"ef": 32}]


# --- runner, report, CLI -----------------------------------------------------------------


def tiny_config(**kw) -> BenchConfig:
    # One spec only: each (codec, metric) pays a Numba compile for single-query latency.
    base = dict(dataset="synthetic:600x16", indexes=["Flat"], queries=25,
                latency_queries=5, reps=1, rounds=2)
    return BenchConfig(**(base | kw))


def test_runner_end_to_end_writes_json_md_png(tmp_path):
    report = run_benchmark(tiny_config(peers=["no-such-peer"]), log=lambda m: None)
    (row,) = report["results"]
    assert (row["engine"], row["index"], row["params"]) == ("quiver", "Flat", {})
    assert row["recall"] == 1.0
    assert row["qps_1"] > 0 and row["qps_all"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert row["bytes_per_vector"] >= 16 * 4 and row["build_s"] >= 0
    assert len(row["qps_1_rounds"]) == len(row["qps_all_rounds"]) == 2
    assert row["qps_1"] == max(row["qps_1_rounds"]) and len(row["p50_ms_rounds"]) == 2
    assert report["skipped"][0]["name"] == "no-such-peer"
    assert report["schedule"]["mode"] == "interleaved"
    assert report["schedule"]["orders"] == [["quiver Flat"]] * 2
    (entry,) = report["summary"]["engines"]
    assert report["summary"]["reference"] == "quiver Flat"
    assert entry["at_target"]["1"]["0.95"] == {"qps": row["qps_1"], "status": "lower bound",
                                               "between": [{}]}
    paths = write_report(report, tmp_path / "out")
    expected = {"results.json", "results.md"} | ({"recall_qps.png"} if HAS_MPL else set())
    assert {p.name for p in (tmp_path / "out").iterdir()} == expected
    assert json.loads(paths["json"].read_text())["dataset"]["n"] == 600
    md = paths["md"].read_text()
    for col in ("engine", "recall@10", "QPS 1 thread", "QPS all threads", "p50 ms", "p99 ms",
                "build s", "bytes/vector", "Interleaved", "2 rounds", "QPS @0.90", "QPS @0.95",
                "QPS @0.99", "| ref |"):
        assert col in md
    if HAS_MPL:
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runner_threads_only_one(tmp_path):
    report = run_benchmark(tiny_config(indexes=["Flat"], threads="1"), log=lambda m: None)
    (row,) = report["results"]
    assert row["qps_all"] is None and row["qps_1"] > 0
    md = markdown(report)
    assert "QPS 1 thread" in md and "QPS all threads" not in md and "all threads (" not in md


def test_cli_bench(tmp_path, capsys):
    from quiver.cli import main

    out = tmp_path / "cli"
    rc = main(["bench", "--dataset", "synthetic:500x8", "--queries", "20", "--latency-queries",
               "4", "--reps", "1", "--rounds", "2", "--index", "Flat", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| quiver | Flat |" in printed and "then 2 rounds" in printed
    assert (out / "results.json").is_file()
    assert main(["bench", "--dataset", str(tmp_path / "nope.hdf5"), "--out", str(out)]) == 2


@pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")
def test_runner_with_faiss_peers():
    report = run_benchmark(tiny_config(indexes=[], peers=["faiss", "faiss-hnsw"], efs=[8, 64]),
                           log=lambda m: None)
    rows = report["results"]
    assert [r["engine"] for r in rows] == ["faiss"] * 3
    assert rows[0]["recall"] == 1.0
    assert [r["params"] for r in rows[1:]] == [{"ef": 8}, {"ef": 64}]
    assert rows[2]["recall"] >= rows[1]["recall"]
    assert report["environment"]["faiss_blas_threshold"] == 20


class _StubEngine(Engine):
    """Exact numpy search with an 'ef' knob that rejects ef < 10: sweeps survive bad points."""

    engine, index, param = "stub", "numpy", "ef"

    def build(self, x):
        self.x = x

    def search(self, q, k, **params):
        if params.get("ef", 10) < 10:
            raise ValueError("ef too small")
        ids, _ = dsm.exact_neighbors(self.x, q, k, self.metric)
        return ids

    def memory(self):
        return self.x.nbytes


def test_measure_keeps_going_past_a_failing_point():
    ds = dsm.synthetic(n=300, nq=10, dim=4, seed=1, gt_k=10)
    cfg = tiny_config(efs=[5, 20], latency_queries=3)
    failed: list[dict] = []
    rows = measure(_StubEngine(4, "l2"), ds, cfg, lambda m: None, failed)
    assert [r.params for r in rows] == [{"ef": 20}] and rows[0].recall == 1.0
    assert rows[0].bytes_per_vector == 16
    assert "ef=5" in failed[0]["name"] and "too small" in failed[0]["reason"]


class _Recorder(Engine):
    """Exact search that logs (index, batch size, ef) of every call into a shared list."""

    engine, param = "fake", "ef"

    def __init__(self, name: str, calls: list, param: str | None = "ef"):
        super().__init__(4, "l2")
        self.index, self.calls, self.param = name, calls, param

    def build(self, x):
        self.x = x

    def search(self, q, k, **params):
        self.calls.append((self.index, q.shape[0], params.get("ef")))
        return dsm.exact_neighbors(self.x, q, k, self.metric)[0]

    def memory(self):
        return self.x.nbytes


def test_rotated_orders():
    assert [rotated("ABC", r) for r in range(4)] == [list("ABC"), list("BCA"), list("CAB"),
                                                    list("ABC")]
    assert rotated([], 3) == []


def test_engines_are_timed_interleaved_by_sweep_position():
    ds = dsm.synthetic(n=200, nq=6, dim=4, seed=1, gt_k=10)
    calls: list = []
    engines = [_Recorder("A", calls), _Recorder("B", calls), _Recorder("C", calls, None)]
    cfg = tiny_config(efs=[16, 32], reps=1, rounds=3, threads="1", latency_queries=0)
    rows, orders = runner.measure_engines(engines, ds, cfg, lambda m: None)
    assert orders == [["fake A", "fake B", "fake C"], ["fake B", "fake C", "fake A"],
                      ["fake C", "fake A", "fake B"]]
    # recall first (untimed), engine by engine; C is a Flat-like engine with one point
    assert [(n, ef) for n, _, ef in calls[:5]] == [("A", 16), ("A", 32), ("B", 16), ("B", 32),
                                                   ("C", None)]
    expected = [("A", 16), ("B", 16), ("C", None), ("A", 32), ("B", 32),   # round 1: A B C
                ("B", 16), ("C", None), ("A", 16), ("B", 32), ("A", 32),   # round 2: B C A
                ("C", None), ("A", 16), ("B", 16), ("A", 32), ("B", 32)]   # round 3: C A B
    assert [(n, ef) for n, _, ef in calls[5:]] == expected
    assert [(r.label, r.params) for r in rows] == [
        ("fake A", {"ef": 16}), ("fake A", {"ef": 32}), ("fake B", {"ef": 16}),
        ("fake B", {"ef": 32}), ("fake C", {})]
    for r in rows:
        assert len(r.qps_1_rounds) == 3 and r.qps_1 == max(r.qps_1_rounds) and r.qps_all is None
        assert r.recall == 1.0 and r.p50_ms is None


def test_both_thread_settings_and_latency_interleave_too():
    ds = dsm.synthetic(n=200, nq=6, dim=4, seed=1, gt_k=10)
    calls: list = []
    engines = [_Recorder("A", calls), _Recorder("B", calls)]
    cfg = tiny_config(efs=[16], reps=1, rounds=2, threads="both", latency_queries=2)
    rows, _ = runner.measure_engines(engines, ds, cfg, lambda m: None)
    seq = [(n, nq) for n, nq, _ in calls]
    warm = [("A", 6), ("A", 1), ("B", 6), ("B", 1)]
    r1 = [("A", 6), ("B", 6), ("A", 6), ("B", 6), ("A", 1), ("A", 1), ("B", 1), ("B", 1)]
    r2 = [("B", 6), ("A", 6), ("B", 6), ("A", 6), ("B", 1), ("B", 1), ("A", 1), ("A", 1)]
    assert seq == warm + r1 + r2
    for r in rows:
        assert len(r.qps_1_rounds) == len(r.qps_all_rounds) == len(r.p50_ms_rounds) == 2
        assert r.p99_ms >= r.p50_ms > 0


def test_at_target_interpolates_between_bracketing_points():
    pts = [{"ef": 16, "recall": 0.8, "qps": 1000.0}, {"ef": 32, "recall": 0.9, "qps": 600.0},
           {"ef": 64, "recall": 0.99, "qps": 300.0}]
    got = at_target(pts, 0.95)
    assert got["status"] == "interpolated" and got["between"] == [32, 64]
    assert got["qps"] == pytest.approx(600 - 300 * 0.05 / 0.09)
    assert at_target(pts, 0.5) == {"qps": 1000.0, "status": "lower bound", "between": [16]}
    assert at_target(pts, 0.995) == {"qps": None, "status": "not reached", "between": []}


def _row(label, engine, recall, qps, rounds):
    return {"label": label, "engine": engine, "index": label, "params": {"ef": recall},
            "recall": recall, "qps_1": qps, "qps_1_rounds": rounds, "build_s": 1.0,
            "bytes_per_vector": 8.0}


def test_summary_ratios_against_the_first_quiver_engine():
    results = [_row("peer", "faiss", 0.9, 2000.0, [2000.0, 1800.0]),
               _row("peer", "faiss", 1.0, 1000.0, [1000.0, 1000.0]),
               _row("mine", "quiver", 1.0, 500.0, [500.0, 450.0]),  # out of recall order
               _row("mine", "quiver", 0.9, 1000.0, [900.0, 1000.0])]
    s = runner.summarize(results, [0.9, 0.95, 0.99], ["1"])
    assert s["reference"] == "mine"
    peer, mine = s["engines"]
    assert mine["at_target"]["1"]["0.95"]["qps"] == pytest.approx(750)
    assert peer["at_target"]["1"]["0.95"]["qps"] == pytest.approx(1500)
    r = peer["ratio"]["1"]["0.95"]
    assert r["ratio"] == pytest.approx(2.0) and not r["bound"]
    assert r["paired_median"] == pytest.approx((1500 / 700 + 1400 / 725) / 2)
    assert peer["ratio"]["1"]["0.9"]["bound"]  # both reach 0.9 at their first point
    assert peer["build_s"] == 1.0 and peer["bytes_per_vector"] == 8.0


def test_too_little_memory_falls_back_to_sequential(monkeypatch):
    monkeypatch.setattr(runner, "memory_budget", lambda: 1)
    report = run_benchmark(tiny_config(indexes=["Flat", "Flat"], threads="1"),
                           log=lambda m: None)
    assert report["schedule"]["mode"] == "sequential"
    assert "ratios not trustworthy" in report["schedule"]["note"]
    assert [r["label"] for r in report["results"]] == ["quiver Flat", "quiver Flat #2"]
    assert report["schedule"]["orders"] == [["quiver Flat", "quiver Flat #2"]]
    assert "sequential: ratios not trustworthy" in markdown(report)


def test_bad_rounds_are_rejected():
    with pytest.raises(ValueError, match="rounds"):
        run_benchmark(tiny_config(rounds=0), log=lambda m: None)


def test_quiver_engine_sweeps_the_index_behind_opq():
    assert QuiverEngine("OPQ4,IVF16,PQ4x8", 8, "l2").param == "nprobe"
    assert QuiverEngine("NOPE", 8, "l2").param is None


def test_ab_build_engine_can_search_an_index_saved_and_loaded_back():
    """``quiver.bench.ab --saved``: each build saves its index and loads it back with its
    own ``load_index``, so an A/B can measure what a sealed segment searches."""
    from pathlib import Path

    from quiver.bench.ab import BuildEngine
    from quiver.engine.index import index as head_index

    x = np.random.default_rng(2).standard_normal((300, 16)).astype(np.float32)
    eng = BuildEngine("head", head_index, "HNSW8,LVQ8", 16, "l2", saved=True)
    eng.build(x)
    files = Path(eng._files.name)
    assert (files / "manifest.json").exists()
    assert isinstance(eng.idx._float.view()[0], np.memmap)  # loaded back: originals mapped
    assert eng.search(x[:3], 1)[:, 0].tolist() == [0, 1, 2]
    eng.close()
    assert not files.exists()
