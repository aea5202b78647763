"""The joints every index and field plugs into: the spec grammar and registries, one
SearchParams, the planner's cost-model choices, named vector fields (embedded, REST, client)
and the thin client."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest
from _live_server import serve
from quiver.engine import planner
from quiver.engine.codecs import CODECS
from quiver.engine.index.registry import INDEX_TYPES, parse_index_spec
from quiver.engine.spec import SpecPart, parse_spec

import quiver
from quiver import InvalidArgument, SearchParams

# ---------------------------------------------------------------- spec grammar


@pytest.mark.parametrize(("spec", "parts"), [
    ("Flat", [("Flat", (), ())]),
    ("Flat,F16", [("Flat", (), ()), ("F", (16,), ())]),
    ("HNSW32,LVQ8", [("HNSW", (32,), ()), ("LVQ", (8,), ())]),
    ("IVF1024,Flat", [("IVF", (1024,), ()), ("Flat", (), ())]),
    ("IVF1024,PQ48x8,Refine(F16)", [("IVF", (1024,), ()), ("PQ", (48, 8), ()),
                                    ("Refine", (), (SpecPart("F", (16,), (), "F16"),))]),
    ("HNSW16,LeanVec(128,LVQ8,LVQ8)", [("HNSW", (16,), ()), ("LeanVec", (), (
        128, SpecPart("LVQ", (8,), (), "LVQ8"), SpecPart("LVQ", (8,), (), "LVQ8")))]),
    (" hnsw16 , lvq4x8 ", [("hnsw", (16,), ()), ("lvq", (4, 8), ())]),
])
def test_spec_grammar_parses(spec, parts):
    got = parse_spec(spec)
    assert [(p.name, p.numbers, p.args) for p in got] == parts
    assert got[0].text == spec.split(",")[0].strip()


@pytest.mark.parametrize(("spec", "match"), [
    ("", r"spec: expected a string"),
    (None, r"spec: expected a string"),
    ("HNSW16,", r"at character 7: the spec ends where a part was expected"),
    ("HNSW(16", r"missing '\)' after the arguments of HNSW"),
    ("16,F32", r"a number \(16\) where an index or codec name was expected"),
    ("HNSW16;F32", r"cannot parse 'HNSW16;F32'"),
    ("HNSW16,LeanVec(128,LVQ8", r"missing '\)' after the arguments of LeanVec"),
])
def test_spec_grammar_rejects(spec, match):
    with pytest.raises(InvalidArgument, match=match):
        parse_spec(spec)


@pytest.mark.parametrize(("spec", "match"), [
    ("NSG32,Flat", r"unknown index type .NSG32. in .NSG32,Flat.; accepted: Flat, HNSW<M>"),
    ("HNSW16,RaBitQ(4)", r"unknown codec 'RaBitQ\(4\)'; accepted: F32"),
    ("HNSW16,PQ48x8", r"PQ48: m=48 does not divide the dimension 8"),
    ("HNSW16,PQ4x8", r"PQ codes are searched by IVF \(e.g. IVF1024,PQ4x8\)"),
    ("HNSW16x2", r"write HNSW<M>"),
    ("Flat16", r"Flat takes no parameters"),
    ("HNSW16,F32,Refine(F16)", r"Refine\(F16\) is not available"),
    ("Flat,F32,Refine(F32)", r"Flat does not take 'Refine\(F32\)'.*accepts after the codec: none"),
    ("HNSW16,LVQ8,Refine(F32,F16)", r"Refine takes one codec"),
    ("HNSW16,F16(3)", r"codec F16 takes no arguments"),
    ("Flat,PQ4x8", r"PQ codes are searched by IVF \(e.g. IVF1024,PQ4x8\); Flat takes row"),
])
def test_unknown_parts_name_the_part_and_what_is_accepted(spec, match):
    with pytest.raises(InvalidArgument, match=match):
        quiver.index(spec, dim=8)


def test_registries_build_every_entry():
    assert {"FLAT", "HNSW"} <= set(INDEX_TYPES)
    assert {"F32", "F16", "SQ8", "LVQ8", "FLAT"} <= set(CODECS)
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    for spec in ("Flat", "Flat,F16", "Flat,Flat", "HNSW8", "HNSW8,F16", "HNSW8,SQ8",
                 "HNSW12,LVQ8", "HNSW8,LVQ8,Refine(F32)", "hnsw8,flat"):
        idx = quiver.index(spec, dim=8, metric="l2")
        assert isinstance(idx, quiver.Index) and idx.needs_training in (False, True)
        if idx.needs_training:
            idx.train(x)
            assert not idx.needs_training
        idx.add(x)
        _, ids = idx.search(x[:3], k=1, exact=True)
        assert (ids[:, 0] == np.arange(3)).all(), spec
        usage = idx.memory_usage()
        assert all(isinstance(v, int) and v >= 0 for v in usage.values())
        assert sum(usage.values()) >= x.shape[0] * 8, spec  # at least one byte per dimension
    assert parse_index_spec("HNSW32,LVQ8").index.numbers == (32,)


def test_memory_usage_sums_to_the_resident_footprint():
    x = np.random.default_rng(1).standard_normal((2000, 16)).astype(np.float32)
    flat = quiver.index("Flat", 16)
    flat.add(x)
    assert flat.memory_usage() == {"vectors": 2000 * 16 * 4, "ids": 2000 * 8, "id_map": 0}
    hnsw = quiver.index("HNSW8,LVQ8", 16)
    hnsw.add(x)
    u = hnsw.memory_usage()
    assert u["vectors"] == 2000 * (16 + 12)  # uint8 codes + 3 float32 terms per vector
    assert u["codec"] == 16 * 4  # the codec's trained mean
    assert u["rerank_vectors"] == 2000 * 16 * 4  # the float32 copy kept for re-ranking counts
    assert u["graph"] >= 2000 * 16 * 4 and u["ids"] == 2000 * 8 and u["id_map"] == 0
    lean = quiver.index("HNSW8,LeanVec(8,LVQ4,LVQ8)", 16)
    lean.add(x)
    state = 16 * 8 * 4 + 16 * 4 + 8 * 4  # the projection and the two means
    if lean.codec.int8_queries:  # and the int8 projection: 4 row groups x 16 columns, sums, steps
        state += 4 * 4 * 16 + 2 * 16 * 4
    assert lean.memory_usage()["codec"] == state
    lean.search(x[:2], 3)  # the int8 projection is made now, and was counted before
    assert lean.memory_usage()["codec"] == state
    if lean.codec.int8_queries:
        assert state == 16 * 8 * 4 + 16 * 4 + 8 * 4 + sum(a.nbytes for a in lean.codec._p8)
    custom = quiver.index("HNSW8", 16)
    custom.add(x[:10], ids=np.arange(10) * 7)  # ids other than positions need a dictionary
    assert custom.memory_usage()["id_map"] > 0


# ---------------------------------------------------------------- SearchParams


def test_search_params_one_type():
    p = SearchParams.parse({"ef": 40, "rerank": False}, exact=True)
    assert (p.ef, p.rerank, p.exact, p.nprobe) == (40, False, True, None)
    assert SearchParams.parse(p) == p and SearchParams.parse(None) == SearchParams()
    assert p.to_dict() == {"ef": 40, "rerank": False, "exact": True}
    assert SearchParams(ef=4).beam(10) == 10 and SearchParams().beam(5) == 64
    for bad, match in [({"eff": 1}, r"unknown search parameter\(s\) \['eff'\]; known: ef, "
                                     r"nprobe, rerank, exact"),
                       ({"ef": 0}, r"params.ef: expected a positive integer"),
                       ({"ef": True}, r"params.ef"), ({"nprobe": 1.5}, r"params.nprobe"),
                       ({"exact": "yes"}, r"params.exact: expected true or false"),
                       ("ef=3", r"params: expected a dict")]:
        with pytest.raises(InvalidArgument, match=match):
            SearchParams.parse(bad)


def test_keyword_params_are_remembered_but_still_checked():
    """Keywords parse once into one shared (frozen) instance; a value that hashes like a
    remembered one but is of another type (True and 1, 1.0 and 1) is still refused, and an
    unhashable one gets the checks' own error."""
    a = SearchParams.parse(None, ef=1, nprobe=np.int64(3))
    assert a is SearchParams.parse(None, ef=1, nprobe=np.int64(3)) and (a.ef, a.nprobe) == (1, 3)
    for bad, match in [({"ef": True}, r"params.ef: expected a positive integer, got True"),
                       ({"nprobe": 3.0}, r"params.nprobe"), ({"exact": 1}, r"params.exact"),
                       ({"ef": [1]}, r"params.ef: expected a positive integer, got \[1\]"),
                       ({"eff": 1}, r"unknown search parameter")]:
        for _ in range(2):  # the second time from the memo, if it had remembered it
            with pytest.raises(InvalidArgument, match=match):
                SearchParams.parse(None, **bad)


# ---------------------------------------------------------------- planner


@pytest.fixture(scope="module")
def planned_index():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6000, 32)).astype(np.float32)
    idx = quiver.index("HNSW12", 32, "l2", ef_construction=64)
    idx.add(x)
    return idx, x, rng.standard_normal((5, 32)).astype(np.float32)


@pytest.mark.parametrize(("share", "expected"), [
    (0.002, "exact"), (0.05, "exact"), (0.2, "filtered-traversal"), (0.6, "traversal"),
    (1.0, "traversal")])
def test_planner_choice_matches_its_cost_model(planned_index, share, expected):
    idx, x, q = planned_index
    params = SearchParams(ef=8)
    allowed = np.flatnonzero(np.random.default_rng(4).random(len(x)) < share)
    costs = idx.strategy_costs(len(allowed), len(x), 5, params, filtered=share < 1.0)
    predicted = min(costs, key=costs.get)
    chosen = planner.choose(idx, len(allowed), len(x), 5, params, share < 1.0)
    assert chosen.strategy == predicted == expected, costs
    _, got, info = idx.search(q, 5, allowed=allowed if share < 1 else None, params=params,
                              explain=True)
    assert info["strategy"] == expected and info["allowed"] == len(allowed)
    assert set(info["estimated_us_per_query"]) == set(costs)
    assert np.isin(got[got >= 0], allowed).all()
    # exact=True always scans; the estimate for it is still reported
    _, _, info = idx.search(q, 5, allowed=allowed, params={"exact": True}, explain=True)
    assert info["strategy"] == "exact" and "exact" in info["estimated_us_per_query"]


def test_planner_prices_two_hop_out_below_its_recall_envelope(planned_index):
    idx = planned_index[0]
    costs = idx.strategy_costs(300, 6000, 10, SearchParams(ef=1), filtered=True)
    assert costs["filtered-traversal"] == float("inf")  # 5% < the 8% envelope
    assert planner.choose(idx, 300, 6000, 10, SearchParams(ef=1), True).strategy != \
        "filtered-traversal"


def test_collection_plans_per_segment_from_the_field_index(tmp_path):
    rng = np.random.default_rng(5)
    with quiver.connect(tmp_path) as db:
        col = db.create_collection("p", dim=32, metric="l2", index="HNSW12",
                                   ef_construction=64, segment_size=100_000)
        x = rng.standard_normal((6000, 32)).astype(np.float32)
        col.upsert(list(range(6000)), x, [{"g": i % 50} for i in range(6000)])
        col.create_payload_index("g", "integer")
        col.flush()
        for flt, expected in [({"must": [{"key": "g", "match": {"value": 3}}]}, "exact"),
                              ({"must": [{"key": "g", "range": {"lt": 10}}]}, "filtered-traversal"),
                              ({"must": [{"key": "g", "range": {"lt": 35}}]}, "traversal"),
                              (None, "traversal")]:
            hits, plan = col.search(x[0], 5, filter=flt, params={"ef": 8}, explain=True)
            (sealed,) = [p for p in plan if p["sealed"]]
            costs = sealed["estimated_us_per_query"]
            assert sealed["strategy"] == expected == min(costs, key=lambda s: costs[s] or 1e300)


# ---------------------------------------------------------------- named vector fields

FIELDS = {"text": {"dim": 8, "metric": "cosine", "index": "HNSW8,F32"},
          "image": {"dim": 4, "metric": "ip", "index": "HNSW8,LVQ8"}}


def _named_data(seed: int = 7, n: int = 400):
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((n, 8)).astype(np.float32)
    image = rng.standard_normal((n, 4)).astype(np.float32)
    has_image = rng.random(n) < 0.6
    return text, image, has_image


def _brute(x, q, metric, k):
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q)
    return np.argsort(-(x @ q), kind="stable")[:k]


def _check_named(col, text, image, has_image, ids):
    """Every field answers from exactly the points that have it, best first."""
    q_text, q_image = text[3] + 0.01, image[5] + 0.01
    got = [p.id for p in col.search(q_text, 5, using="text", params={"exact": True})]
    assert got == [ids[i] for i in _brute(text, q_text, "cosine", 5)]
    rows = np.flatnonzero(has_image)
    got = [p.id for p in col.search(q_image, 5, using="image", params={"exact": True})]
    assert got == [ids[rows[i]] for i in _brute(image[rows], q_image, "ip", 5)]
    arrs = col.search_arrays(np.stack([q_image, q_image]), 5, using="image",
                             params={"exact": True})
    assert arrs.ids[0].tolist() == got and arrs.counts.tolist() == [5, 5]
    # a point without the field is never returned by that field's searches
    everything = col.search_arrays(image[:1], len(ids), using="image", params={"exact": True})
    assert sorted(everything.ids[0][: everything.counts[0]].tolist()) == \
        sorted(ids[i] for i in rows)
    (p,) = col.get([ids[int(np.flatnonzero(~has_image)[0])]], with_vectors=True)
    assert set(p.vector) == {"text"}
    (p,) = col.get([ids[int(rows[0])]], with_vectors=True)
    assert set(p.vector) == {"text", "image"}
    np.testing.assert_allclose(p.vector["image"], image[rows[0]], rtol=1e-5)


def test_named_fields_embedded_restart_and_snapshot(tmp_path):
    text, image, has_image = _named_data()
    ids = list(range(1000, 1000 + len(text)))
    db = quiver.connect(tmp_path / "db")
    col = db.create_collection("docs", vectors=FIELDS, segment_size=150)
    assert col.named and col.info()["vectors"]["image"]["index"] == "HNSW8,LVQ8"
    half = len(ids) // 2
    # columnar with None for missing vectors, then points with dicts that leave fields out
    col.upsert(ids=ids[:half], vectors={"text": text[:half],
                                        "image": [image[i] if has_image[i] else None
                                                  for i in range(half)]})
    col.upsert(points=[{"id": ids[i], "vector": {"text": text[i].tolist(),
                                                 **({"image": image[i].tolist()}
                                                    if has_image[i] else {})}}
                       for i in range(half, len(ids))])
    _check_named(col, text, image, has_image, ids)  # sealed segments and the appendable tail
    col.flush()
    col.wait_indexed()
    assert all(s["sealed"] or s["points"] == 0 for s in col.info()["segments"])
    _check_named(col, text, image, has_image, ids)
    # a payload update rewrites the rows with their stored vectors, fields and gaps kept
    col.set_payload({"seen": True}, ids=ids[:20])
    _check_named(col, text, image, has_image, ids)
    snap = col.snapshot(tmp_path / "snaps")
    db.close()
    db = quiver.connect(tmp_path / "db")  # replays the WAL tail of the payload update
    _check_named(db.get_collection("docs"), text, image, has_image, ids)
    restored = db.restore_snapshot(snap, "copy")
    _check_named(restored, text, image, has_image, ids)
    db.close()


def test_named_fields_bad_input(tmp_path):
    with quiver.connect(tmp_path) as db:
        for kwargs, match in [
            ({"vectors": {"a b": {"dim": 3}}}, r"'a b' is not a valid vector name"),
            ({"vectors": {"t": {"dim": 0}}}, r"vectors\['t'\]\.dim: expected a positive integer"),
            ({"vectors": {"t": {"dim": 3, "index": "HNSW8,PQ4"}}}, r"vectors\['t'\]\.index: .*PQ4"),
            ({"vectors": {"t": {"dim": 3, "size": 3}}}, r"unknown key\(s\) \['size'\]"),
            ({"vectors": {"t": {"dim": 3}}, "dim": 3}, r"not both"),
            ({}, r"dim or vectors: one is required"),
        ]:
            with pytest.raises(InvalidArgument, match=match):
                db.create_collection("bad", **kwargs)
        assert db.list_collections() == []
        col = db.create_collection("docs", vectors=FIELDS)
        for call, match in [
            (lambda: col.upsert([1], np.ones((1, 8))), r"named vectors .*pass a dict"),
            (lambda: col.upsert([1], {"txt": np.ones((1, 8))}), r"no vector field 'txt'"),
            (lambda: col.upsert([1], {"text": np.ones((1, 4))}), r"vectors\['text'\]: wrong dim"),
            (lambda: col.upsert([1, 2], {"text": [np.ones(8)]}), r"got 1 vectors for 2 ids"),
            (lambda: col.upsert([1, 2], {"text": (np.ones((1, 8)), [2])}), r"rows must be"),
            (lambda: col.search(np.ones(8), 3), r"using: this collection has named vectors"),
            (lambda: col.search(np.ones(8), 3, using="txt"), r"using: no vector field 'txt'"),
            (lambda: col.search(np.ones(8), 3, using="image"), r"queries|vector: wrong dim"),
        ]:
            with pytest.raises(InvalidArgument, match=match):
                call()
        assert len(col) == 0
        # a point may have no vector in some fields, or none at all
        col.upsert([1, 2], {"text": (np.ones((1, 8)), [1])})
        assert [p.id for p in col.search(np.ones(8), 3, using="text")] == [2]
        assert col.search(np.ones(4), 3, using="image") == []


def test_single_vector_form_is_the_default_field(tmp_path):
    with quiver.connect(tmp_path) as db:
        col = db.create_collection("one", dim=4, metric="l2", index="Flat")
        col.upsert([1, 2], np.eye(4, dtype=np.float32)[:2])
        assert not col.named and col.dim == 4 and col.info()["index"] == "Flat"
        assert [p.id for p in col.search(np.eye(4)[1], 1)] == [2]
        assert [p.id for p in col.search(np.eye(4)[1], 1, using="")] == [2]
        assert col.get([1], with_vectors=True)[0].vector == [1.0, 0.0, 0.0, 0.0]
        with pytest.raises(InvalidArgument, match=r"using: no vector field 'x'"):
            col.search(np.eye(4)[1], 1, using="x")


def test_sealing_trains_each_field_index_on_its_own_vectors(tmp_path):
    rng = np.random.default_rng(9)
    with quiver.connect(tmp_path) as db:
        col = db.create_collection("t", vectors={"a": {"dim": 6, "metric": "l2",
                                                        "index": "HNSW8,SQ8"}})
        x = (rng.standard_normal((500, 6)) * np.arange(1, 7)).astype(np.float32)
        col.upsert(list(range(500)), {"a": x})
        col.flush()
        (seg,) = [s for s in col._segments if s.sealed]
        codec = seg.fields["a"].index.codec
        assert codec.trained
        np.testing.assert_allclose(codec.lo, x.min(axis=0), rtol=1e-6)


# ---------------------------------------------------------------- REST and client


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "joints")


def test_named_fields_over_rest_and_client(server):
    text, image, has_image = _named_data(seed=11, n=120)
    ids = list(range(len(text)))
    http = httpx.Client(base_url=server.url, timeout=60)
    r = http.put("/collections/rest", json={"vectors": FIELDS, "segment_size": 50})
    assert r.status_code == 200, r.text
    assert set(r.json()["result"]["vectors"]) == {"text", "image"}
    pts = [{"id": i, "vector": {"text": text[i].tolist(),
                                **({"image": image[i].tolist()} if has_image[i] else {})}}
           for i in range(60)]
    assert http.put("/collections/rest/points", json={"points": pts}).status_code == 200
    with quiver.Client(server.url) as client:
        col = client.get_collection("rest")
        col.upsert(ids=ids[60:], vectors={"text": text[60:], "image": [
            image[i] if has_image[i] else None for i in range(60, len(ids))]})  # binary frame
        _check_named(col, text, image, has_image, ids)
        col.flush()
        _check_named(col, text, image, has_image, ids)
        hits, plan = col.search(image[0], 3, using="image", explain=True)
        assert plan and {p["field"] for p in plan} == {"image"}
    body = {"vector": image[0].tolist(), "limit": 3, "using": "image", "params": {"ef": 16}}
    r = http.post("/collections/rest/points/search", json=body)
    assert r.status_code == 200 and len(r.json()["result"]) == 3
    for bad, status, match in [
        ({**body, "using": "nope"}, 400, "no vector field 'nope'"),
        ({**body, "using": None}, 400, "using: this collection has named vectors"),
        ({**body, "params": {"eff": 3}}, 422, "params.eff"),
        ({**body, "params": {"ef": 0}}, 422, "params.ef"),
    ]:
        r = http.post("/collections/rest/points/search", json=bad)
        assert r.status_code == status and match in r.json()["error"]["message"], r.text
    r = http.put("/collections/rest2", json={"vectors": {"t": {"dim": 3, "index": "HNSW8,PQ4"}}})
    assert r.status_code == 400 and "PQ4" in r.json()["error"]["message"]
    assert http.get("/collections/rest2").status_code == 404
    http.close()


def test_client_imports_no_numba():
    code = ("import quiver.client, sys; assert 'numba' not in sys.modules, 'numba imported'; "
            "import quiver; quiver.Client; assert 'numba' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
