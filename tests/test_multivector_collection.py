"""Multi-vector (MaxSim) fields in collections: storage, search, filters, restarts."""

from __future__ import annotations

import numpy as np
import pytest
from quiver.engine.points import pack_fields, unpack_fields
from quiver.engine.tokens import TokenMatrices

import quiver

DIM = 16
FDE = {"k_sim": 2, "d_proj": 8, "r_reps": 4}
FIELD = {"dim": DIM, "metric": "cosine", "multivector": "max_sim", "index": "HNSW16",
         "fde": FDE}


def _docs(rng, n):
    return [rng.standard_normal((int(rng.integers(1, 7)), DIM)).astype(np.float32)
            for _ in range(n)]


def _unit(m):
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _chamfer_top(query, docs, k, allowed=None):
    """Brute-force MaxSim over cosine-normalised tokens: (ids, scores) best first."""
    qn = _unit(query)
    ids = range(len(docs)) if allowed is None else allowed
    scored = sorted(((float((qn @ _unit(docs[i]).T).max(axis=1).sum()), i) for i in ids),
                    key=lambda t: (-t[0], t[1]))[:k]
    return [i for _, i in scored], [s for s, _ in scored]


@pytest.fixture()
def filled(tmp_path):
    rng = np.random.default_rng(5)
    docs = _docs(rng, 300)
    db = quiver.connect(tmp_path)
    col = db.create_collection("mv", vectors={"tokens": FIELD, "title": {"dim": 4},
                                              "by_token": {**FIELD, "retrieval": "tokens"}},
                               segment_size=120)
    col.upsert(ids=list(range(300)),
               vectors={"tokens": docs, "by_token": docs,
                        "title": rng.standard_normal((300, 4)).astype(np.float32)},
               payloads=[{"g": i % 3} for i in range(300)])
    yield db, col, docs, rng
    db.close()


def test_exact_and_muvera_search_match_brute_force_chamfer(filled):
    db, col, docs, rng = filled
    queries = [docs[i][:2] + 0.05 * rng.standard_normal((min(2, len(docs[i])), DIM)).astype(
        np.float32) for i in (3, 50, 299)]
    for sealed in (False, True):
        if sealed:
            col.flush()
            col.wait_indexed()
            assert col.info()["indexed_points"] > 0
        for q in queries:
            want_ids, want_scores = _chamfer_top(q, docs, 5)
            got = col.search(q, k=5, using="tokens", params={"exact": True})
            assert [h.id for h in got] == want_ids
            np.testing.assert_allclose([h.score for h in got], want_scores, rtol=2e-3, atol=2e-3)
            for field in ("tokens", "by_token"):  # FDE / token candidates + exact re-rank
                approx = col.search(q, k=5, using=field)
                assert approx[0].id == want_ids[0]
                assert len(set(h.id for h in approx) & set(want_ids)) >= 4
        batch = col.search(queries, k=3, using="tokens", params={"exact": True})
        assert [[h.id for h in row] for row in batch] == [_chamfer_top(q, docs, 3)[0]
                                                          for q in queries]


def test_filters_restart_and_vectors(filled, tmp_path):
    db, col, docs, rng = filled
    q = docs[10]
    flt = {"must": [{"key": "g", "match": {"value": 1}}]}
    allowed = [i for i in range(300) if i % 3 == 1]
    want = _chamfer_top(q, docs, 5, allowed)[0]
    before = [h.id for h in col.search(q, k=5, using="tokens", filter=flt,
                                       params={"exact": True})]
    assert before == want
    col.flush()
    col.wait_indexed()
    for params in ({"exact": True}, {"candidates": 300}):
        got = col.search(q, k=5, using="tokens", filter=flt, params=params)
        assert [h.id for h in got] == want
    hit = col.get([10], with_vectors=True)[0]
    np.testing.assert_allclose(hit.vector["tokens"], _unit(docs[10]), atol=2e-3)  # float16
    col.delete([want[0]])
    db.close()
    db2 = quiver.connect(tmp_path)
    col2 = db2.get_collection("mv")
    got = [h.id for h in col2.search(q, k=4, using="tokens", filter=flt, params={"exact": True})]
    assert got == want[1:5]
    assert want[0] == 10  # deleted above
    col2.update_vectors([11], {"tokens": [docs[12]]})
    top = col2.search(docs[12], k=2, using="tokens", params={"exact": True})
    assert {h.id for h in top} == {11, 12}
    snap = col2.snapshot()
    db2.close()
    db3 = quiver.connect(tmp_path)
    db3.restore_snapshot(snap, "copy")
    again = db3.get_collection("copy").search(docs[12], k=2, using="tokens",
                                              params={"exact": True})
    assert {h.id for h in again} == {11, 12}
    db3.close()


def test_multivector_bad_input(tmp_path):
    db = quiver.connect(tmp_path)
    with pytest.raises(quiver.InvalidArgument, match=r"'mv'\]\.metric: multi-vector .* inner"):
        db.create_collection("x", vectors={"mv": {**FIELD, "metric": "l2"}})
    with pytest.raises(quiver.InvalidArgument, match=r"'mv'\]\.multivector: 'sum'"):
        db.create_collection("x", vectors={"mv": {**FIELD, "multivector": "sum"}})
    with pytest.raises(quiver.InvalidArgument, match=r"'mv'\]\.fde"):
        db.create_collection("x", vectors={"mv": {**FIELD, "fde": {"k_sim": 99}}})
    with pytest.raises(quiver.InvalidArgument, match=r"'mv'\]\.kind: 'dense' contradicts"):
        db.create_collection("x", vectors={"mv": {**FIELD, "kind": "dense"}})
    with pytest.raises(quiver.InvalidArgument, match=r"'mv'\]\.index: expected the spec"):
        db.create_collection("x", vectors={"mv": {**FIELD, "index": None}})
    with pytest.raises(quiver.InvalidArgument, match=r"'d'\]\.fde: only for multi-vector"):
        db.create_collection("x", vectors={"d": {"dim": 4, "fde": FDE}})
    col = db.create_collection("ok", vectors={"mv": FIELD})
    good = np.ones((2, DIM), np.float32)
    with pytest.raises(quiver.InvalidArgument, match=r"vectors\['mv'\]\[1\]: expected \(tokens, "
                                                     r"16\)"):
        col.upsert(ids=[1, 2], vectors={"mv": [good, np.ones((2, DIM + 1))]})
    with pytest.raises(quiver.InvalidArgument, match=r"vectors\['mv'\]\[0\]: 0 tokens"):
        col.upsert(ids=[1], vectors={"mv": [np.zeros((0, DIM))]})
    with pytest.raises(quiver.InvalidArgument, match=r"got 1 token matrices for 2 ids"):
        col.upsert(ids=[1, 2], vectors={"mv": [good]})
    col.upsert(ids=[1], vectors={"mv": [good]})
    with pytest.raises(quiver.InvalidArgument, match="multi-vector query is a token matrix"):
        col.search(np.ones(DIM), using="mv")
    with pytest.raises(quiver.InvalidArgument, match="list of token matrices"):
        col.search_arrays(good, using="mv")
    with pytest.raises(quiver.InvalidArgument, match="multi-vector field"):
        col.train_queries(np.ones((3, DIM)), using="mv")
    assert col.count() == 1
    with pytest.raises(quiver.InvalidArgument, match=r"pool_factor: expected a positive"):
        db.create_collection("p", vectors={"mv": {**FIELD, "pool_factor": 0}})
    pooled = db.create_collection("p", vectors={"mv": {**FIELD, "pool_factor": 2}})
    pooled.upsert(ids=[1], vectors={"mv": [np.repeat(np.eye(DIM, dtype=np.float32)[:3], 2, 0)]})
    np.testing.assert_allclose(pooled.get([1], with_vectors=True)[0].vector["mv"],
                               np.eye(DIM)[:3], atol=1e-3)  # 6 tokens, pairs merged: 3
    db.close()


def test_values_a_float16_store_cannot_hold_are_refused_before_anything_is_written(tmp_path):
    """A token beyond |x| = 65504 in a float16 token field (the default), or a value beyond it
    in a dense F16 field, is refused naming the point, before the log: the batch's other
    fields are not half-written (a point without a vector in one field had made its rows
    translate, and a filtered search then indexed past the segment), nothing waits for a
    seal that cannot encode it, and a restart replays no such write."""
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", vectors={
        "d": {"dim": 4, "metric": "l2", "index": "HNSW16,F16"},
        "m": {"dim": 4, "metric": "ip", "multivector": "max_sim", "index": "HNSW16",
              "fde": FDE}}, segment_size=8)
    rng = np.random.default_rng(3)
    col.upsert(ids=list(range(10)), vectors={"d": rng.random((10, 4), np.float32),
                                             "m": [rng.random((3, 4), np.float32)] * 10},
               payloads=[{"a": i} for i in range(10)])
    col.upsert(ids=[7], vectors={}, payloads=[{"z": 1}])  # 7 now has no vector at all
    huge = np.array([[2.0**63, 2, 3, 4]], np.float32)
    with pytest.raises(quiver.InvalidArgument,
                       match=r"vectors\['m'\]\[0\]: a token value beyond the float16 range"):
        col.upsert(ids=[7], vectors={"d": np.ones((1, 4), np.float32), "m": [huge]})
    with pytest.raises(quiver.InvalidArgument,
                       match=r"vectors\['d'\]\[1\]: a value beyond the float16 range .*HNSW16,F16"):
        col.upsert(ids=[11, 12], vectors={"d": np.vstack([np.ones(4), 7e4 * np.ones(4)])})
    assert col.count() == 10 and col.get([7], with_vectors=True)[0].vector == {}
    hits = col.search(np.ones(4, np.float32), 3, filter={"must": [{"key": "a", "range":
                                                                   {"gte": 3}}]}, using="d")
    assert len(hits) == 3 and 7 not in [h.id for h in hits]
    col.flush()  # every segment seals: no refused row reached one
    assert all(s["sealed"] for s in col.info()["segments"] if s["points"])
    db.close()
    col = quiver.connect(tmp_path).get_collection("c")
    assert col.count() == 10 and col.get([7], with_vectors=True)[0].vector == {}


def test_payload_updates_across_segments_where_some_hold_no_tokens(tmp_path):
    """A rewrite (set_payload) reads back the points' stored vectors from every segment
    they are in; a segment holding none of the field's tokens gave an empty batch as wide
    as its float16 codes' bytes (16 columns for 8-d tokens), and joining it failed (a 500
    over REST). Found by a threaded stress test."""
    db = quiver.connect(tmp_path)
    col = db.create_collection("s", vectors={"d": {"dim": 8}, "m": {
        "dim": 8, "metric": "ip", "multivector": "max_sim"}}, segment_size=20)
    rng = np.random.default_rng(0)
    col.upsert(ids=list(range(30)), vectors={"d": rng.standard_normal((30, 8)), "m": [
        rng.standard_normal((2, 8)).astype(np.float32) for _ in range(30)]})
    col.upsert(ids=list(range(30, 40)), vectors={"d": rng.standard_normal((10, 8))})
    col.flush()
    before = {p.id: p.vector for p in col.get([0, 25, 35], with_vectors=True)}
    assert col.set_payload({"v": 1}, [0, 25, 35]) == 3
    after = col.get([0, 25, 35], with_vectors=True)
    assert [p.payload for p in after] == [{"v": 1}] * 3
    for p in after:
        assert p.vector.keys() == before[p.id].keys()
        for name, v in p.vector.items():
            np.testing.assert_allclose(v, before[p.id][name], atol=1e-6)
    db.close()


def test_token_rows_travel_in_frames():
    rng = np.random.default_rng(1)
    docs = _docs(rng, 5)
    x = TokenMatrices(np.concatenate(docs), np.cumsum([0] + [len(d) for d in docs]))
    back = unpack_fields(pack_fields({"mv": (x, None), "d": (np.ones((5, 3)), None)}), 5)
    tm, rows = back["mv"]
    assert isinstance(tm, TokenMatrices) and rows is None and len(tm) == 5
    np.testing.assert_array_equal(tm.doc(3), docs[3])
    np.testing.assert_array_equal(x[[4, 0]].doc(0), docs[4])


def test_token_hits_reach_sealed_segments_and_survive_a_restart(tmp_path):
    rng = np.random.default_rng(9)
    docs = _docs(rng, 150)
    field = {**FIELD, "retrieval": "tokens", "token_hits": 24}
    db = quiver.connect(tmp_path)
    with pytest.raises(quiver.InvalidArgument, match=r"'mv'\]\.token_hits: only with retrieval "
                                                     r"'tokens'"):
        db.create_collection("x", vectors={"mv": {**FIELD, "token_hits": 24}})
    with pytest.raises(quiver.InvalidArgument, match=r"token_hits: expected a positive integer"):
        db.create_collection("x", vectors={"mv": {**field, "token_hits": 0}})
    with pytest.raises(quiver.InvalidArgument, match=r"token_hits: at most 4096"):
        db.create_collection("x", vectors={"mv": {**field, "token_hits": 10**9}})
    with pytest.raises(quiver.InvalidArgument, match=r"'d'\]\.token_hits: only for multi-vector"):
        db.create_collection("x", vectors={"d": {"dim": 4, "token_hits": 8}})
    col = db.create_collection("mv", vectors={"mv": field}, segment_size=60)
    col.upsert(ids=list(range(150)), vectors={"mv": docs})
    col.flush()
    col.wait_indexed()
    sealed = [seg.fields["mv"].index for seg in col._segments if seg.fields["mv"].index.fdes]
    assert sealed and all(ix.token_hits == 24 for ix in sealed)
    q = docs[7]
    want, _ = _chamfer_top(q, docs, 5)
    assert col.search(q, k=5, using="mv")[0].id == want[0]
    db.close()
    db = quiver.connect(tmp_path)
    col = db.get_collection("mv")
    assert col.info()["vectors"]["mv"]["token_hits"] == 24
    assert all(seg.fields["mv"].index.token_hits == 24 for seg in col._segments
               if seg.fields["mv"].index.fdes)
    db.close()
