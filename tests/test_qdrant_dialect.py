"""Qdrant's REST dialect: the real ``qdrant-client`` (REST mode) against a real ``quiver serve``.

The client's own pydantic models parse every answer, so a test passing here means an
application written for Qdrant gets the shapes it expects. Small data (40 points, dim 8) on
Flat and HNSW indexes the suite already compiles.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime

import httpx
import numpy as np
import pytest
from _live_server import serve

qdrant_client = pytest.importorskip("qdrant_client")
from qdrant_client import QdrantClient  # noqa: E402
from qdrant_client import models as m  # noqa: E402
from qdrant_client.http.exceptions import UnexpectedResponse  # noqa: E402

DIM, N = 8, 40
UUIDS = [str(uuid.UUID(int=0xABC0 + i)) for i in range(4)]
KEY, RO_KEY = "qdrant-dialect-key", "qdrant-dialect-read-only"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "qdrant", api_keys=KEY, read_only_keys=RO_KEY)


@pytest.fixture(scope="module")
def client(server):
    with pytest.warns(UserWarning, match="insecure"):  # a key over plain HTTP, on 127.0.0.1
        c = QdrantClient(url=server.url, api_key=KEY, timeout=300, https=False)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"api-key": KEY}, timeout=300) as h:
        yield h


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    payloads = [{"color": ["red", "green", "blue"][i % 3], "n": i, "tags": ["t"] * (i % 2),
                 **({"note": None} if i % 5 == 0 else {})} for i in range(N)]
    return x, payloads


def raises(status: int, *words: str):
    """The client's exception for an HTTP error, carrying the server's message."""

    class Check:
        def __enter__(self):
            return self

        def __exit__(self, typ, exc, tb):
            assert isinstance(exc, UnexpectedResponse), exc
            assert exc.status_code == status, str(exc)
            msg = exc.structured()["status"]["error"]
            for w in words:
                assert w.lower() in msg.lower() and w.lower() in str(exc).lower(), (w, str(exc))
            return True

    return Check()


def same_embedded_and_remote(server, tmp_path, scenario):
    """What ``scenario(db)`` returns on an embedded database, checked equal over quiver.Client."""
    import quiver

    with quiver.connect(tmp_path / "db", optimizer=False) as db:
        embedded = scenario(db)
    with quiver.Client(server.url, api_key=KEY) as remote:
        assert scenario(remote) == embedded
    return embedded


def cosine_top(x, q, k, allowed=None):
    xs = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xs @ (q / np.linalg.norm(q))
    ids = np.arange(len(x)) if allowed is None else np.asarray(sorted(allowed))
    order = ids[np.argsort(-s[ids], kind="stable")][:k]
    return order.tolist(), s[order]


# --- service and collections -------------------------------------------------------------------


def test_service_and_collections(client, http, server):
    info = client.info()
    assert info.title.startswith("quiver") and info.version.startswith("1.")
    for path in ("/healthz", "/readyz", "/livez"):
        assert httpx.get(server.url + path).status_code == 200  # open without a key, as Qdrant's

    assert client.create_collection("docs", vectors_config=m.VectorParams(
        size=DIM, distance=m.Distance.COSINE), hnsw_config=m.HnswConfigDiff(m=0))
    assert client.create_collection("media", vectors_config={
        "text": m.VectorParams(size=DIM, distance=m.Distance.DOT),
        "image": m.VectorParams(size=4, distance=m.Distance.EUCLID, hnsw_config=m.HnswConfigDiff(m=0))},
        hnsw_config=m.HnswConfigDiff(m=8, ef_construct=64))
    assert client.create_collection("sq", vectors_config=m.VectorParams(
        size=DIM, distance=m.Distance.DOT), quantization_config=m.ScalarQuantization(
        scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, always_ram=True)))
    assert client.collection_exists("docs") and not client.collection_exists("nope")
    assert {c.name for c in client.get_collections().collections} >= {"docs", "media", "sq"}

    media = client.get_collection("media")  # parsed by the client's CollectionInfo
    assert media.status == m.CollectionStatus.GREEN and media.points_count == 0
    vecs = media.config.params.vectors
    assert vecs["text"].distance == m.Distance.DOT and vecs["text"].hnsw_config.m == 8
    assert vecs["image"].size == 4 and vecs["image"].hnsw_config.m == 0
    assert media.config.hnsw_config.ef_construct == 64
    sq = client.get_collection("sq")
    assert sq.config.params.vectors.quantization_config.scalar.type == m.ScalarType.INT8
    # Quiver's own view beside it: the index specs the Qdrant settings became
    raw = http.get("/collections/media").json()
    assert raw["status"] == "ok" and {"result", "time"} <= set(raw)
    assert {n: f["index"] for n, f in raw["result"]["vectors"].items()} == {
        "text": "HNSW8,F32", "image": "Flat,F32"}
    assert http.get("/collections/sq").json()["result"]["index"] == "HNSW16,SQ8"

    # Quiver's extension inside Qdrant's form: an index spec per field
    ext = {"vectors": {"size": 4, "distance": "Dot", "index": "Flat,F16"}}
    assert http.put("/collections/ext", json=ext).json()["result"] is True
    assert client.get_collection("ext").config.params.vectors.datatype == m.Datatype.FLOAT16
    # and collections made in Quiver's form read as Qdrant's (codecs Qdrant lacks: no quantization)
    assert "dim" in http.put("/collections/lvq", json={"dim": DIM, "index": "HNSW32,LVQ8"}).json()["result"]
    lvq = client.get_collection("lvq").config
    assert lvq.params.vectors.hnsw_config.m == 32 and lvq.params.vectors.quantization_config is None
    client.delete_collection("lvq")

    with raises(400, "Manhattan"):
        client.create_collection("man", vectors_config=m.VectorParams(size=4, distance=m.Distance.MANHATTAN))
    with raises(400, "product", "IVF"):
        client.create_collection("pq", vectors_config=m.VectorParams(size=4, distance=m.Distance.DOT),
                                 quantization_config=m.ProductQuantization(
                                     product=m.ProductQuantizationConfig(compression=m.CompressionRatio.X16)))
    with raises(400, "binary"):
        client.create_collection("bq", vectors_config=m.VectorParams(size=4, distance=m.Distance.DOT),
                                 quantization_config=m.BinaryQuantization(binary=m.BinaryQuantizationConfig()))
    with raises(409, "exists"):
        client.create_collection("docs", vectors_config=m.VectorParams(size=4, distance=m.Distance.DOT))
    with raises(404, "nope"):
        client.get_collection("nope")
    assert not client.collection_exists("man")
    assert client.update_collection("docs", optimizers_config=m.OptimizersConfigDiff(indexing_threshold=0))
    with raises(400, "alias"):
        client.update_collection("docs", hnsw_config=m.HnswConfigDiff(m=32))
    assert client.delete_collection("ext") and not client.collection_exists("ext")


# --- points ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs(client, data):
    """"docs" filled: 36 integer ids as PointStructs and a Batch, 4 UUIDs."""
    x, payloads = data
    client.collection_exists("docs") or client.create_collection(
        "docs", vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE),
        hnsw_config=m.HnswConfigDiff(m=0))
    res = client.upsert("docs", points=[m.PointStruct(id=i, vector=x[i].tolist(), payload=payloads[i])
                                        for i in range(20)])
    assert res.status == m.UpdateStatus.COMPLETED
    client.upsert("docs", points=m.Batch(ids=list(range(20, 36)), vectors=x[20:36].tolist(),
                                         payloads=payloads[20:36]), wait=False)
    client.upsert("docs", points=[m.PointStruct(id=u, vector=x[36 + j].tolist(), payload=payloads[36 + j])
                                  for j, u in enumerate(UUIDS)])
    client.create_payload_index("docs", "color", field_schema=m.PayloadSchemaType.KEYWORD)
    client.create_payload_index("docs", "n", field_schema=m.IntegerIndexParams(
        type=m.IntegerIndexType.INTEGER, lookup=True, range=True))
    return x, payloads


def test_points(client, http, docs):
    x, payloads = docs
    assert client.count("docs", exact=True).count == N
    got = client.retrieve("docs", ids=[3, UUIDS[1], 999], with_payload=True, with_vectors=True)
    assert [p.id for p in got] == [3, UUIDS[1]]
    assert got[0].payload == payloads[3]
    np.testing.assert_allclose(got[0].vector, x[3] / np.linalg.norm(x[3]), atol=1e-6)
    assert client.retrieve("docs", ids=[3], with_payload=["n"])[0].payload == {"n": 3}
    assert client.get_collection("docs").payload_schema["color"].points == N

    # scroll: offset is the next point id; integers first, then UUIDs
    seen, offset = [], None
    while True:
        page, offset = client.scroll("docs", limit=15, offset=offset, with_payload=False)
        seen += [p.id for p in page]
        if offset is None:
            break
    assert seen == [*range(36), *sorted(UUIDS)]
    red, _ = client.scroll("docs", scroll_filter=m.Filter(must=[m.FieldCondition(
        key="color", match=m.MatchValue(value="red"))]), limit=100)
    assert [p.id for p in red] == [i for i in range(36) if i % 3 == 0] + [UUIDS[0], UUIDS[3]]
    ext = {i: UUIDS[i - 36] if i >= 36 else i for i in range(N)}
    ordered, nxt = client.scroll("docs", order_by="n", limit=4, with_payload=["n"])
    assert [p.id for p in ordered] == [ext[i] for i in range(4)] and nxt is None
    assert [p.order_value for p in ordered] == [0, 1, 2, 3]
    down, _ = client.scroll("docs", order_by=m.OrderBy(key="n", direction=m.Direction.DESC,
                                                       start_from=10), limit=3)
    assert [p.id for p in down] == [10, 9, 8]
    r = http.post("/collections/docs/points/scroll", json={"order_by": {"key": "n",
                                                                      "direction": "up"}})
    assert r.status_code == 400 and "order_by.direction" in r.json()["status"]["error"]

    # payload edits, by ids and by filter (on points 30-33, which the query filters leave out)
    client.set_payload("docs", payload={"extra": 1}, points=[30, 31])
    client.overwrite_payload("docs", payload={"only": True}, points=[32])
    client.delete_payload("docs", keys=["tags"], points=m.Filter(must=[m.HasIdCondition(has_id=[31])]))
    client.clear_payload("docs", points_selector=m.PointIdsList(points=[33]))
    p = {r.id: r.payload for r in client.retrieve("docs", ids=[30, 31, 32, 33])}
    assert p[31] == {k: v for k, v in {**payloads[31], "extra": 1}.items() if k != "tags"}
    assert p[30] == {**payloads[30], "extra": 1} and p[32] == {"only": True} and p[33] == {}

    # wrong dimension: a 400 whose message the client's exception carries
    with raises(400, "dimension"):
        client.upsert("docs", points=[m.PointStruct(id=100, vector=[1.0, 2.0, 3.0])])
    with raises(404, "missing"):
        client.upsert("missing", points=[m.PointStruct(id=1, vector=[1.0] * DIM)])
    assert client.count("docs").count == N


def test_query(client, http, docs):
    x, payloads = docs
    q = x[7] + 0.1
    exact = m.SearchParams(exact=True)
    hits = client.query_points("docs", query=q.tolist(), limit=5, search_params=exact,
                               with_payload=False).points
    want, scores = cosine_top(x, q, 5)
    ext = {i: UUIDS[i - 36] if i >= 36 else i for i in range(N)}
    assert [h.id for h in hits] == [ext[i] for i in want]
    np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-5)
    assert hits[0].payload is None and hits[0].vector is None

    # offset, score_threshold, with_payload keys, with_vector, hnsw_ef
    page = client.query_points("docs", query=q.tolist(), limit=2, offset=3, with_payload=["n"],
                               with_vectors=True, search_params=m.SearchParams(hnsw_ef=32)).points
    assert [h.id for h in page] == [ext[i] for i in want[3:5]]
    assert page[0].payload == {"n": payloads[want[3]]["n"]} and len(page[0].vector) == DIM
    thr = float(scores[2]) - 1e-4
    assert len(client.query_points("docs", query=q.tolist(), limit=10, score_threshold=thr).points) == 3

    # filters: match value / any / except, range, has_id, is_empty, is_null, nested clauses
    flt = m.Filter(must=[m.FieldCondition(key="color", match=m.MatchAny(any=["red", "blue"])),
                         m.FieldCondition(key="n", range=m.Range(gte=3, lt=30))],
                   must_not=[m.HasIdCondition(has_id=[6, 9])],
                   should=[m.FieldCondition(key="n", match=m.MatchExcept(**{"except": [12]})),
                           m.IsNullCondition(is_null=m.PayloadField(key="note"))])
    allowed = {i for i in range(3, 30) if i % 3 != 1 and i not in (6, 9, 12)}
    hits = client.query_points("docs", query=q.tolist(), query_filter=flt, limit=N).points
    assert {h.id for h in hits} == allowed
    empty = m.Filter(must=[m.IsEmptyCondition(is_empty=m.PayloadField(key="tags")),
                           m.FieldCondition(key="n", range=m.Range(lt=30))],
                     must_not=[m.Filter(should=[m.FieldCondition(key="color",
                                                                 match=m.MatchValue(value="red"))])])
    hits = client.query_points("docs", query=q.tolist(), query_filter=empty, limit=N).points
    assert {h.id for h in hits} == {i for i in range(30) if i % 2 == 0 and i % 3 != 0}

    # min_should (at least 2 of 3) and match text (a substring, as Qdrant without a text index)
    two = m.Filter(min_should=m.MinShould(min_count=2, conditions=[
        m.FieldCondition(key="color", match=m.MatchText(text="re")),  # red, green
        m.FieldCondition(key="n", range=m.Range(lt=10)),
        m.IsEmptyCondition(is_empty=m.PayloadField(key="tags"))]), must=[
        m.FieldCondition(key="n", range=m.Range(lt=30))])
    want2 = {i for i in range(30) if (i % 3 != 2) + (i < 10) + (i % 2 == 0) >= 2}
    assert {h.id for h in client.query_points("docs", query=q.tolist(), query_filter=two,
                                              limit=N).points} == want2
    assert client.count("docs", count_filter=two).count == len(want2)

    # by point id: its stored vector, the point itself left out
    by_id = client.query_points("docs", query=7, limit=3, search_params=exact).points
    want7, _ = cosine_top(x, x[7], 4)
    assert [h.id for h in by_id] == [ext[i] for i in want7[1:]]
    with raises(404, "12345"):
        client.query_points("docs", query=12345)
    with raises(400, "dimension"):
        client.query_points("docs", query=[1.0, 2.0])

    batch = client.query_batch_points("docs", requests=[
        m.QueryRequest(query=q.tolist(), limit=3, params=exact),
        m.QueryRequest(query=x[0].tolist(), limit=2, params=exact, with_payload=True),
        m.QueryRequest(query=UUIDS[0], limit=1, filter=m.Filter(must=[m.HasIdCondition(has_id=[0, 1])]))])
    assert [[h.id for h in r.points] for r in batch][:2] == [[ext[i] for i in want[:3]],
                                                             [ext[i] for i in cosine_top(x, x[0], 2)[0]]]
    assert batch[1].points[0].payload == payloads[0] and len(batch[2].points) == 1

    # recommend (average vector; example ids left out), also as the legacy route
    xs = x / np.linalg.norm(x, axis=1, keepdims=True)
    pos = (xs[3] + xs[5]) / 2
    rec = m.RecommendQuery(recommend=m.RecommendInput(positive=[3, x[5].tolist()], negative=[7]))
    hits = client.query_points("docs", query=rec, limit=4, search_params=exact).points
    others = set(range(N)) - {3, 7}
    assert [h.id for h in hits] == [ext[i] for i in cosine_top(x, 2 * pos - xs[7], 4, others)[0]]
    legacy = http.post("/collections/docs/points/recommend", json={
        "positive": [3], "limit": 2, "params": {"exact": True}}).json()["result"]
    assert [m.ScoredPoint(**h).id for h in legacy] == [ext[i] for i in cosine_top(
        x, x[3], 2, set(range(N)) - {3})[0]]
    # best_score and sum_scores: every point scored against every example (N < 64: all of
    # them are candidates, so the answer is exact)
    x5 = x[5] / np.linalg.norm(x[5])
    sp, sn = xs @ np.stack([xs[3], x5]).T, xs @ xs[[7]].T
    sig = lambda v: 0.5 * (v / (1 + np.abs(v)) + 1)  # noqa: E731
    for strategy, want_s in (("best_score", np.where(sp.max(1) > sn.max(1), sig(sp.max(1)),
                                                     -sig(sn.max(1)))),
                             ("sum_scores", sp.sum(1) - sn.sum(1))):
        rec = m.RecommendQuery(recommend=m.RecommendInput(positive=[3, x[5].tolist()],
                                                          negative=[7], strategy=strategy))
        hits = client.query_points("docs", query=rec, limit=5, with_payload=["n"]).points
        order = sorted(others, key=lambda i: -want_s[i])[:5]
        assert [h.id for h in hits] == [ext[i] for i in order], strategy
        np.testing.assert_allclose([h.score for h in hits], want_s[order], rtol=1e-5, atol=1e-6)
        assert hits[0].payload == {"n": order[0]}
    only_neg = m.RecommendQuery(recommend=m.RecommendInput(negative=[7], strategy="best_score"))
    far = client.query_points("docs", query=only_neg, limit=3).points
    assert [h.id for h in far] == [ext[i] for i in sorted(set(range(N)) - {7},
                                                         key=lambda i: sn[i, 0])[:3]]
    # a number too large for a float, or for 64 bits: a 400, never a 500 (orjson, geo)
    for cond, status in (({"values_count": {"gt": -10**30}}, 400), ({"range": {"gt": -10**30}}, 400),
                         ({"geo_radius": {"center": {"lon": 10**400, "lat": 0}, "radius": 1}}, 400)):
        r = http.post("/collections/docs/points/query", json={
            "query": q.tolist(), "filter": {"must": [{"key": "n", **cond}]}})
        assert r.status_code == status, (cond, r.status_code, r.text)
    r = http.post("/collections/docs/points/scroll", json={"order_by": {
        "key": "n", "start_from": 10**400}})
    assert r.status_code == 400 and "64 bits" in r.json()["status"]["error"], r.text
    r = http.post("/collections/docs/points/query", json={"prefetch": {"query": {"recommend": {
        "positive": [3], "strategy": "sum_scores"}}}, "query": {"fusion": "rrf"}})
    assert r.status_code == 400 and "not inside prefetch" in r.json()["status"]["error"]
    tokens = [[0.0] * x.shape[1]] * x.shape[1]  # a token matrix as long as a vector: no vector
    bad = http.post("/collections/docs/points/recommend", json={"positive": [tokens], "limit": 2})
    assert bad.status_code == 400 and "recommend.positive[0]" in bad.json()["status"]["error"]

    # prefetch: fused by RRF, or re-scored by the outer query
    red = {i for i in range(N) if payloads[i]["color"] == "red"} - {33}  # 33's payload was cleared
    a, _ = cosine_top(x, q, 6, red)
    b, _ = cosine_top(x, x[0], 6)
    fuse = {}
    for hits in (a, b):
        for r, i in enumerate(hits, 1):
            fuse[i] = fuse.get(i, 0) + 1 / (60 + r)
    best = sorted(fuse, key=lambda i: -fuse[i])[:5]
    prefetch = [m.Prefetch(query=q.tolist(), limit=6, params=exact, filter=m.Filter(must=[
                    m.FieldCondition(key="color", match=m.MatchValue(value="red"))])),
                m.Prefetch(query=x[0].tolist(), limit=6, params=exact)]
    fused = client.query_points("docs", prefetch=prefetch, query=m.FusionQuery(fusion=m.Fusion.RRF),
                                limit=5, with_payload=["n"]).points
    assert [h.id for h in fused] == [ext[i] for i in best]
    np.testing.assert_allclose([h.score for h in fused], [fuse[i] for i in best], rtol=1e-6)
    assert fused[0].payload == {"n": best[0]}
    dbsf = client.query_points("docs", prefetch=prefetch, query=m.FusionQuery(fusion=m.Fusion.DBSF),
                               limit=3).points
    assert {h.id for h in dbsf} <= {ext[i] for i in {*a, *b}} and len(dbsf) == 3
    rescored = client.query_points("docs", prefetch=prefetch[:1], query=x[1].tolist(), limit=3,
                                   search_params=exact).points
    assert [h.id for h in rescored] == [ext[i] for i in cosine_top(x, x[1], 3, set(a))[0]]

    # groups by a payload key, as qdrant-client asks for them
    groups = client.query_points_groups("docs", group_by="color", query=q.tolist(), limit=2,
                                        group_size=2, search_params=exact,
                                        with_payload=["n"]).groups
    order = cosine_top(x, q, N)[0]
    now = {p.id: p.payload for p in client.retrieve("docs", ids=list(ext.values()),
                                                    with_payload=True)}  # 30-33 edited
    order = [i for i in order if "color" in now[ext[i]]]
    want_groups: dict = {}
    for i in order:
        g = now[ext[i]]["color"]
        if g in want_groups or len(want_groups) < 2:
            want_groups.setdefault(g, [])
            if len(want_groups[g]) < 2:
                want_groups[g].append(ext[i])
    assert [(g.id, [h.id for h in g.hits]) for g in groups] == list(want_groups.items())
    assert groups[0].hits[0].payload == {"n": order[0]}
    legacy_groups = http.post("/collections/docs/points/search/groups", json={
        "vector": q.tolist(), "group_by": "color", "limit": 3, "group_size": 1,
        "params": {"exact": True}}).json()["result"]["groups"]
    third = next(ext[i] for i in order if now[ext[i]]["color"] not in want_groups)
    assert [g["hits"][0]["id"] for g in legacy_groups] == [
        *(ids[0] for ids in want_groups.values()), third]

    # legacy search: Qdrant's answer shape (ScoredPoint with a version)
    legacy = http.post("/collections/docs/points/search", json={
        "vector": q.tolist(), "limit": 3, "offset": 1, "params": {"exact": True}}).json()
    assert [m.ScoredPoint(**h).id for h in legacy["result"]] == [ext[i] for i in want[1:4]]
    lb = http.post("/collections/docs/points/search/batch", json={"searches": [
        {"vector": q.tolist(), "limit": 2, "params": {"exact": True}}]}).json()["result"]
    assert [m.ScoredPoint(**h).id for h in lb[0]] == [ext[i] for i in want[:2]]


def test_named_vectors_euclid_and_deletes(client, http):
    rng = np.random.default_rng(3)
    t, im = rng.standard_normal((10, DIM)).astype(np.float32), rng.standard_normal((10, 4)).astype(np.float32)
    client.upsert("media", points=[m.PointStruct(id=i, vector={"text": t[i].tolist(), "image": im[i].tolist()}
                                                 if i % 2 == 0 else {"text": t[i].tolist()},
                                                 payload={"i": i}) for i in range(10)])
    hits = client.query_points("media", query=im[0].tolist(), using="image", limit=3,
                               search_params=m.SearchParams(exact=True), with_vectors=["image"]).points
    d = np.sqrt(((im[::2] - im[0]) ** 2).sum(1))
    order = np.argsort(d)[:3]
    assert [h.id for h in hits] == (order * 2).tolist()
    np.testing.assert_allclose([h.score for h in hits], d[order], atol=1e-4)  # the distance, not its square
    assert set(hits[1].vector) == {"image"}
    # a distance bound: Euclid keeps hits no farther than it
    near = client.query_points("media", query=im[0].tolist(), using="image", limit=10,
                               score_threshold=float(d[order[1]]) + 1e-4).points
    assert [h.id for h in near] == (order[:2] * 2).tolist()
    text = client.query_points("media", query=t[3].tolist(), using="text", limit=1,
                               search_params=m.SearchParams(exact=True)).points
    assert text[0].id == int(np.argmax(t @ t[3]))
    np.testing.assert_allclose(text[0].score, float((t @ t[3]).max()), rtol=1e-5)
    assert client.query_points("media", query=2, using="image", limit=1).points[0].id in (0, 4, 6, 8)
    with raises(400, "image"):
        client.query_points("media", query=3, using="image")  # point 3 has no image
    with raises(400, "using"):
        client.query_points("media", query=t[0].tolist())  # two fields: say which
    legacy = http.post("/collections/media/points/search", json={
        "vector": {"name": "text", "vector": t[5].tolist()}, "limit": 1,
        "params": {"exact": True}}).json()["result"]
    assert legacy[0]["id"] == int(np.argmax(t @ t[5]))

    # hybrid: one prefetch per field, fused (no top-level `using` needed)
    exact = m.SearchParams(exact=True)
    by_text = np.argsort(-(t @ t[2]), kind="stable")[:4].tolist()
    by_image = (np.argsort(((im[::2] - im[2]) ** 2).sum(1), kind="stable")[:4] * 2).tolist()
    rrf = {}
    for ranking in (by_text, by_image):
        for r, i in enumerate(ranking, 1):
            rrf[i] = rrf.get(i, 0) + 1 / (60 + r)
    fused = client.query_points("media", prefetch=[
        m.Prefetch(query=t[2].tolist(), using="text", limit=4, params=exact),
        m.Prefetch(query=im[2].tolist(), using="image", limit=4, params=exact)],
        query=m.FusionQuery(fusion=m.Fusion.RRF), limit=3).points
    assert [h.id for h in fused] == sorted(rrf, key=lambda i: -rrf[i])[:3]

    client.delete("media", points_selector=m.PointIdsList(points=[0, 1]))
    client.delete("media", points_selector=m.FilterSelector(filter=m.Filter(must=[
        m.FieldCondition(key="i", range=m.Range(gte=8))])))
    assert client.count("media", exact=True).count == 6
    assert sorted(p.id for p in client.scroll("media", limit=20)[0]) == [2, 3, 4, 5, 6, 7]

    # vectors of some fields changed or removed, payloads and other fields kept
    client.update_vectors("media", points=[m.PointVectors(id=3, vector={"image": im[3].tolist()})])
    client.delete_vectors("media", vectors=["image"], points=[2])
    got = {p.id: p for p in client.retrieve("media", ids=[2, 3], with_vectors=True)}
    assert set(got[2].vector) == {"text"} and set(got[3].vector) == {"text", "image"}
    assert got[3].payload == {"i": 3}
    near = client.query_points("media", query=im[3].tolist(), using="image", limit=10).points
    assert {h.id for h in near} == {3, 4, 6}
    has = lambda name: m.Filter(must=[m.HasVectorCondition(has_vector=name)])  # noqa: E731
    assert sorted(p.id for p in client.scroll("media", scroll_filter=has("image"))[0]) == [3, 4, 6]
    assert client.count("media", count_filter=has("text")).count == 6
    assert client.count("media", count_filter=m.Filter(must_not=[
        m.HasVectorCondition(has_vector="image")])).count == 3
    with raises(400, "has_vector: no vector field", "nope"):
        client.count("media", count_filter=has("nope"))
    with raises(400, "dimension"):
        client.update_vectors("media", points=[m.PointVectors(id=3, vector={"image": [1.0]})])

    # a batch of writes, in order
    done = client.batch_update_points("media", update_operations=[
        m.UpsertOperation(upsert=m.PointsList(points=[m.PointStruct(id=20, vector={"text": t[0].tolist()},
                                                                    payload={"i": 20})])),
        m.SetPayloadOperation(set_payload=m.SetPayload(payload={"b": 1}, points=[20])),
        m.DeleteOperation(delete=m.PointIdsList(points=[7]))])
    assert [r.status for r in done] == [m.UpdateStatus.COMPLETED] * 3
    assert sorted(p.id for p in client.scroll("media", limit=20)[0]) == [2, 3, 4, 5, 6, 20]
    assert client.retrieve("media", ids=[20])[0].payload == {"i": 20, "b": 1}

    # datetime ranges (the client sends ISO-8601 strings)
    client.set_payload("media", payload={"ts": "2024-03-01T10:00:00Z"}, points=[2, 3])
    client.set_payload("media", payload={"ts": "2023-06-01T00:00:00+02:00"}, points=[4])
    recent = m.Filter(must=[m.FieldCondition(key="ts", range=m.DatetimeRange(gte=datetime(2024, 1, 1)))])
    assert sorted(p.id for p in client.scroll("media", scroll_filter=recent)[0]) == [2, 3]


def test_multivector_late_interaction(client):
    """multivector_config max_sim (MUVERA behind it): token matrices in, MaxSim scores out,
    and the usual pattern: dense prefetch, re-scored by the token matrices."""
    rng = np.random.default_rng(8)
    n = 12
    dense = rng.standard_normal((n, 4)).astype(np.float32)
    tokens = [rng.standard_normal((int(rng.integers(1, 5)), DIM)).astype(np.float32) for _ in range(n)]
    assert client.create_collection("late", vectors_config={
        "dense": m.VectorParams(size=4, distance=m.Distance.COSINE, hnsw_config=m.HnswConfigDiff(m=0)),
        "colbert": m.VectorParams(size=DIM, distance=m.Distance.COSINE,
                                  multivector_config=m.MultiVectorConfig(
                                      comparator=m.MultiVectorComparator.MAX_SIM))})
    params = client.get_collection("late").config.params.vectors
    assert params["colbert"].multivector_config.comparator == m.MultiVectorComparator.MAX_SIM
    assert params["dense"].multivector_config is None
    client.upsert("late", points=[m.PointStruct(id=i, vector={"dense": dense[i].tolist(),
                                                              "colbert": tokens[i].tolist()})
                                  for i in range(n)])

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def maxsim(qt, ids):
        s = {i: float((unit(qt) @ unit(tokens[i]).T).max(axis=1).sum()) for i in ids}
        return sorted(s, key=lambda i: -s[i]), s

    qt = tokens[5][:2] + 0.05
    order, s = maxsim(qt, range(n))
    exact = m.SearchParams(exact=True)
    hits = client.query_points("late", query=qt.tolist(), using="colbert", limit=3,
                               search_params=exact).points
    assert [h.id for h in hits] == order[:3]
    np.testing.assert_allclose([h.score for h in hits], [s[i] for i in order[:3]], rtol=1e-3)
    by_id = client.query_points("late", query=5, using="colbert", limit=2, search_params=exact).points
    assert [h.id for h in by_id] == maxsim(tokens[5], set(range(n)) - {5})[0][:2]
    got = client.retrieve("late", ids=[5], with_vectors=["colbert"])[0].vector
    np.testing.assert_allclose(got["colbert"], unit(tokens[5]), atol=2e-3)  # stored as float16
    # dense candidates, re-ranked by MaxSim
    cand = np.argsort(-(unit(dense) @ (dense[5] / np.linalg.norm(dense[5]))), kind="stable")[:6]
    rer = client.query_points("late", prefetch=m.Prefetch(query=dense[5].tolist(), using="dense",
                                                          limit=6, params=exact),
                              query=qt.tolist(), using="colbert", limit=3, search_params=exact).points
    assert [h.id for h in rer] == maxsim(qt, cand.tolist())[0][:3]
    with raises(400, "discover: not for multi-vector fields"):
        client.query_points("late", query=m.DiscoverQuery(discover=m.DiscoverInput(
            target=5, context=[m.ContextPair(positive=1, negative=2)])), using="colbert")
    with raises(400, "name"):
        client.create_collection("late1", vectors_config=m.VectorParams(
            size=4, distance=m.Distance.COSINE, multivector_config=m.MultiVectorConfig(
                comparator=m.MultiVectorComparator.MAX_SIM)))
    client.delete_collection("late")


def test_aliases(client, docs):
    x, _ = docs
    op = m.CreateAliasOperation(create_alias=m.CreateAlias(collection_name="docs", alias_name="live"))
    assert client.update_collection_aliases(change_aliases_operations=[op])
    assert client.count("live").count == client.count("docs").count
    assert client.query_points("live", query=x[1].tolist(), limit=1).points[0].id == 1
    assert [(a.alias_name, a.collection_name) for a in client.get_aliases().aliases] == [("live", "docs")]
    assert [a.alias_name for a in client.get_collection_aliases("docs").aliases] == ["live"]
    # swap in one request: no moment without the alias
    client.update_collection_aliases(change_aliases_operations=[
        m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name="live")),
        m.CreateAliasOperation(create_alias=m.CreateAlias(collection_name="media", alias_name="live")),
        m.RenameAliasOperation(rename_alias=m.RenameAlias(old_alias_name="live", new_alias_name="now"))])
    assert client.get_collection("now").config.params.vectors["text"].size == DIM
    with raises(404, "nope"):
        client.update_collection_aliases(change_aliases_operations=[m.CreateAliasOperation(
            create_alias=m.CreateAlias(collection_name="nope", alias_name="x"))])
    with raises(409, "docs"):
        client.update_collection_aliases(change_aliases_operations=[m.CreateAliasOperation(
            create_alias=m.CreateAlias(collection_name="media", alias_name="docs"))])
    assert [a.alias_name for a in client.get_aliases().aliases] == ["now"]
    client.update_collection_aliases(change_aliases_operations=[
        m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name="now"))])
    assert client.get_aliases().aliases == []


def test_auth_and_error_envelope(server):
    anon = QdrantClient(url=server.url, timeout=30, check_compatibility=False)
    with raises(401, "api-key"):
        anon.get_collections()
    anon.close()
    with pytest.warns(UserWarning, match="insecure"):
        reader = QdrantClient(url=server.url, api_key=RO_KEY, timeout=30, check_compatibility=False)
    assert reader.count("docs").count == N  # reads, queries included, take a read-only key
    assert len(reader.query_points("docs", query=[1.0] * DIM, limit=2).points) == 2
    with raises(403, "read-only"):
        reader.upsert("docs", points=[m.PointStruct(id=1, vector=[1.0] * DIM)])
    with raises(403, "read-only"):
        reader.update_collection_aliases(change_aliases_operations=[
            m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name="x"))])
    reader.close()
    resp = httpx.post(f"{server.url}/collections/docs/points/query", headers={"api-key": KEY},
                      json={"query": [1.0] * DIM, "limit": "many"})
    assert resp.status_code == 422 and "limit" in resp.json()["status"]["error"]
    assert not math.isnan(resp.json()["time"])


def test_snapshots(client, http, server, docs):
    snap = client.create_snapshot("docs")
    assert snap.size > 0 and snap.creation_time
    assert [x.name for x in client.list_snapshots("docs")] == [snap.name]
    path = server.data / "snapshots" / "docs" / snap.name
    assert client.recover_snapshot("docs-copy", location=path.resolve().as_uri())
    assert client.count("docs-copy").count == client.count("docs").count
    # Qdrant's form upload (curl -F snapshot=@file), streamed to disk
    r = http.post("/collections/docs-up/snapshots/upload?priority=snapshot",
                  files={"snapshot": (snap.name, path.read_bytes(), "application/octet-stream")})
    assert r.status_code == 200, r.text
    assert client.count("docs-up").count == client.count("docs").count
    client.delete_collection("docs-up")
    r = http.post("/collections/docs-up/snapshots/upload", files={"note": (None, b"no file")})
    assert r.status_code == 400 and "no 'snapshot' file" in r.json()["status"]["error"], r.text
    r = http.post("/collections/docs-up/snapshots/upload", files=[  # another file first
        ("readme", ("a.txt", b"not a snapshot")), ("snapshot", (snap.name, path.read_bytes()))])
    assert r.status_code == 200, r.text
    client.delete_collection("docs-up")
    r = http.post("/collections/docs-up/snapshots/upload", files=[
        ("a", ("a.tar", path.read_bytes())), ("b", ("b.tar", path.read_bytes()))])
    assert r.status_code == 400 and "several files" in r.json()["status"]["error"], r.text
    assert not client.collection_exists("docs-up")
    with raises(400, "location"):
        client.recover_snapshot("docs-2", location="file:///etc/passwd")
    assert client.delete_snapshot("docs", snap.name)
    assert client.list_snapshots("docs") == []
    with raises(404, snap.name):
        client.delete_snapshot("docs", snap.name)
    client.delete_collection("docs-copy")


def test_langchain_vector_store(server):
    """langchain-qdrant's QdrantVectorStore, unchanged: add texts with metadata, search with
    a filter on it (a dotted payload path), delete."""
    pytest.importorskip("langchain_qdrant")
    from langchain_core.embeddings import Embeddings
    from langchain_qdrant import QdrantVectorStore

    class WordHash(Embeddings):
        """Deterministic: each word adds one to a hashed coordinate."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [self.embed_query(t) for t in texts]

        def embed_query(self, text: str) -> list[float]:
            v = np.zeros(16)
            for w in text.lower().split():
                v[sum(map(ord, w)) % 16] += 1.0
            return (v + 0.01).tolist()

    texts = ["the cat sat on the mat", "dogs chase cats", "a quick brown fox",
             "le chat est sur le tapis", "the dog sleeps"]
    langs = ["en", "en", "en", "fr", "en"]
    with pytest.warns(UserWarning, match="insecure"):
        store = QdrantVectorStore.from_texts(
            texts, WordHash(), metadatas=[{"lang": g, "i": i} for i, g in enumerate(langs)],
            url=server.url, api_key=KEY, collection_name="lc", timeout=300)
    hits = store.similarity_search("the cat sat on the mat", k=2)
    assert hits[0].page_content == texts[0] and hits[0].metadata["lang"] == "en"
    fr = m.Filter(must=[m.FieldCondition(key="metadata.lang", match=m.MatchValue(value="fr"))])
    hits = store.similarity_search_with_score("the cat", k=3, filter=fr)
    assert [(d.page_content, d.metadata["i"]) for d, _ in hits] == [(texts[3], 3)]
    ids = [d.metadata["_id"] for d in store.similarity_search("dog", k=5)]
    assert len(ids) == 5
    store.delete(ids[:2])
    assert len(store.similarity_search("dog", k=5)) == 3


def test_quiver_client_parity(server, tmp_path):
    """What this issue added to the engine (vector updates, aliases) reads the same through
    quiver.Client as embedded."""
    import quiver

    def scenario(db):
        col = db.create_collection("par", vectors={"a": {"dim": 2, "metric": "l2", "index": "Flat"},
                                                   "b": {"dim": 3, "metric": "l2", "index": "Flat"}})
        col.upsert([1, 2, 3], {"a": [[1, 0], [2, 0], [3, 0]], "b": [[1, 1, 1], None, [3, 3, 3]]},
                   [{"p": 1}, {"p": 2}, {"p": 3}])
        try:
            col.update_vectors([2, 9], {"b": [[7, 7, 7], [9, 9, 9]]})
        except quiver.NotFound as exc:  # the embedded and the remote one alike
            missing = str(exc)
        out = [missing, col.update_vectors([2, 3], {"b": [[2, 2, 2], None]}),
               col.delete_vectors(["b"], filter={"must": [{"has_id": [1]}]})]
        out.append([(p.id, p.payload, p.vector) for p in col.get([1, 2, 3], with_vectors=True)])
        db.update_aliases([("create", "par-al", "par")])
        out.append((db.aliases(), db.get_collection("par-al").count()))
        db.update_aliases([("rename", "par-al", "par-al2"), ("delete", "par-al2")])
        out.append(db.aliases())
        db.drop_collection("par")
        return out

    embedded = same_embedded_and_remote(server, tmp_path, scenario)
    assert embedded[0] == "ids: no point with id 9; nothing was written"
    assert embedded[1:3] == [2, 1] and embedded[3][1] == (2, {"p": 2}, {"a": [2.0, 0.0], "b": [2.0] * 3})


def test_aliases_persist_embedded(tmp_path):
    """The engine side of aliases: saved atomically, reopened, dropped with their collection."""
    from quiver.engine.errors import AlreadyExists, InvalidArgument

    import quiver

    with quiver.connect(tmp_path / "db", optimizer=False) as db:
        db.create_collection("a", 2, index="Flat")
        db.update_aliases([("create", "al", "a")])
        with pytest.raises(AlreadyExists, match="alias"):
            db.create_collection("al", 2, index="Flat")
        with pytest.raises(InvalidArgument, match="actions"):
            db.update_aliases([("create", "x", "a"), ("swap", "x")])
        assert db.aliases() == {"al": "a"}  # the bad request changed nothing
    with quiver.connect(tmp_path / "db", optimizer=False) as db:
        assert db.get_collection("al").name == "a"
        db.drop_collection("a")
        assert db.aliases() == {}


def test_geo_values_count_and_nested_filters(client):
    """qdrant-client's geo, values_count and nested conditions, as its models serialise
    them."""
    client.create_collection("geo", vectors_config=m.VectorParams(size=2, distance=m.Distance.DOT))
    cities = [("berlin", 13.405, 52.52), ("paris", 2.3522, 48.8566), ("tokyo", 139.69, 35.69)]
    client.upsert("geo", points=[m.PointStruct(id=i, vector=[1.0, float(i)], payload={
        "name": n, "at": {"lon": lon, "lat": lat}, "tags": ["t"] * i,
        "diet": [{"food": "meat", "likes": i == 0}, {"food": "veg", "likes": i != 0}]})
        for i, (n, lon, lat) in enumerate(cities)])
    near = m.Filter(must=[m.FieldCondition(key="at", geo_radius=m.GeoRadius(
        center=m.GeoPoint(lon=13.405, lat=52.52), radius=900_000.0))])
    box = m.Filter(must=[m.FieldCondition(key="at", geo_bounding_box=m.GeoBoundingBox(
        top_left=m.GeoPoint(lon=100, lat=60), bottom_right=m.GeoPoint(lon=150, lat=0)))])
    poly = m.Filter(must=[m.FieldCondition(key="at", geo_polygon=m.GeoPolygon(
        exterior=m.GeoLineString(points=[m.GeoPoint(lon=0, lat=40), m.GeoPoint(lon=10, lat=40),
                                         m.GeoPoint(lon=10, lat=60), m.GeoPoint(lon=0, lat=60),
                                         m.GeoPoint(lon=0, lat=40)])))])
    many = m.Filter(must=[m.FieldCondition(key="tags", values_count=m.ValuesCount(gte=1))])
    # Qdrant apps declare these first: geo needs no index here, uuid is a keyword one
    client.create_payload_index("geo", "at", field_schema=m.PayloadSchemaType.GEO)
    client.create_payload_index("geo", "name", field_schema=m.PayloadSchemaType.UUID)
    schema = client.get_collection("geo").payload_schema
    assert schema["name"].points == 3 and schema["at"].data_type == m.PayloadSchemaType.GEO
    client.delete_payload_index("geo", "at")
    assert "at" not in client.get_collection("geo").payload_schema
    # a full-text index: match.text then asks for every word, in any order and case
    spelled = m.Filter(must=[m.FieldCondition(key="motto", match=m.MatchText(text="City Old"))])
    client.set_payload("geo", payload={"motto": "An old city, a new city"}, points=[0, 1])
    client.set_payload("geo", payload={"motto": "the old town"}, points=[2])
    assert client.count("geo", count_filter=spelled).count == 0  # a substring, without it
    client.create_payload_index("geo", "motto", field_schema=m.TextIndexParams(
        type=m.TextIndexType.TEXT, tokenizer=m.TokenizerType.WORD, lowercase=True))
    assert sorted(p.id for p in client.scroll("geo", scroll_filter=spelled)[0]) == [0, 1]
    assert client.get_collection("geo").payload_schema["motto"].data_type == \
        m.PayloadSchemaType.TEXT
    assert sorted(p.id for p in client.scroll("geo", scroll_filter=near)[0]) == [0, 1]
    assert [p.id for p in client.scroll("geo", scroll_filter=box)[0]] == [2]
    assert [p.id for p in client.scroll("geo", scroll_filter=poly)[0]] == [1]
    assert client.count("geo", count_filter=many).count == 2
    meat_lovers = m.Filter(must=[m.NestedCondition(nested=m.Nested(key="diet", filter=m.Filter(
        must=[m.FieldCondition(key="food", match=m.MatchValue(value="meat")),
              m.FieldCondition(key="likes", match=m.MatchValue(value=True))])))])
    assert [p.id for p in client.scroll("geo", scroll_filter=meat_lovers)[0]] == [0]
    hits = client.query_points("geo", query=[1.0, 0.0], query_filter=near, limit=5).points
    assert sorted(h.id for h in hits) == [0, 1]
    client.delete_collection("geo")


# --- discovery, context, order_by, sample, facet and the distance matrix -------------------------


def _sig(s):
    return s / (1 + np.abs(s))


def test_explore_queries_facets_and_the_distance_matrix(client, http):
    """Qdrant's discover and context searches (scores against a NumPy oracle: 30 points, so
    the candidates are all of them), order_by and sample queries, facets and the search
    matrix, through qdrant-client's own models."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((30, DIM)).astype(np.float32)
    xs = x / np.linalg.norm(x, axis=1, keepdims=True)
    colors = ["red", "green", "blue"]
    client.create_collection("explore", vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE))
    client.upsert("explore", points=[m.PointStruct(id=i, vector=x[i].tolist(), payload={
        "color": colors[i % 3], "n": 30 - i, "tags": ["a", "b"][: i % 3]}) for i in range(30)])
    sim = xs @ xs.T
    pairs = [(1, 2), (3, 4)]
    ids = np.array([i for i in range(30) if i not in (0, 1, 2, 3, 4)])  # examples left out

    # discover: pairs on the right side, then nearest the target
    rank = sum(np.sign(sim[ids, p] - sim[ids, n]) for p, n in pairs)
    want = rank + 0.5 * (_sig(sim[ids, 0]) + 1)
    hits = client.query_points("explore", query=m.DiscoverQuery(discover=m.DiscoverInput(
        target=0, context=[m.ContextPair(positive=p, negative=n) for p, n in pairs])), limit=5).points
    order = np.argsort(-want, kind="stable")[:5]
    assert [h.id for h in hits] == ids[order].tolist()
    np.testing.assert_allclose([h.score for h in hits], want[order], atol=1e-5)
    # a raw vector as the target, one pair as an object
    one = client.query_points("explore", query=m.DiscoverQuery(discover=m.DiscoverInput(
        target=x[0].tolist(), context=m.ContextPair(positive=1, negative=2))), limit=3).points
    rest = np.array([i for i in range(30) if i not in (1, 2)])
    want = np.sign(sim[rest, 1] - sim[rest, 2]) + 0.5 * (_sig(sim[rest, 0]) + 1)
    assert [h.id for h in one] == rest[np.argsort(-want, kind="stable")[:3]].tolist()

    # context: 0 on the positive side of every pair, below by how far off
    cids = np.array([i for i in range(30) if i not in (1, 2, 3, 4)])
    loss = sum(_sig(np.minimum(sim[cids, p] - sim[cids, n], 0)) for p, n in pairs)
    hits = client.query_points("explore", query=m.ContextQuery(context=[
        m.ContextPair(positive=p, negative=n) for p, n in pairs]), limit=8).points
    got = {h.id: h.score for h in hits}
    np.testing.assert_allclose(sorted(got.values(), reverse=True), np.sort(loss)[::-1][:8], atol=1e-6)
    for i, s in got.items():
        assert abs(loss[cids.tolist().index(i)] - s) < 1e-6
    assert max(got.values()) == 0.0

    # order_by: by a payload value, score 0 and the value in order_value; a filter, an offset,
    # and ordering what a prefetch found
    red = m.Filter(must=[m.FieldCondition(key="color", match=m.MatchValue(value="red"))])
    page = client.query_points("explore", query=m.OrderByQuery(order_by="n"), query_filter=red,
                               limit=3, offset=1).points
    reds = sorted((30 - i, i) for i in range(0, 30, 3))
    assert [h.id for h in page] == [i for _, i in reds[1:4]]
    assert [h.order_value for h in page] == [v for v, _ in reds[1:4]] and {h.score for h in page} == {0.0}
    near = client.query_points("explore", query=x[5].tolist(), limit=6).points
    ordered = client.query_points("explore", prefetch=m.Prefetch(query=x[5].tolist(), limit=6),
                                  query=m.OrderByQuery(order_by=m.OrderBy(key="n", direction="desc")),
                                  limit=6).points
    assert [h.id for h in ordered] == sorted((h.id for h in near), key=lambda i: -(30 - i))

    # sample: distinct points the filter admits, all of them when asked for more
    some = client.query_points("explore", query=m.SampleQuery(sample=m.Sample.RANDOM),
                               query_filter=red, limit=4, with_payload=True).points
    assert len({h.id for h in some}) == 4 and {h.payload["color"] for h in some} == {"red"}
    every = client.query_points("explore", query=m.SampleQuery(sample=m.Sample.RANDOM),
                                query_filter=red, limit=50).points
    assert sorted(h.id for h in every) == list(range(0, 30, 3))

    # facets: counts per value (a list's elements each), most frequent first, under a filter
    assert [(h.value, h.count) for h in client.facet("explore", "tags").hits] == [("a", 20), ("b", 10)]
    assert [(h.value, h.count) for h in client.facet("explore", "color", facet_filter=m.Filter(
        must=[m.FieldCondition(key="n", range=m.Range(gt=20))]), limit=2).hits] == [
        ("red", 4), ("blue", 3)]
    assert http.post("/collections/explore/facet", json={"key": "n", "limit": 2}).json()[
        "result"]["hits"] == [{"value": 1, "count": 1}, {"value": 2, "count": 1}]

    # the distance matrix over a sample (here all 30): each point's nearest others
    pairs_ = client.search_matrix_pairs("explore", sample=30, limit=2).pairs
    assert len(pairs_) == 60
    for p in pairs_:
        others = np.argsort(-np.where(np.arange(30) == p.a, -np.inf, sim[p.a]), kind="stable")[:2]
        assert p.b in others.tolist() and abs(p.score - sim[p.a, p.b]) < 1e-5
    off = client.search_matrix_offsets("explore", sample=10, limit=3,
                                       query_filter=red)
    assert sorted(off.ids) == list(range(0, 30, 3)) and len(off.scores) == 30
    assert off.offsets_row == sorted(off.offsets_row)
    for r, c, s in zip(off.offsets_row, off.offsets_col, off.scores, strict=True):
        assert abs(s - sim[off.ids[r], off.ids[c]]) < 1e-5 and r != c

    # score formulas over what the prefetches found: a boost for red points, a decay by n
    near = np.argsort(-sim[5], kind="stable")[:10]
    boosted = sim[5, near] + 0.5 * (near % 3 == 0) + 0.5 ** (np.abs((30 - near) - 20) / 5)
    hits = client.query_points("explore", prefetch=m.Prefetch(query=x[5].tolist(), limit=10),
                               query=m.FormulaQuery(formula=m.SumExpression(sum=[
                                   "$score",
                                   m.MultExpression(mult=[0.5, m.FieldCondition(
                                       key="color", match=m.MatchValue(value="red"))]),
                                   m.ExpDecayExpression(exp_decay=m.DecayParamsExpression(
                                       x="n", target=20, scale=5))])), limit=4).points
    order = np.argsort(-boosted, kind="stable")[:4]
    assert [h.id for h in hits] == near[order].tolist()
    np.testing.assert_allclose([h.score for h in hits], boosted[order], atol=1e-5)
    two = client.query_points("explore", prefetch=[m.Prefetch(query=x[5].tolist(), limit=3),
                                                   m.Prefetch(query=x[6].tolist(), limit=3)],
                              query=m.FormulaQuery(formula="$score[1]", defaults={"$score[1]": -1.0}),
                              limit=6).points
    top5, top6 = (np.argsort(-sim[i], kind="stable")[:3].tolist() for i in (5, 6))
    want = {i: (sim[6, i] if i in top6 else -1.0) for i in top5 + top6}
    assert {h.id for h in two} == set(want)
    for h in two:
        assert abs(h.score - want[h.id]) < 1e-5
    with raises(400, "not a finite number"):
        client.query_points("explore", prefetch=m.Prefetch(query=x[0].tolist(), limit=5),
                            query=m.FormulaQuery(formula=m.DivExpression(div=m.DivParams(left=1, right=0))))
    with raises(400, "prefetch"):
        client.query_points("explore", query=m.FormulaQuery(formula="$score"))

    # examples read from another collection (lookup_from): its ids, not left out here
    client.create_collection("elsewhere", vectors_config={
        "v": m.VectorParams(size=DIM, distance=m.Distance.COSINE)})
    client.upsert("elsewhere", points=[m.PointStruct(id=0, vector={"v": x[7].tolist()}),
                                       m.PointStruct(id=1, vector={"v": x[9].tolist()})])
    by_id = client.query_points("explore", query=0, lookup_from=m.LookupLocation(
        collection="elsewhere", vector="v"), limit=3).points
    assert [h.id for h in by_id] == np.argsort(-sim[7], kind="stable")[:3].tolist()  # 7 itself first
    rec = client.query_points("explore", query=m.RecommendQuery(recommend=m.RecommendInput(
        positive=[0], negative=[1], strategy=m.RecommendStrategy.BEST_SCORE)),
        lookup_from=m.LookupLocation(collection="elsewhere", vector="v"), limit=2).points
    assert rec[0].id == 7
    with raises(400, "lookup_from", "8-d"):
        client.create_collection("narrow", vectors_config=m.VectorParams(size=4, distance=m.Distance.COSINE))
        client.upsert("narrow", points=[m.PointStruct(id=0, vector=[1.0, 0, 0, 0])])
        client.query_points("explore", query=0, lookup_from=m.LookupLocation(collection="narrow"))
    with raises(404, "no point with id 5"):
        client.query_points("explore", query=5,
                            lookup_from=m.LookupLocation(collection="elsewhere", vector="v"))
    client.delete_collection("elsewhere")
    client.delete_collection("narrow")

    # what is not served says so; groups take no self-scored query
    bad = http.post("/collections/explore/points/query", json={"query": {"discovery": {}}})
    assert bad.status_code == 422 and "one of {nearest, recommend, discover" in bad.json()["status"]["error"]
    with raises(400, "groups"):
        client.query_points_groups("explore", group_by="color", query=m.SampleQuery(sample=m.Sample.RANDOM))
    with raises(400, "context", "pair"):
        client.query_points("explore", query=m.ContextQuery(context=[]))
    with raises(400, "discover.target[0]", "8 finite numbers"):
        client.query_points("explore", query=m.DiscoverQuery(
            discover=m.DiscoverInput(target=[1.0, 2.0], context=[])))
    client.delete_collection("explore")


def test_facet_and_sample_read_the_same_through_the_sdks(server, tmp_path):
    import quiver

    def scenario(db):
        col = db.create_collection("fs", dim=2, metric="l2", index="Flat")
        col.upsert(list(range(12)), [[i, 0] for i in range(12)],
                   [{"k": ["x", "y", "z"][i % 3], "b": i % 2 == 0, "i": i // 5} for i in range(12)])
        out = [col.facet("k"), col.facet("b", filter={"must": [{"key": "i", "range": {"lt": 2}}]}),
               col.facet("i", limit=2)]
        picked = col.sample(5, filter={"must": [{"key": "k", "match": {"value": "x"}}]})
        out.append((len({p.id for p in picked}), {p.payload["k"] for p in picked}, picked[0].score))
        out.append(sorted(p.id for p in col.sample(20, with_payload=False)))
        for bad in (lambda: col.facet(3), lambda: col.facet("k", limit=0)):
            with pytest.raises(quiver.InvalidArgument) as exc:
                bad()
            out.append(str(exc.value))
        db.drop_collection("fs")
        return out

    embedded = same_embedded_and_remote(server, tmp_path, scenario)
    assert embedded[:3] == [[("x", 4), ("y", 4), ("z", 4)], [(False, 5), (True, 5)], [(0, 5), (1, 5)]]
    assert embedded[3] == (4, {"x"}, None) and embedded[4] == list(range(12))
    assert embedded[5:] == ["key: expected a string, got int",
                            "limit: expected an integer in [1, 10000], got 0"]
