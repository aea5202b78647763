"""WAL: record framing, torn-tail repair, corruption reports, rotation, and kill -9 durability."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from quiver.engine.errors import CorruptData, InvalidArgument
from quiver.engine.frame import decode_batch, encode_batch
from quiver.engine.wal import HEADER, WAL


def body_for(seq: int) -> bytes:
    return f"record-{seq}-".encode() * (seq % 3 + 1)


def fill(path: Path, n: int, **kw) -> WAL:
    w = WAL(path, **kw)
    for s in range(1, n + 1):
        assert w.append(s % 7, body_for(s)) == s
    return w


def seqs(w: WAL, after=None) -> list[int]:
    return [r.seq for r in w.replay(after)]


def test_append_replay_and_batches(tmp_path):
    w = fill(tmp_path, 5)
    assert w.append_many([(9, b"a"), (9, b""), (9, b"c" * 100)]) == range(6, 9)
    recs = list(w.replay())
    assert [r.seq for r in recs] == list(range(1, 9))
    assert recs[0].op == 1 and recs[0].body == body_for(1) and recs[6].body == b""
    assert seqs(w, 6) == [7, 8]
    w.close()
    with pytest.raises(InvalidArgument):
        w.append(1, b"x")
    w2 = WAL(tmp_path)
    assert w2.last_seq == 8 and w2.repair is None and w2.append(1, b"z") == 9
    w2.close()


def test_bad_arguments(tmp_path):
    with pytest.raises(InvalidArgument, match="fsync"):
        WAL(tmp_path, fsync="sometimes")
    w = WAL(tmp_path, fsync="never")
    with pytest.raises(InvalidArgument, match="op"):
        w.append(256, b"")
    w.close()


def test_torn_tail_at_every_offset(tmp_path, caplog):
    w = fill(tmp_path, 4)
    start = w.files()[-1].stat().st_size
    w.append(3, b"the last record")
    w.close()
    path = w.files()[-1]
    full = path.read_bytes()
    assert len(full) == start + HEADER.size + len(b"the last record")
    for cut in range(start, len(full)):
        path.write_bytes(full[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="quiver.engine.wal"):
            w = WAL(tmp_path, fsync="never")
        if cut == start:
            assert w.repair is None
        else:
            assert w.repair is not None and w.repair.offset == start
            assert w.repair.dropped == cut - start and "torn tail" in w.repair.reason
            assert str(path) in caplog.text and f"offset {start}" in caplog.text
        assert path.stat().st_size == start
        assert seqs(w) == [1, 2, 3, 4] and w.last_seq == 4
        w.close()
    # reopen-and-append after a truncation continues the sequence
    path.write_bytes(full[:-3])
    w = WAL(tmp_path)
    assert w.append(5, b"again") == 5
    w.close()
    w = WAL(tmp_path)
    assert w.repair is None
    assert [(r.seq, r.body) for r in w.replay(3)] == [(4, body_for(4)), (5, b"again")]
    w.close()


def test_bad_crc_or_garbage_at_tail_is_truncated(tmp_path):
    w = fill(tmp_path, 3)
    w.close()
    path = w.files()[-1]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # last record's body
    path.write_bytes(bytes(data))
    w = WAL(tmp_path)
    assert "crc mismatch" in w.repair.reason and seqs(w) == [1, 2]
    w.close()
    with open(path, "ab") as f:  # zero-filled blocks, as a crash can leave behind
        f.write(b"\0" * 4096)
    w = WAL(tmp_path)
    assert w.repair.dropped == 4096 and seqs(w) == [1, 2]
    w.close()


def record_offsets(path: Path) -> list[int]:
    data, offs, off = path.read_bytes(), [], 0
    while off < len(data):
        offs.append(off)
        off += HEADER.size + HEADER.unpack_from(data, off)[0]
    return offs


def test_corrupt_record_in_the_middle(tmp_path, caplog):
    w = fill(tmp_path, 6)
    w.close()
    path = w.files()[-1]
    off = record_offsets(path)[2]  # seq 3
    data = bytearray(path.read_bytes())
    data[off + HEADER.size] ^= 0x01
    path.write_bytes(bytes(data))
    before = bytes(data)
    with pytest.raises(CorruptData, match=rf"offset {off} \(seq 3\).*valid records follow"):
        WAL(tmp_path)
    assert path.read_bytes() == before  # nothing dropped without being asked
    with caplog.at_level(logging.WARNING, logger="quiver.engine.wal"):
        w = WAL(tmp_path, on_corrupt="truncate")
    assert "damaged record" in caplog.text and w.repair.offset == off
    assert seqs(w) == [1, 2] and w.append(1, b"x") == 3
    w.close()


def test_corrupt_record_in_an_older_file_stops_replay(tmp_path):
    w = fill(tmp_path, 12, max_file_bytes=120)
    assert len(w.files()) >= 3
    w.close()
    older = w.files()[1]
    first = int(older.name[4:24])
    off = record_offsets(older)[1]
    data = bytearray(older.read_bytes())
    data[off + 5] ^= 0x40  # inside the crc field
    older.write_bytes(bytes(data))
    w = WAL(tmp_path)  # only the newest file is scanned on open
    got = []
    with pytest.raises(CorruptData, match=rf"{older.name}: damaged record at offset {off} "
                                          rf"\(seq {first + 1}\)"):
        for r in w.replay():
            got.append(r.seq)
    assert got == list(range(1, first + 1))
    w.close()


def test_rotation_truncate_before_and_missing_file(tmp_path):
    w = fill(tmp_path, 20, max_file_bytes=100)
    files = w.files()
    assert len(files) > 3
    firsts = [int(p.name[4:24]) for p in files]
    gone = w.truncate_before(firsts[2])
    assert gone == files[:2] and w.files() == files[2:]
    assert seqs(w) == list(range(firsts[2], 21))
    assert seqs(w, 15) == list(range(16, 21))
    with pytest.raises(CorruptData, match="log starts at"):
        list(w.replay(0))
    # everything covered: the newest (empty) file stays and remembers the next seq
    w.truncate_before(21)
    assert len(w.files()) == 1 and seqs(w) == []
    w.close()
    w = WAL(tmp_path, max_file_bytes=100)
    assert w.next_seq == 21 and w.append(1, b"x") == 21
    for s in range(22, 40):
        w.append(1, body_for(s))
    files = w.files()
    files[1].unlink()
    with pytest.raises(CorruptData, match="a log file is missing"):
        list(w.replay())
    w.close()


def test_threaded_appends(tmp_path):
    w = WAL(tmp_path, fsync="never", max_file_bytes=2000)
    got: dict[int, bytes] = {}

    def writer(t: int) -> None:
        for i in range(50):
            body = f"{t}:{i}".encode()
            if i % 2:
                got[w.append(t, body)] = body
            else:
                for s, b in zip(w.append_many([(t, body), (t, body + b"+")]), (body, body + b"+"),
                                strict=True):
                    got[s] = b

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 301))
    assert {r.seq: r.body for r in w.replay()} == got
    w.close()


WRITER = textwrap.dedent("""
    import sys
    from quiver.engine.wal import WAL
    def body(s): return (b"%d;" % s) * (s % 5 + 1)
    w = WAL(sys.argv[1], fsync=sys.argv[2], max_file_bytes=4096)
    s = 0
    while True:
        r = w.append_many([(1, body(s + 1)), (2, body(s + 2))]) if s % 3 else [w.append(1, body(s + 1))]
        s = r[-1]
        sys.stdout.write("%d\\n" % s)
        sys.stdout.flush()
""")


@pytest.mark.parametrize("policy", ["batch", "never"])
def test_sigkill_loses_nothing_acknowledged(tmp_path, policy):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), policy],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    acked = 0
    deadline = time.monotonic() + 4
    while acked < 300 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.communicate()[0].split()
    acked = max([acked, *map(int, rest)])
    assert acked >= 50, "writer made too little progress"
    w = WAL(tmp_path)
    recs = list(w.replay())
    assert len(recs) >= acked
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
    assert all(r.body == (b"%d;" % r.seq) * (r.seq % 5 + 1) for r in recs)
    w.close()


# ---------------------------------------------------------------- batch bodies

ids_st = st.one_of(
    st.lists(st.integers(0, 2**64 - 1), max_size=6),
    st.lists(st.one_of(st.integers(0, 2**64 - 1), st.uuids().map(str)), max_size=6))
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5))
payload_st = st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.one_of(
    json_scalar, st.lists(json_scalar, max_size=3)), max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_batch_roundtrip(data):
    ids = data.draw(ids_st)
    n = len(ids)
    as_array = data.draw(st.booleans()) and all(type(i) is int for i in ids)
    dims = data.draw(st.lists(st.integers(0, 5), max_size=2))
    dtypes = [np.float32, np.float16, np.int32, np.uint8]
    vectors = {f"v{j}": data.draw(hnp.arrays(data.draw(st.sampled_from(dtypes)), (n, d)))
               for j, d in enumerate(dims)}
    if len(vectors) == 1 and data.draw(st.booleans()):
        vectors = {"": vectors["v0"]}
        arg = vectors[""]
    else:
        arg = vectors or None
    payloads = data.draw(st.one_of(st.none(), st.lists(payload_st, min_size=n, max_size=n)))
    body = encode_batch(np.asarray(ids, np.uint64) if as_array else ids, arg, payloads)
    got = decode_batch(body)
    if all(type(i) is int for i in ids):
        assert got.ids.dtype == np.uint64 and got.ids.tolist() == ids
    else:
        assert got.ids == ids
    assert got.vectors.keys() == vectors.keys()
    for k, v in vectors.items():
        assert got.vectors[k].dtype == v.dtype and got.vectors[k].shape == v.shape
        assert got.vectors[k].tobytes() == v.tobytes()
    assert got.payloads == payloads
    with pytest.raises(CorruptData):
        decode_batch(body[: max(0, len(body) - 9)] if vectors or n else body[:3])


def test_batch_rejects_bad_ids():
    with pytest.raises(InvalidArgument):
        encode_batch([-1])
    with pytest.raises(InvalidArgument):
        encode_batch([1.5])
    assert decode_batch(encode_batch([str(uuid.UUID(int=7))])).ids == [str(uuid.UUID(int=7))]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=30),
       st.integers(20, 300))
def test_wal_roundtrip_property(tmp_path_factory, records, max_bytes):
    d = tmp_path_factory.mktemp("wal")
    w = WAL(d, fsync="never", max_file_bytes=max_bytes)
    for i in range(0, len(records), 4):
        w.append_many(records[i:i + 4])
    w.close()
    w = WAL(d, fsync="never")
    assert [(r.op, r.body) for r in w.replay()] == records and w.repair is None
    w.close()
