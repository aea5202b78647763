"""PQ codes and IVF-PQ (with and without Refine) against NumPy oracles, persistence, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, brute_ids, no_second_kernel_variants
from quiver.engine.errors import CorruptData, InvalidArgument
from quiver.engine.index.ivfpq import IVFPQIndex
from quiver.engine.pq import PQCodec

import quiver

K = 10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(21)
    return blobs(rng, 3000, 32), blobs(rng, 30, 32)


def recall(got, true):
    return np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, true, strict=True)])


def test_pq_reconstruction_error_is_bounded():
    """Relative squared error of PQ8x8 on 32-d Gaussian data is below 0.25 (measured 0.17);
    with one dimension per sub-vector (256 levels a dimension) below 0.001."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 32)).astype(np.float32)
    for m, bound in ((8, 0.25), (32, 1e-3)):
        pq = PQCodec(32, m)
        pq.fit(x)
        codes, _ = pq.encode(x)
        assert codes.shape == (4000, m) and codes.dtype == np.uint8
        err = ((pq.decode(codes) - x) ** 2).sum() / (x**2).sum()
        assert err < bound, (m, err)


def test_pq_bad_input():
    with pytest.raises(InvalidArgument, match=r"PQ5: m=5 does not divide the dimension 32"):
        quiver.index("IVF16,PQ5", 32)
    with pytest.raises(InvalidArgument, match=r"PQ8x5: 5-bit codes are not supported; write "
                       r"PQ8x8 or PQ8x4fs"):
        quiver.index("IVF16,PQ8x5", 32)
    with pytest.raises(InvalidArgument, match=r"PQ codes are searched by IVF"):
        quiver.index("HNSW16,PQ8x8", 32)
    with pytest.raises(InvalidArgument, match=r"Refine re-ranks PQ codes"):
        quiver.index("IVF16,F32,Refine(F32)", 32)
    with pytest.raises(InvalidArgument, match=r"Refine\(SQ8\) is not available"):
        quiver.index("IVF16,PQ8x8,Refine(SQ8)", 32)
    with pytest.raises(InvalidArgument, match=r"256 centroids per sub-vector need at least 256"):
        PQCodec(8, 4).fit(np.zeros((100, 8), np.float32))


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_adc_equals_the_distance_to_the_reconstruction(data, metric):
    """Without re-ranking, every list probed: the top-k by PQ estimate, exactly as a brute
    force over the decoded vectors (centroid + residual) ranks them."""
    x, q = data
    idx = quiver.index("IVF8,PQ8x8", 32, metric)
    idx.train(x)
    idx.add(x)
    rec = idx.reconstruct(np.arange(x.shape[0]))
    qq = q / np.linalg.norm(q, axis=1, keepdims=True) if metric == "cosine" else q
    d = ((qq[:, None] - rec[None]) ** 2).sum(-1) if metric == "l2" else -(qq @ rec.T)
    for batch in (slice(None), slice(0, 1)):
        scores, ids = idx.search(q[batch], K, nprobe=8)
        want = np.sort(d[batch], axis=1)[:, :K]
        got = -scores if metric != "l2" else scores
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(np.take_along_axis(d[batch], ids, 1), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("refine", ["F32", "F16"])
def test_refine_recovers_exact_results(data, metric, refine):
    x, q = data
    idx = quiver.index(f"IVF8,PQ8x8,Refine({refine})", 32, metric)
    idx.train(x)
    idx.add(x)
    true = brute_ids(x, q, metric, K)
    assert recall(idx.search(q, K, nprobe=8, ef=x.shape[0])[1], true) == 1.0
    assert recall(idx.search(q, K, nprobe=8)[1], true) >= 0.95  # 10 k candidates re-ranked
    assert recall(idx.search(q, K, exact=True)[1], true) == 1.0
    assert recall(idx.search(q[:1], K, nprobe=8)[1], true[:1]) >= 0.9
    plain = idx.search(q, K, nprobe=8, rerank=False)[1]
    assert recall(plain, true) < 1.0  # PQ alone is lossy
    stored = x[[0, 5]] / (np.linalg.norm(x[[0, 5]], axis=1, keepdims=True) if metric == "cosine"
                          else 1)
    np.testing.assert_allclose(idx.reconstruct([0, 5]), stored, rtol=2e-3, atol=2e-3)


def test_filtered_ivfpq_against_the_oracle(data):
    x, q = data
    rng = np.random.default_rng(3)
    idx = quiver.index("IVF8,PQ8x8,Refine(F32)", 32, "ip")
    idx.train(x)
    idx.add(x)
    for share in (0.01, 0.2, 1.0):
        allowed = np.sort(rng.choice(x.shape[0], int(share * x.shape[0]), replace=False))
        true = brute_ids(x[allowed], q, "ip", min(K, allowed.size))
        _, got = idx.search(q, K, allowed=allowed, nprobe=8, ef=x.shape[0])
        assert recall(got[:, : true.shape[1]], allowed[true]) == 1.0
        _, few = idx.search(q, K, allowed=allowed, nprobe=2)
        assert np.isin(few[few >= 0], allowed).all()
        assert ((few >= 0).sum(axis=1) == min(K, allowed.size)).all()


def test_ivfpq_save_load_and_memory(tmp_path: Path, data):
    x, q = data
    idx = quiver.index("IVF8,PQ16,Refine(F16)", 32, "l2")
    idx.train(x)
    idx.add(x[:2000])
    idx.add(x[2000:])
    idx.remove([7])
    usage = idx.memory_usage()
    assert usage["vectors"] == 3000 * 16 and usage["refine_vectors"] == 3000 * (2 * 32 + 4)
    assert usage["pq_tables"] == 8 * 16 * 256 * 4  # l2 keeps per-list tables
    idx.save(tmp_path / "ivfpq")
    for mmap in (True, False):
        back = quiver.load_index(tmp_path / "ivfpq", mmap=mmap)
        assert isinstance(back, IVFPQIndex) and back.refine == "f16" and len(back) == 2999
        for kw in ({"nprobe": 3}, {"nprobe": 8, "rerank": False}, {"exact": True}):
            first = idx.search(q, K, **kw), idx.search(q[0], K, **kw)
            with no_second_kernel_variants():
                again = back.search(q, K, **kw), back.search(q[0], K, **kw)
            for a, b in zip(first, again, strict=True):
                np.testing.assert_array_equal(a, b)
    (tmp_path / "ivfpq" / "refine_codes.npy").write_bytes(b"broken")
    with pytest.raises(CorruptData, match=r"refine_codes\.npy"):
        quiver.load_index(tmp_path / "ivfpq")


def test_collection_with_ivfpq_segments_restarts(tmp_path: Path):
    rng = np.random.default_rng(9)
    x = blobs(rng, 1200, 16)
    q = blobs(rng, 5, 16)
    db = quiver.connect(tmp_path / "db")
    col = db.create_collection("c", 16, metric="cosine", index="IVF8,PQ8x8,Refine(F32)",
                               segment_size=600)
    for lo in (0, 600):
        col.upsert(list(range(lo, lo + 600)), x[lo : lo + 600])
        col.flush()
    col.wait_indexed()
    true = brute_ids(x, q, "cosine", K)
    got = [[p.id for p in r] for r in col.search(q, k=K, params={"nprobe": 8, "ef": 600})]
    assert recall(got, true) == 1.0
    db.close()
    db = quiver.connect(tmp_path / "db")
    again = [[p.id for p in r] for r in db.get_collection("c").search(q, k=K, params={"nprobe": 8,
                                                                                      "ef": 600})]
    assert again == got
    db.close()


@pytest.mark.parametrize("spec", ["IVF16,PQ4x8", "OPQ4,IVF16,PQ4x8", "IVF16,PQ4x4fs"])
def test_small_segments_of_pq_fields_seal(tmp_path: Path, spec):
    """A segment with fewer rows than PQ's 256 (16 for 4-bit) centroids a sub-vector (a small
    collection, a flush) seals anyway: each row is its own centroid, so its codes are exact
    and a search over every list finds the exact top-k (fast scan's 8-bit distance tables
    aside: there most of it); the index layer alone still refuses so few."""
    rng = np.random.default_rng(4)
    x = blobs(rng, 12 if spec.endswith("fs") else 100, 8)
    q = blobs(rng, 5, 8)
    db = quiver.connect(tmp_path / "db")
    col = db.create_collection("c", 8, metric="l2", index=spec, segment_size=600)
    col.upsert(list(range(len(x))), x)
    col.flush()
    assert [s["sealed"] for s in col.info()["segments"] if s["points"]] == [True]
    got = [[p.id for p in r] for r in col.search(q, k=5, params={"nprobe": 16})]
    true = brute_ids(x, q, "l2", 5)
    if spec.endswith("fs"):
        assert recall(got, true) >= 0.8
    else:
        np.testing.assert_array_equal(got, true)
    db.close()
    with pytest.raises(InvalidArgument, match=r"need at least|needs at least"):
        quiver.index(spec, 8).train(x)


@pytest.mark.slow
def test_ivfpq_refine_recall_floor_on_wordnet():
    """IVF1024,PQ48x8,Refine(F32) on WordNet (117k x 384): recall@10 >= 0.93 at nprobe 64
    (measured 0.942) and >= 0.95 at nprobe 128 (0.962)."""
    from quiver.bench.datasets import DEFAULT_DENSE_FILE, find_data_file, load_dataset

    path = find_data_file(DEFAULT_DENSE_FILE)
    if path is None:
        pytest.skip("WordNet file not present")
    ds = load_dataset(str(path))
    idx = quiver.index("IVF1024,PQ48x8,Refine(F32)", ds.dim, ds.metric)
    idx.train(ds.train)
    idx.add(ds.train)
    for nprobe, floor in ((64, 0.93), (128, 0.95)):
        _, ids = idx.search(ds.test, K, nprobe=nprobe)
        assert recall(ids, ds.neighbors[:, :K]) >= floor


# --- OPQ ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def correlated():
    """Rows whose variance sits in a few mixed directions: what a rotation helps PQ with."""
    rng = np.random.default_rng(5)
    scales = np.geomspace(4.0, 0.05, 16)
    mix = np.linalg.qr(rng.standard_normal((16, 16)))[0]
    x = ((rng.standard_normal((2000, 16)) * scales) @ mix).astype(np.float32)
    q = ((rng.standard_normal((30, 16)) * scales) @ mix).astype(np.float32)
    return x, q


def test_opq_rotation_is_orthogonal_and_lowers_the_distortion(correlated):
    from quiver.engine.opq import train_rotation

    x, _ = correlated
    rot, history = train_rotation(x, 4, niter=4)
    np.testing.assert_allclose(rot @ rot.T, np.eye(16), atol=1e-4)
    assert history[-1] < 0.9 * history[0]


def test_opq_ivfpq_beats_plain_ivfpq_and_refines_to_exact(tmp_path: Path, correlated):
    x, q = correlated
    true = brute_ids(x, q, "l2", K)
    plain = quiver.index("IVF4,PQ4x8", 16, "l2")
    opq = quiver.index("OPQ4,IVF4,PQ4x8", 16, "l2")
    exact = quiver.index("OPQ4,IVF4,PQ4x8,Refine(F32)", 16, "l2")
    for idx in (plain, opq, exact):
        idx.train(x)
        idx.add(x)
    r_plain = recall(plain.search(q, K, nprobe=4)[1], true)
    r_opq = recall(opq.search(q, K, nprobe=4)[1], true)
    assert r_opq > r_plain
    scores, ids = exact.search(q, K, nprobe=4, ef=2000)
    assert recall(ids, true) == 1.0
    assert exact.memory_usage()["rotation"] == 16 * 16 * 4
    exact.save(tmp_path / "opq")
    back = quiver.load_index(tmp_path / "opq")
    np.testing.assert_array_equal(back.search(q, K, nprobe=4, ef=2000)[1], ids)
    np.testing.assert_allclose(back.reconstruct(np.arange(5)), x[:5], atol=1e-4)
    assert back.nlist == 4  # the inner index's attributes read through


@pytest.mark.parametrize(("spec", "match"), [
    ("OPQ5,IVF4,PQ4x8", r"OPQ5: m=5 does not divide the dimension 16"),
    ("OPQ4", r"OPQ<m> goes before an index"),
    ("OPQ4x2,IVF4,PQ4x8", r"write OPQ<m>"),
    ("OPQ4,NOPE4", r"each optionally after OPQ<m>"),
])
def test_opq_bad_specs(spec, match):
    with pytest.raises(InvalidArgument, match=match):
        quiver.index(spec, 16)


def test_opq_search_before_train_says_train_first(correlated):
    idx = quiver.index("OPQ4,IVF4,PQ4x8", 16)
    with pytest.raises(InvalidArgument, match="not trained; call train"):
        idx.search(correlated[1], K)
    with pytest.raises(InvalidArgument, match="not trained; call train"):
        idx.add(correlated[0])


def test_collection_with_opq_segments_restarts(tmp_path: Path, correlated):
    x, q = correlated
    db = quiver.connect(tmp_path / "db")
    col = db.create_collection("c", 16, metric="cosine", index="OPQ4,IVF4,PQ4x8,Refine(F16)",
                               segment_size=1000)
    for lo in (0, 1000):
        col.upsert(list(range(lo, lo + 1000)), x[lo : lo + 1000])
        col.flush()
    col.wait_indexed()
    assert sum(s["sealed"] for s in col.info()["segments"]) == 2
    true = brute_ids(x, q, "cosine", K)
    got = [[p.id for p in r] for r in col.search(q, k=K, params={"nprobe": 4, "ef": 1000})]
    assert recall(got, true) >= 0.95
    db.close()
    db = quiver.connect(tmp_path / "db")
    col = db.get_collection("c")
    again = [[p.id for p in r] for r in col.search(q, k=K, params={"nprobe": 4, "ef": 1000})]
    assert again == got
    np.testing.assert_allclose(col.get([3], with_vectors=True)[0].vector,
                               x[3] / np.linalg.norm(x[3]), atol=2e-3)
    db.close()


def test_opq_bad_queries_get_the_inner_index_error(correlated):
    idx = quiver.index("OPQ4,IVF4,PQ4x8", 16)
    idx.train(correlated[0])
    idx.add(correlated[0])
    with pytest.raises(InvalidArgument, match="queries"):
        idx.search([[1.0, 2.0], [3.0]], K)
    with pytest.raises(InvalidArgument, match="queries"):
        idx.search(np.zeros((2, 5), np.float32), K)
