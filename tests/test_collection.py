"""Collections through the embedded database: upsert/get/delete/count/scroll/search against a
NumPy brute-force oracle over several sealed segments plus the appendable one, filters with
and without payload indexes, explain plans, restart, snapshots, concurrent search during
writes and segment swaps, and bad input (rejected with a clear message, nothing written)."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
from conftest import read_state
from quiver.engine.validation import normalize_rows

import quiver

DIM = 16


# ---------------------------------------------------------------- helpers


def id_key(i):
    """Scroll order: unsigned integers first, then UUIDs (canonical strings) in order."""
    return (0, i, "") if isinstance(i, int) else (1, 0, i)


def assert_same_state(got: dict, want: dict, atol: float = 0.0) -> None:
    """Same ids and payloads; vectors equal, or within ``atol`` (cosine collections: sealing
    re-normalises stored unit vectors, which can move them by an ulp)."""
    assert got.keys() == want.keys(), (sorted(got.keys() - want.keys(), key=id_key)[:5],
                                       sorted(want.keys() - got.keys(), key=id_key)[:5])
    for i, (payload, vec) in want.items():
        assert got[i][0] == payload, i
        if atol:
            np.testing.assert_allclose(got[i][1], vec, rtol=0, atol=atol, err_msg=str(i))
        else:
            assert got[i][1] == vec, i


CATS = ["a", "b", "c", "d"]
TAGS = ["x", "y", "z", "w"]


def make_payload(rng: np.random.Generator) -> dict:
    p = {"cat": CATS[int(rng.integers(4))], "n": int(rng.integers(0, 50)),
         "price": round(float(rng.uniform(0, 100)), 3), "flag": bool(rng.integers(2)),
         "tags": sorted(str(t) for t in rng.choice(TAGS, int(rng.integers(0, 3)), replace=False)),
         "ts": f"2024-01-{int(rng.integers(1, 29)):02d}T12:00:00+00:00"}
    r = int(rng.integers(4))
    if r == 1:
        p["opt"] = None
    elif r == 2:
        p["opt"] = []
    elif r == 3:
        p["opt"] = "v"
    return p


def uid(n: int) -> str:
    return str(uuid.UUID(int=(0xABCDEF << 100) + n))


class Model:
    """What the collection should hold: id -> (raw vector, payload)."""

    def __init__(self, metric: str):
        self.metric = metric
        self.points: dict = {}

    def upsert(self, ids, vecs, payloads) -> None:
        for i, v, p in zip(ids, vecs, payloads, strict=True):
            self.points[i] = (np.asarray(v, np.float32), p)

    def delete(self, ids) -> None:
        for i in ids:
            self.points.pop(i, None)

    def stored(self, v) -> np.ndarray:
        v = np.asarray(v, np.float32)[None]
        return (normalize_rows(v) if self.metric == "cosine" else v)[0]

    def topk(self, q, k: int, pred=None) -> tuple[list, np.ndarray]:
        ids = [i for i, (_, p) in self.points.items() if pred is None or pred(i, p)]
        if not ids:
            return [], np.zeros(0)
        x = np.array([self.stored(self.points[i][0]) for i in ids], np.float64)
        q = self.stored(q).astype(np.float64)
        if self.metric == "l2":
            s = ((x - q) ** 2).sum(1)
            order = np.argsort(s, kind="stable")
        else:
            s = x @ q
            order = np.argsort(-s, kind="stable")
        order = order[:k]
        return [ids[j] for j in order], s[order]


def build(db, metric: str, rng, n: int = 900, segment_size: int = 250):
    """Several sealed segments, replacements across them, deletes in sealed and appendable
    rows, UUID ids, and an unsealed tail."""
    col = db.create_collection("c", DIM, metric=metric, segment_size=segment_size,
                               ef_construction=80)
    model = Model(metric)
    for start in range(0, n, 150):
        ids = list(range(start, start + 150))
        if start == 300:
            ids[::10] = [uid(j) for j in range(15)]
        vecs = rng.standard_normal((150, DIM)).astype(np.float32)
        pls = [make_payload(rng) for _ in ids]
        col.upsert(ids, vecs, pls)
        model.upsert(ids, vecs, pls)
        if start % 300 == 150:
            col.flush()
    col.flush()
    col.wait_indexed()
    sealed = [s for s in col.info()["segments"] if s["sealed"]]
    assert len(sealed) >= n // 300
    # replace points living in different sealed segments
    rep = [3, 140, 333, 520, 777, uid(3), 899]
    vecs = rng.standard_normal((len(rep), DIM)).astype(np.float32)
    pls = [make_payload(rng) for _ in rep]
    col.upsert(rep, vecs, pls)
    model.upsert(rep, vecs, pls)
    # an unsealed tail
    tail = list(range(5000, 5080))
    vecs = rng.standard_normal((80, DIM)).astype(np.float32)
    pls = [make_payload(rng) for _ in tail]
    col.upsert(tail, vecs, pls)
    model.upsert(tail, vecs, pls)
    # deletes: sealed rows, a replaced point, tail rows, a UUID, an unknown id
    gone = [*range(10, 200, 7), 140, 5001, 5002, 5050, uid(5), 123456]
    assert col.delete(ids=gone) == len(gone) - 1
    model.delete(gone)
    return col, model


HAS_IDS = [0, 11, 12, 5003, 5001, uid(1).upper(), uid(5), 999_999, 2**64 - 1]
_HAS = {0, 11, 12, 5003, 5001, uid(1), uid(5), 999_999, 2**64 - 1}

FILTERS = [
    ("match_value", {"must": [{"key": "cat", "match": {"value": "a"}}]},
     lambda i, p: p["cat"] == "a"),
    ("any_and_must_not", {"must": [{"key": "n", "match": {"any": [1, 2, 3, 4, 5, 6]}}],
                          "must_not": [{"key": "cat", "match": {"value": "b"}}]},
     lambda i, p: 1 <= p["n"] <= 6 and p["cat"] != "b"),
    ("should", {"should": [{"key": "tags", "match": {"value": "x"}},
                           {"key": "flag", "match": {"value": True}}]},
     lambda i, p: "x" in p["tags"] or p["flag"] is True),
    ("range_float", {"must": [{"key": "price", "range": {"gte": 20, "lt": 60.5}}]},
     lambda i, p: 20 <= p["price"] < 60.5),
    ("range_int", {"must": [{"key": "n", "range": {"gt": 10, "lte": 20}}]},
     lambda i, p: 10 < p["n"] <= 20),
    ("except", {"must": [{"key": "cat", "match": {"except": ["a", "b"]}}]},
     lambda i, p: p["cat"] not in ("a", "b")),
    ("tags_any", {"must": [{"key": "tags", "match": {"any": ["y", "w"]}}]},
     lambda i, p: bool({"y", "w"} & set(p["tags"]))),
    ("has_id", {"must": [{"has_id": HAS_IDS}]}, lambda i, p: i in _HAS),
    ("is_empty", {"must": [{"is_empty": {"key": "opt"}}]}, lambda i, p: p.get("opt") in (None, [])),
    ("is_null", {"must": [{"is_null": {"key": "opt"}}]}, lambda i, p: "opt" in p and p["opt"] is None),
    ("nested", {"must": [{"should": [{"key": "cat", "match": {"value": "a"}},
                                     {"key": "cat", "match": {"value": "c"}}]},
                         {"key": "n", "range": {"lt": 25}}],
                "must_not": [{"is_empty": {"key": "tags"}}]},
     lambda i, p: p["cat"] in ("a", "c") and p["n"] < 25 and len(p["tags"]) > 0),
    ("datetime", {"must": [{"key": "ts", "range": {"gte": "2024-01-10T00:00:00Z",
                                                   "lt": "2024-01-20T00:00:00Z"}}]},
     lambda i, p: "2024-01-10" <= p["ts"][:10] < "2024-01-20"),
    ("bool_false", {"must": [{"key": "flag", "match": {"value": False}}]},
     lambda i, p: p["flag"] is False),
    ("must_not_only", {"must_not": [{"key": "cat", "match": {"any": ["a", "b", "c"]}}]},
     lambda i, p: p["cat"] == "d"),
    ("nothing", {"must": [{"key": "cat", "match": {"value": "zzz"}}]}, lambda i, p: False),
    ("everything", {}, lambda i, p: True),
]


def check_against_oracle(col, model: Model, rng, phase: str) -> None:
    queries = rng.standard_normal((6, DIM)).astype(np.float32)
    k = 10
    for name, flt, pred in [("none", None, None), *FILTERS]:
        where = f"{phase}/{name}"
        want_ids = sorted((i for i, (_, p) in model.points.items() if pred is None or pred(i, p)),
                          key=id_key)
        assert col.count(flt) == len(want_ids), where
        got_ids, cursor = [], None
        while True:
            page, cursor = col.scroll(filter=flt, limit=50, cursor=cursor, with_payload=False)
            got_ids += [p.id for p in page]
            if cursor is None:
                break
        assert got_ids == want_ids, where
        exact = col.search(queries, k=k, filter=flt, params={"exact": True}, with_payload=True,
                           with_vectors=True)
        approx = col.search(queries, k=k, filter=flt)
        arrays = col.search_arrays(queries, k=k, filter=flt, params={"exact": True})
        assert arrays.ids.shape == arrays.scores.shape == (len(queries), k), where
        assert arrays.to_points() == [[quiver.Point(p.id, p.score) for p in ex] for ex in exact], where
        assert np.isnan(arrays.scores[np.arange(k)[None, :] >= arrays.counts[:, None]]).all()
        recall = []
        for q, ex, ap in zip(queries, exact, approx, strict=True):
            ids, scores = model.topk(q, k, pred)
            assert [p.id for p in ex] == ids, where
            np.testing.assert_allclose([p.score for p in ex], scores, rtol=1e-4, atol=1e-4,
                                       err_msg=where)
            for p in ex:
                raw, payload = model.points[p.id]
                assert p.payload == payload, where
                np.testing.assert_allclose(p.vector, model.stored(raw), rtol=1e-6, atol=1e-6)
            assert len({p.id for p in ap}) == len(ap) == len(ids), where
            assert all(pred is None or pred(p.id, model.points[p.id][1]) for p in ap), where
            if ids:
                recall.append(len({p.id for p in ap} & set(ids)) / len(ids))
        if recall:
            assert np.mean(recall) >= 0.9, (where, recall)


INDEXES = [("cat", "keyword"), ("n", "integer"), ("price", "float"), ("flag", "bool"),
           ("ts", "datetime"), ("tags", "keyword")]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_multi_segment_search_matches_oracle(tmp_path, metric):
    rng = np.random.default_rng(11)
    db = quiver.connect(tmp_path)
    col, model = build(db, metric, rng)
    check_against_oracle(col, model, rng, "no payload indexes")
    for key, kind in INDEXES:
        col.create_payload_index(key, kind)
    check_against_oracle(col, model, rng, "payload indexes")
    # more writes after the indexes exist, sealed with them
    ids = list(range(7000, 7300))
    vecs = rng.standard_normal((300, DIM)).astype(np.float32)
    pls = [make_payload(rng) for _ in ids]
    col.upsert(ids, vecs, pls)
    model.upsert(ids, vecs, pls)
    col.delete(filter={"must": [{"key": "cat", "match": {"value": "d"}},
                                {"key": "n", "range": {"lt": 10}}]})
    model.delete([i for i, (_, p) in model.points.items() if p["cat"] == "d" and p["n"] < 10])
    col.wait_indexed()
    check_against_oracle(col, model, rng, "indexed, more writes")
    db.close()
    db = quiver.connect(tmp_path)
    col = db.get_collection("c")
    assert col.info()["payload_indexes"] == dict(INDEXES)
    for seg in col._segments:  # declared indexes exist in every segment after a restart
        assert set(INDEXES) <= set(seg.payloads.indexes()), seg.id
    check_against_oracle(col, model, rng, "after restart")
    db.close()


def test_explain_reports_a_plan_per_segment(tmp_path):
    rng = np.random.default_rng(5)
    db = quiver.connect(tmp_path)
    col, model = build(db, "l2", rng)
    col.create_payload_index("cat", "keyword")
    col.flush()  # seal the tail (with its deletions), then one more without any
    ids = list(range(8000, 8300))
    vecs = rng.standard_normal((300, DIM)).astype(np.float32)
    pls = [make_payload(rng) for _ in ids]
    col.upsert(ids, vecs, pls)
    model.upsert(ids, vecs, pls)
    col.flush()
    col.wait_indexed()
    q = rng.standard_normal(DIM).astype(np.float32)
    segs = {s["id"]: s for s in col.info()["segments"]}
    nonempty = {i for i, s in segs.items() if s["points"] > s["deleted"]}
    for flt, params in [(None, None), (None, {"exact": True}),
                        ({"must": [{"key": "cat", "match": {"value": "a"}}]}, None),
                        ({"must": [{"has_id": [0, 5003]}]}, {"ef": 32})]:
        res, plan = col.search(q, k=5, filter=flt, params=params, explain=True)
        assert (isinstance(res, list) and len(res) == 5) or flt is not None
        assert plan, (flt, params)
        for entry in plan:
            assert entry["segment"] in segs
            assert isinstance(entry["strategy"], str) and entry["strategy"]
            assert 0.0 <= entry["estimated_selectivity"] <= 1.0
        if flt is None:
            assert {e["segment"] for e in plan} == nonempty
            assert all(e["estimated_selectivity"] == 1.0 for e in plan)
        strategies = {e["segment"]: e["strategy"] for e in plan}
        if params == {"exact": True}:
            assert set(strategies.values()) == {"exact"}
        assert set(strategies.values()) <= {"exact", "traversal", "filtered-traversal"}
        if flt is None and params is None:
            for e in plan:  # the planner takes its cost model's cheapest estimate
                costs = e["estimated_us_per_query"]
                assert e["strategy"] == min(costs, key=lambda s: costs[s] or 1e300), e
                if not segs[e["segment"]]["sealed"]:
                    assert e["strategy"] == "exact" and set(costs) == {"exact"}
                else:  # 16-d segments of a few hundred rows: a scan beats a graph walk
                    assert e["strategy"] == "exact" and "traversal" in costs
        if flt and "must" in flt and "has_id" in flt["must"][0]:  # two ids: scan them
            assert set(strategies.values()) == {"exact"}
            assert {p.id for p in res} == {0, 5003}
            assert all(e["estimated_selectivity"] < 0.05 for e in plan)
        if flt and "key" in flt["must"][0]:
            share = sum(p["cat"] == "a" for _, p in model.points.values()) / len(model.points)
            assert all(abs(e["estimated_selectivity"] - share) < 0.15 for e in plan)
    db.close()


# ---------------------------------------------------------------- upsert, restart, snapshot


def test_odd_argument_types_are_invalid_arguments_naming_them(tmp_path):
    """Arguments of the wrong type are InvalidArguments naming them, not a TypeError or a
    NumPy ValueError from deep inside (found by a fuzz of the embedded API), and the
    collection is unchanged."""
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", vectors={"d": {"dim": 4, "metric": "l2"},
                                             "m": {"dim": 4, "metric": "ip",
                                                   "multivector": "max_sim"}})
    col.upsert(ids=[1, 2], vectors={"d": np.eye(4, dtype=np.float32)[:2],
                                    "m": [np.ones((2, 4), np.float32)] * 2})
    q = [0.1, 0.2, 0.3, 0.4]
    for call, field in (
            (lambda: col.search(q, 3, using={"a": 1}), "using"),
            (lambda: col.search(q, 3, using=np.array(["d"])), "using"),
            (lambda: col.upsert(ids=[3], vectors={"d": q}, payloads=np.int64(1)), "payloads"),
            (lambda: col.upsert(ids=[3], vectors={"d": (5, [0])}), r"vectors\['d'\]"),
            (lambda: col.upsert(ids=[3], vectors={"d": q, "m": np.array(2.0)}), r"vectors\['m'\]"),
            (lambda: col.get([1], with_vectors=np.ones(2, bool)), "with_vectors"),
            (lambda: col.get([1], with_vectors=[]), "with_vectors"),
            (lambda: col.create_payload_index("a", ["keyword"]), "type"),
            (lambda: col.search(q, 3, using="d", params={"rerank": np.ones(2, bool)}),
             r"params\.rerank")):
        with pytest.raises(quiver.InvalidArgument, match=field):
            call()
    assert col.count() == 2 and [p.id for p in col.get([1, 2], with_vectors=True)] == [1, 2]
    db.close()


def test_upsert_replaces_within_and_across_segments(tmp_path):
    rng = np.random.default_rng(2)
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", 4, metric="l2", segment_size=40, ef_construction=64)
    v0 = rng.standard_normal((100, 4)).astype(np.float32)
    for lo in (0, 50):
        col.upsert(list(range(lo, lo + 50)), v0[lo:lo + 50], [{"v": 0} for _ in range(50)])
        col.flush()
    col.wait_indexed()
    assert sum(s["sealed"] for s in col.info()["segments"]) >= 2
    # 5 and 95 live in different sealed segments; 200 is replaced inside the appendable one
    col.upsert(points=[{"id": 200, "vector": [1, 1, 1, 1], "payload": {"v": 0}}])
    v1 = rng.standard_normal((3, 4)).astype(np.float32)
    col.upsert([5, 95, 200], v1, [{"v": 1}, {"v": 1}, {"v": 1}])
    assert col.count() == 101
    got = {p.id: p for p in col.get([5, 95, 200], with_vectors=True)}
    for j, i in enumerate([5, 95, 200]):
        assert got[i].payload == {"v": 1}
        np.testing.assert_array_equal(np.float32(got[i].vector), v1[j])
    # the old versions are gone from search, filters and counts
    for i in (5, 95):
        res = col.search(v0[i], k=3, params={"exact": True})
        assert i not in [p.id for p in res if p.score < 1e-6]
    assert col.count({"must": [{"key": "v", "match": {"value": 1}}]}) == 3
    assert col.count({"must": [{"key": "v", "match": {"value": 0}}]}) == 98
    # a replacement of a replacement, then sealed and reopened
    u = str(uuid.uuid4())
    col.upsert(points=[{"id": u, "vector": [0, 0, 0, 1], "payload": {"v": 2}},
                       {"id": 5, "vector": [0, 0, 1, 0], "payload": {"v": 2}}])
    col.upsert([u.upper()], [[0, 0, 0, 2]], [{"v": 3}])
    col.flush()
    col.wait_indexed()
    # facets and samples see each point once, in its latest version, across segments
    assert col.facet("v") == [(0, 98), (1, 2), (2, 1), (3, 1)]
    newer = col.sample(200, filter={"must": [{"key": "v", "match": {"any": [1, 2, 3]}}]},
                       with_payload=False)
    assert sorted((p.id for p in newer), key=str) == sorted([5, 95, 200, u], key=str)
    assert len({p.id for p in col.sample(200)}) == 102
    before = read_state(col)
    assert before[5] == ({"v": 2}, (0.0, 0.0, 1.0, 0.0))
    assert before[u] == ({"v": 3}, (0.0, 0.0, 0.0, 2.0))
    assert len(before) == 102
    db.close()
    db = quiver.connect(tmp_path)
    assert_same_state(read_state(db.get_collection("c")), before)
    db.close()


def test_restart_replays_wal_and_keeps_sealed_segments(tmp_path):
    rng = np.random.default_rng(4)
    db = quiver.connect(tmp_path)
    col = db.create_collection("keep", 8, metric="cosine", segment_size=60, ef_construction=64)
    model = Model("cosine")
    for b in range(3):
        ids = list(range(b * 50, b * 50 + 50))
        vecs = rng.standard_normal((50, 8)).astype(np.float32)
        pls = [{"b": b, "i": i} for i in ids]
        col.upsert(ids, vecs, pls)
        model.upsert(ids, vecs, pls)
    col.wait_indexed()
    assert any(s["sealed"] for s in col.info()["segments"])
    # WAL-only changes on top: new points, replacements of sealed ones, deletes of both
    ids = [*range(1000, 1030), 7, 8]
    vecs = rng.standard_normal((32, 8)).astype(np.float32)
    pls = [{"b": 9, "i": i} for i in ids]
    col.upsert(ids, vecs, pls)
    model.upsert(ids, vecs, pls)
    col.delete(ids=[1, 2, 1001, 1002, 8])
    model.delete([1, 2, 1001, 1002, 8])
    assert col.delete(filter={"must": [{"key": "i", "range": {"gte": 140, "lt": 145}}]}) == 5
    model.delete(range(140, 145))
    assert not all(s["sealed"] for s in col.info()["segments"] if s["points"])
    state = read_state(col)
    assert set(state) == set(model.points)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    res = [[(p.id, p.score) for p in r] for r in col.search(q, k=5, params={"exact": True})]
    db.close()

    db = quiver.connect(tmp_path)
    assert db.list_collections() == ["keep"]
    col = db.get_collection("keep")
    assert_same_state(read_state(col), state, 1e-6)
    res2 = [[(p.id, p.score) for p in r] for r in col.search(q, k=5, params={"exact": True})]
    assert [[i for i, _ in r] for r in res2] == [[i for i, _ in r] for r in res]
    np.testing.assert_allclose([[s for _, s in r] for r in res2], [[s for _, s in r] for r in res],
                               atol=1e-5)
    for r, qq in zip(res2, q, strict=True):
        assert [i for i, _ in r] == model.topk(qq, 5)[0]
    # seal what was replayed, restart again: still the same
    col.flush()
    col.wait_indexed()
    assert_same_state(read_state(col), state, 1e-6)
    db.close()
    db = quiver.connect(tmp_path)
    assert_same_state(read_state(db.get_collection("keep")), state, 1e-6)
    db.close()


def test_snapshot_restore_gives_an_identical_collection(tmp_path):
    rng = np.random.default_rng(8)
    db = quiver.connect(tmp_path / "db")
    col, model = build(db, "cosine", rng, n=600, segment_size=200)
    col.create_payload_index("cat", "keyword")
    state = read_state(col)
    q = rng.standard_normal((5, DIM)).astype(np.float32)
    flt = {"must": [{"key": "cat", "match": {"any": ["a", "b"]}}]}

    def answers(c):
        out = []
        for f in (None, flt):
            for params in (None, {"exact": True}):
                out.append([[(p.id, round(p.score, 5)) for p in r]
                            for r in c.search(q, k=7, filter=f, params=params)])
        return out

    expected = answers(col)
    snap = col.snapshot(tmp_path / "snaps")
    assert snap.exists() and snap.suffix == ".tar"
    # later changes to the source do not leak into the snapshot
    col.upsert([9999], rng.standard_normal((1, DIM)), [{"cat": "a"}])
    col.delete(ids=[0, 1, 5003])
    col.flush()
    copy = db.restore_snapshot(snap, "copy")
    assert sorted(db.list_collections()) == ["c", "copy"]
    assert_same_state(read_state(copy), state, 1e-6)
    assert copy.info()["payload_indexes"] == {"cat": "keyword"}
    assert copy.info()["dim"] == DIM and copy.info()["metric"] == "cosine"
    assert answers(copy) == expected
    with pytest.raises(quiver.InvalidArgument, match="copy"):
        db.restore_snapshot(snap, "copy")
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"not a tar archive")
    with pytest.raises(quiver.InvalidArgument, match="snapshot"):
        db.restore_snapshot(bogus, "other")
    assert "other" not in db.list_collections()
    db.close()
    db = quiver.connect(tmp_path / "db")
    copy = db.get_collection("copy")
    assert_same_state(read_state(copy), state, 1e-6)
    assert answers(copy) == expected
    db.drop_collection("copy")
    assert db.list_collections() == ["c"]
    with pytest.raises(quiver.NotFound, match="copy"):
        db.get_collection("copy")
    db.close()


def test_scroll_pages_once_in_id_order_and_count(tmp_path):
    rng = np.random.default_rng(9)
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", 4, metric="ip", segment_size=30, ef_construction=32)
    ints = [int(x) for x in rng.choice(10**6, 70, replace=False)] + [0, 2**64 - 1, 2**63]
    uuids = [str(uuid.uuid4()) for _ in range(12)]
    all_ids = ints + uuids
    order = rng.permutation(len(all_ids))
    ids = [all_ids[j] for j in order]
    col.upsert(ids, rng.standard_normal((len(ids), 4)), [{"odd": k % 2} for k in range(len(ids))])
    col.flush()
    col.wait_indexed()
    col.upsert([5, uuids[0]], rng.standard_normal((2, 4)), [{"odd": 1}, {"odd": 1}])
    col.delete(ids=[ints[3], uuids[4]])
    live = sorted({*all_ids, 5} - {ints[3], uuids[4]}, key=id_key)
    for limit in (1, 7, 200):
        seen, cursor, pages = [], None, 0
        while True:
            page, cursor = col.scroll(limit=limit, cursor=cursor)
            assert len(page) <= limit
            seen += [p.id for p in page]
            pages += 1
            if cursor is None:
                break
            assert cursor == live[len(seen)]
        assert seen == live
        assert pages == -(-len(live) // limit)
    odd = {i for i in live if col.get([i])[0].payload["odd"] == 1}
    flt = {"must": [{"key": "odd", "match": {"value": 1}}]}
    seen, cursor = [], None
    while True:
        page, cursor = col.scroll(filter=flt, limit=6, cursor=cursor)
        seen += [p.id for p in page]
        if cursor is None:
            break
    assert seen == sorted(odd, key=id_key)
    assert col.count(flt) == len(odd)
    assert col.count({"must_not": [flt]}) == len(live) - len(odd)
    assert col.count() == len(live) == len(col)
    assert col.count({"must": [{"has_id": [uuids[0].upper(), 5, ints[3], 77777777]}]}) == 2
    db.close()


# ---------------------------------------------------------------- concurrency


def test_concurrent_search_during_writes_and_segment_swaps(tmp_path):
    rng = np.random.default_rng(21)
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", 8, metric="l2", segment_size=60, ef_construction=48)
    lock = threading.Lock()
    live: dict[int, tuple[np.ndarray, int]] = {}  # id -> (vector, version) acknowledged
    busy: set[int] = set()  # a delete or replacement of these has started, not returned
    dead: set[int] = set()  # deletes acknowledged (ids are never reused)
    version = 0

    ids = list(range(240))
    vecs = rng.standard_normal((240, 8)).astype(np.float32)
    col.upsert(ids, vecs, [{"g": i % 4} for i in ids])
    live.update((i, (v, 0)) for i, v in zip(ids, vecs, strict=True))
    col.wait_indexed()

    stop = threading.Event()
    errors: list[str] = []
    searches = [0]

    def searcher(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                with lock:
                    dead_before = set(dead)
                    cands = [i for i in live if i not in busy]
                    pick = cands[int(r.integers(len(cands)))]
                    vec, ver = live[pick]
                res = col.search(vec, k=5, params={"exact": True})
                got = [p.id for p in res]
                if len(set(got)) != len(got):
                    errors.append(f"duplicate ids {got}")
                if dead_before & set(got):
                    errors.append(f"deleted ids {dead_before & set(got)} returned (exact)")
                if pick not in got:
                    with lock:
                        unchanged = pick in live and pick not in busy and live[pick][1] == ver
                    if unchanged:
                        errors.append(f"id {pick} not found by its own vector: {got}")
                g = int(r.integers(4))
                for params in (None, {"ef": 32}):
                    res = col.search(r.standard_normal((2, 8)), k=10, params=params,
                                     filter={"must": [{"key": "g", "match": {"value": g}}]},
                                     with_payload=True)
                    for row in res:
                        got = [p.id for p in row]
                        if len(set(got)) != len(got):
                            errors.append(f"duplicate ids {got}")
                        if dead_before & set(got):
                            errors.append(f"deleted ids {dead_before & set(got)} returned")
                        if any(p.payload["g"] != g for p in row):
                            errors.append("filter not applied")
                searches[0] += 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    next_id = 1000
    seg_ids: set[int] = set()
    try:
        for step in range(70):
            new = list(range(next_id, next_id + 15))
            next_id += 15
            v = rng.standard_normal((15, 8)).astype(np.float32)
            col.upsert(new, v, [{"g": i % 4} for i in new])
            version += 1
            with lock:
                live.update((i, (x, version)) for i, x in zip(new, v, strict=True))
            with lock:
                pool = sorted(live)
            if step % 2 == 0:  # replacements, mostly of sealed rows
                rep = [int(x) for x in rng.choice(pool, 5, replace=False)]
                v = rng.standard_normal((5, 8)).astype(np.float32)
                with lock:
                    busy.update(rep)
                col.upsert(rep, v, [{"g": i % 4} for i in rep])
                version += 1
                with lock:
                    live.update((i, (x, version)) for i, x in zip(rep, v, strict=True))
                    busy.difference_update(rep)
            if step % 3 == 1:
                gone = [int(x) for x in rng.choice(pool, 8, replace=False)]
                with lock:
                    busy.update(gone)
                col.delete(ids=gone)
                with lock:
                    for i in gone:
                        live.pop(i, None)
                    dead.update(gone)
                    busy.difference_update(gone)
            seg_ids.update(s["id"] for s in col.info()["segments"] if s["sealed"])
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:5]
    assert searches[0] >= 30, f"only {searches[0]} search rounds ran during the writes"
    assert len(seg_ids) >= 8, f"only {len(seg_ids)} sealed segments seen: no swaps happened"
    col.wait_indexed()
    assert col.count() == len(live)
    assert col.get(sorted(dead)) == []
    ids = sorted(live)
    res = col.search(np.array([live[i][0] for i in ids]), k=1, params={"exact": True})
    assert [r[0].id for r in res] == ids
    db.close()


def test_flush_ends_under_a_steady_stream_of_writes_and_seals_what_came_before(tmp_path):
    """Writes during a flush go to a fresh appendable segment: the flush seals the rows
    acknowledged before it and returns, instead of chasing the writer until its timeout."""
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", 8, metric="l2", segment_size=10_000, ef_construction=32)
    rng = np.random.default_rng(4)
    col.upsert(list(range(300)), rng.standard_normal((300, 8)).astype(np.float32))
    stop, written, errors = threading.Event(), [300], []

    def writer() -> None:
        try:
            while not stop.is_set():
                n = written[0]
                col.upsert(list(range(n, n + 5)), rng.standard_normal((5, 8)).astype(np.float32))
                written[0] = n + 5
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    t = threading.Thread(target=writer)
    t.start()
    try:
        while written[0] < 400:  # the writer is running
            time.sleep(0.001)
        before = written[0]
        col.flush(timeout=60)
        assert col.info()["indexed_points"] >= before
    finally:
        stop.set()
        t.join()
    assert not errors
    assert col.count() == written[0]
    col.flush()
    assert col.info()["indexed_points"] == written[0]
    db.close()


# ---------------------------------------------------------------- bad input


def _seeded(tmp_path):
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", 4, metric="l2", segment_size=20, ef_construction=32)
    rng = np.random.default_rng(0)
    col.upsert(list(range(30)), rng.standard_normal((30, 4)), [{"k": i % 3} for i in range(30)])
    col.flush()
    col.wait_indexed()
    col.upsert([100, 101], rng.standard_normal((2, 4)), [{"k": 0}, {"k": 1}])
    col.create_payload_index("k", "integer")
    return db, col


V2 = [[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]]
GOOD_FILTER = {"must": [{"key": "k", "match": {"value": 1}}]}
BAD_FILTERS = [
    ({"must": [{"key": "k", "range": {"gtx": 1}}]}, "unknown operator 'gtx'"),
    ({"must": [{"key": "k", "match": {"like": 1}}]}, "unknown operator 'like'"),
    ({"must": [{"key": "k", "match": {"value": 1.5}}]}, "got float"),
    ({"must": [{"key": "k", "range": {"gte": [1]}}]}, "got list"),
    ({"must": [{"key": "k", "range": {"gte": "yesterday"}}]}, "ISO-8601"),
    ({"must": [{"key": "k", "match": {"any": "abc"}}]}, "expected a list"),
    ({"filter": []}, "unknown clause 'filter'"),
    ({"must": [{"has_id": [1.5]}]}, r"has_id\[0\]"),
    ({"must": [{"is_null": "k"}]}, "is_null"),
    ({"must": [{"key": 3, "match": {"value": 1}}]}, "key"),
    ([{"key": "k"}], "expected an object"),
]

BAD_CALLS = [
    ("wrong dimension", lambda c: c.upsert([200, 201], np.ones((2, 5))), "dimension 5"),
    ("wrong dimension (points)", lambda c: c.upsert(points=[{"id": 200, "vector": [1, 2, 3]}]),
     "dimension 3"),
    ("NaN vector", lambda c: c.upsert([200, 201], [[0, 0, 0, 0], [1, np.nan, 0, 0]]),
     "row 1 contains NaN"),
    ("inf vector", lambda c: c.upsert([200], [[np.inf, 0, 0, 0]]), "NaN or inf"),
    ("too few vectors", lambda c: c.upsert([200, 201, 202], V2), "2 vectors for 3 ids"),
    ("payload not an object", lambda c: c.upsert([200, 201], V2, [{"a": 1}, ["x"]]),
     r"payloads\[1\].*JSON object"),
    ("payload a string", lambda c: c.upsert([200, 201], V2, ["abc", {}]), r"payloads\[0\]"),
    ("payload NaN", lambda c: c.upsert([200, 201], V2, [{}, {"x": float("nan")}]), "finite"),
    ("payload key", lambda c: c.upsert([200, 201], V2, [{}, {1: "a"}]), "not a string"),
    ("payload object", lambda c: c.upsert([200, 201], V2, [{}, {"x": object()}]), "JSON value"),
    ("payload count", lambda c: c.upsert([200, 201], V2, [{}]), "1 payloads for 2 ids"),
    ("payloads a dict", lambda c: c.upsert([200, 201], V2, {"a": 1}), "one payload per id"),
    ("float id", lambda c: c.upsert([200, 1.5], V2), r"ids\[1\].*float"),
    ("negative id", lambda c: c.upsert([200, -1], V2), "unsigned"),
    ("id too large", lambda c: c.upsert([2**64, 201], V2), "unsigned 64-bit"),
    ("non-UUID string id", lambda c: c.upsert([200, "abc"], V2), "'abc' is not a UUID"),
    ("bool id", lambda c: c.upsert([True, 201], V2), "got bool"),
    ("single id", lambda c: c.upsert(200, V2[:1]), "list of ids"),
    ("duplicate ids", lambda c: c.upsert([200, 200], V2), "appears more than once"),
    ("duplicate UUIDs", lambda c: c.upsert([uid(1), uid(1).upper()], V2), "more than once"),
    ("point without vector", lambda c: c.upsert(points=[{"id": 200}]), r"points\[0\]"),
    ("points and ids", lambda c: c.upsert([1], V2[:1], points=[]), "either points"),
    ("unknown search param", lambda c: c.search(V2[0], k=3, params={"nprob": 4}), "nprob"),
    ("bad ef", lambda c: c.search(V2[0], k=3, params={"ef": "big"}), "ef"),
    ("search dimension", lambda c: c.search([1.0, 2.0], k=3), "dimension 2"),
    ("search NaN", lambda c: c.search([np.nan, 0, 0, 0], k=3), "NaN"),
    ("k zero", lambda c: c.search(V2[0], k=0), "k"),
    ("k string", lambda c: c.search(V2[0], k="3"), "k"),
    ("delete bad id", lambda c: c.delete(ids=[1, 2, -5]), r"ids\[2\]"),
    ("delete ids and filter", lambda c: c.delete(ids=[1], filter=GOOD_FILTER), "exactly one"),
    ("get bad id", lambda c: c.get([1, "nope"]), r"ids\[1\]"),
    ("scroll bad cursor", lambda c: c.scroll(cursor=-3), "cursor"),
    ("payload index type", lambda c: c.create_payload_index("k2", "hex"), "'hex'"),
] + [(f"search filter {m}", lambda c, f=f: c.search(V2[0], k=3, filter=f), m)
     for f, m in BAD_FILTERS] + [
    ("count filter", lambda c: c.count(BAD_FILTERS[0][0]), "gtx"),
    ("scroll filter", lambda c: c.scroll(filter=BAD_FILTERS[2][0]), "got float"),
    ("delete filter", lambda c: c.delete(filter=BAD_FILTERS[0][0]), "gtx"),
    ("delete filter clause", lambda c: c.delete(filter={"must": [GOOD_FILTER["must"][0]],
                                                        "mustnt": []}), "mustnt"),
]


@pytest.mark.parametrize("name,call,match", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_rejected_and_nothing_is_written(tmp_path, name, call, match):
    db, col = _seeded(tmp_path)
    before = read_state(col)
    seq = col.info()["last_seq"]
    indexes = col.info()["payload_indexes"]
    with pytest.raises(quiver.InvalidArgument, match=match):
        call(col)
    assert col.info()["last_seq"] == seq
    assert col.info()["payload_indexes"] == indexes
    assert_same_state(read_state(col), before)
    assert col.count(GOOD_FILTER) == sum(p["k"] == 1 for p, _ in before.values())
    db.close()
    db = quiver.connect(tmp_path)
    col = db.get_collection("c")
    assert_same_state(read_state(col), before)
    assert col.info()["last_seq"] == seq
    db.close()


def test_database_errors(tmp_path):
    db = quiver.connect(tmp_path)
    db.create_collection("c", 4)
    with pytest.raises(quiver.NotFound, match="'nope' does not exist"):
        db.get_collection("nope")
    with pytest.raises(quiver.NotFound, match="nope"):
        db.drop_collection("nope")
    with pytest.raises(quiver.InvalidArgument, match="already exists"):
        db.create_collection("c", 4)
    assert db.create_collection("c", 4, exist_ok=True) is db.get_collection("c")
    for kwargs, match in [({"name": "a/b", "dim": 4}, "name"),
                          ({"name": "", "dim": 4}, "name"),
                          ({"name": "d", "dim": 0}, "dim"),
                          ({"name": "d", "dim": 4, "metric": "hamming"}, "hamming"),
                          ({"name": "d", "dim": 4, "index": "LSH9"}, "LSH9"),
                          ({"name": "d", "dim": 4, "fsync": "sometimes"}, "fsync"),
                          ({"name": "d", "dim": 4, "segment_size": 0}, "segment_size")]:
        with pytest.raises(quiver.InvalidArgument, match=match):
            db.create_collection(**kwargs)
    assert db.list_collections() == ["c"]
    assert sorted(p.name for p in (tmp_path / "collections").iterdir()) == ["c"]
    col = db.get_collection("c")
    col.close()
    with pytest.raises(quiver.InvalidArgument, match="closed"):
        col.count()
    db.close()
    db = quiver.connect(tmp_path)
    assert db.list_collections() == ["c"]
    assert db.get_collection("c").count() == 0
    db.close()


def test_search_arrays_rejects_a_single_vector(tmp_path):
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", DIM, metric="l2")
    with pytest.raises(quiver.InvalidArgument, match="queries: expected a 2-D matrix"):
        col.search_arrays(np.zeros(DIM, np.float32))
    with pytest.raises(quiver.InvalidArgument, match="queries"):
        col.search_arrays(np.zeros((2, DIM + 1), np.float32))
    db.close()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_score_threshold_keeps_exactly_the_hits_at_least_as_good(tmp_path, metric):
    rng = np.random.default_rng(3)
    db = quiver.connect(tmp_path)
    col, _ = build(db, metric, rng, n=600, segment_size=250)  # sealed segments and a tail
    queries = rng.standard_normal((5, DIM)).astype(np.float32)
    full = col.search(queries, 20, params={"exact": True})
    t = float(np.median([h.score for row in full for h in row]))
    better = (lambda s: s >= t) if metric == "cosine" else (lambda s: s <= t)
    got = col.search(queries, 20, params={"exact": True}, score_threshold=t)
    assert got == [[h for h in row if better(h.score)] for row in full]
    assert 0 < sum(map(len, got)) < sum(map(len, full))
    arrs = col.search_arrays(queries, 20, params={"exact": True}, score_threshold=t)
    assert arrs.to_points() == got
    assert col.search(queries[0], 20, params={"exact": True}, score_threshold=t) == got[0]
    for bad in (float("inf"), "0.5", True):
        with pytest.raises(quiver.InvalidArgument, match="score_threshold"):
            col.search(queries[0], 5, score_threshold=bad)
    db.close()


def test_payload_updates_keep_vectors_survive_restart_and_reach_sealed_segments(tmp_path):
    rng = np.random.default_rng(8)
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", DIM, metric="cosine", segment_size=100)
    x = rng.standard_normal((250, DIM)).astype(np.float32)
    col.upsert(list(range(250)), x, [{"i": i, "tag": "t", "meta": {"a": 1, "b": 2}}
                                      for i in range(250)])
    col.flush()  # two sealed segments and a tail
    before = {p.id: p.vector for p in col.get(list(range(250)), with_vectors=True)}
    with pytest.raises(quiver.NotFound, match="no point with id 999; nothing was written"):
        col.set_payload({"tag": "lost"}, ids=[3, 999])
    assert col.set_payload({"tag": "u", "new": [1, 2]}, ids=[3, 150, 240]) == 3
    assert col.overwrite_payload({"only": 1}, ids=[4]) == 1
    assert col.delete_payload(["meta.a", "tag"], filter={"must": [{"key": "i", "range": {"lt": 3}}]}) == 3
    assert col.clear_payload(ids=[5, 5]) == 1
    assert col.set_payload({"x": 1}, filter={"must": [{"key": "i", "range": {"gte": 1000}}]}) == 0
    # into a nested object (Qdrant's set_payload key): merged there, created where missing
    assert col.set_payload({"c": 3, "a": 9}, ids=[10], key="meta") == 1
    assert col.set_payload({"z": True}, ids=[11, 12], key="meta.deep.er") == 2
    assert col.set_payload({"w": 0}, ids=[13], key="tag") == 1  # "t" is no object: replaced

    def check(c):
        got = {p.id: p for p in c.get(list(range(250)), with_vectors=True)}
        assert len(got) == 250 and len(c) == 250
        assert got[3].payload == {"i": 3, "tag": "u", "meta": {"a": 1, "b": 2}, "new": [1, 2]}
        assert got[4].payload == {"only": 1} and got[5].payload == {}
        assert got[0].payload == {"i": 0, "meta": {"b": 2}}
        assert got[7].payload == {"i": 7, "tag": "t", "meta": {"a": 1, "b": 2}}
        assert got[10].payload["meta"] == {"a": 9, "b": 2, "c": 3}
        assert got[11].payload["meta"] == {"a": 1, "b": 2, "deep": {"er": {"z": True}}}
        assert got[13].payload["tag"] == {"w": 0}
        for i in range(250):  # vectors bit for bit (cosine: stored normalised once)
            assert got[i].vector == before[i], i
        assert c.count({"must": [{"key": "tag", "match": {"value": "u"}}]}) == 3
        hits = c.search(x[150], 3, filter={"must": [{"key": "new", "match": {"any": [2]}}]})
        assert hits[0].id == 150
    check(col)
    db.close()
    col = quiver.connect(tmp_path).get_collection("c")  # WAL replay
    check(col)
    col.flush()
    check(col)
    with pytest.raises(quiver.InvalidArgument, match="exactly one of ids or filter"):
        col.set_payload({"a": 1})
    with pytest.raises(quiver.InvalidArgument, match=r"payload\.a"):
        col.set_payload({"a": float("inf")}, ids=[7])
    with pytest.raises(quiver.InvalidArgument, match="keys"):
        col.delete_payload("tag", ids=[7])
    for bad in ("a[].b", "", "a..b", 3):
        with pytest.raises(quiver.InvalidArgument, match="key"):
            col.set_payload({"a": 1}, ids=[7], key=bad)
    assert col.get([7])[0].payload["tag"] == "t"  # nothing written by the failures


def test_payload_update_by_filter_skips_points_that_stopped_matching(tmp_path, monkeypatch):
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", DIM, metric="l2")
    col.upsert([1, 2, 3], np.eye(3, DIM, dtype=np.float32),
               [{"tag": "a"}, {"tag": "b"}, {"tag": "a"}])
    # as if point 2 matched when the filter was evaluated and was rewritten before the update
    real = col._targets
    monkeypatch.setattr(col, "_targets", lambda ids, flt: [*real(ids, flt), 2])
    assert col.overwrite_payload({"x": 1}, filter={"must": [{"key": "tag", "match": {"value": "a"}}]}) == 2
    assert [p.payload for p in col.get([1, 2, 3])] == [{"x": 1}, {"tag": "b"}, {"x": 1}]
    db.close()


def test_scroll_in_the_order_of_a_payload_value(tmp_path):
    """order_by: by each point's smallest value (largest, descending), ties by id, across
    sealed segments and the tail, paged by start_from; points without a value left out."""
    db = quiver.connect(tmp_path)
    col = db.create_collection("o", 4, segment_size=8)
    rng = np.random.default_rng(0)
    prices = [5, 3.5, [9, 1], 3.5, None, "7", 2, 8, [4, 6], 0, 12, 3]
    payloads = [{"price": p, "at": f"2024-01-{i + 1:02d}T00:00:00Z"} if p is not None else
                {"at": "nope"} for i, p in enumerate(prices)]
    col.upsert(list(range(12)), rng.standard_normal((12, 4)).astype(np.float32), payloads)
    col.flush()  # one sealed segment of 8 and a tail
    col.delete([10])

    def ids(**kw):
        pts, nxt = col.scroll(with_payload=False, **kw)
        assert nxt is None
        return [(p.id, p.score) for p in pts]

    assert ids(order_by="price", limit=5) == [(9, 0.0), (2, 1.0), (6, 2.0), (11, 3.0), (1, 3.5)]
    assert ids(order_by={"key": "price", "start_from": 3.5}, limit=3) == [(1, 3.5), (3, 3.5),
                                                                         (8, 4.0)]
    assert ids(order_by={"key": "price", "direction": "desc"}, limit=3) == [(2, 9.0), (7, 8.0),
                                                                            (8, 6.0)]
    assert ids(order_by={"key": "price", "direction": "desc", "start_from": 3.5},
               filter={"must_not": [{"has_id": [1]}]}, limit=2) == [(3, 3.5), (11, 3.0)]
    # datetimes where the key holds no number ("at": ISO strings, one not a date)
    got = ids(order_by={"key": "at", "direction": "desc"}, limit=2)
    assert [i for i, _ in got] == [11, 9]
    got = ids(order_by={"key": "at", "start_from": "2024-01-05T00:00:00Z"}, limit=2)
    assert [i for i, _ in got] == [5, 6]
    for bad, field in (({"key": "price", "direction": "up"}, "order_by.direction"),
                       ({"key": "price", "start_from": "soon"}, "order_by.start_from"),
                       ({"field": "price"}, "order_by"), (7, "order_by")):
        with pytest.raises(quiver.InvalidArgument, match=field):
            col.scroll(order_by=bad)
    with pytest.raises(quiver.InvalidArgument, match="cursor"):
        col.scroll(order_by="price", cursor=3)
    with pytest.raises(quiver.InvalidArgument, match="64 bits"):
        col.scroll(order_by={"key": "price", "start_from": 10**400})
    # integers order exactly, past float precision, and come back as integers
    col.upsert([20, 21], rng.standard_normal((2, 4)).astype(np.float32),
               [{"big": 2**53}, {"big": 2**53 + 1}])  # a float key would tie them: id order
    pts, _ = col.scroll(order_by={"key": "big", "direction": "desc"}, with_payload=False)
    assert [(p.id, p.score) for p in pts] == [(21, 2**53 + 1), (20, 2**53)]
    assert type(pts[0].score) is int
    db.close()
