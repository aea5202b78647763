"""Search results grouped by a payload value (Qdrant's search/groups and query/groups):
the groups and their hits equal a brute-force grouping of the exact ranking, the search
fetches more until the groups are full, and bad requests are refused with the field named.
Dim-8 Flat collections: nothing to compile."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from quiver.engine.groups import group_hits, group_values
from quiver.engine.points import Point
from quiver.server.app import create_app
from quiver.server.settings import Settings

import quiver

DIM = 8


def reference(x, q, docs, limit, size, metric="ip"):
    """Exact ranking, then groups by their best hit: [(value, [ids])]."""
    s = x @ q if metric == "ip" else -((x - q) ** 2).sum(axis=1)
    out: dict = {}
    for i in np.argsort(-s, kind="stable"):
        for v in docs[i]:
            if v not in out and len(out) == limit:
                continue
            ids = out.setdefault(v, [])
            if len(ids) < size:
                ids.append(int(i))
    return list(out.items())


def test_group_values_take_strings_and_integers():
    assert group_values({"d": ["a", 3, True, 2.5, None, "a", {"x": 1}]}, ("d",)) == ["a", 3]
    assert group_values({"m": [{"d": 1}, {"d": 2}]}, ("m", "d")) == [1, 2]
    assert group_values({"d": False}, ("d",)) == [] == group_values(None, ("d",))
    hits = [Point(i, 1.0 - i / 10, {"d": d}) for i, d in enumerate(["a", "b", "a", "c", "a"])]
    groups = group_hits(hits, ("d",), limit=2, group_size=2)
    assert [(g.id, [h.id for h in g.hits]) for g in groups] == [("a", [0, 2]), ("b", [1])]


@pytest.fixture
def skewed(tmp_path):
    """400 points: the 300 nearest the query all in document 0, the rest spread over 25
    documents, a few in two documents or none."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal(DIM).astype(np.float32)
    q /= np.linalg.norm(q)
    x = rng.standard_normal((400, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    near = np.argsort(-(x @ q))[:300]
    docs = [[f"d{1 + i % 25}"] for i in range(400)]
    for i in near:
        docs[i] = ["d0"]
    docs[near[5]] = ["d0", "d7"]
    for i in (1, 2):
        docs[int(np.argsort(-(x @ q))[350 + i])] = []
    payloads = [{"doc": d[0] if len(d) == 1 else d, "i": i} if d else {"i": i}
                for i, d in enumerate(docs)]
    db = quiver.connect(tmp_path / "db")
    col = db.create_collection("chunks", DIM, "ip", "Flat")
    col.upsert(list(range(400)), x, payloads)
    yield db, col, x, q, docs
    db.close()


def test_groups_equal_the_exact_grouping_and_fetch_until_full(skewed):
    _, col, x, q, docs = skewed
    # first fetch 2 * 3 * 2 = 12 hits, all in d0: the search must grow to reach d1..d25
    groups = col.search_groups(q, "doc", limit=3, group_size=2, params={"exact": True},
                               with_payload=["i"])
    want = reference(x, q, docs, 3, 2)
    assert [(g.id, [h.id for h in g.hits]) for g in groups] == want
    assert groups[0].id == "d0" and groups[0].hits[0].payload == {"i": groups[0].hits[0].id}
    s = [h.score for g in groups for h in g.hits[:1]]
    assert s == sorted(s, reverse=True)  # groups in the order of their best hit
    # a point in two documents is in both groups; at most max_hits points are searched
    few = col.search_groups(q, "doc", limit=30, group_size=400, max_hits=50)
    assert sum(len(g.hits) for g in few) <= 51 and few[0].id == "d0"
    flt = {"must_not": [{"key": "doc", "match": {"value": "d0"}}]}
    got = col.search_groups(q, "doc", 4, 3, filter=flt, params={"exact": True})
    assert "d0" not in {g.id for g in got} and len(got) == 4


def test_groups_refuse_bad_input(skewed):
    _, col, _, q, _ = skewed
    for kwargs, field in (({"group_by": ""}, "group_by"), ({"group_by": 3}, "group_by"),
                          ({"group_by": "doc", "limit": 0}, "limit"),
                          ({"group_by": "doc", "group_size": True}, "group_size")):
        with pytest.raises(quiver.InvalidArgument, match=field):
            col.search_groups(q, **kwargs)
    with pytest.raises(quiver.InvalidArgument, match="one query"):
        col.search_groups(np.stack([q, q]), "doc")


@pytest.fixture(scope="module")
def rest(tmp_path_factory):
    settings = Settings(data=tmp_path_factory.mktemp("groups"), warmup=False)
    with TestClient(create_app(settings)) as c:
        for name, distance in (("ip", "Dot"), ("l2", "Euclid")):
            r = c.put(f"/collections/{name}", json={"vectors": {"size": 2, "distance": distance}})
            assert r.status_code == 200, r.text
            pts = [{"id": i, "vector": [1.0, i / 10], "payload": {"doc": i // 3}}
                   for i in range(12)]
            r = c.put(f"/collections/{name}/points?wait=true", json={"points": pts})
            assert r.status_code == 200, r.text
        yield c


def test_rest_query_groups_and_search_groups(rest):
    r = rest.post("/collections/ip/points/query/groups", json={
        "query": [0.0, 1.0], "group_by": "doc", "group_size": 2, "limit": 2,
        "with_payload": True})
    assert r.status_code == 200, r.text
    groups = r.json()["result"]["groups"]
    assert [(g["id"], [h["id"] for h in g["hits"]]) for g in groups] == [(3, [11, 10]),
                                                                         (2, [8, 7])]
    assert groups[0]["hits"][0]["payload"] == {"doc": 3}
    # Euclid: the query API answers distances, the legacy search squared ones
    body = {"group_by": "doc", "group_size": 1, "limit": 1}
    r = rest.post("/collections/l2/points/query/groups", json={"query": [1.0, 0.3], **body})
    r2 = rest.post("/collections/l2/points/search/groups", json={"vector": [1.0, 0.0], **body})
    assert r.json()["result"]["groups"][0]["hits"][0]["id"] == 3
    assert r2.json()["result"]["groups"][0]["hits"][0]["score"] == pytest.approx(0.0)
    r3 = rest.post("/collections/l2/points/search/groups", json={"vector": [1.0, 1.2], **body})
    assert r3.json()["result"]["groups"][0]["hits"][0]["score"] == pytest.approx(0.01, abs=1e-5)
    r4 = rest.post("/collections/l2/points/query/groups", json={"query": [1.0, 1.2], **body})
    assert r4.json()["result"]["groups"][0]["hits"][0]["score"] == pytest.approx(0.1, abs=1e-5)


@pytest.mark.parametrize("body, status, words", [
    ({"query": [0, 1], "group_by": "doc", "with_lookup": {"collection": "x"}}, 404, ["x"]),
    ({"query": [0, 1], "group_by": "doc", "with_lookup": {"name": "x"}}, 422, ["with_lookup"]),
    ({"prefetch": {"query": [0, 1]}, "query": {"fusion": "rrf"}, "group_by": "doc"}, 400,
     ["prefetch"]),
    ({"query": [0, 1]}, 422, ["group_by"]),
    ({"query": [0, 1], "group_by": "doc", "group_size": 0}, 422, ["group_size"]),
])
def test_rest_groups_refuse_bad_requests(rest, body, status, words):
    r = rest.post("/collections/ip/points/query/groups", json=body)
    assert r.status_code == status, r.text
    msg = r.json()["status"]["error"].lower()
    assert all(w in msg for w in words), msg


def test_rest_groups_look_up_their_documents(rest):
    r = rest.put("/collections/docs", json={"vectors": {"size": 2, "distance": "Dot"}})
    assert r.status_code == 200, r.text
    r = rest.put("/collections/docs/points?wait=true", json={"points": [
        {"id": d, "vector": [1.0, 0.0], "payload": {"title": f"doc {d}"}} for d in (2, 3)]})
    assert r.status_code == 200, r.text
    body = {"group_by": "doc", "group_size": 1, "limit": 3}
    r = rest.post("/collections/ip/points/query/groups", json={
        "query": [0.0, 1.0], **body, "with_lookup": "docs"})
    assert r.status_code == 200, r.text
    got = [(g["id"], g["lookup"]) for g in r.json()["result"]["groups"]]
    assert got == [(3, {"id": 3, "payload": {"title": "doc 3"}, "vector": None}),
                   (2, {"id": 2, "payload": {"title": "doc 2"}, "vector": None}), (1, None)]
    r = rest.post("/collections/ip/points/search/groups", json={
        "vector": [0.0, 1.0], **body,
        "with_lookup": {"collection": "docs", "with_payload": False, "with_vectors": True}})
    assert r.json()["result"]["groups"][0]["lookup"] == {"id": 3, "payload": None,
                                                         "vector": [1.0, 0.0]}


def test_rest_recommend_sum_scores_with_euclid_sums_squared_distances(rest):
    """Qdrant's Euclid similarity for recommendation is minus the squared distance: summed
    over two positives, (1.5, 1.32) beats (0.01, 0), which minus the distance would not."""
    r = rest.put("/collections/reco", json={"vectors": {"size": 2, "distance": "Euclid"}})
    assert r.status_code == 200, r.text
    r = rest.put("/collections/reco/points?wait=true", json={"points": [
        {"id": 1, "vector": [0.01, 0.0]}, {"id": 2, "vector": [1.5, 1.3229]}]})
    assert r.status_code == 200, r.text
    r = rest.post("/collections/reco/points/query", json={"query": {"recommend": {
        "positive": [[0.0, 0.0], [3.0, 0.0]], "strategy": "sum_scores"}}, "limit": 2})
    hits = r.json()["result"]["points"]
    assert [h["id"] for h in hits] == [2, 1], hits
    assert hits[0]["score"] == pytest.approx(-(1.5**2 + 1.3229**2) - (1.5**2 + 1.3229**2), rel=1e-4)
