"""LVQ codecs (one and two levels, 8 and 4 bits) against a NumPy reference: round-trip error
bounds, the packed 4-bit layout, distance kernels on decoded vectors, HNSW over each codec
with no float32 read, and save/load."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import lvq8_int8_distances
from numba import njit
from quiver.engine.codecs import LVQCodec, make_codec
from quiver.kernels import vnni
from quiver.kernels.dispatch import codec_distance

import quiver

LVQ = ("lvq8", "lvq4", "lvq4x4", "lvq4x8", "lvq8x8")
D = 24


def _unpack(codes: np.ndarray, bits: int, d: int) -> np.ndarray:
    if bits == 8:
        return codes[:, :d].astype(np.float32)
    h = d // 2
    return np.concatenate([codes[:, :h] & 15, codes[:, :h] >> 4], axis=1).astype(np.float32)


def decode(codec, codes: np.ndarray, aux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(primary, full) reconstructions by the formulas in engine/codecs.py."""
    d = codec.dim
    x1 = codec.mean + aux[:, :1] + aux[:, 1:2] * _unpack(codes, codec.bits, d)
    if not codec.residual_bits:
        return x1, x1
    w1 = d if codec.bits == 8 else d // 2
    c2 = _unpack(codes[:, w1:], codec.residual_bits, d)
    return x1, x1 + aux[:, 3:4] + aux[:, 4:5] * c2


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((400, D)) * rng.uniform(0.5, 2, D)).astype(np.float32), \
        rng.standard_normal((4, D)).astype(np.float32)


@pytest.mark.parametrize("name", LVQ)
def test_round_trip_error_bounds(data, name):
    x, _ = data
    c = make_codec(name, D)
    c.fit(x)
    codes, aux = c.encode(x)
    assert codes.shape == (400, c.code_width) and codes.dtype == np.uint8
    assert c.bytes_per_vector() == c.code_width + 4 * c.aux_width
    x1, full = decode(c, codes, aux)
    step = aux[:, 1:2]
    assert (np.abs(x - x1) <= step / 2 + 1e-5).all()  # the nearest level of the vector's own grid
    if c.residual_bits:
        step2 = aux[:, 4:5]
        assert np.allclose(step2, step / ((1 << c.residual_bits) - 1))
        assert (np.abs(x - full) <= step2 / 2 + 1e-5).all()
    np.testing.assert_allclose(aux[:, 2], (x1 * x1).sum(1), rtol=1e-4)
    np.testing.assert_allclose(aux[:, -1], (full * full).sum(1), rtol=1e-4)


def test_packed_4bit_layout():
    c = make_codec("lvq4", 4)
    c.mean = np.zeros(4, np.float32)
    x = np.array([[0.0, 1.0, 2.0, 15.0]], np.float32)  # step 1, bias 0: codes = the values
    codes, aux = c.encode(x)
    assert aux[0, 0] == 0 and aux[0, 1] == 1
    # byte j: low nibble dimension j, high nibble dimension j + d/2
    assert codes.tolist() == [[0 | (2 << 4), 1 | (15 << 4)]]
    with pytest.raises(quiver.InvalidArgument, match="even dimension"):
        make_codec("lvq4x8", 5)


@njit
def _row_distances(kind, qs, codes, aux, out):
    for i in range(out.shape[0]):
        out[i] = codec_distance(kind, qs, codes, aux, i)


@pytest.mark.parametrize("name", LVQ)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_distance_kernels_match_decoded_vectors(data, name, metric):
    x, q = data
    c = make_codec(name, D)
    c.fit(x)
    codes, aux = c.encode(x)
    qs = c.prepare(q)
    x1, full = decode(c, codes, aux)
    for kind, ref in ((c.dist(metric), x1), (c.rerank_dist(metric), full)):
        if kind is None:
            continue
        got = np.zeros((len(q), 50), np.float32)
        for a in range(len(q)):
            _row_distances(kind, qs[a], codes, aux, got[a])
        want = ((ref[None, :50] - q[:, None]) ** 2).sum(-1) if metric == "l2" else -(q @ ref[:50].T)
        if c.int8_queries and kind == c.dist(metric):  # a VNNI host: the int8 query's distance
            want = lvq8_int8_distances(c, q, codes[:50], aux[:50], metric)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", LVQ)
def test_hnsw_over_each_codec_reads_no_float32(tmp_path, name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1500, 32)).astype(np.float32)
    q = x[:20] + 0.05 * rng.standard_normal((20, 32)).astype(np.float32)
    truth = np.argsort(((x[None] - q[:, None]) ** 2).sum(-1), axis=1)[:, :5]
    idx = quiver.index(f"HNSW12,{name.upper()}", 32, "l2", ef_construction=64)
    idx.add(x)
    idx.save(tmp_path / "h")
    loaded = quiver.load_index(tmp_path / "h")
    assert loaded.codec.name == name and loaded.memory_usage()["rerank_vectors"] == 0
    floor = 0.8 if name == "lvq4" else 0.95  # 4 bits alone are coarse; two levels re-rank
    for kw in ({}, {"exact": True}, {"allowed": np.arange(0, 1500, 3)}):
        _, ids = loaded.search(q, 5, ef=64, **kw)
        want = truth if "allowed" not in kw else None
        if want is not None:
            r = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, want, strict=True)])
            assert r >= floor, (name, kw, r)
        else:
            assert np.isin(ids, np.arange(0, 1500, 3)).all()
    # the float32 originals are read only when asked for
    before = loaded.search(q, 5, ef=64)
    loaded._float.codes = np.full(loaded._float.codes.shape, np.nan, np.float32)
    np.testing.assert_array_equal(loaded.search(q, 5, ef=64)[1], before[1])
    _, exact_ids = idx.search(q, 5, ef=64, rerank="exact")
    r = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact_ids, truth, strict=True)])
    assert r >= 0.97


def test_codec_specs_in_collections(tmp_path):
    x = np.random.default_rng(2).standard_normal((300, 16)).astype(np.float32)
    with quiver.connect(tmp_path) as db:
        col = db.create_collection("c", vectors={"a": {"dim": 16, "metric": "cosine",
                                                        "index": "HNSW8,LVQ4x8"}})
        col.upsert(list(range(300)), {"a": x})
        col.flush()
        (seg,) = [s for s in col._segments if s.sealed]
        use = seg.fields["a"].index.memory_usage()
        assert use["rerank_vectors"] == 0 and use["vectors"] == 300 * (8 + 16 + 24)
        assert col.search(x[7], 1, params={"exact": True})[0].id == 7


@pytest.mark.parametrize("spec,floor", [
    ("Flat,SQ8", 0.9), ("Flat,LVQ8", 0.9), ("Flat,LVQ4", 0.6), ("Flat,LVQ4x8", 0.95),
    ("Flat,LVQ8x8", 0.95), ("Flat,LeanVec(12,LVQ8,LVQ8)", 0.9), ("Flat,LeanVec(12,LVQ4,F16)", 0.95)])
def test_flat_over_each_codec(tmp_path, spec, floor):
    """Flat scans any row codec with its most accurate level: recall against the float32
    oracle, ``rerank`` on the originals (exact), removals, the originals kept on disk
    (memory-mapped, counted 0) and the same results after a reload; and as a collection
    field's sealed index."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1500, D)).astype(np.float32)
    q = x[:30] + 0.1 * rng.standard_normal((30, D)).astype(np.float32)
    exact = quiver.index("Flat", D, metric="cosine")
    exact.add(x)
    ix = quiver.index(spec, D, metric="cosine")
    assert ix.needs_training and (ix.search(q[:2], 3)[1] == -1).all()  # empty: nothing found
    ix.add(x)
    want = exact.search(q, 10)[1]
    for batch in (q, q[:3]):  # the batch and the few-queries paths
        got = ix.search(batch, 10)[1]
        assert np.mean([len(set(a) & set(b)) for a, b in zip(got, want, strict=False)]) >= 10 * floor
        np.testing.assert_array_equal(ix.search(batch, 10, rerank=True)[1], want[: len(batch)])
    use = ix.memory_usage()
    assert use["rerank_vectors"] == 1500 * D * 4 and use["vectors"] == 1500 * ix.codec.bytes_per_vector()
    np.testing.assert_allclose(ix.reconstruct([4]), x[4:5] / np.linalg.norm(x[4]), rtol=1e-6)
    ix.save(tmp_path / "flat")
    back = quiver.load_index(tmp_path / "flat")
    assert back.memory_usage()["rerank_vectors"] == 0
    np.testing.assert_array_equal(back.search(q, 10)[1], ix.search(q, 10)[1])
    ix.remove([0, 1])
    assert not np.isin(ix.search(q[:2], 10)[1], [0, 1]).any()
    with quiver.connect(tmp_path / "db") as db:
        col = db.create_collection("c", vectors={"v": {"dim": D, "metric": "cosine", "index": spec}})
        col.upsert(list(range(300)), {"v": x[:300]})
        col.flush()
        (seg,) = [s for s in col._segments if s.sealed]
        assert seg.fields["v"].index.codec.name == ix.codec.name
        assert col.search(x[7], 1, params={"rerank": True})[0].id == 7
        got = col.get([9], with_vectors=True)[0].vector["v"]
        np.testing.assert_allclose(got, x[9] / np.linalg.norm(x[9]), rtol=1e-6)


# ---------------------------------------------------------------- LeanVec


def _ood_data(seed: int = 3):
    """Data spread over many directions, queries concentrated on a few others: the data's
    principal directions are the wrong ones for these queries."""
    rng = np.random.default_rng(seed)
    d = 32
    x = rng.standard_normal((3000, d)).astype(np.float32) * np.linspace(2.0, 0.5, d)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0][:, -6:]  # low-variance directions
    q = (rng.standard_normal((400, 6)) @ basis.T * 3).astype(np.float32)
    return x, q[:200], q[200:]


def test_leanvec_projections_are_orthonormal_and_ood_lowers_the_query_side_error():
    from quiver.engine.leanvec import _second_moment, ip_error, learn_projection

    x, learn, held = _ood_data()
    p_id, kind_id, _ = learn_projection(x, 8)
    p_ood, kind_ood, blend = learn_projection(x, 8, learn)
    assert (kind_id, kind_ood) == ("id", "ood") and blend > 0
    for p in (p_id, p_ood):
        np.testing.assert_allclose(p.T @ p, np.eye(8), atol=1e-5)
    kx, kq = _second_moment(x), _second_moment(held)  # queries not seen in training
    assert ip_error(p_ood, kx, kq) < 0.5 * ip_error(p_id, kx, kq)


@pytest.mark.parametrize(("primary", "secondary"), [("LVQ8", "LVQ8"), ("LVQ4", "LVQ8"),
                                                    ("LVQ8", "F16")])
def test_leanvec_in_hnsw_save_load_and_specs(tmp_path, primary, secondary):
    x, learn, held = _ood_data()
    spec = f"HNSW12,LeanVec(16,{primary},{secondary})"
    truth = np.argsort(-(held[:40] @ x.T), axis=1)[:, :5]
    recalls = {}
    for kind in ("id", "ood"):
        idx = quiver.index(spec, 32, "ip", ef_construction=64)
        idx.train(x, queries=learn if kind == "ood" else None)
        assert idx.codec.kind == kind
        idx.add(x)
        _, ids = idx.search(held[:40], 5, ef=64)
        recalls[kind] = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, truth, strict=True)])
        assert idx.memory_usage()["vectors"] == 3000 * (idx.codec.code_width + 24)
    assert recalls["ood"] >= 0.9 and recalls["ood"] >= recalls["id"]
    idx.save(tmp_path / "h")
    loaded = quiver.load_index(tmp_path / "h")
    assert (loaded.codec.name == f"LeanVec(16,{primary},{secondary})"
            and loaded.codec.kind == "ood")
    np.testing.assert_array_equal(loaded.search(held[:40], 5, ef=64)[1], ids)
    assert loaded.memory_usage()["rerank_vectors"] == 0


@pytest.mark.parametrize(("spec", "width", "inline"), [
    ("LeanVec(240,LVQ4,LVQ8)", 512, True),  # 120 + 8 + 384
    ("LeanVec(256,LVQ4,LVQ8)", 512, False),  # 128 + 384: no room in the primary's last line
    ("LeanVec(192,LVQ4,LVQ8)", 512, True),  # 96 + 8, padded to 128, + 384
    ("LeanVec(160,LVQ8,F16)", 960, True),  # 160 + 8, padded to 192, + 768
])
def test_leanvec_rows_are_whole_lines_with_the_primary_terms_inline(spec, width, inline):
    """Layout 2: rows of whole 64-byte lines, the secondary last, and the primary's bias and
    step as float32 right after its codes where their last line has room."""
    x = np.random.default_rng(1).standard_normal((300, 384)).astype(np.float32)
    c = make_codec(spec, 384)
    c.fit(x)
    codes, aux = c.encode(x[:20])
    assert c.code_width == width == codes.shape[1] and c.inline_terms == inline
    w1 = c.primary_width
    if inline:
        np.testing.assert_array_equal(codes[:, w1 : w1 + 8].copy().view("<f4"), aux[:, :2])
    ref = make_codec(spec, 384)
    ref.load_state({k: v for k, v in c.state().items() if k != "layout"})  # a layout-1 save
    old, old_aux = ref.encode(x[:20])
    assert ref.layout == 1 and old.shape[1] == w1 + c.secondary_width
    np.testing.assert_array_equal(old[:, :w1], codes[:, :w1])
    np.testing.assert_array_equal(old[:, w1:], codes[:, width - c.secondary_width :])
    np.testing.assert_array_equal(old_aux, aux)
    with pytest.raises(quiver.InvalidArgument, match="row layout 3 is newer"):
        ref.load_state({**c.state(), "layout": np.array([3])})


def test_leanvec_index_saved_in_layout_1_loads_and_searches_alike(tmp_path, monkeypatch):
    """An index written before layout 2 (no ``layout`` in its codec state) reads its rows as
    they were written: the same results as an index of layout 2."""
    from quiver.engine import leanvec

    x, learn, held = _ood_data()
    spec = "HNSW12,LeanVec(20,LVQ4,LVQ8)"
    found = []
    for layout in (1, 2):
        with monkeypatch.context() as m:  # the version that wrote it
            m.setattr(leanvec, "ROW_LAYOUT", layout)
            idx = quiver.index(spec, 32, "ip", ef_construction=64)
            idx.train(x, queries=learn)
            idx.add(x)
            idx.save(tmp_path / str(layout))
        loaded = quiver.load_index(tmp_path / str(layout))
        assert loaded.codec.layout == layout and loaded.codec.inline_terms == (layout == 2)
        found.append(loaded.search(held[:40], 5, ef=64))
    np.testing.assert_array_equal(found[0][1], found[1][1])
    np.testing.assert_allclose(found[0][0], found[1][0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("spec", "match"), [
    ("HNSW16,LeanVec(64,LVQ8)", r"write LeanVec\(d', PRIMARY, SECONDARY\)"),
    ("HNSW16,LeanVec(64,SQ8,LVQ8)", r"primary codec is LVQ4 or LVQ8"),
    ("HNSW16,LeanVec(64,LVQ8,SQ8)", r"secondary codec is LVQ8 or F16"),
    ("HNSW16,LeanVec(99,LVQ8,LVQ8)", r"1 <= d' <= 32"),
    ("HNSW16,LeanVec(15,LVQ4,LVQ8)", r"even d'"),
])
def test_leanvec_bad_specs(spec, match):
    with pytest.raises(quiver.InvalidArgument, match=match):
        quiver.index(spec, 32)


def test_collection_field_trains_leanvec_ood_on_its_query_sample(tmp_path):
    x, learn, held = _ood_data()
    with quiver.connect(tmp_path / "db") as db:
        col = db.create_collection("c", vectors={"t": {"dim": 32, "metric": "ip",
                                                        "index": "HNSW12,LeanVec(16,LVQ8,LVQ8)"}})
        with pytest.raises(quiver.InvalidArgument, match="wrong dimension"):
            col.train_queries(learn[:, :5], using="t")
        assert col.train_queries(learn, using="t") == 200
        col.upsert(list(range(3000)), {"t": x})
        col.flush()
        (seg,) = [s for s in col._segments if s.sealed]
        assert seg.fields["t"].index.codec.kind == "ood"
        truth = np.argsort(-(held[:40] @ x.T), axis=1)[:, :5]
        arrs = col.search_arrays(held[:40], 5, using="t", params={"ef": 64})
        r = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(arrs.ids.tolist(), truth, strict=True)])
        assert r >= 0.9
        restored = db.restore_snapshot(col.snapshot(tmp_path / "s"), "copy")
        assert restored._learn_queries("t").shape == (200, 32)


def test_query_samples_on_fields_that_do_not_learn_from_them(tmp_path):
    """Every index type takes a query sample at seal time (ignored unless its codec learns
    from it); a damaged sample is ignored with a warning rather than blocking every seal."""
    x, learn, _ = _ood_data()
    with quiver.connect(tmp_path / "db") as db:
        col = db.create_collection("c", vectors={
            "h": {"dim": 32, "metric": "ip", "index": "HNSW8,F32"},
            "i": {"dim": 32, "metric": "ip", "index": "IVF8,Flat"},
            "f": {"dim": 32, "metric": "ip", "index": "Flat"}})
        for field in ("h", "i", "f"):
            col.train_queries(learn, using=field)
        (col.path / "learn" / "h" / "queries.npy").write_bytes(b"damaged")
        col.upsert(list(range(3000)), {"h": x, "i": x, "f": x})
        col.flush()
        assert [s.sealed for s in col._segments if s.n] == [True]
        for field in ("h", "i", "f"):
            assert col.search(x[5], 1, using=field, params={"exact": True})[0].id == 5


@pytest.mark.parametrize("spec", ["LeanVec(12,LVQ8,LVQ8)", "LeanVec(13,LVQ8,LVQ8)",
                                  "LeanVec(12,LVQ4,LVQ8)"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_leanvec_distances_match_decoded_vectors(data, spec, metric):
    """The primary distance is the projected query's (as the codec projects it) against the
    decoded projected row, the secondary the query's against the decoded full row (odd d':
    the kernels' tails)."""
    x, q = data
    c = make_codec(spec, D)
    c.fit(x)
    codes, aux = c.encode(x[:50])
    qs = c.prepare(q)
    w1, w2 = c.primary_width, c.code_width - c.secondary_width
    zhat = c.mean_p + aux[:, :1] + aux[:, 1:2] * _unpack(codes[:, :w1], c.primary_bits, c.d_out)
    xhat = c.mean + aux[:, 3:4] + aux[:, 4:5] * codes[:, w2:].astype(np.float32)
    for kind, v, ref in ((c.dist(metric), c._project(q), zhat),  # int8 on VNNI hosts
                         (c.rerank_dist(metric), q, xhat)):
        got = np.zeros((len(q), 50), np.float32)
        for a in range(len(q)):
            _row_distances(kind, qs[a], codes, aux, got[a])
        want = ((ref[None] - v[:, None]) ** 2).sum(-1) if metric == "l2" else -(v @ ref.T)
        if ref is zhat and c.int8_queries:  # a VNNI host scores the projected query as int8
            primary = SimpleNamespace(mean=c.mean_p, int8_query=LVQCodec.int8_query)
            want = lvq8_int8_distances(primary, v, _unpack(codes[:, :w1], c.primary_bits,
                                                           c.d_out), aux[:, :3], metric)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not vnni.USE_VNNI, reason="the CPU has no AVX-512 VNNI")
@pytest.mark.parametrize(("dim", "d_out", "nq"), [(32, 16, 4), (61, 13, 7), (384, 256, 9),
                                                  (5, 3, 1)])
def test_int8_projection_tracks_the_float_one(dim, d_out, nq):
    """On VNNI hosts LeanVec projects int8 queries by an int8 matrix: within the two
    roundings' bound of the float32 product, for padded rows and columns and a batch that is
    not a multiple of four queries; the int8 blocks hold the rounded matrix exactly."""
    from quiver.engine.leanvec import int8_blocks

    rng = np.random.default_rng(dim)
    x = rng.standard_normal((200, dim)).astype(np.float32)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    c = make_codec(f"LeanVec({d_out},LVQ8,LVQ8)", dim)
    c.fit(x)
    p = c.projection
    blocks, colsum, step = int8_blocks(p)
    k4, groups = -(-dim // 4), -(-d_out // 16)
    back = blocks.reshape(groups, k4, 16, 4).transpose(1, 3, 0, 2).reshape(4 * k4, 16 * groups)
    np.testing.assert_array_equal(back[:dim, :d_out], np.rint(p / step[:d_out]))
    assert np.array_equal(colsum, back.sum(axis=0, dtype=np.int32))
    got = c._project(q)
    want = q.astype(np.float64) @ p.astype(np.float64)
    qstep = np.abs(q).max(axis=1, keepdims=True) / 127
    bound = 0.5 * (qstep * np.abs(p).sum(axis=0) + step[:d_out] * np.abs(q).sum(axis=1,
                                                                            keepdims=True))
    assert got.shape == (nq, d_out) and np.all(np.abs(got - want) <= bound * 1.001 + 1e-6)


@pytest.mark.skipif(not vnni.USE_VNNI, reason="the CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dim", [32, 61, 384])
def test_leanvec_int8_secondary_is_as_exact_as_float(metric, dim):
    """On VNNI hosts the LVQ-8 secondary scores the query as int8 plus its int8 rounding
    error: the decoded rows' float distances to 2e-5 of their scale, where the int8 query
    alone is off by about 1/254 of it."""
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((300, dim)).astype(np.float32)
    q = rng.standard_normal((4, dim)).astype(np.float32)
    c = make_codec("LeanVec(16,LVQ4,LVQ8)", dim)
    c.fit(x)
    assert c.int8_secondary
    codes, aux = c.encode(x)
    w2 = c.code_width - c.secondary_width
    xhat = (c.mean + aux[:, 3:4] + aux[:, 4:5] * codes[:, w2:].astype(np.float32)).astype(np.float64)
    qd = q.astype(np.float64)
    want = ((xhat[None] - qd[:, None]) ** 2).sum(-1) if metric == "l2" else -(qd @ xhat.T)
    qs = c.prepare(q)
    got = np.zeros(want.shape, np.float32)
    for a in range(len(q)):
        _row_distances(c.rerank_dist(metric), qs[a], codes, aux, got[a])
    scale = np.abs(qd).max(1, keepdims=True) * np.abs(xhat - c.mean).sum(1)[None]
    assert np.all(np.abs(got - want) <= 2e-5 * scale + 1e-4 * np.abs(want))
    int8_only = SimpleNamespace(mean=c.mean, int8_query=LVQCodec.int8_query)
    coarse = lvq8_int8_distances(int8_only, q, codes[:, w2:], aux[:, 3:], metric)
    assert np.abs(coarse - want).max() > 10 * np.abs(got - want).max()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_leanvec_f16_secondary_is_the_exact_half_distance(metric):
    """Re-ranking on LeanVec(.., F16) scores each row as its float16 value does."""
    from quiver.kernels.dispatch import for_kind
    from quiver.kernels.hnsw import rerank_chunk

    rng = np.random.default_rng(6)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    q = rng.standard_normal((3, 32)).astype(np.float32)
    codec = make_codec("LeanVec(8,LVQ8,F16)", 32)
    codec.fit(x)
    codes, aux = codec.encode(x)
    assert codes.shape == (500, 128)  # 8 + 8 inline terms + 64, in whole lines
    half = x.astype(np.float16).astype(np.float64)
    want = (((q[:, None].astype(np.float64) - half[None]) ** 2).sum(-1) if metric == "l2"
            else -(q.astype(np.float64) @ half.T))
    cand = np.tile(np.arange(500), (3, 1))
    out_d, out_i = np.empty((3, 5), np.float32), np.empty((3, 5), np.int64)
    for_kind(rerank_chunk, codec.rerank_dist(metric))(codec.prepare(q), codes, aux, cand, 5,
                                                      out_d, out_i, 0, 1)
    np.testing.assert_array_equal(out_i, np.argsort(want, axis=1)[:, :5])
    np.testing.assert_allclose(out_d, np.sort(want, axis=1)[:, :5], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("spec", ["HNSW8,LVQ4x8", "HNSW8,LeanVec(12,LVQ8,LVQ8)",
                                  "HNSW8,LeanVec(12,LVQ4,F16)"])
def test_fused_rerank_equals_rescoring_the_traversal_results(spec):
    """A two-level codec's search re-scores each query's ef traversal results within the
    traversal kernel (pipelined one query behind): the same top-k as re-scoring those
    results afterwards, for a batch, a single query and queries out of a filter's budget."""
    from quiver.engine.bitset import Bitset
    from quiver.engine.index.hnsw import rerank_candidates
    from quiver.engine.params import SearchParams

    rng = np.random.default_rng(9)
    x = rng.standard_normal((1500, D)).astype(np.float32)
    q = rng.standard_normal((37, D)).astype(np.float32)
    idx = quiver.index(spec, D, "l2", ef_construction=48)
    idx.add(x)
    second = idx.codec.rerank_dist(idx._kmetric)
    codes, aux = idx._codes.view()
    for bits in (None, Bitset.from_positions(np.arange(0, 1500, 3), 1500)):
        for batch in (q, q[:1]):
            _, cand, _ = idx.search_positions(batch, 24, bits, SearchParams(ef=24, rerank=False))
            want_d, want_i = rerank_candidates(second, idx.codec.prepare(batch), codes, aux,
                                               cand, 5)
            got_d, got_i, _ = idx.search_positions(batch, 5, bits, SearchParams(ef=24))
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_allclose(got_d, want_d, rtol=1e-6)
    # a plain traversal through a filter passing a third runs out of its budget for about half
    # the queries: those (-1 from the kernel) get an exact scan, the others in the same
    # pipeline keep their re-ranked results
    from quiver.engine.planner import Plan

    third = Bitset.from_positions(np.arange(0, 1500, 3), 1500)
    plain = Plan("traversal", 500, 1500)
    _, cand, _ = idx.search_positions(q, 24, third, SearchParams(ef=24, rerank=False), plain)
    want_d, want_i = rerank_candidates(second, idx.codec.prepare(q), codes, aux, cand, 5)
    got_d, got_i, info = idx.search_positions(q, 5, third, SearchParams(ef=24), plain)
    assert 0 < info["fallback_exact"] < len(q)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-6)
