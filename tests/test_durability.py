"""Crash safety of collections: kill -9 during writes, torn WAL tails, damaged segment files.

The kill test runs a writer in a child process (a small script string run by
``sys.executable``) that streams deterministic batches (upserts with payloads, deletes by id
and by filter) and prints each batch number once the call returned. The parent SIGKILLs it at
random moments, reopens the collection and checks that its whole state (ids, payloads,
vectors) equals a model of every acknowledged batch, plus possibly the single batch that was
in flight: all of it or none of it.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import read_state

import quiver

# Shared by the child (writer) and the parent (model): batch b is a pure function of b.
BATCHES = r'''
import numpy as np

DIM = 8
ID_SPACE = 1500
GROUPS = 13


def make_op(b):
    rng = np.random.default_rng(1000 + b)
    if b % 6 == 5:
        return ("delete", sorted(rng.choice(ID_SPACE, 12, replace=False).tolist()))
    if b % 23 == 22:
        return ("delete_filter", int(b % GROUPS))
    ids = rng.choice(ID_SPACE, 16, replace=False).tolist()
    vecs = rng.standard_normal((16, DIM)).astype(np.float32)
    payloads = [{"b": b, "grp": i % GROUPS, "tag": f"t{b % 5}"} for i in ids]
    return ("upsert", ids, vecs, payloads)
'''

CHILD = BATCHES + r'''
import sys
import quiver

import time

path, start, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
col = quiver.connect(path).get_collection("dur")
sys.stdout.write("ready\n")
sys.stdout.flush()
for b in range(start, start + 100_000):
    op = make_op(b)
    if op[0] == "upsert":
        col.upsert(op[1], op[2], op[3])
    elif op[0] == "delete":
        col.delete(ids=op[1])
    else:
        col.delete(filter={"must": [{"key": "grp", "match": {"value": op[1]}}]})
    sys.stdout.write(f"{b}\n")
    sys.stdout.flush()
    if pause:
        time.sleep(pause)  # lets the optimizer keep up, so kills land during seals too
'''

_ns: dict = {}
exec(BATCHES, _ns)
make_op = _ns["make_op"]
DIM, GROUPS = _ns["DIM"], _ns["GROUPS"]


def apply_op(model: dict, op) -> dict:
    """The state after ``op``: id -> (payload, vector as a tuple of floats)."""
    model = dict(model)
    if op[0] == "upsert":
        for i, v, p in zip(op[1], op[2], op[3], strict=True):
            model[i] = (p, tuple(v.tolist()))
    elif op[0] == "delete":
        for i in op[1]:
            model.pop(i, None)
    else:
        for i in [i for i, (p, _) in model.items() if p["grp"] == op[1]]:
            del model[i]
    return model


def describe(state: dict, model: dict) -> str:
    missing = sorted(set(model) - set(state))[:10]
    extra = sorted(set(state) - set(model))[:10]
    changed = sorted(i for i in set(state) & set(model) if state[i] != model[i])[:10]
    diff = [(i, state[i][0], model[i][0]) for i in changed]
    return f"missing {missing}, unexpected {extra}, different {diff}"


def child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_and_kill(path: Path, start: int, rnd: random.Random, stderr_file) -> list[int]:
    """Start the writer at batch ``start``, SIGKILL it at a random moment, return the batch
    numbers it acknowledged (printed in full)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(start),
                             str(rnd.choice([0.003, 0.01, 0.02]))],
                            stdout=subprocess.PIPE, stderr=stderr_file, env=child_env())
    lines: list[bytes] = []
    ready = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line)
            ready.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        if rnd.random() < 0.15:  # now and then, kill while it starts up (open, replay, repair)
            time.sleep(rnd.uniform(0.0, 0.8))
        else:
            assert ready.wait(30), "the writer did not start"
            time.sleep(rnd.uniform(0.0, 0.8))
        assert proc.poll() is None, "the writer exited on its own (see its stderr)"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        t.join(30)
    assert proc.returncode == -signal.SIGKILL
    acked = [int(x) for x in (ln.decode() for ln in lines) if x.endswith("\n") and x[:-1].isdigit()]
    assert acked == list(range(start, start + len(acked))), acked[:5]
    return acked


def test_kill9_keeps_every_acknowledged_batch(tmp_path):
    t0 = time.monotonic()
    rnd = random.Random(20240611)
    db = quiver.connect(tmp_path)
    db.create_collection("dur", DIM, metric="l2", segment_size=200, ef_construction=64)
    db.close()

    model: dict = {}
    next_b = 0
    kills = acked_total = inflight_applied = 0
    stderr_path = tmp_path / "child-stderr.txt"
    with open(stderr_path, "wb") as stderr_file:
        for _ in range(22):
            try:
                acked = run_and_kill(tmp_path, next_b, rnd, stderr_file)
            except AssertionError:
                stderr_file.flush()
                print(stderr_path.read_text()[-3000:])
                raise
            kills += 1
            acked_total += len(acked)
            for b in acked:
                model = apply_op(model, make_op(b))
            inflight = next_b + len(acked)
            with_inflight = apply_op(model, make_op(inflight))
            # reopen (no optimizer: look at exactly what recovery produced) and compare
            check_db = quiver.connect(tmp_path, optimizer=False)
            try:
                state = read_state(check_db.get_collection("dur"))
            finally:
                check_db.close()
            if state == model:
                pass
            elif state == with_inflight:
                model = with_inflight
                inflight_applied += 1
            else:
                pytest.fail(f"after kill {kills} (last acknowledged batch {inflight - 1}, "
                            f"in flight {inflight}): state matches neither model; "
                            f"vs acknowledged: {describe(state, model)}; "
                            f"vs with in-flight: {describe(state, with_inflight)}")
            next_b = inflight + 1

    assert kills >= 20
    assert acked_total >= 100, f"only {acked_total} batches acknowledged across {kills} runs"

    # final reopen: sealed segments exist, search works; sealing the replayed rows keeps
    # the state, also across one more reopen
    db = quiver.connect(tmp_path, optimizer=False)
    col = db.get_collection("dur")
    assert sum(s["sealed"] and s["points"] > 0 for s in col.info()["segments"]) >= 3
    ids = list(model)
    sample = ids[:: max(1, len(ids) // 50)]
    q = np.array([model[i][1] for i in sample], np.float32)
    exact = col.search(q, k=3, params={"exact": True})
    assert [r[0].id for r in exact] == sample
    assert all(r[0].score == pytest.approx(0.0, abs=1e-5) for r in exact)
    approx = col.search(q, k=3)
    assert np.mean([r[0].id == i for r, i in zip(approx, sample, strict=True)]) >= 0.9
    flt = {"must": [{"key": "grp", "match": {"value": 3}}]}
    res = col.search(q[0], k=5, filter=flt, with_payload=True)
    assert res and all(p.payload["grp"] == 3 for p in res)
    assert col.count(flt) == sum(p["grp"] == 3 for p, _ in model.values())
    col.optimize_once(force_seal=True)
    assert read_state(col) == model
    db.close()
    db = quiver.connect(tmp_path, optimizer=False)
    assert read_state(db.get_collection("dur")) == model
    db.close()
    print(f"{kills} kills, {acked_total} acknowledged batches, {inflight_applied} in-flight "
          f"batches found applied, {len(model)} live points, {time.monotonic() - t0:.1f}s")
    assert time.monotonic() - t0 < 90


# ---------------------------------------------------------------- torn WAL tail


def _small_collection(path: Path, segment_size: int = 10_000):
    db = quiver.connect(path)
    col = db.create_collection("c", 4, metric="l2", segment_size=segment_size)
    rng = np.random.default_rng(7)
    batches = []
    for b in range(5):
        ids = list(range(b * 10, b * 10 + 10))
        vecs = rng.standard_normal((10, 4)).astype(np.float32)
        col.upsert(ids, vecs, [{"b": b} for _ in ids])
        batches.append((ids, vecs))
    return db, col, batches


def _wal_files(path: Path) -> list[Path]:
    return sorted((path / "collections" / "c" / "wal").glob("wal-*.log"))


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_torn_wal_tail_is_truncated_and_logged(tmp_path, caplog, damage):
    db, col, batches = _small_collection(tmp_path)
    db.close()
    wal = _wal_files(tmp_path)[-1]
    good = wal.stat().st_size
    if damage == "garbage":
        with open(wal, "ab") as f:
            f.write(bytes(np.random.default_rng(1).integers(0, 256, 37, dtype=np.uint8)))
        expect_batches = 5
    else:
        with open(wal, "r+b") as f:
            f.truncate(good - 13)  # mid-way through the last record's body
        expect_batches = 4
    caplog.set_level(logging.WARNING)
    db = quiver.connect(tmp_path)
    col = db.get_collection("c")
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(wal.name in m and "torn tail" in m and "truncated" in m for m in msgs), msgs
    assert col.count() == 10 * expect_batches
    for b, (ids, vecs) in enumerate(batches):
        got = col.get(ids, with_payload=True, with_vectors=True)
        if b < expect_batches:
            assert [p.id for p in got] == ids
            assert all(p.payload == {"b": b} for p in got)
            np.testing.assert_array_equal(np.array([p.vector for p in got], np.float32), vecs)
        else:
            assert got == []  # the torn batch is gone as a whole
    if damage == "garbage":
        assert wal.stat().st_size == good
    else:
        assert wal.stat().st_size < good - 13
    # the repaired log takes new writes and replays cleanly, with no second repair
    col.upsert([100], [[1.0, 2.0, 3.0, 4.0]], [{"b": 100}])
    db.close()
    caplog.clear()
    db = quiver.connect(tmp_path)
    col = db.get_collection("c")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert col.count() == 10 * expect_batches + 1
    assert col.get([100])[0].payload == {"b": 100}
    db.close()


def test_damaged_wal_record_with_valid_successors_is_not_dropped(tmp_path):
    db, col, _ = _small_collection(tmp_path)
    db.close()
    wal = _wal_files(tmp_path)[-1]
    data = bytearray(wal.read_bytes())
    data[40] ^= 0xFF  # inside the first record; four valid records follow
    wal.write_bytes(bytes(data))
    with pytest.raises(quiver.CorruptData, match=wal.name):
        quiver.connect(tmp_path).get_collection("c")


def _sealed_collection(path: Path) -> Path:
    db, col, _ = _small_collection(path, segment_size=20)
    col.delete(ids=[3, 14])
    col.flush()
    col.wait_indexed()
    assert all(s["sealed"] for s in col.info()["segments"] if s["points"])
    db.close()
    return path / "collections" / "c" / "segments"


@pytest.mark.parametrize("which", ["versions.npy", "ext_ids.npy", "deleted-*.npy",
                                   "index/vectors.npy", "index/nbr0.npy",
                                   "payload/payload_blob.npy"])
def test_damaged_segment_file_raises_corrupt_data(tmp_path, which):
    seg_root = _sealed_collection(tmp_path)
    target = sorted(seg_root.glob(f"seg-*/{which}"))[-1]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x5A  # the array data, not the .npy header
    target.write_bytes(bytes(data))
    db = quiver.connect(tmp_path)
    with pytest.raises(quiver.CorruptData, match=target.name) as exc:
        db.get_collection("c")
    assert str(target.parent) in str(exc.value) or target.parent.name in str(exc.value)


def test_undamaged_sealed_collection_reopens(tmp_path):
    _sealed_collection(tmp_path)
    db = quiver.connect(tmp_path)
    col = db.get_collection("c")
    assert col.count() == 48
    assert col.get([3, 14]) == []
    db.close()
