"""The Python SDK against a real server, and one scenario run on the embedded database, the
blocking client and the async client that must give identical results."""

from __future__ import annotations

import asyncio
import inspect
import threading
import uuid

import httpx
import numpy as np
import pytest
from _live_server import serve
from quiver.client import AsyncRemoteCollection, AuthError, ServerUnavailable
from quiver.engine.errors import AlreadyExists
from quiver.engine.hits import NPZ
from quiver.server.schemas import BINARY_POINTS, NPY

import quiver

KEY, RO_KEY = "client-rw", "client-ro"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "client-open")


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    yield from serve(tmp_path_factory, "client-secure", "--max-body-bytes", "30000",
                     "--max-batch", "10", "--max-k", "50", api_keys=KEY, read_only_keys=RO_KEY)


@pytest.fixture
def client(server):
    with quiver.Client(server.url) as c:
        yield c


# --- the shared scenario ----------------------------------------------------------------------

DIM = 8
UUIDS = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(5)]


def raised(call) -> tuple[str, str] | None:
    """The error a call raises, as (class name, message): compared like any other answer."""
    try:
        call()
    except quiver.QuiverError as exc:
        return type(exc).__name__, str(exc)
    return None


def scenario(db, workdir) -> dict:
    """Everything a user does with a database, written once for ``quiver.connect(path)`` and
    ``quiver.Client(url)``; returns what it observed."""
    out: dict = {}
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, DIM)).astype(np.float32)
    payloads = [{"g": i % 5, "tag": ["a", "b", "c"][i % 3], "v": i / 7, "even": i % 2 == 0}
                for i in range(300)]
    col = db.create_collection("scen", DIM, "cosine", "Flat", segment_size=128)
    l2 = db.create_collection("scen-l2", DIM, "euclidean", "HNSW8,F32")
    out["list"] = db.list_collections()

    out["seq"] = [
        col.upsert(list(range(40)), x[:40], payloads[:40]),  # small: JSON over HTTP
        col.upsert(np.arange(40, 300), x[40:], payloads[40:]),  # large: binary frame
    ]
    # the 300 points past segment_size are sealed now, not whenever the optimizer wakes (it
    # could take the next upsert's points too, and the plans below list segment sizes)
    col.flush()
    out["seq"] += [
        col.upsert(points=[{"id": u, "vector": x[i].tolist(), "payload": {"g": 9, "uuid": True}}
                           for i, u in enumerate(UUIDS)]),
        col.upsert([7, 8], x[[9, 10]] * 2, [{"g": 7}, None]),  # replace two points
        l2.upsert(np.arange(100), x[:100]),
        col.upsert([], np.zeros((0, DIM), np.float32)),
        col.upsert(points=[]),
    ]
    col.create_payload_index("g", "integer")
    col.create_payload_index("tag", "keyword")
    l2.flush()
    out["flushed"] = [(s["sealed"], s["points"]) for s in l2.info()["segments"]]
    info = col.info()
    out["info"] = {k: info[k] for k in ("name", "points", "dim", "metric", "index",
                                        "payload_indexes", "last_seq")}
    flt = {"must": [{"key": "tag", "match": {"any": ["a", "c"]}}, {"key": "v", "range": {"lt": 30}}],
           "must_not": [{"key": "g", "match": {"value": 2}}]}
    out["count"] = [col.count(), col.count(flt), col.count({"must": [{"has_id": UUIDS[:3]}]}),
                    len(db.get_collection("scen-l2").scroll(limit=1000)[0])]

    q = rng.standard_normal(DIM).astype(np.float32)
    Q = rng.standard_normal((5, DIM))  # float64: converted like the engine does
    out["search"] = col.search(q, k=10, with_payload=True)
    out["search_list"] = col.search(q.tolist(), 3)
    out["search_f"] = col.search(q, 10, filter=flt, with_payload=True, with_vectors=True)
    out["search_exact"] = col.search(q, 5, params={"exact": True})
    out["batch"] = col.search(Q, k=7, with_payload=True)
    out["batch_f"] = col.search(Q, 4, filter={"must": [{"key": "even", "match": {"value": True}}]})
    out["batch_one"] = col.search(Q[:1], 2)
    out["batch_empty"] = col.search(np.zeros((0, DIM), np.float32), 3)
    out["l2"] = l2.search(x[3] + 0.01, 5, params={"ef": 64})
    out["l2_batch"] = l2.search(x[:3], 3, params={"exact": True})
    out["arrays"] = [col.search_arrays(Q, 6),  # UUID and integer ids: strings
                     col.search_arrays(Q[:2], 4, filter=flt),  # JSON over HTTP
                     l2.search_arrays(x[:4] + 0.01, 3, params={"ef": 32}),  # uint64 ids
                     l2.search_arrays(np.zeros((0, DIM), np.float32), 3)]
    out["arrays_points"] = out["arrays"][0].to_points()
    out["groups"] = [col.search_groups(q, "tag", limit=2, group_size=3, with_payload=["g"]),
                     col.search_groups(q, "g", 3, 2, filter=flt, params={"exact": True}),
                     l2.search_groups(x[3], "nothing", 2, 2)]
    out["ordered"] = [col.scroll(limit=5, order_by="v", with_payload=["v"]),
                      col.scroll(filter=flt, limit=3, order_by={"key": "v", "direction": "desc",
                                                                "start_from": 20})]
    out["projection"] = [col.search(q, 5, with_payload=["g", "tag", "missing"]),
                         col.search(Q[:3], 3, with_payload={"exclude": ["v", "even"]}),
                         col.get([5, 7, UUIDS[2]], with_payload={"include": ["tag"]}),
                         col.scroll(limit=4, with_payload=["even"])]
    out["threshold"] = [col.search(q, 10, score_threshold=0.62),
                        col.search(Q, 6, score_threshold=0.745, with_payload=True),
                        col.search(Q[:2], 4, filter=flt, score_threshold=0.7),
                        col.search_arrays(Q, 6, score_threshold=0.745),
                        l2.search(x[3] + 0.01, 5, score_threshold=1.0),
                        l2.search(x[:3] + 0.01, 3, score_threshold=1)]
    col.flush()  # plans list segments: sealing must not race the searches that name them
    out["explain_batch"] = [col.search(Q[:3], 4, filter=flt, explain=True),
                            l2.search(x[:2], 2, explain=True, params={"ef": 16}),
                            col.search(np.zeros((0, DIM), np.float32), 3, explain=True)]
    hits, plan = col.search(q, 3, filter=flt, explain=True)
    out["explain"] = (hits, sorted({p["strategy"] for p in plan}))

    out["get"] = col.get([5, 299, 12345, UUIDS[1], 7], with_vectors=True)
    out["get_np"] = col.get(np.array([3, 4]), with_payload=False)
    pages, cursor = [], None
    while True:
        page, cursor = col.scroll(flt, limit=17, cursor=cursor)
        pages.append(page)
        if cursor is None:
            break
    out["scroll"] = pages
    out["scroll_all"] = col.scroll(limit=400, with_payload=False)

    out["deleted"] = [col.delete([1, 2, 3, 999, UUIDS[0]]),
                      col.delete(filter={"must": [{"key": "g", "match": {"value": 4}}]}),
                      col.delete([1, 2])]
    out["after"] = [col.count(), col.search(q, 10, with_payload=True), col.get([1, 4, 5])]

    g42 = {"must": [{"key": "g", "match": {"value": 42}}]}
    out["payload_updates"] = [
        col.set_payload({"g": 42, "new": "x"}, ids=[5, 6, UUIDS[2]]),
        raised(lambda: col.set_payload({"g": 0}, ids=[5, 99999])),  # nothing written
        col.overwrite_payload({"only": True}, ids=[8]),
        col.delete_payload(["tag", "nope"], filter={"must": [{"key": "g", "match": {"value": 3}}]}),
        raised(lambda: col.clear_payload(ids=[9])),  # not there
        col.set_payload({"flag": 1}, filter=g42),
        col.set_payload({"deep": 1}, ids=[6], key="nest.ed"),
        raised(lambda: col.set_payload({"deep": 1}, ids=[6], key="a[].b")),
    ]
    out["after_payload"] = [
        col.get([5, 6, 8, 9, UUIDS[2], 13], with_vectors=True), col.count(g42),
        col.search(q, 5, filter={"must": [{"key": "new", "match": {"value": "x"}}]},
                   with_payload=True)]
    col.delete_payload_index("tag")
    out["indexes"] = col.info()["payload_indexes"]

    errors = []
    for call in [
        lambda: col.search(np.ones(3), 5),
        lambda: col.search(np.full(DIM, np.nan), 5),
        lambda: col.search(q, 0),
        lambda: col.search(q, 5, filter={"must": [{"key": "g", "range": {"bogus": 1}}]}),
        lambda: col.search(q, 5, params={"nprob": 3}),
        lambda: col.upsert([1], [[np.nan] * DIM]),
        lambda: col.upsert(np.arange(100), np.full((100, DIM), np.inf)),
        lambda: col.upsert([1, 1], x[:2]),
        lambda: col.upsert([1, 2], x[:3]),
        lambda: col.upsert([1], x[:1, :4]),
        lambda: col.upsert(["no-uuid"], x[:1]),
        lambda: col.upsert([1], x[:1], [{"bad": float("nan")}]),
        lambda: col.upsert(points=[{"vector": [1.0] * DIM}]),
        lambda: col.get([-1]),
        lambda: col.delete(),
        lambda: col.count({"must": 5}),
        lambda: col.scroll(limit=0),
        lambda: col.create_payload_index("x", "hex"),
        lambda: col.delete_payload_index("nope"),
        lambda: db.get_collection("missing"),
        lambda: db.drop_collection("missing"),
        lambda: db.create_collection("scen", DIM),
        lambda: db.create_collection("bad name!", DIM),
        lambda: db.create_collection("dimless", 0),
        lambda: db.create_collection("odd", DIM, "hamming"),
        lambda: col.search(q, 2.5),
        lambda: col.flush(0),
        lambda: col.set_payload({"a": float("nan")}, ids=[1]),
        lambda: col.set_payload({"a": 1}),
        lambda: col.set_payload({"a": 1}, ids=5),
        lambda: col.get(np.int64(5)),
        lambda: col.delete_payload("tag", ids=[1]),
        lambda: col.delete_payload(["a..b"], filter={}),
        lambda: col.overwrite_payload({"a": 1}, ids=[1], filter={}),
        lambda: col.search(q, 5, with_payload={"only": ["g"]}),
        lambda: col.get([1], with_payload=[3]),
        lambda: col.scroll(limit=2, with_payload=["a..b"]),
        lambda: col.search(q, 5, score_threshold=float("nan")),
        lambda: col.search(Q, 5, score_threshold=True),
        lambda: col.search_arrays(Q, 5, score_threshold="high"),
        lambda: col.search_arrays(q, 3),
        lambda: col.search_arrays(Q[:, :3], 3),
    ]:
        try:
            call()
            errors.append(None)
        except quiver.QuiverError as exc:
            errors.append((type(exc).__name__, str(exc)))
    out["errors"] = errors
    out["exist_ok"] = db.create_collection("scen", DIM, exist_ok=True).dim

    snap = col.snapshot()
    path = col.download_snapshot(snap, workdir) if hasattr(col, "download_snapshot") else snap
    restored = db.restore_snapshot(path, "scen-restored")
    out["restored"] = [restored.count(), restored.search(q, 10, with_payload=True),
                       restored.info()["payload_indexes"]]
    for name in ("scen", "scen-l2", "scen-restored"):
        db.drop_collection(name)
    out["list_after"] = [n for n in db.list_collections() if n.startswith("scen")]
    return out


# Over HTTP some arguments are checked by the request schema before the engine sees them:
# same exception type, but the message comes from the schema ("params.nprobe: Extra inputs
# are not permitted"); the others carry the engine's message word for word.
SCHEMA_CHECKED = {4, 17, 23}


def assert_same(a, b, path="out"):
    if isinstance(a, quiver.SearchArrays):
        assert isinstance(b, quiver.SearchArrays), (path, b)
        assert a.ids.dtype == b.ids.dtype and a.ids.shape == b.ids.shape, (path, a, b)
        np.testing.assert_array_equal(a.ids, b.ids, err_msg=path)
        np.testing.assert_array_equal(a.counts, b.counts, err_msg=path)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5, err_msg=path)
    elif isinstance(a, quiver.Point):
        assert isinstance(b, quiver.Point), (path, b)
        assert a.id == b.id, (path, a, b)
        assert a.payload == b.payload, (path, a, b)
        if a.score is None or b.score is None:
            assert a.score is b.score, (path, a, b)
        else:
            assert abs(a.score - b.score) <= 1e-5, (path, a, b)
        if a.vector is None or b.vector is None:
            assert a.vector is b.vector, (path, a, b)
        else:
            np.testing.assert_allclose(a.vector, b.vector, rtol=0, atol=1e-6, err_msg=path)
    elif isinstance(a, quiver.Group):
        assert isinstance(b, quiver.Group) and a.id == b.id, (path, a, b)
        assert_same(a.hits, b.hits, f"{path}.hits")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a, b)
        for k in a:
            if k == "estimated_selectivity":  # sampled per segment: the segments the optimizer
                continue                      # has merged by then, not the API, decide it
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


class Blocking:
    """Runs an ``AsyncClient`` (and the collections it returns) on an event loop in another
    thread behind blocking methods, so the scenario can drive it unchanged."""

    def __init__(self, target, loop):
        self._target, self._loop = target, loop

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            res = attr(*args, **kwargs)
            if inspect.isawaitable(res):
                res = asyncio.run_coroutine_threadsafe(res, self._loop).result()
            return Blocking(res, self._loop) if isinstance(res, AsyncRemoteCollection) else res

        return call


def test_scenario_is_identical_embedded_client_and_async(server, tmp_path):
    with quiver.connect(tmp_path / "embedded") as db:
        embedded = scenario(db, tmp_path)
    (tmp_path / "dl").mkdir()
    with quiver.Client(server.url) as client:
        remote = scenario(client, tmp_path / "dl")

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        aclient = quiver.AsyncClient(server.url)
        (tmp_path / "adl").mkdir()
        remote_async = scenario(Blocking(aclient, loop), tmp_path / "adl")
        asyncio.run_coroutine_threadsafe(aclient.close(), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    assert embedded["errors"].count(None) == 0, embedded["errors"]
    for other in (remote, remote_async):
        errs_a, errs_b = embedded.pop("errors"), other.pop("errors")
        for i, (a, b) in enumerate(zip(errs_a, errs_b, strict=True)):
            assert a[0] == b[0], (i, a, b)
            if i not in SCHEMA_CHECKED:
                assert a[1] == b[1], (i, a, b)
        assert_same(embedded, other)
        embedded["errors"] = errs_a
    # the scenario really exercised something
    assert embedded["count"][0] == 305 and embedded["count"][1] > 0
    assert len(embedded["scroll"]) > 2 and embedded["after"][0] < 300
    assert len(embedded["batch"]) == 5 and len(embedded["batch"][0]) == 7


# --- transport choices ---------------------------------------------------------------------------


def test_bulk_upserts_and_matrix_searches_use_binary_bodies(client):
    sent = []
    client._http.event_hooks["request"].append(
        lambda req: sent.append((req.url.path, req.headers.get("content-type"))))
    col = client.create_collection("bodies", 4, "l2", "Flat")
    x = np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32)
    col.upsert(list(range(10)), x[:10])
    col.upsert(np.arange(10, 100), x[10:], [{"i": i} for i in range(10, 100)])
    res = col.search(x[:3], k=2, with_payload=True)
    col.search(x[:3], k=2, filter={"must": [{"key": "i", "range": {"gte": 50}}]})
    col.search(x[0], k=2)
    assert [t for _, t in sent[1:]] == ["application/json", BINARY_POINTS, NPY, "application/json",
                                        "application/json"]
    assert [r[0].id for r in res] == [0, 1, 2] and res[2][0].payload == {}
    assert res[1][1].score >= res[1][0].score == 0.0
    assert col.get([50])[0].payload == {"i": 50}
    assert len(col) == col.count() == 100


def test_batch_size_splits_large_upserts(secure):
    with quiver.Client(secure.url, api_key=KEY) as c:
        col = c.create_collection("chunks", 3, "l2", "Flat")
        x = np.ones((25, 3), np.float32)
        with pytest.raises(quiver.InvalidArgument, match="batch limit"):
            col.upsert(np.arange(25), x)
        seq = col.upsert(np.arange(25), x, batch_size=10)
        assert col.count() == 25 and seq == col.info()["last_seq"] == 3


# --- errors ----------------------------------------------------------------------------------------


def test_http_errors_map_to_engine_exceptions(client, secure):
    with pytest.raises(quiver.NotFound, match="'nope' does not exist") as e:
        client.get_collection("nope")
    assert e.value.status_code == 404 and e.value.code == "not_found"
    client.create_collection("errs", 2, index="Flat")
    with pytest.raises(AlreadyExists, match="already exists"):
        client.create_collection("errs", 2)
    col = client.get_collection("errs")
    with pytest.raises(quiver.InvalidArgument, match="wrong dimension 3") as e:
        col.search([1, 2, 3])
    assert e.value.status_code == 400
    with pytest.raises(quiver.InvalidArgument, match="field_schema") as e:
        col.create_payload_index("x", "hex")
    assert e.value.status_code == 422 and e.value.details

    url = secure.url
    for kwargs in ({}, {"api_key": "wrong"}):
        with quiver.Client(url, **kwargs) as c, pytest.raises(AuthError, match="api-key") as e:
            c.list_collections()
        assert e.value.status_code == 401
        assert isinstance(e.value, PermissionError) and isinstance(e.value, quiver.QuiverError)
    with quiver.Client(url, api_key=KEY) as rw, quiver.Client(url, api_key=RO_KEY) as ro:
        rw.create_collection("guarded", 2, index="Flat").upsert([1], [[1, 0]])
        guarded = ro.get_collection("guarded")
        assert guarded.search([1, 0], 1)[0].id == 1 and guarded.count() == 1
        with pytest.raises(AuthError, match="read-only") as e:
            guarded.upsert([2], [[0, 1]])
        assert e.value.status_code == 403
        with pytest.raises(AuthError):
            ro.drop_collection("guarded")
        with pytest.raises(quiver.InvalidArgument, match="limit of 30000") as e:  # 413
            rw.get_collection("guarded").upsert([3], [[1, 1]], [{"pad": "x" * 40_000}])
        assert e.value.status_code == 413
        with pytest.raises(quiver.InvalidArgument, match="limit of 50"):  # 422
            guarded.search([1, 0], 51)


def test_wrong_typed_arguments_are_invalid_arguments_remote_as_embedded(client, tmp_path):
    """What the embedded API refuses as an InvalidArgument, the client refuses the same way
    before sending (it had raised TypeErrors while encoding: found by a fuzz of both)."""
    spec = {"d": {"dim": 4, "metric": "l2"}}
    db = quiver.connect(tmp_path)
    for col in (db.create_collection("types", vectors=spec),
                client.create_collection("types", vectors=spec)):
        col.upsert(ids=[1], vectors={"d": [[1, 0, 0, 0]]})
        for call, field in ((lambda c=col: c.search([0.1, 0.2, 0.3, 0.4], 1, using={"a": 1}),
                             "using"),
                            (lambda c=col: c.search(1.5, 1, using="d"), "vector"),
                            (lambda c=col: c.upsert(ids=[2], vectors={"d": [[0, 1, 0, 0]]},
                                                    payloads=np.int64(1)), "payloads"),
                            (lambda c=col: c.update_vectors(7, {"d": [[1, 0, 0, 0]]}), "ids"),
                            (lambda c=col: c.update_vectors([1], {"d": 2.5}), r"vectors\['d'\]"),
                            (lambda c=col: c.set_payload({"b": b"x"}, [1]), r"payload\.b: bytes"),
                            (lambda c=col: c.search([0.1, 0.2, 0.3, 0.4], 1, using="d",
                                                    filter={"must": [{"key": "a", "match": {
                                                        "value": b"x"}}]}), "bytes")):
            with pytest.raises(quiver.InvalidArgument, match=field):
                call()
        assert col.count() == 1
    db.close()


def test_server_errors_and_odd_answers_map_to_quiver_error():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/collections/boom":
            return httpx.Response(500, json={"error": {"code": "corrupt_data", "message": "bad file",
                                                       "details": None}})
        if request.url.path == "/collections/proxy":
            return httpx.Response(502, text="<html>bad gateway</html>")
        if request.url.path == "/collections/weird":
            return httpx.Response(418, text="teapot")
        return httpx.Response(200, text="not json")

    with quiver.Client("http://test", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(quiver.QuiverError, match="server error 500: bad file") as e:
            c.get_collection("boom")
        assert type(e.value) is quiver.QuiverError and e.value.code == "corrupt_data"
        with pytest.raises(quiver.QuiverError, match="bad gateway"):
            c.get_collection("proxy")
        with pytest.raises(quiver.InvalidArgument, match="teapot"):
            c.get_collection("weird")
        with pytest.raises(quiver.QuiverError, match="not JSON"):
            c.list_collections()


def test_batch_search_reads_a_json_answer_and_rejects_a_broken_npz():
    """A server or proxy that ignores ``Accept: application/x-npz`` still works; a broken
    binary answer is the server's fault, not an InvalidArgument."""
    hits = [[{"id": 3, "score": 0.5}, {"id": 1, "score": 0.25}], [{"id": 2, "score": 0.75}]]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"result": {"name": request.url.path.rsplit("/")[-1],
                                                        "dim": 2, "metric": "ip"}})
        assert request.headers["accept"] == NPZ
        if "json" in request.url.path:
            return httpx.Response(200, json={"result": hits, "time": 0.0})
        return httpx.Response(200, content=b"PK garbage", headers={"content-type": NPZ})

    q = np.ones((2, 2), np.float32)
    with quiver.Client("http://test", transport=httpx.MockTransport(handler)) as c:
        col = c.get_collection("json")
        assert col.search(q, 2) == [[quiver.Point(3, 0.5), quiver.Point(1, 0.25)],
                                    [quiver.Point(2, 0.75)]]
        arrs = col.search_arrays(q, 2)
        assert arrs.ids.tolist() == [[3, 1], [2, 0]] and arrs.counts.tolist() == [2, 1]
        broken = c.get_collection("npz")
        for call in (lambda: broken.search(q, 2), lambda: broken.search_arrays(q, 2)):
            with pytest.raises(quiver.QuiverError, match="server's answer is unreadable") as e:
                call()
            assert not isinstance(e.value, quiver.InvalidArgument)
        with pytest.raises(quiver.InvalidArgument, match="got 1 dimension"):
            broken.search_arrays(q[0], 2)


# --- retries ---------------------------------------------------------------------------------------


class Flaky(httpx.MockTransport):
    """Fails the first ``fail`` requests with ``exc``, then answers like a tiny server."""

    def __init__(self, fail: int, exc: type[httpx.TransportError]):
        self.fail, self.exc, self.calls = fail, exc, 0

        def handler(request):
            body = {"result": {"count": 3} if request.url.path.endswith("/count") else
                    {"deleted": 1, "status": "acknowledged"}, "time": 0.0}
            return httpx.Response(200, json=body)

        super().__init__(handler)

    def handle_request(self, request):
        self.calls += 1
        if self.calls <= self.fail:
            raise self.exc("boom", request=request)
        return super().handle_request(request)


def remote(client) -> quiver.client.RemoteCollection:
    return quiver.client.RemoteCollection(client, {"name": "c", "dim": 2, "metric": "l2"})


def test_idempotent_calls_retry_connection_errors():
    t = Flaky(2, httpx.ReadError)
    with quiver.Client("http://test", transport=t, retries=3) as c:
        assert remote(c).count() == 3
    assert t.calls == 3
    t = Flaky(5, httpx.ConnectError)
    with quiver.Client("http://test", transport=t, retries=2) as c, \
            pytest.raises(ServerUnavailable, match="ConnectError"):
        remote(c).count()
    assert t.calls == 3


def test_non_idempotent_calls_are_not_resent():
    t = Flaky(1, httpx.ReadError)  # the server may have applied it
    with quiver.Client("http://test", transport=t, retries=3) as c, pytest.raises(ServerUnavailable):
        remote(c).delete([1])
    assert t.calls == 1
    t = Flaky(1, httpx.ConnectError)  # never reached the server: safe to send again
    with quiver.Client("http://test", transport=t, retries=3) as c:
        assert remote(c).delete([1]) == 1
    assert t.calls == 2


def test_async_client_retries():
    class AsyncFlaky(httpx.AsyncBaseTransport):
        def __init__(self):
            self.calls = 0

        async def handle_async_request(self, request):
            self.calls += 1
            if self.calls == 1:
                raise httpx.ConnectError("down", request=request)
            return httpx.Response(200, json={"result": {"count": 4}, "time": 0.0})

    t = AsyncFlaky()

    async def main():
        async with quiver.AsyncClient("http://test", transport=t) as c:
            col = AsyncRemoteCollection(c, {"name": "c", "dim": 2, "metric": "l2"})
            return await col.count()

    assert asyncio.run(main()) == 4 and t.calls == 2


def test_unreachable_server():
    with quiver.Client("http://127.0.0.1:9", retries=1, timeout=2) as c:
        assert c.ready() is False
        with pytest.raises(ServerUnavailable):
            c.list_collections()


# --- misc ------------------------------------------------------------------------------------------


def test_snapshots_and_metrics_through_the_client(client, tmp_path):
    col = client.create_collection("snapc", 2, "l2", "Flat")
    col.upsert([1, 2], [[1, 0], [0, 1]], [{"a": 1}, {"a": 2}])
    name = col.snapshot()
    assert name in [s["name"] for s in col.list_snapshots()]
    path = col.download_snapshot(name, tmp_path / "copy.tar")
    assert path == tmp_path / "copy.tar" and path.stat().st_size > 0
    with pytest.raises(quiver.NotFound):
        col.download_snapshot("missing.tar", tmp_path)
    assert not (tmp_path / "missing.tar").exists()
    restored = client.restore_snapshot(path, "snapc-copy")
    assert restored.get([2])[0].payload == {"a": 2} and restored.dim == 2
    with pytest.raises(quiver.InvalidArgument, match="cannot read"):
        client.restore_snapshot(tmp_path / "nothing.tar", "x")
    text = client.metrics()
    assert 'quiver_collection_points{collection="snapc-copy"} 2' in text
    assert client.ready() is True
    assert "snapc" in client.list_collections()


def test_async_client_end_to_end(server, tmp_path):
    async def main():
        async with quiver.AsyncClient(server.url) as c:
            col = await c.create_collection("asyncc", 3, "l2", "Flat")
            x = np.arange(300, dtype=np.float32).reshape(100, 3)
            await col.upsert(np.arange(100), x)
            hits = await col.search(x[5], 2)
            batch = await col.search(x[:2], 1)
            page, cursor = await col.scroll(limit=30)
            name = await col.snapshot()
            path = await col.download_snapshot(name, tmp_path)
            restored = await c.restore_snapshot(path, "asyncc-copy")
            return hits, batch, page, cursor, await restored.count(), await c.list_collections()

    hits, batch, page, cursor, n, names = asyncio.run(main())
    assert hits[0].id == 5 and hits[0].score == 0.0
    assert [b[0].id for b in batch] == [0, 1]
    assert len(page) == 30 and cursor == 30 and n == 100
    assert {"asyncc", "asyncc-copy"} <= set(names)


def test_public_exports():
    assert quiver.Client is quiver.client.Client
    assert quiver.AsyncClient is quiver.client.AsyncClient
    assert issubclass(quiver.client.AuthError, quiver.QuiverError)
    assert issubclass(quiver.client.AuthError, PermissionError)
    assert {"Client", "AsyncClient"} <= set(quiver.__all__)


def test_flush_past_its_deadline_raises_timeout_like_the_embedded_api(server, tmp_path):
    """The server answers 202 "indexing" when a flush misses its deadline (the work goes on);
    the client raises the engine's TimeoutError, as ``Collection.flush`` does."""
    db = quiver.connect(tmp_path)
    with quiver.Client(server.url) as client:
        for target in (db, client):
            col = target.create_collection("late-flush", DIM, "l2")
            col.upsert([1, 2, 3], np.eye(3, DIM, dtype=np.float32))
            with pytest.raises(TimeoutError, match="flush: optimizer still busy after the 1e-09 s"):
                col.flush(1e-9)
            col.flush()
            assert col.info()["indexed_points"] == 3
            target.drop_collection("late-flush")
    db.close()


def test_multi_vector_fields_over_rest_match_the_embedded_database(server, tmp_path):
    """A multi-vector field through the client (binary upsert with token offsets, JSON
    searches) and raw JSON answers as the embedded database does."""
    rng = np.random.default_rng(12)
    docs = [rng.standard_normal((int(rng.integers(1, 6)), 8)).astype(np.float32)
            for _ in range(40)]
    spec = {"mv": {"dim": 8, "multivector": "max_sim", "index": "HNSW16",
                   "fde": {"k_sim": 2, "d_proj": 4, "r_reps": 4}}, "d": {"dim": 3}}
    dense = rng.standard_normal((40, 3)).astype(np.float32)
    pls = [{"g": i % 2} for i in range(40)]
    db = quiver.connect(tmp_path / "embedded")
    with quiver.Client(server.url) as c:
        remote = c.create_collection("late-interaction", vectors=spec)
        try:
            local = db.create_collection("late-interaction", vectors=spec)
            for col in (local, remote):
                col.upsert(ids=list(range(40)), vectors={"mv": docs, "d": dense}, payloads=pls)
            flt = {"must": [{"key": "g", "match": {"value": 1}}]}
            for kw in ({}, {"filter": flt}, {"params": {"exact": True}},
                       {"params": {"candidates": 30}}):
                a = local.search(docs[7], k=4, using="mv", **kw)
                b = remote.search(docs[7], k=4, using="mv", **kw)
                assert [h.id for h in a] == [h.id for h in b]
                np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-5)
            batch = [docs[1], docs[2][:1]]
            assert ([[h.id for h in r] for r in local.search(batch, k=3, using="mv")]
                    == [[h.id for h in r] for r in remote.search(batch, k=3, using="mv")])
            np.testing.assert_array_equal(local.search_arrays(batch, k=3, using="mv").ids,
                                          remote.search_arrays(batch, k=3, using="mv").ids)
            np.testing.assert_allclose(remote.get([7], with_vectors=True)[0].vector["mv"],
                                       local.get([7], with_vectors=True)[0].vector["mv"])
            raw = httpx.put(f"{server.url}/collections/late-interaction/points", json={
                "points": [{"id": 99, "vector": {"mv": docs[7].tolist()}}]})
            assert raw.status_code == 200, raw.text
            assert {h.id for h in remote.search(docs[7], k=2, using="mv")} == {7, 99}
            bad = httpx.put(f"{server.url}/collections/late-interaction/points", json={
                "points": [{"id": 98, "vector": {"mv": [[1.0, 2.0]]}}]})
            assert bad.status_code == 400 and "mv" in bad.text
        finally:
            c.drop_collection("late-interaction")
            db.close()


def test_token_hits_over_rest(server):
    """A token-retrieval field's ``token_hits`` is taken, reported and checked over REST."""
    field = {"dim": 8, "multivector": "max_sim", "index": "HNSW16", "retrieval": "tokens"}
    url = f"{server.url}/collections"
    try:
        r = httpx.put(f"{url}/hits", json={"vectors": {"mv": {**field, "token_hits": 12}}})
        assert r.status_code == 200, r.text
        assert r.json()["result"]["vectors"]["mv"]["token_hits"] == 12
        for bad in ({**field, "token_hits": 0}, {**field, "retrieval": "fde", "token_hits": 12}):
            r = httpx.put(f"{url}/hits-bad", json={"vectors": {"mv": bad}})
            assert r.status_code in (400, 422) and "token_hits" in r.text, r.text
    finally:
        httpx.delete(f"{url}/hits")
        httpx.delete(f"{url}/hits-bad")


def test_train_queries_over_http_like_the_embedded_api(server, tmp_path):
    """A query sample reaches the server's collection (kept, counted, validated), as it does
    an embedded one; bad samples are an InvalidArgument naming the field, and the sample
    kept before stays (checked where it can be read: embedded)."""
    rng = np.random.default_rng(5)
    db = quiver.connect(tmp_path)
    with quiver.Client(server.url) as client:
        for target in (db, client):
            col = target.create_collection("sampled", DIM, "l2")
            assert col.train_queries(rng.standard_normal((30, DIM))) == 30
            with pytest.raises(quiver.InvalidArgument, match="queries"):
                col.train_queries(rng.standard_normal((4, DIM + 1)))
            with pytest.raises(quiver.InvalidArgument, match="queries"):
                col.train_queries([[1.0] * DIM, [1.0]])
            if target is db:
                assert col._learn_queries("").shape == (30, DIM)
            col.upsert(list(range(200)), rng.standard_normal((200, DIM)).astype(np.float32))
            col.flush()
            assert col.search(np.zeros(DIM, np.float32), 3)[0].id is not None
            target.drop_collection("sampled")
    db.close()
