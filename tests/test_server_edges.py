"""Answers at the REST service's edges, in process: a bug is a JSON 500 (and the connection
survives), CORS covers every answer, vector elements are numbers, writes to missing points
are a 404 with nothing written, multi-vector fields refuse flat queries, and Qdrant's MMR
query picks a diverse top-k. Dim-4 Flat collections: nothing to compile."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from quiver.engine.collection import Collection
from quiver.server.app import create_app
from quiver.server.settings import Settings

ORIGIN = "http://app.example"
KEY = "edge-key"


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    settings = Settings(data=tmp_path_factory.mktemp("edges"), warmup=False,
                        api_keys={KEY}, cors_origins=[ORIGIN])
    with TestClient(create_app(settings), headers={"api-key": KEY}) as c:
        r = c.put("/collections/flat", json={"vectors": {"size": 4, "distance": "Cosine"}})
        assert r.status_code == 200, r.text
        r = c.put("/collections/mv", json={"vectors": {"colbert": {
            "size": 4, "distance": "Cosine", "multivector_config": {"comparator": "max_sim"}}}})
        assert r.status_code == 200, r.text
        pts = [{"id": i, "vector": v, "payload": {"i": i}} for i, v in enumerate(
            [[1, 0, 0, 0], [0.99, 0.1, 0, 0], [0.98, 0.12, 0.05, 0], [0.7, 0.7, 0, 0],
             [0.6, 0, 0.8, 0], [0, 0, 0, 1]])]
        r = c.put("/collections/flat/points?wait=true", json={"points": pts})
        assert r.status_code == 200, r.text
        r = c.put("/collections/mv/points?wait=true", json={"points": [
            {"id": i, "vector": {"colbert": [[1, i, 0, 0], [0, 1, i, 0]]}} for i in range(3)]})
        assert r.status_code == 200, r.text
        yield c


def error_of(r, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    msg = r.json()["status"]["error"]
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)
    return msg


def test_a_bug_is_a_json_500_and_the_next_request_is_served(app_client, monkeypatch):
    def broken(self, *a, **k):
        raise RuntimeError("the bug under test")

    monkeypatch.setattr(Collection, "count", broken)
    r = app_client.post("/collections/flat/points/count", json={})
    error_of(r, 500, "internal error", "RuntimeError", "the bug under test")
    assert r.json()["error"]["code"] == "internal_error"
    monkeypatch.undo()
    assert app_client.post("/collections/flat/points/count", json={}).json()["result"] == {"count": 6}


def test_cors_on_searches_errors_and_keyless_preflights(app_client):
    cors = {"Origin": ORIGIN}
    for path, body in (("/collections/flat/points/query", {"query": [1, 0, 0, 0], "limit": 2}),
                       ("/collections/flat/points/search", {"vector": [1, 0, 0, 0], "limit": 2}),
                       ("/collections/flat/points/scroll", {"limit": 2})):
        r = app_client.post(path, json=body, headers=cors)
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == ORIGIN, path
    r = app_client.post("/collections/flat/points/query", json={"query": [1, 0, 0, 0]},
                        headers={**cors, "api-key": "wrong"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    r = app_client.options("/collections/flat/points/query", headers={
        **cors, "api-key": "", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "api-key,content-type"})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize("bad", [[True, 0, 0, 0], ["1", "0", "0", "0"], [None, 0, 0, 0]])
def test_vector_elements_must_be_numbers(app_client, bad):
    r = app_client.put("/collections/flat/points?wait=true",
                       json={"points": [{"id": 40, "vector": bad}]})
    assert r.status_code == 422, r.text
    r = app_client.post("/collections/flat/points/query", json={"query": bad})
    assert r.status_code == 422, r.text
    assert app_client.post("/collections/flat/points", json={"ids": [40]}).json()["result"] == []


def test_writes_to_missing_points_are_404_and_write_nothing(app_client):
    before = app_client.post("/collections/flat/points", json={
        "ids": [0], "with_vector": True, "with_payload": True}).json()["result"]
    for method, path, body in (
            ("put", "/collections/flat/points/vectors", {"points": [
                {"id": 0, "vector": [0, 1, 0, 0]}, {"id": 99999, "vector": [0, 1, 0, 0]}]}),
            ("post", "/collections/flat/points/payload", {"payload": {"a": 1}, "points": [0, 424242]}),
            ("put", "/collections/flat/points/payload", {"payload": {"a": 1}, "points": [0, 424242]}),
            ("post", "/collections/flat/points/payload/clear", {"points": [0, 424242]}),
            ("post", "/collections/flat/points/payload/delete", {"keys": ["i"], "points": [424242]})):
        r = getattr(app_client, method)(path + "?wait=true", json=body)
        error_of(r, 404, "no point with id", "nothing was written")
    after = app_client.post("/collections/flat/points", json={
        "ids": [0], "with_vector": True, "with_payload": True}).json()["result"]
    assert after == before
    r = app_client.post("/collections/flat/points/delete?wait=true", json={"points": [777]})
    assert r.status_code == 200, r.text  # deleting what is not there is no error (as Qdrant)


def test_multivector_fields_refuse_flat_queries(app_client):
    flat = [0.1, 0.2, 0.3, 0.4]
    for path, body in (
            ("/collections/mv/points/query", {"query": flat, "using": "colbert"}),
            ("/collections/mv/points/query", {"query": {"nearest": flat}, "using": "colbert"}),
            ("/collections/mv/points/query/batch", {"searches": [
                {"query": flat, "using": "colbert"}, {"query": flat, "using": "colbert"}]}),
            ("/collections/mv/points/search/batch", {"searches": [
                {"vector": {"name": "colbert", "vector": flat}, "limit": 2}]})):
        error_of(app_client.post(path, json=body), 400, "token matrix")
    good = app_client.post("/collections/mv/points/query", json={
        "query": [[1, 0, 0, 0], [0, 1, 0, 0]], "using": "colbert", "limit": 2})
    assert good.status_code == 200 and len(good.json()["result"]["points"]) == 2
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 4), np.float32))
    r = app_client.post("/collections/mv/points/search/batch?using=colbert", content=buf.getvalue(),
                        headers={"content-type": "application/x-npy"})
    error_of(r, 400, "token matrices")


def test_dense_fields_refuse_token_matrix_queries(app_client):
    """A matrix where a dense field takes one vector is a 400, with a prefetch too (its
    re-scoring search had answered a batch's list of hit lists: a 500)."""
    matrix = [[1, 2, 3, 4]]
    for body in ({"query": matrix, "limit": 2},
                 {"query": matrix, "limit": 2, "prefetch": [{"query": [1, 0, 0, 0], "limit": 4}]},
                 {"query": [1, 0, 0, 0], "prefetch": [{"query": matrix, "limit": 4}]}):
        error_of(app_client.post("/collections/flat/points/query", json=body), 400,
                 "query: expected one vector")
    r = app_client.post("/collections/flat/points/query", json={
        "query": [1, 0, 0, 0], "limit": 2, "prefetch": [{"query": [1, 0, 0, 0], "limit": 4}]})
    assert r.status_code == 200 and len(r.json()["result"]["points"]) == 2


def test_mmr_picks_a_diverse_top_k_with_query_scores(app_client):
    plain = app_client.post("/collections/flat/points/query", json={
        "query": [1, 0, 0, 0], "limit": 3}).json()["result"]["points"]
    assert [p["id"] for p in plain] == [0, 1, 2]  # three near-duplicates
    r = app_client.post("/collections/flat/points/query", json={
        "query": {"nearest": [1, 0, 0, 0], "mmr": {"diversity": 0.7, "candidates_limit": 6}},
        "limit": 3, "with_payload": True})
    assert r.status_code == 200, r.text
    got = r.json()["result"]["points"]
    assert got[0]["id"] == 0 and {1, 2}.isdisjoint(p["id"] for p in got[1:])
    x = np.array([[1, 0, 0, 0], [0.99, 0.1, 0, 0], [0.98, 0.12, 0.05, 0], [0.7, 0.7, 0, 0],
                  [0.6, 0, 0.8, 0], [0, 0, 0, 1]], np.float64)
    cos = x[:, 0] / np.linalg.norm(x, axis=1)
    for p in got:  # the score stays the similarity to the query
        assert p["score"] == pytest.approx(cos[p["id"]], abs=1e-5)
        assert p["payload"] == {"i": p["id"]} and p.get("vector") is None
    zero = app_client.post("/collections/flat/points/query", json={
        "query": {"nearest": [1, 0, 0, 0], "mmr": {"diversity": 0.0, "candidates_limit": 6}},
        "limit": 3}).json()["result"]["points"]
    assert [p["id"] for p in zero] == [0, 1, 2]  # diversity 0: relevance only
    error_of(app_client.post("/collections/mv/points/query", json={
        "query": {"nearest": [[1, 0, 0, 0]], "mmr": {}}, "using": "colbert"}), 400, "mmr")
    r = app_client.post("/collections/flat/points/query", json={
        "query": {"nearest": [1, 0, 0, 0], "mmr": {"diversity": 2}}})
    assert r.status_code == 422, r.text


def test_set_payload_key_writes_into_a_nested_object(app_client):
    r = app_client.post("/collections/flat/points/payload?wait=true",
                        json={"payload": {"x": 1}, "points": [5], "key": "meta.inner"})
    assert r.status_code == 200, r.text
    got = app_client.post("/collections/flat/points", json={"ids": [5], "with_payload": True})
    assert got.json()["result"][0]["payload"] == {"i": 5, "meta": {"inner": {"x": 1}}}
    r = app_client.put("/collections/flat/points/payload",
                       json={"payload": {"x": 1}, "points": [5], "key": "meta"})
    error_of(r, 400, "key", "only set_payload")
    r = app_client.post("/collections/flat/points/payload",
                        json={"payload": {"x": 1}, "points": [5], "key": "a[].b"})
    error_of(r, 400, "key", "list elements")


def test_with_vector_names_must_be_fields(app_client):
    for path, body in (("/collections/flat/points/query", {"query": [1, 0, 0, 0]}),
                       ("/collections/flat/points", {"ids": [1]}),
                       ("/collections/flat/points/scroll", {})):
        error_of(app_client.post(path, json={**body, "with_vector": ["zzz"]}), 400,
                 "with_vector", "'zzz'", "one unnamed vector")
    r = app_client.post("/collections/mv/points", json={"ids": [1], "with_vector": ["other"]})
    error_of(r, 400, "no vector field 'other'", "'colbert'")
    r = app_client.post("/collections/mv/points", json={"ids": [1], "with_vector": ["colbert"]})
    assert r.status_code == 200 and set(r.json()["result"][0]["vector"]) == {"colbert"}


def test_cluster_and_telemetry_answer_as_qdrant(app_client):
    r = app_client.get("/cluster")
    assert r.status_code == 200 and r.json()["result"] == {"status": "disabled"}
    r = app_client.get("/telemetry")
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["app"]["name"] == "quiver" and res["collections"]["number_of_collections"] == 2
