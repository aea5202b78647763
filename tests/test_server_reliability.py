"""The REST server when things go wrong around a request: the disk fails or fills, a body
comes in the wrong media type or stops arriving, ids come as bools or floats, a collection's
files are damaged. Each answers a JSON error, and the server (and its connections) go on."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from _live_server import LiveServer, free_port, serve
from quiver.engine.collection import Collection
from quiver.engine.database import Database
from quiver.server import gate
from quiver.server.app import create_app
from quiver.server.schemas import BINARY_POINTS, NPY
from quiver.server.settings import Settings
from test_server import assert_error, result

# --- in process: the app around a real database, served by uvicorn on 127.0.0.1 --------------


@pytest.fixture
def inproc(tmp_path):
    """(base URL, the app's Database): uvicorn serving ``create_app`` in a thread, so a test
    can break the engine with monkeypatch and still speak real HTTP/1.1 keep-alive to it."""
    db = Database(tmp_path / "data")
    app = create_app(Settings(data=tmp_path / "data", warmup=False), db=db)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", db
    finally:
        server.should_exit = True
        thread.join(60)


def client_port(resp: httpx.Response) -> int:
    """The local port of the connection that carried ``resp`` (ask before its body is read:
    a connection the server closes is gone then). The same port for two answers means the
    client did not have to reconnect."""
    return resp.extensions["network_stream"].get_extra_info("client_addr")[1]


def raises(err: int, text: str):
    def fail(*_args, **_kwargs):
        raise OSError(err, text)
    return fail


def test_os_errors_answer_json_and_keep_the_connection(inproc, monkeypatch):
    url, db = inproc
    db.create_collection("c", dim=2, metric="l2", index="Flat")
    ports: list[int] = []  # of each answer, in order
    with httpx.Client(base_url=url, timeout=30,
                      event_hooks={"response": [lambda r: ports.append(client_port(r))]}) as http:
        result(http.put("/collections/c/points", json={"points": [{"id": 1, "vector": [1, 0]}]}))
        cases = [  # (what breaks, the request, status, code): a write, the fast path, a read
            ("upsert", ("PUT", "/collections/c/points", {"points": [{"id": 2, "vector": [0, 1]}]}),
             errno.ENOSPC, "No space left on device", 507, "insufficient_storage"),
            ("search", ("POST", "/collections/c/points/search", {"vector": [1, 0], "limit": 1}),
             errno.EDQUOT, "Disk quota exceeded", 507, "insufficient_storage"),
            ("count", ("POST", "/collections/c/points/count", {}),
             errno.EIO, "Input/output error", 503, "io_error"),
        ]
        for method, (verb, path, body), err, text, status, code in cases:
            with monkeypatch.context() as m:
                m.setattr(Collection, method, raises(err, text))
                resp = http.request(verb, path, json=body)
            assert assert_error(resp, status, text)["code"] == code
            # the next request rides the same connection and gets its answer
            after = http.post("/collections/c/points/count", json={})
            assert result(after)["count"] == 1  # nothing was written by the failed upsert
        assert ports == [ports[0]] * 7, ports


# --- a live ``quiver serve`` -------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    yield from serve(tmp_path_factory, "reliable")


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, timeout=30) as c:
        result(c.put("/collections/m", json={"dim": 2, "metric": "l2", "index": "Flat"}))
        result(c.put("/collections/m/points", json={"points": [{"id": 1, "vector": [1, 0]}]}))
        yield c


def count(http: httpx.Client, name: str = "m") -> int:
    return result(http.post(f"/collections/{name}/points/count", json={}))["count"]


BODY_ROUTES = [  # (method, path, a valid JSON body, the binary media type it also takes)
    ("POST", "/collections/m/points/search", {"vector": [1, 0], "limit": 1}, None),
    ("POST", "/collections/m/points/search/batch", {"searches": [{"vector": [1, 0]}]}, NPY),
    ("PUT", "/collections/m/points", {"points": [{"id": 7, "vector": [0, 1]}]}, BINARY_POINTS),
    ("POST", "/collections/m/points", {"ids": [1]}, None),
    ("POST", "/collections/m/points/scroll", {"limit": 5}, None),
    ("POST", "/collections/m/points/count", {"filter": None}, None),
    ("POST", "/collections/m/points/delete", {"points": [7]}, None),
    ("POST", "/collections/m/points/payload", {"payload": {"a": 1}, "points": [7]}, None),
    ("PUT", "/collections/m2", {"dim": 2}, None),
    ("PUT", "/collections/m/index", {"field_name": "a", "field_schema": "keyword"}, None),
]


@pytest.mark.parametrize(("method", "path", "body", "binary"), BODY_ROUTES,
                         ids=[f"{m} {p}" for m, p, *_ in BODY_ROUTES])
def test_json_bodies_in_another_media_type_are_415(http, method, path, body, binary):
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "text/json; charset=utf-8"):
        err = assert_error(http.request(method, path, content=json.dumps(body),
                                        headers={"content-type": ctype}),
                           415, ctype, "application/json", *([binary] if binary else []))
        assert err["code"] == "unsupported_media_type"
    assert count(http) == 1  # nothing was written
    assert_error(http.get("/collections/m2"), 404)


@pytest.mark.parametrize("ctype", [None, "application/json", "application/json; charset=utf-8",
                                   "Application/JSON", "application/merge-patch+json"])
def test_json_media_types_are_accepted(http, ctype):
    headers = {} if ctype is None else {"content-type": ctype}
    resp = http.post("/collections/m/points/search", content=b'{"vector": [1, 0], "limit": 1}',
                     headers=headers)
    assert [h["id"] for h in result(resp)] == [1]
    body = b'{"points": [{"id": 1, "vector": [1, 0]}]}'
    assert result(http.put("/collections/m/points", content=body, headers=headers))
    assert count(http) == 1


def test_bodyless_requests_ignore_the_content_type(http):
    plain = {"content-type": "text/plain"}
    assert result(http.post("/collections/m/points/count", headers=plain))["count"] == 1
    assert result(http.post("/collections/m/points/scroll", headers=plain))["points"]
    assert result(http.get("/collections/m", headers=plain))["name"] == "m"


@pytest.mark.parametrize("bad_id", [True, False, 1.0, 2.5, None, [1]])
def test_bool_and_float_ids_are_rejected(http, bad_id):
    for method, path, body in [
        ("PUT", "/collections/m/points", {"points": [{"id": bad_id, "vector": [0, 1]}]}),
        ("POST", "/collections/m/points", {"ids": [bad_id]}),
        ("POST", "/collections/m/points/delete", {"points": [bad_id]}),
        ("POST", "/collections/m/points/payload", {"payload": {"a": 1}, "points": [bad_id]}),
    ]:
        err = assert_error(http.request(method, path, json=body), 422)
        assert err["code"] == "validation_error"
    if bad_id is not None:  # a null offset is "from the start"
        assert_error(http.post("/collections/m/points/scroll", json={"offset": bad_id}), 422,
                     "offset")
    assert [p["id"] for p in result(http.post("/collections/m/points", json={"ids": [1]}))] == [1]
    assert count(http) == 1


def test_stalled_body_is_a_408_and_the_connection_closes(tmp_path):
    with LiveServer(tmp_path / "data", "--body-timeout", "1", "--no-warmup") as srv:
        result(httpx.put(f"{srv.url}/collections/s", json={"dim": 2, "index": "Flat"}))
        # the fast path (search) and the framework's path (upsert)
        for method, path in (("POST", "/collections/s/points/search"),
                             ("PUT", "/collections/s/points")):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as sock:
                sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             "Content-Type: application/json\r\nContent-Length: 100000000\r\n"
                             "\r\n{\"points\": [".encode())
                answer = b""
                while chunk := sock.recv(65536):  # until the server closes the connection
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), answer
            assert b"content-type: application/json" in head.lower()
            err = json.loads(body)["error"]
            assert err["code"] == "request_timeout" and "body" in err["message"], err
        assert result(httpx.post(f"{srv.url}/collections/s/points/count", json={}))["count"] == 0
        assert srv.stop() == 0, srv.output()


def test_collections_that_fail_to_open_are_reported(tmp_path):
    data = tmp_path / "data"
    with LiveServer(data, "--no-warmup") as srv:
        for name in ("good", "broken"):
            result(httpx.put(f"{srv.url}/collections/{name}", json={"dim": 2, "index": "Flat"}))
            result(httpx.put(f"{srv.url}/collections/{name}/points",
                             json={"points": [{"id": 1, "vector": [1, 0]}]}))
        assert srv.stop() == 0, srv.output()
    (data / "collections" / "broken" / "config.json").write_bytes(b"\x00 not json {")
    with LiveServer(data, "--no-warmup") as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        listed = {c["name"]: c for c in result(http.get("/collections"))["collections"]}
        assert listed["good"] == {"name": "good"}
        assert listed["broken"]["status"] == "failed" and "config" in listed["broken"]["error"]
        text = http.get("/metrics").text
        assert "# TYPE quiver_collection_open_failed gauge" in text
        assert 'quiver_collection_open_failed{collection="broken"} 1' in text
        assert 'quiver_collection_open_failed{collection="good"} 0' in text
        assert 'quiver_collection_points{collection="good"} 1' in text
        assert 'quiver_collection_points{collection="broken"}' not in text
        assert assert_error(http.get("/collections/broken"), 500, "config")["code"] == "corrupt_data"
        # the others keep working, the client's listing too (it reads the names)
        result(http.put("/collections/good/points", json={"points": [{"id": 2, "vector": [0, 1]}]}))
        assert count(http, "good") == 2
        from quiver import Client

        with Client(srv.url) as client:
            assert client.list_collections() == ["broken", "good"]
        assert srv.stop() == 0, srv.output()


# --- API keys and settings ----------------------------------------------------------------------


def test_api_keys_are_compared_in_constant_time(tmp_path, monkeypatch):
    keys = {"key-one", "key-two", "key-three"}
    db = Database(tmp_path)
    app = create_app(Settings(data=tmp_path, api_keys=keys, read_only_keys={"key-ro"},
                              warmup=False), db=db)
    calls = []
    compare = gate.hmac.compare_digest
    monkeypatch.setattr(gate.hmac, "compare_digest",
                        lambda a, b: calls.append(b) or compare(a, b))

    async def check():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://quiver") as c:
            for key in keys:
                calls.clear()
                result(await c.get("/collections", headers={"api-key": key}))
                assert sorted(calls) == sorted(k.encode() for k in keys)  # every key, no early exit
            for wrong in ("key-on", "key-one ", "KEY-ONE", "key-one-and-more", ""):
                assert_error(await c.get("/collections", headers={"api-key": wrong}), 401, "invalid")
            result(await c.get("/collections", headers={"authorization": "Bearer key-ro"}))
            assert_error(await c.put("/collections/x", json={"dim": 2},
                                     headers={"api-key": "key-ro"}), 403, "read-only")

    import anyio

    try:
        anyio.run(check)
    finally:
        db.close()


def test_body_timeout_setting_and_flag(tmp_path, capsys):
    from quiver.cli import build_parser

    cfg = tmp_path / "quiver.json"
    cfg.write_text(json.dumps({"body_timeout": 5}))
    assert Settings().body_timeout == 30
    assert Settings.from_env(cfg).body_timeout == 5
    assert Settings.from_env(cfg, body_timeout=2.5).body_timeout == 2.5
    args = build_parser().parse_args(["serve", "--body-timeout", "3"])
    assert args.body_timeout == 3.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    serve_help = " ".join(capsys.readouterr().out.split())
    assert "QUIVER_API_KEY" in serve_help and "process list" in serve_help
