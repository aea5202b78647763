"""Sharded, replicated collections on a local Ray cluster: the same answers as an embedded
collection, no acknowledged write lost when replicas die, clear errors when a shard has no
replica left, and a restart from disk."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from quiver.engine.cluster import PartialResults, PartialSearchArrays  # noqa: E402
from quiver.engine.errors import InvalidArgument, ShardUnavailable  # noqa: E402

import quiver  # noqa: E402

DIM = 16
EVEN = {"must": [{"key": "even", "match": {"value": True}}]}


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def db(ray_cluster, tmp_path):
    database = quiver.connect(tmp_path / "data", cluster="auto", timeout=30.0)
    yield database
    database.close()


def _points(n: int, seed: int = 0, start: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    ids = list(range(start, start + n))
    return ids, x, [{"i": i, "even": i % 2 == 0, "tag": f"t{i % 7}"} for i in ids]


def _ids(rows):
    return [[p.id for p in row] for row in rows]


def test_results_equal_an_embedded_collection(db):
    sharded = db.create_collection("sharded", dim=DIM, metric="cosine", index="Flat", shards=3)
    embedded = db.create_collection("embedded", dim=DIM, metric="cosine", index="Flat")
    ids, x, pl = _points(600)
    ids[5] = "5f0d0d8e-7a34-4c5e-9d7b-2b1f7b1c9a01"  # UUIDs route and merge like integers
    for col in (sharded, embedded):
        col.upsert(ids, x, pl)
    q = np.random.default_rng(1).standard_normal((8, DIM)).astype(np.float32)
    for kwargs in ({}, {"filter": EVEN}, {"score_threshold": 0.3}):
        a, b = sharded.search(q, k=10, **kwargs), embedded.search(q, k=10, **kwargs)
        assert _ids(a) == _ids(b)
        np.testing.assert_allclose([p.score for r in a for p in r],
                                   [p.score for r in b for p in r], atol=1e-5)
    one = sharded.search(q[0], k=5, with_payload=True)
    assert [(p.id, p.payload) for p in one] == \
        [(p.id, p.payload) for p in embedded.search(q[0], k=5, with_payload=True)]
    sa, sb = sharded.search_arrays(q, k=10), embedded.search_arrays(q, k=10)
    assert (sa.ids == sb.ids).all() and (sa.counts == sb.counts).all()
    np.testing.assert_allclose(sa.scores, sb.scores, atol=1e-5)
    assert sharded.count() == embedded.count() == 600
    assert sharded.count(EVEN) == embedded.count(EVEN)
    pages = []
    for col in (sharded, embedded):
        seen, cursor = [], None
        while True:
            page, cursor = col.scroll(filter=EVEN, limit=37, cursor=cursor)
            seen += [p.id for p in page]
            if cursor is None:
                break
        pages.append(seen)
    assert pages[0] == pages[1] and len(pages[0]) == 300
    for order in ({"key": "i", "direction": "desc"}, {"key": "i", "start_from": 100}):
        a, b = (col.scroll(filter=EVEN, limit=20, order_by=order, with_payload=False)
                for col in (sharded, embedded))
        assert [(p.id, p.score) for p in a[0]] == [(p.id, p.score) for p in b[0]]
        assert a[1] is b[1] is None
    asked = [ids[5], 3, 999_999, 1]
    assert [p.id for p in sharded.get(asked)] == [p.id for p in embedded.get(asked)]
    # facets sum the shards' counts; a sample draws across shards, the filter on each
    assert sharded.facet("tag", filter=EVEN, limit=4) == embedded.facet("tag", filter=EVEN, limit=4)
    picked = sharded.sample(50, filter=EVEN)
    assert len({p.id for p in picked}) == 50 and all(p.payload["even"] for p in picked)
    assert sorted(p.id for p in sharded.sample(400, filter=EVEN, with_payload=False)) == \
        sorted(p.id for p in embedded.sample(400, filter=EVEN, with_payload=False))
    # writes by filter reach every shard
    assert sharded.set_payload({"seen": True}, filter=EVEN) == 300
    assert sharded.count({"must": [{"key": "seen", "match": {"value": True}}]}) == 300
    assert sharded.delete(filter={"must": [{"key": "tag", "match": {"value": "t3"}}]}) == \
        embedded.delete(filter={"must": [{"key": "tag", "match": {"value": "t3"}}]})
    assert sharded.count() == embedded.count()
    info = sharded.info()
    assert info["points"] == embedded.count() and len(info["shards"]) == 3


def test_bad_input_writes_nothing_on_any_shard(db):
    col = db.create_collection("bad", dim=DIM, metric="l2", index="Flat", shards=2)
    ids, x, pl = _points(40)
    x[33, 2] = np.nan
    with pytest.raises(InvalidArgument, match=r"vectors: row 33"):
        col.upsert(ids, x, pl)
    assert col.count() == 0
    with pytest.raises(InvalidArgument, match="filter"):
        col.search(x[0], k=3, filter={"must": [{"key": "a", "bogus": 1}]})
    with pytest.raises(InvalidArgument, match="write_quorum"):
        db.create_collection("q", dim=DIM, shards=1, replicas=2, write_quorum=3)
    with pytest.raises(InvalidArgument, match="shards"):
        db.create_collection("s", dim=DIM, shards=0)


def _replica_read(replica, method: str, *args):
    """One replica's own answer (not the shard's: no failover)."""
    return pickle.loads(ray.get(replica.actor.read.remote(0, pickle.dumps((method, args, {})))))


def _replica_counts(col) -> list[int]:
    return [_replica_read(r, "count") for s in col.shards for r in s.replicas]


def test_killed_replicas_lose_no_acknowledged_write(ray_cluster, tmp_path):
    """Kill one replica with ray.kill and SIGKILL another's worker in the middle of an
    upsert load: searches keep answering, every acknowledged point is there, and the
    replicas agree afterwards."""
    db = quiver.connect(tmp_path / "data", cluster="auto", timeout=30.0)
    try:
        col = db.create_collection("load", dim=DIM, metric="l2", index="Flat", shards=2,
                                   replicas=2)
        acked: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def writer() -> None:
            start = 0
            while not stop.is_set() and start < 4000:
                ids, x, pl = _points(50, seed=start, start=start)
                try:
                    col.upsert(ids, x, pl)
                    acked.extend(ids)
                except ShardUnavailable:
                    pass  # not acknowledged: allowed, as long as it says so
                start += 50

        thread = threading.Thread(target=writer)
        thread.start()
        while len(acked) < 500:
            time.sleep(0.05)
        ray.kill(col.shards[0].replicas[1].actor, no_restart=False)
        time.sleep(0.3)
        pid = ray.get(col.shards[1].replicas[0].actor.status.remote())["pid"]
        os.kill(pid, signal.SIGKILL)
        q = np.random.default_rng(5).standard_normal((4, DIM)).astype(np.float32)
        answered = 0
        deadline = time.monotonic() + 20
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                assert len(col.search_arrays(q, k=5).ids) == 4
                answered += 1
            except BaseException as exc:
                errors.append(exc)
            time.sleep(0.02)
        stop.set()
        thread.join()
        assert not errors, errors[:3]
        assert answered > 0
        got = col.get(acked, with_payload=False)
        assert len(got) == len(acked)
        for shard in col.shards:  # the background repairs finish
            for replica in shard.replicas:
                assert shard.repair(replica, time.monotonic() + 30)
        counts = _replica_counts(col)
        assert counts[0] == counts[1] and counts[2] == counts[3]
        assert counts[0] + counts[2] == col.count() >= len(acked)
    finally:
        db.close()


def test_quorum_of_one_and_a_replica_copying_a_snapshot(ray_cluster, tmp_path, caplog):
    """With write_quorum=1 writes are acknowledged while a replica restarts; one that missed
    more writes than the driver keeps (tail_bytes=1: only the last) copies the live
    replica's snapshot, then serves the same points."""
    db = quiver.connect(tmp_path / "data", cluster="auto", timeout=30.0, tail_bytes=1)
    try:
        col = db.create_collection("q1", dim=DIM, metric="l2", index="Flat", shards=1,
                                   replicas=2, write_quorum=1)
        col.upsert(*_points(100))
        shard = col.shards[0]
        down = shard.replicas[1]
        ray.kill(down.actor, no_restart=False)
        with caplog.at_level("INFO", logger="quiver.engine.cluster.shard"):
            for start in range(100, 600, 50):
                col.upsert(*_points(50, seed=start, start=start))
            assert col.count() == 600
            assert shard.repair(down, time.monotonic() + 30)
        assert any("copies" in r.getMessage() for r in caplog.records)
        assert _replica_counts(col) == [600, 600]
        q = np.random.default_rng(2).standard_normal((3, DIM)).astype(np.float32)
        first = [_replica_read(r, "search", q, 5) for r in shard.replicas]
        assert _ids(first[0]) == _ids(first[1])
    finally:
        db.close()


def test_an_unacknowledged_write_the_live_replica_applied_reaches_the_other(ray_cluster,
                                                                             tmp_path):
    """A write refused for want of quorum was still applied by the live replica: the one
    that missed it must get it (copying a snapshot once the driver's tail lost it), never
    skip it, or the replicas would answer differently."""
    db = quiver.connect(tmp_path / "data", cluster="auto", timeout=30.0, tail_bytes=1)
    try:
        col = db.create_collection("u", dim=DIM, metric="l2", index="Flat", shards=1,
                                   replicas=2)
        col.upsert(*_points(10))
        shard = col.shards[0]
        shard.timeout = 1.0  # a write waits 1 s for the restarting replica, then fails
        ray.kill(shard.replicas[1].actor, no_restart=False)
        outcomes = []
        for i in range(10, 14):
            try:
                col.upsert(*_points(1, seed=i, start=i))
                outcomes.append("acked")
            except ShardUnavailable:
                outcomes.append("refused")
        shard.timeout = 30.0
        assert shard.repair(shard.replicas[1], time.monotonic() + 30)
        assert _replica_counts(col) == [14, 14]
        assert [col.count() for _ in range(4)] == [14] * 4
    finally:
        db.close()


def test_a_shard_whose_data_is_gone_refuses_to_start(ray_cluster, tmp_path):
    """Acknowledged writes that no replica holds any more (their node's disk was lost) make
    the shard refuse to start, instead of serving fewer points as if complete."""
    import shutil

    path = tmp_path / "data"
    db = quiver.connect(path, cluster="auto")
    col = db.create_collection("lost", dim=DIM, metric="l2", index="Flat", shards=1)
    col.upsert(*_points(50))
    root = path / "collections" / "lost" / "shards" / "0" / "replica-0"
    db.close()
    shutil.rmtree(root)
    db = quiver.connect(path, cluster="auto")
    try:
        with pytest.raises(ShardUnavailable, match="no replica holds the writes up to 1"):
            db.get_collection("lost")
        db.drop_collection("lost")  # still possible
        assert db.list_collections() == []
    finally:
        db.close()


def test_no_live_replica_fails_clearly_or_partially(db):
    col = db.create_collection("gone", dim=DIM, metric="l2", index="Flat", shards=2)
    ids, x, pl = _points(200)
    col.upsert(ids, x, pl)
    ray.kill(col.shards[1].replicas[0].actor, no_restart=True)
    with pytest.raises(ShardUnavailable, match="shard 1"):
        col.search(x[0], k=5)
    part = col.search(x[:3], k=5, allow_partial=True)
    assert isinstance(part, PartialResults) and part.missing_shards == [1]
    assert all(len(r) == 5 for r in part)
    arrays = col.search_arrays(x[:3], k=5, allow_partial=True)
    assert isinstance(arrays, PartialSearchArrays) and arrays.missing_shards == [1]
    partial = col.count(allow_partial=True)
    assert 0 < partial < 200 and partial.missing_shards == [1]
    with pytest.raises(ShardUnavailable, match="shard 1"):
        col.upsert(*_points(50, seed=9, start=1000))


def test_restart_from_disk(ray_cluster, tmp_path):
    """Close the database, restart Ray itself, reconnect: the same points and answers."""
    path = tmp_path / "data"
    ids, x, pl = _points(300)
    q = x[:4] + 0.01
    db = quiver.connect(path, cluster="auto")
    col = db.create_collection("keep", dim=DIM, metric="ip", index="HNSW16,F32", shards=2,
                               replicas=2)
    col.upsert(ids, x, pl)
    col.delete([1, 2])
    col.create_payload_index("tag", "keyword")
    before = col.search(q, k=7, params={"exact": True})
    db.close()
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    db = quiver.connect(path, cluster="auto")
    try:
        col = db.get_collection("keep")
        assert col.count() == 298
        assert col.config.payload_indexes == {"tag": "keyword"}
        after = col.search(q, k=7, params={"exact": True})
        assert _ids(after) == _ids(before)
        assert all(r.live for s in col.shards for r in s.replicas)
        snap = col.snapshot(tmp_path / "snaps")
        copy = db.restore_snapshot(snap, "copy")
        assert copy.count() == 298
        assert _ids(copy.search(q, k=7, params={"exact": True})) == _ids(before)
        db.drop_collection("copy")
        assert "copy" not in db.list_collections()
    finally:
        db.close()


def test_server_fronts_the_cluster(ray_cluster, tmp_path):
    """``quiver serve --cluster auto`` joins the running Ray cluster; Quiver's and Qdrant's
    create bodies shard a collection, and the REST API and quiver.Client work unchanged."""
    import httpx

    from tests._live_server import LiveServer

    server = LiveServer(tmp_path / "data", "--cluster", "auto").start(timeout=300)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            r = http.put("/collections/docs", json={"dim": DIM, "metric": "l2", "index": "Flat",
                                                    "shards": 2, "replicas": 2})
            assert r.status_code == 200, r.text
            assert len(r.json()["result"]["shards"]) == 2
            r = http.put("/collections/qd", json={"vectors": {"size": DIM, "distance": "Euclid"},
                                                  "shard_number": 3, "replication_factor": 1})
            assert r.status_code == 200, r.text
            params = http.get("/collections/qd").json()["result"]["config"]["params"]
            assert (params["shard_number"], params["replication_factor"]) == (3, 1)
            ids, x, pl = _points(100)
            points = [{"id": i, "vector": v.tolist(), "payload": p}
                      for i, v, p in zip(ids, x, pl, strict=True)]
            for name in ("docs", "qd"):
                r = http.put(f"/collections/{name}/points", params={"wait": "true"},
                             json={"points": points})
                assert r.status_code == 200, r.text
            r = http.post("/collections/docs/snapshots")  # one archive, as for embedded
            assert r.status_code == 200, r.text
            snap = r.json()["result"]["name"]
            listed = http.get("/collections/docs/snapshots").json()["result"]
            assert [s["name"] for s in listed] == [snap]
            r = http.put("/collections/copy/snapshots/recover", json={
                "location": f"file://{tmp_path / 'data' / 'snapshots' / 'docs' / snap}"})
            assert r.status_code == 200, r.text
            assert http.post("/collections/copy/points/count", json={}).json()["result"][
                "count"] == 100
        client = quiver.Client(server.url)
        made = client.create_collection("fromclient", dim=DIM, metric="l2", index="Flat",
                                        shards=2, replicas=1)
        made.upsert(ids=ids, vectors=x)
        assert made.search(x[3], k=1)[0].id == 3
        hits = client.get_collection("docs").search(x[7], k=3)
        assert hits[0].id == 7
        assert client.get_collection("qd").count() == 100
    finally:
        assert server.stop() == 0
