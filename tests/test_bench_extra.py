"""quiver.bench filtered / collection / server benchmarks on tiny synthetic data (CLI included)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("h5py")

from quiver.bench import common
from quiver.bench import datasets as dsm
from quiver.bench.metrics import recall_at_k

HAS_FAISS = importlib.util.find_spec("faiss") is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """1,200 x 24 cosine vectors, 12 queries, pos/lexname payload columns, in an HDF5 file."""
    ds = dsm.synthetic(1200, 12, 24, seed=3, metric="cosine", gt_k=20)
    ds.payload = common.synthetic_payload(ds.n, seed=1)
    path = tmp_path_factory.mktemp("data") / "tiny-angular.hdf5"
    dsm.write_hdf5(path, ds)
    return str(path)


def test_filtered_truth_recall_and_categories():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    ids = np.array([3, 7, 50, 51, 299])
    truth = common.filtered_truth(x, q, ids, 10, "l2")
    assert truth.shape == (5, 10) and (truth[:, 5:] == -1).all()
    d = ((q[:, None, :] - x[None, ids, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(truth[:, :5], ids[np.argsort(d, axis=1)])
    assert recall_at_k(truth, truth, 10) == 1.0
    found = truth.copy()
    found[:, 0] = -1
    assert recall_at_k(found, truth, 10) == pytest.approx(0.8)
    col = np.repeat(np.arange(5), [500, 300, 150, 40, 10])
    assert common.closest_categories(col, 0.3) == [1]
    assert common.closest_categories(col, 0.8) == [0, 1]  # union of the largest
    assert common.closest_categories(col, 0.01) == [4]
    assert common.category_filter("lex", [4]) == {"must": [{"key": "lex", "match": {"value": 4}}]}


def _run(argv, capsys) -> str:
    from quiver.cli import main

    assert main(argv) == 0
    return capsys.readouterr().out


def test_cli_bench_filtered(tiny, tmp_path, capsys):
    out = tmp_path / "filtered"
    md = _run(["bench-filtered", "--dataset", tiny, "--ef", "16,64", "--selectivity", "0.5,0.01",
               "--reps", "1", "--threads-only", "1", "--out", str(out)]
              + ([] if HAS_FAISS else ["--no-faiss"]), capsys)
    assert "Lowest ef reaching recall@10" in md
    rep = json.loads((out / "results.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md"}
    names = [c["name"] for c in rep["cases"]]
    assert names[0] == "unfiltered" and len(names) == 5
    rows = rep["results"]
    engines = {r["engine"] for r in rows}
    assert {"quiver", "quiver (bitset)", "quiver (ids)"} <= engines
    if HAS_FAISS:
        assert "faiss (bitmap)" in engines
    for r in rows:
        assert "error" not in r, r
        assert 0.0 <= r["recall"] <= 1.0 and r["qps_1"] > 0
        if r["engine"].startswith("quiver"):
            assert r["strategy"] in ("exact", "traversal", "filtered-traversal")
            if r["strategy"] == "exact":
                assert r["recall"] == 1.0
    # the two ways of passing the allowed set give the same answers
    by = {(r["case"], r["engine"], r["ef"]): r["recall"] for r in rows}
    for (case, eng, ef), rec in by.items():
        if eng == "quiver (ids)":
            assert by[(case, "quiver (bitset)", ef)] == rec
    assert any(b["ef"] is not None for b in rep["best"])


def test_cli_bench_collection(tiny, tmp_path, capsys):
    out = tmp_path / "collection"
    md = _run(["bench-collection", "--dataset", tiny, "--segment-size", "500",
               "--selectivity", "0.5,0.01", "--reps", "1", "--latency-queries", "4",
               "--threads-only", "all", "--data-dir", str(tmp_path), "--out", str(out)], capsys)
    assert "Hybrid queries" in md
    rep = json.loads((out / "results.json").read_text())
    ing, rs = rep["ingest"], rep["restart"]
    assert ing["vectors"] == 1200 and ing["ingest_rate"] > 0
    # a segment seals once it holds 500 points: two sealed and 200 left appendable, unless the
    # optimizer froze one late (a slow first compile) and it holds more
    sealed = [s["points"] for s in ing["segments"] if s["sealed"]]
    assert ing["indexed_points"] == sum(sealed) >= 1000 and min(sealed) >= 500
    assert sum(s["points"] for s in ing["segments"] if not s["sealed"]) == 1200 - sum(sealed)
    assert ing["standalone_build_s"] > 0 and ing["indexed_total_vs_standalone"] > 0
    assert rs["points"] == 1200 and rs["open_s"] > 0
    families = {r["family"] for r in rep["results"]}
    assert families == {"none", "lexname", "pos", "has_id"}
    for r in rep["results"]:
        assert "error" not in r, r
        assert r["recall"] >= (0.8 if r["family"] == "none" else 0.9), r
        assert r["qps_all"] > 0 and r["p50_ms"] > 0
    assert not list(tmp_path.glob("quiver-bench-collection-*"))  # temporary database removed


def test_cli_bench_server(tiny, tmp_path, capsys):
    out = tmp_path / "server"
    md = _run(["bench-server", "--dataset", tiny, "--limit", "800", "--requests", "24",
               "--concurrency", "1,4", "--warmup-requests", "4", "--upsert-vectors", "300",
               "--upsert-batch", "100", "--batch-size", "6", "--batch-requests", "2",
               "--data-dir", str(tmp_path), "--out", str(out)], capsys)
    assert "overhead ms/request" in md
    rep = json.loads((out / "results.json").read_text())
    assert rep["load"]["indexed_points"] == 800
    assert rep["server"]["exit_code"] is not None
    assert rep["checks"]["rest_equals_inprocess"] == 1.0
    assert [r["concurrency"] for r in rep["rest"]] == [1, 4]
    for r in rep["rest"]:
        assert r["qps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert r["server_cpu_ms_per_request"] is not None
        assert r["overhead_ms_per_request"] is not None
    assert rep["upsert"]["binary"]["body_bytes_per_vector"] < rep["upsert"]["json"][
        "body_bytes_per_vector"]
    assert rep["batch_search"]["npy"]["queries_per_s"] > 0
    assert rep["batch_search"]["npz"]["queries_per_s"] > 0
    assert rep["checks"]["batch_json_equals_npy"] is True
    assert rep["batch_search"]["npz_vs_json_end_to_end"] > 0
    assert not list(tmp_path.glob("quiver-bench-server-*"))


def test_cli_bench_qdrant_client(tiny, tmp_path, capsys):
    pytest.importorskip("qdrant_client")
    out = tmp_path / "qdrant-client"
    md = _run(["bench-qdrant-client", "--dataset", tiny, "--limit", "300", "--requests", "8",
               "--warmup-requests", "2", "--upsert-vectors", "150", "--upsert-batch", "100",
               "--upsert-rounds", "2", "--batch-size", "4", "--batch-requests", "2",
               "--rounds", "2", "--data-dir", str(tmp_path), "--out", str(out)], capsys)
    assert "query_batch_points" in md and "quiver.Client points/s" in md
    rep = json.loads((out / "results.json").read_text())
    assert rep["server"]["exit_code"] is not None
    assert rep["load"]["indexed_points"] == 300
    for name, r in rep["upsert"].items():
        if isinstance(r, dict):
            assert r["calls"] == 2 * 2 and r["points_per_s"] > 0, name  # 2 calls a round
            assert len(r["points_per_s_rounds"]) == 2
    for kind, calls in (("single", 8), ("batch", 2)):
        for e in ("qdrant-client", "quiver.Client"):
            r = rep["query"][kind][e]
            assert r["calls"] == calls and r["queries_per_s"] > 0
            assert r["p99_ms"] >= r["p50_ms"] > 0
    assert rep["checks"]["single_identical"] == 1.0
    assert rep["checks"]["batch_first_identical"] is True
    assert not list(tmp_path.glob("quiver-bench-qdrant-client-*"))
