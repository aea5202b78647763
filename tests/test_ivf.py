"""k-means and the IVF index: against NumPy oracles, persistence, bad input, collections, REST."""

from __future__ import annotations

import time

import numba
import numpy as np
import pytest
from conftest import blobs, brute_ids, no_second_kernel_variants
from quiver.engine.errors import CorruptData, InvalidArgument
from quiver.engine.index.ivf import IVFIndex, default_nprobe
from quiver.engine.kmeans import assign, kmeans, split_empty

import quiver

K = 10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return blobs(rng, 1500, 12), blobs(rng, 40, 12)


def recall(got, true):
    return np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, true, strict=True)])


def trained(x, metric="l2", nlist=16, codec="f32", **kw) -> IVFIndex:
    idx = IVFIndex(x.shape[1], metric, nlist=nlist, codec=codec, **kw)
    idx.train(x)
    idx.add(x)
    return idx


# --------------------------------------------------------------------------------- k-means


def numpy_lloyd(x, init, niter, spherical=False):
    c = init.astype(np.float64).copy()
    x64 = x.astype(np.float64)
    for _ in range(niter):
        d = (-(x64 @ c.T) if spherical else ((x64[:, None] - c[None]) ** 2).sum(-1))
        lab = d.argmin(1)
        for j in range(c.shape[0]):
            if (lab == j).any():
                c[j] = x64[lab == j].mean(0)
        if spherical:
            c /= np.linalg.norm(c, axis=1, keepdims=True)
    return c


@pytest.mark.parametrize("spherical", [False, True])
def test_kmeans_inertia_within_one_percent_of_numpy_lloyd(spherical):
    rng = np.random.default_rng(1)
    x = blobs(rng, 3000, 16, centers=24)
    if spherical:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    init = x[rng.choice(3000, 32, replace=False)]
    metric = "ip" if spherical else "l2"
    km = kmeans(x, 32, niter=12, init=init, metric=metric, max_points_per_centroid=None)
    ref = numpy_lloyd(x, init / np.linalg.norm(init, axis=1, keepdims=True) if spherical else init,
                      12, spherical)
    ours = assign(x, km.centroids, metric)[1].sum(dtype=np.float64)
    theirs = assign(x, ref.astype(np.float32), metric)[1].sum(dtype=np.float64)
    assert abs(ours - theirs) <= 0.01 * abs(theirs)
    if spherical:
        np.testing.assert_allclose(np.linalg.norm(km.centroids, axis=1), 1, atol=1e-5)


def test_pruned_lloyd_matches_exact_lloyd():
    """After the exact iterations each row only meets its 16 nearest centroids: the objective
    stays within 0.5% of exact Lloyd's, and no cluster is left empty."""
    rng = np.random.default_rng(6)
    x = blobs(rng, 6000, 16, centers=40)
    init = x[rng.choice(6000, 64, replace=False)]
    exact = kmeans(x, 64, niter=10, init=init, max_points_per_centroid=None)
    pruned = kmeans(x, 64, niter=10, init=init, max_points_per_centroid=None, exact_iters=3)
    inertia = [assign(x, km.centroids)[1].sum(dtype=np.float64) for km in (exact, pruned)]
    assert abs(inertia[1] - inertia[0]) <= 0.005 * inertia[0]
    dup = np.repeat(x[:1], 12, axis=0)  # empty clusters re-seeded in pruned iterations too
    km = kmeans(x[:2000], 12, niter=8, init=dup, exact_iters=1)
    assert np.bincount(assign(x[:2000], km.centroids)[0], minlength=12).min() > 0


def test_kmeans_is_seeded_and_deterministic_across_thread_counts():
    rng = np.random.default_rng(2)
    x = blobs(rng, 4000, 8)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = kmeans(x, 20, niter=5, seed=3, exact_iters=2)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        b = kmeans(x, 20, niter=5, seed=3, exact_iters=2)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, kmeans(x, 20, niter=5, seed=4, exact_iters=2).centroids)
    pp = kmeans(x, 20, niter=5, init="k-means++")
    assert pp.centroids.shape == (20, 8) and np.isfinite(pp.inertia)


def test_kmeans_samples_at_most_the_points_per_centroid():
    x = blobs(np.random.default_rng(3), 3000, 4)
    assert kmeans(x, 4, niter=1, max_points_per_centroid=100).points == 400
    assert kmeans(x, 4, niter=1, max_points_per_centroid=None).points == 3000


def test_empty_clusters_are_split_from_the_largest():
    rng = np.random.default_rng(4)
    x = blobs(rng, 600, 6, centers=3)
    init = np.repeat(x[:1], 8, axis=0)  # 7 of 8 clusters start empty
    km = kmeans(x, 8, niter=6, init=init)
    labels, _ = assign(x, km.centroids)
    assert np.bincount(labels, minlength=8).min() > 0
    c = np.ones((3, 4), np.float32)
    counts = np.array([10, 0, 4])
    assert split_empty(c, counts) == 1
    assert not np.array_equal(c[0], c[1])


def test_kmeans_bad_input():
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(InvalidArgument, match=r"k: 8 clusters need at least 8 training points, got 5"):
        kmeans(x, 8)
    with pytest.raises(InvalidArgument, match="init"):
        kmeans(x, 2, init="nope")
    with pytest.raises(InvalidArgument, match="metric"):
        kmeans(x, 2, metric="cosine")


# ---------------------------------------------------------------------------- IVF search


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("codec", ["f32", "f16"])
def test_full_probe_equals_exact_search(data, metric, codec):
    x, q = data
    idx = trained(x, metric, codec=codec)
    flat = quiver.FlatIndex(x.shape[1], metric, codec)
    flat.add(x)
    want_s, want_i = flat.search(q, K)
    for batch in (q, q[:1], q[:3]):  # the list-major batch kernel and the one-query kernel
        s, i = idx.search(batch, K, nprobe=16)
        n = batch.shape[0]
        np.testing.assert_array_equal(i, want_i[:n])
        np.testing.assert_allclose(s, want_s[:n], rtol=1e-4, atol=1e-4)
    s1, i1 = idx.search(q[0], K, nprobe=16)  # a 1-D query answers 1-D
    assert i1.shape == (K,) and i1.tolist() == want_i[0].tolist()


def test_few_probes_keep_good_recall_on_clustered_data(data):
    x, q = data
    idx = trained(x, "l2")
    true = brute_ids(x, q, "l2", K)
    assert recall(idx.search(q, K, nprobe=4)[1], true) >= 0.9
    assert recall(idx.search(q, K, nprobe=1)[1], true) < recall(idx.search(q, K, nprobe=16)[1], true) + 1e-9
    assert default_nprobe(16) == 8 and default_nprobe(1024) == 32 and default_nprobe(4) == 4


@pytest.mark.parametrize("share", [0.01, 0.1, 0.5, 1.0])
def test_filtered_search_against_the_oracle(data, share):
    x, q = data
    rng = np.random.default_rng(5)
    idx = trained(x, "cosine")
    allowed = np.sort(rng.choice(x.shape[0], max(1, int(share * x.shape[0])), replace=False))
    true = brute_ids(x[allowed], q, "cosine", min(K, allowed.size))
    true = allowed[true]
    _, got = idx.search(q, K, allowed=allowed, nprobe=16)  # every list: exact
    assert recall(got[:, : true.shape[1]], true) == 1.0
    _, few, info = idx.search(q, K, allowed=allowed, nprobe=2, explain=True)
    assert np.isin(few[few >= 0], allowed).all()
    assert ((few >= 0).sum(axis=1) == min(K, allowed.size)).all()  # short lists fall back
    assert info["strategy"] == ("exact" if share <= 0.01 else "traversal")
    if share < 0.1:
        assert info["strategy"] == "exact" or info["fallback_exact"] > 0


def test_remove_add_and_reconstruct_keep_positions(data):
    x, q = data
    idx = IVFIndex(x.shape[1], "l2", nlist=16)
    idx.train(x)
    ids0 = idx.add(x[:1000])
    ids1 = idx.add(x[1000:])  # rows join their lists after the first batch's
    assert ids0.tolist() == list(range(1000)) and ids1.tolist() == list(range(1000, 1500))
    np.testing.assert_array_equal(idx.reconstruct(np.arange(1500)), x)
    assert sorted(idx.list_sizes().tolist()) == sorted(
        np.bincount(assign(x, idx._centroids)[0], minlength=16).tolist())
    gone = brute_ids(x, q, "l2", 1)[:, 0]
    assert idx.remove(np.r_[gone, gone, 99999]) == np.unique(gone).size
    assert len(idx) == 1500 - np.unique(gone).size
    _, got = idx.search(q, K, nprobe=16)
    assert not np.isin(got, gone).any()
    true = brute_ids(np.delete(x, gone, axis=0), q, "l2", K)
    keep = np.delete(np.arange(1500), gone)
    assert recall(got, keep[true]) == 1.0
    with pytest.raises(quiver.DuplicateId):
        idx.add(x[:1], ids=[5])


def test_explicit_ids_and_memory_usage(data):
    x, q = data
    idx = IVFIndex(x.shape[1], "ip", nlist=8, codec="f16")
    idx.train(x)
    idx.add(x, ids=np.arange(x.shape[0]) * 10 + 3)
    _, got = idx.search(q, K, nprobe=8)
    assert (got % 10 == 3).all()
    usage = idx.memory_usage()
    assert set(usage) == {"centroids", "vectors", "float_copy", "lists", "deleted", "ids",
                          "id_map"}
    assert usage["float_copy"] == 0  # f16 codes give the vectors back
    assert usage["vectors"] == x.shape[0] * (2 * x.shape[1] + 4)
    assert usage["id_map"] > 0  # ids are not positions


# ------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, data, mmap):
    x, q = data
    idx = trained(x, "cosine", codec="f16")
    idx.remove([3, 4])
    idx.save(tmp_path / "ivf")
    back = quiver.load_index(tmp_path / "ivf", mmap=mmap)
    assert isinstance(back, IVFIndex) and len(back) == len(idx) and back.lists == 16
    for nprobe in (2, 16):
        first = idx.search(q, K, nprobe=nprobe), idx.search(q[0], K, nprobe=nprobe)
        with no_second_kernel_variants():
            again = back.search(q, K, nprobe=nprobe), back.search(q[0], K, nprobe=nprobe)
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)
    assert back.memory_usage() == idx.memory_usage()
    back.add(x[:5], ids=np.arange(5) + 5000)  # memory-mapped lists are copied, not written
    back.remove([10])
    assert len(back) == len(idx) + 4
    assert set(back.search(x[0], 2, nprobe=16)[1].tolist()) == {0, 5000}  # a tie: both
    empty = IVFIndex(4, "l2", nlist=2)
    empty.save(tmp_path / "empty")
    assert quiver.load_index(tmp_path / "empty").needs_training


def test_corrupt_ivf_file_names_the_file(tmp_path, data):
    x, _ = data
    trained(x).save(tmp_path / "ivf")
    path = tmp_path / "ivf" / "codes.npy"
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptData, match=r"codes\.npy.*checksum"):
        IVFIndex.load(tmp_path / "ivf")
    (tmp_path / "ivf" / "offsets.npy").unlink()
    with pytest.raises(CorruptData, match=r"offsets\.npy"):
        quiver.load_index(tmp_path / "ivf")


# ---------------------------------------------------------------------------- bad input


def test_bad_input_errors(data):
    x, q = data
    idx = IVFIndex(x.shape[1], "l2", nlist=16)
    assert idx.needs_training
    for call in (lambda: idx.search(q, K), lambda: idx.add(x)):
        with pytest.raises(InvalidArgument, match="train first"):
            call()
    with pytest.raises(InvalidArgument, match=r"nlist: 16 lists need at least 16 training points, got 10"):
        idx.train(x[:10])
    idx.train(x)
    idx.add(x)
    with pytest.raises(InvalidArgument, match=r"params.nprobe: 17 exceeds nlist 16"):
        idx.search(q, K, nprobe=17)
    with pytest.raises(InvalidArgument, match=r"params\.nprobe"):
        idx.search(q, K, nprobe=0)
    with pytest.raises(InvalidArgument, match="train: the index already holds"):
        idx.train(x)
    with pytest.raises(InvalidArgument, match="nlist"):
        IVFIndex(4, nlist=0)
    with pytest.raises(InvalidArgument, match="PQ codes are IVFPQIndex's"):
        IVFIndex(4, codec="PQ2x8")


@pytest.mark.parametrize(("spec", "match"), [
    ("IVF", r"write IVF<nlist>"),
    ("IVF16x2", r"write IVF<nlist>"),
    ("IVF16,PQ4x8,F32", r"spec:"),
    ("IVF16,Flat,Refine(F32)", r"Refine re-ranks PQ codes"),
    ("IVF16,F32,Refine(F32,F16)", r"Refine takes one codec"),
])
def test_bad_specs(spec, match):
    with pytest.raises(InvalidArgument, match=match):
        quiver.index(spec, 8)


@pytest.mark.parametrize(("metric", "codec", "floor"), [
    ("l2", "SQ8", 0.9), ("ip", "LVQ8", 0.9), ("cosine", "LVQ4x8", 0.97)])
def test_ivf_over_compressed_row_codecs(tmp_path, data, metric, codec, floor):
    """Lists of SQ8 / LVQ codes: a full probe finds the exact neighbours (up to the codec's
    error; a two-level codec re-ranks on both levels), the codes are what is resident, and
    a float32 copy on disk gives the vectors back, also after a memory-mapped reload."""
    x, q = data
    idx = trained(x, metric, codec=codec)
    true = brute_ids(x, q, metric, K)
    _, got = idx.search(q, K, nprobe=16)
    assert recall(got, true) >= floor
    if codec == "LVQ4x8":  # without the second level the first alone is worse
        _, first = idx.search(q, K, nprobe=16, rerank=False)
        assert recall(first, true) < recall(got, true)
    assert idx.memory_usage()["vectors"] == x.shape[0] * idx.codec.bytes_per_vector()
    assert idx.memory_usage()["float_copy"] == x.nbytes  # built here: in RAM
    idx.save(tmp_path / "ivf")
    back = IVFIndex.load(tmp_path / "ivf")
    assert back.memory_usage()["float_copy"] == 0  # memory-mapped, never searched
    np.testing.assert_array_equal(back.search(q, K, nprobe=16)[1], got)
    want = x[:7] / np.linalg.norm(x[:7], axis=1, keepdims=True) if metric == "cosine" else x[:7]
    np.testing.assert_allclose(back.reconstruct(np.arange(7)), want, rtol=1e-6, atol=1e-6)


def test_specs_build_ivf():
    idx = quiver.index("IVF32,F16", 8, "cosine")
    assert isinstance(idx, IVFIndex) and idx.nlist == 32 and idx.codec.name == "f16"
    assert quiver.index("IVF8", 8).codec.name == "f32"


def test_adapt_nlist_trains_fewer_lists_and_scales_nprobe(data, caplog):
    x, q = data
    idx = IVFIndex(x.shape[1], "l2", nlist=64, adapt_nlist=True)
    with caplog.at_level("INFO"):
        idx.train(x[:400])
    assert idx.lists == 400 // 39 and "training 10 lists" in caplog.text
    idx.add(x[:400])
    assert idx.nprobe_for(quiver.SearchParams(nprobe=64)) == idx.lists
    assert idx.nprobe_for(quiver.SearchParams(nprobe=8)) == 2
    true = brute_ids(x[:400], q, "l2", K)
    assert recall(idx.search(q, K, nprobe=64)[1], true) == 1.0
    tiny = IVFIndex(x.shape[1], "l2", nlist=64, adapt_nlist=True)
    tiny.train(x[:20])  # an exact scan: one list
    tiny.add(x[:20])
    assert tiny.lists == 1
    assert recall(tiny.search(q, K, nprobe=1)[1], brute_ids(x[:20], q, "l2", K)) == 1.0


def test_planner_prices_lists_against_an_exact_scan(data):
    x, q = data
    idx = trained(x, "l2")
    p = quiver.SearchParams(nprobe=2)
    costs = idx.strategy_costs(1500, 1500, K, p, False)
    assert costs["traversal"] < costs["exact"]
    costs = idx.strategy_costs(15, 1500, K, p, True)
    assert costs["exact"] < costs["traversal"]
    assert idx.search(q, K, nprobe=2, exact=True, explain=True)[2]["strategy"] == "exact"


# ---------------------------------------------------------------------------- collections


def _answers(col, q, **params):
    return [[p.id for p in r] for r in col.search(q, k=K, params=params or None)]


def test_collection_with_ivf_segments_survives_restart_and_snapshot(tmp_path):
    rng = np.random.default_rng(11)
    x = blobs(rng, 900, 8)
    q = blobs(rng, 6, 8)
    db = quiver.connect(tmp_path / "db")
    col = db.create_collection("c", 8, metric="cosine", index="IVF16,LVQ8x8", segment_size=400)
    for lo, hi in ((0, 400), (400, 800), (800, 900)):  # the last segment trains 2 lists
        col.upsert(list(range(lo, hi)), x[lo:hi], [{"i": i} for i in range(lo, hi)])
        col.flush()
    col.wait_indexed()
    assert sum(s["sealed"] for s in col.info()["segments"]) == 3
    true = brute_ids(x, q, "cosine", K)
    assert recall(_answers(col, q, nprobe=16), true) == 1.0
    approx = _answers(col, q, nprobe=4)
    assert recall(approx, true) >= 0.8
    flt = {"must": [{"key": "i", "range": {"lt": 100}}]}
    hits = col.search(q, k=K, filter=flt, params={"nprobe": 2})
    assert all(len(r) == K and all(p.id < 100 for p in r) for r in hits)
    snap = col.snapshot(tmp_path / "snaps")
    db.close()

    db = quiver.connect(tmp_path / "db")
    col = db.get_collection("c")
    assert _answers(col, q, nprobe=4) == approx
    copy = db.restore_snapshot(snap, "copy")
    assert _answers(copy, q, nprobe=4) == approx
    with pytest.raises(InvalidArgument, match="nprobe: 17 exceeds nlist 16"):
        col.search(q, k=K, params={"nprobe": 17})
    db.close()


@pytest.mark.parametrize("spec", ["IVF16,Flat", "IVF16,PQ4x8,Refine(F16)"])
def test_collection_ivf_over_rest(tmp_path, spec):
    import httpx
    from _live_server import LiveServer

    rng = np.random.default_rng(12)
    x = blobs(rng, 300, 8)
    with LiveServer(tmp_path / "data") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        r = http.put("/collections/x", json={"dim": 8, "metric": "l2", "index": spec,
                                             "segment_size": 300})
        assert r.status_code == 200, r.text
        pts = [{"id": i, "vector": x[i].tolist()} for i in range(300)]
        assert http.put("/collections/x/points", json={"points": pts}).status_code == 200
        assert http.post("/collections/x/flush").status_code == 200
        for _ in range(600):  # the full segment seals into an IVF segment in the background
            if http.get("/collections/x").json()["result"]["segments"][0]["sealed"]:
                break
            time.sleep(0.05)
        assert http.get("/collections/x").json()["result"]["segments"][0]["sealed"]
        body = {"vector": x[7].tolist(), "limit": 3, "params": {"nprobe": 16}}
        r = http.post("/collections/x/points/search", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["result"][0]["id"] == 7
        r = http.post("/collections/x/points/search", json={**body, "params": {"nprobe": 999}})
        assert r.status_code == 400 and "nprobe" in r.json()["error"]["message"]
        bad = http.put("/collections/y", json={"dim": 8, "index": "IVF16,SQ7"})
        assert bad.status_code == 400 and "SQ7" in bad.json()["error"]["message"]
