"""An unlucky operator and a hostile user: two openers of one data directory, a full disk,
damaged metadata, fuzzed frames, kills during seals and snapshots, rejected requests that
must leave nothing on disk."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from quiver.engine import wal as wal_module
from quiver.engine.errors import CorruptData, DirectoryLocked, QuiverError, ReadOnly
from quiver.engine.frame import decode_batch, encode_batch

import quiver

ROOT = Path(__file__).resolve().parents[1]
DIM = 16


def _tree(path: Path) -> dict[str, str]:
    """Every file below ``path`` with a hash of its bytes (the lock file excluded)."""
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


def _filled(path: Path, n: int = 600, seal: bool = True, segment_size: int = 250):
    db = quiver.connect(path)
    col = db.create_collection("c", dim=DIM, metric="l2", index="HNSW8",
                               segment_size=segment_size, ef_construction=32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    col.create_payload_index("g", "integer")
    col.upsert(list(range(n)), x, [{"g": i % 7} for i in range(n)])
    if seal:
        col.flush()
        col.wait_indexed()
    col.delete(list(range(0, 40, 3)))
    return db, col, x


# ---------------------------------------------------------------- one writer per directory


def _hold(path: Path, *flags: str) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time, quiver
        db = quiver.connect({str(path)!r}{", read_only=True" if "ro" in flags else ""})
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    db, col, _ = _filled(tmp_path / "d", seal=False)
    with pytest.raises(DirectoryLocked, match=rf"in use by a writer \(pid {os.getpid()}\)"):
        quiver.connect(tmp_path / "d")  # in the same process too
    db.close()
    proc = _hold(tmp_path / "d")
    try:
        with pytest.raises(DirectoryLocked, match=rf"{tmp_path / 'd'}: .*pid {proc.pid}"):
            quiver.connect(tmp_path / "d")
        with pytest.raises(DirectoryLocked, match=r"cannot read it"):
            quiver.connect(tmp_path / "d", read_only=True)
    finally:
        proc.kill()
        proc.wait()
    with quiver.connect(tmp_path / "d") as again:  # the kernel dropped the dead holder's lock
        assert again.get_collection("c").count() == 600 - 14


def test_read_only_opens_share_and_serve_the_sealed_state(tmp_path):
    db, col, x = _filled(tmp_path / "d")
    col.upsert([20_000], x[:1])
    col.flush()  # a checkpoint: the sealed state now has the deletions and point 20000
    col.upsert([10_000], x[:1])  # only in the log: not part of the sealed state
    expected = col.count() - 1
    db.close()
    proc = _hold(tmp_path / "d", "ro")
    try:
        with pytest.raises(DirectoryLocked, match=rf"read-only opener\(s\) \(pid {proc.pid}\)"):
            quiver.connect(tmp_path / "d")
        before = _tree(tmp_path / "d")
        with quiver.connect(tmp_path / "d", read_only=True) as ro:
            c = ro.get_collection("c")
            assert c.count() == expected and c.get([10_000]) == []
            hits = c.search(x[100], 3, params={"exact": True})
            assert hits[0].id == 100
            for write in (lambda: c.upsert([1], x[:1]), lambda: c.delete([1]),
                          lambda: c.set_payload({"a": 1}, ids=[1]), lambda: c.flush(),
                          lambda: c.create_payload_index("h", "keyword"), lambda: c.snapshot(),
                          lambda: ro.create_collection("n", dim=3), lambda: ro.drop_collection("c")):
                with pytest.raises(ReadOnly, match="read-only"):
                    write()
        assert _tree(tmp_path / "d") == before  # a reader writes nothing
    finally:
        proc.kill()
        proc.wait()
    with quiver.connect(tmp_path / "d") as rw:  # the writer replays the log tail again
        assert rw.get_collection("c").count() == expected + 1


# ---------------------------------------------------------------- metadata


def test_byte_flips_in_metadata_files_raise_or_read_the_same(tmp_path):
    db, col, x = _filled(tmp_path / "d")
    q = x[:4] + 0.01
    want = (col.count(), [[p.id for p in r] for r in col.search(q, 5)])
    db.close()
    base = tmp_path / "d" / "collections" / "c"
    files = [base / "config.json", base / "manifest.json"]
    for seg in sorted((base / "segments").iterdir()):
        files += [seg / "manifest.json", seg / "index" / "manifest.json",
                  seg / "payload" / "manifest.json", *sorted(seg.glob("deleted-*.npy"))]
    rnd = random.Random(1)
    outcomes = {"raised": 0, "same": 0}
    for f in files:
        original = f.read_bytes()
        for _ in range(25):
            data = bytearray(original)
            i = rnd.randrange(len(data))
            data[i] ^= 1 << rnd.randrange(8)
            f.write_bytes(bytes(data))
            try:
                with quiver.connect(tmp_path / "d", optimizer=False) as again:
                    c = again.get_collection("c")
                    got = (c.count(), [[p.id for p in r] for r in c.search(q, 5)])
            except QuiverError as exc:
                assert isinstance(exc, CorruptData), exc
                assert str(f.parent) in str(exc) or f.name in str(exc), (f, exc)
                outcomes["raised"] += 1
            else:
                assert got == want, f"{f} byte {i}: opened with different results"
                outcomes["same"] += 1
            finally:
                f.write_bytes(original)
    assert outcomes["raised"] >= len(files) * 20, outcomes
    with quiver.connect(tmp_path / "d") as again:
        assert again.get_collection("c").count() == want[0]


def test_edited_manifest_values_are_refused(tmp_path):
    import json

    db, col, _ = _filled(tmp_path / "d")
    db.close()
    path = tmp_path / "d" / "collections" / "c" / "manifest.json"
    for key in ("checkpoint_seq", "next_segment"):
        body = json.loads(path.read_bytes())
        saved = path.read_bytes()
        body[key] += 7
        path.write_text(json.dumps(body))
        with pytest.raises(CorruptData, match=r"manifest.json: checksum mismatch"):
            quiver.connect(tmp_path / "d").get_collection("c")
        path.write_bytes(saved)
    cfg = tmp_path / "d" / "collections" / "c" / "config.json"
    body = json.loads(cfg.read_bytes())
    body["vectors"][""]["metric"] = "ip"
    cfg.write_text(json.dumps(body))
    with pytest.raises(CorruptData, match=r"config.json: checksum mismatch"):
        quiver.connect(tmp_path / "d").get_collection("c")


@pytest.mark.parametrize("damage", ["missing", "mis-pointing"])
def test_missing_or_wrong_manifest_deletes_nothing(tmp_path, damage):
    import json

    db, col, _ = _filled(tmp_path / "d")
    db.close()
    base = tmp_path / "d" / "collections" / "c"
    if damage == "missing":
        (base / "manifest.json").unlink()
        match = r"manifest.json: missing, but .* holds \d+ segment director.*nothing was deleted"
    else:  # a valid, checksummed manifest naming a directory that is not there
        from quiver.engine.persist import write_metadata

        body = json.loads((base / "manifest.json").read_bytes())
        body["segments"][0]["dir"] = "seg-999999"
        write_metadata(base / "manifest.json", body)
        match = r"seg-999999"
    before = _tree(base / "segments")
    with pytest.raises(CorruptData, match=match):
        quiver.connect(tmp_path / "d").get_collection("c")
    assert _tree(base / "segments") == before


def test_a_first_seal_cut_short_before_its_manifest_recovers_from_the_log(tmp_path):
    """A kill -9 after the first seal wrote its segment directory and before it wrote the
    collection's first checkpoint: the collection was created with an empty manifest, so the
    directory is a leftover (removed) and the log still holds every point."""
    db = quiver.connect(tmp_path / "d")
    col = db.create_collection("c", 4, metric="l2")
    base = tmp_path / "d" / "collections" / "c"
    assert (base / "manifest.json").exists()  # before any seal
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    col.upsert(list(range(50)), x)
    db.close()
    (base / "segments" / "seg-000001").mkdir(parents=True)  # what the cut-short seal left
    (base / "segments" / "seg-000001" / "ids.npy").write_bytes(b"partial")
    col = quiver.connect(tmp_path / "d").get_collection("c")
    assert col.count() == 50 and col.search(x[7], 1)[0].id == 7
    assert not (base / "segments" / "seg-000001").exists()


# ---------------------------------------------------------------- rejected requests


def test_rejected_config_changes_leave_nothing_on_disk(tmp_path):
    db, col, _ = _filled(tmp_path / "d", seal=False, segment_size=100_000)
    root = tmp_path / "d"
    before = _tree(root)
    bad = [
        lambda: col.create_payload_index("a..b", "keyword"),
        lambda: col.create_payload_index("", "keyword"),
        lambda: col.create_payload_index("x", "hex"),
        lambda: col.delete_payload_index("nope"),
        lambda: db.create_collection("n1", dim=3, index="HNSW16,PQ4"),
        lambda: db.create_collection("n2", dim=0),
        lambda: db.create_collection("n3", vectors={"a b": {"dim": 3}}),
        lambda: db.create_collection("bad name", dim=3),
        lambda: db.create_collection("c", dim=3),
        lambda: db.drop_collection("missing"),
        lambda: col.upsert([1], np.ones((1, DIM)), [{"a.b": 1}]),
        lambda: col.upsert([1], np.ones((1, DIM)), [{"": 1}]),
        lambda: col.set_payload({"x": {"y.z": 1}}, ids=[1]),
    ]
    for call in bad:
        with pytest.raises(QuiverError):
            call()
        assert _tree(root) == before, call
    # the case that used to brick a collection: it keeps working, and after a restart too
    col.upsert([5000], np.ones((1, DIM)))
    col.flush()
    db.close()
    with quiver.connect(root) as again:
        c = again.get_collection("c")
        c.create_payload_index("ok", "keyword")
        c.delete_payload_index("ok")
        assert c.count() == 601 - 14


def test_snapshot_restore_of_a_damaged_archive_leaves_nothing(tmp_path):
    db, col, _ = _filled(tmp_path / "d")
    snap = col.snapshot(tmp_path / "snaps")
    bad = tmp_path / "bad.tar"
    with tarfile.open(snap) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            f = src.extractfile(m)
            if m.name == "config.json":
                m.size = 7
                f = __import__("io").BytesIO(b"garbage")
            dst.addfile(m, f)
    before = _tree(tmp_path / "d")
    with pytest.raises(quiver.InvalidArgument, match=r"snapshot: cannot restore bad.tar .*config.json"):
        db.restore_snapshot(bad, "copy")
    assert _tree(tmp_path / "d") == before and "copy" not in db.list_collections()
    assert db.restore_snapshot(snap, "copy").count() == col.count()  # the name is still free
    db.close()


# ---------------------------------------------------------------- a full disk


@contextlib.contextmanager
def small_disk(path: Path, mb: int):
    """A tmpfs of ``mb`` MiB at ``path`` (skips where mounting is not allowed)."""
    path.mkdir(parents=True)
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)],
                        capture_output=True)
    if rc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({rc.stderr.decode().strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _upsert_until_full(col, rng, start: int) -> tuple[int, OSError]:
    i = start
    while True:
        ids = list(range(i, i + 200))
        try:
            col.upsert(ids, rng.standard_normal((200, DIM)).astype(np.float32),
                       [{"g": j % 5, "pad": "x" * 200} for j in ids])
        except OSError as exc:
            return i, exc
        i += 200


def test_full_disk_loses_nothing_acknowledged(tmp_path):
    with small_disk(tmp_path / "small", 6) as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * (2 << 20))
        db = quiver.connect(disk / "db")
        col = db.create_collection("c", dim=DIM, metric="l2", index="HNSW8",
                                   segment_size=1_000_000, ef_construction=32)
        rng = np.random.default_rng(0)
        acked, exc = _upsert_until_full(col, rng, 0)
        assert exc.errno == errno.ENOSPC and acked > 0
        # reads keep working, and the log ends on a whole record
        assert col.count() == acked
        assert len(col.search(np.zeros(DIM, np.float32), 3)) == 3
        wal_files = sorted((disk / "db" / "collections" / "c" / "wal").iterdir())
        recs, bad, why = wal_module._scan(memoryview(wal_files[-1].read_bytes()),
                                          int(wal_files[-1].name[4:24]))
        assert why is None, why
        with pytest.raises(OSError):  # a seal or snapshot cannot fit either: no leftovers
            col.flush()
            col.snapshot(disk / "db" / "snapshots")
        with contextlib.suppress(OSError):
            col.snapshot(disk / "db" / "snapshots")
        leftovers = [p for p in (disk / "db").rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == []
        assert [p.name for p in (disk / "db" / "collections" / "c" / "segments").iterdir()] == []
        # space comes back: writes work again
        ballast.unlink()
        col.delete(list(range(0, 50)))
        more, exc = _upsert_until_full(col, rng, acked)
        assert more > acked
        db.close()
        with quiver.connect(disk / "db", optimizer=False) as again:
            c = again.get_collection("c")
            assert c.count() == more - 50
            assert len(c.get(list(range(50, more)))) == more - 50


def test_failed_wal_append_is_cut_back(tmp_path, monkeypatch):
    """A write that fails halfway (injected) leaves no partial record for later writes to
    land behind, so nothing acknowledged afterwards is lost at the next open."""
    db = quiver.connect(tmp_path)
    col = db.create_collection("c", dim=4, metric="l2", index="Flat")
    col.upsert([1], np.ones((1, 4)))
    real = wal_module.WAL._write

    def half_then_full(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_module.WAL, "_write", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        col.upsert([2], np.ones((1, 4)))
    monkeypatch.setattr(wal_module.WAL, "_write", real)
    col.upsert([3], np.ones((1, 4)) * 3)
    assert sorted(p.id for p in col.scroll(limit=10)[0]) == [1, 3]
    db.close()
    with quiver.connect(tmp_path) as again:  # opens without 'crc mismatch, valid records follow'
        assert sorted(p.id for p in again.get_collection("c").scroll(limit=10)[0]) == [1, 3]


# ---------------------------------------------------------------- frames


def test_fuzzed_frames_are_refused_or_exact():
    rng = np.random.default_rng(2)
    frame = encode_batch([1, 2, 3], {"": rng.standard_normal((3, 8)).astype(np.float32),
                                     "img": rng.standard_normal((2, 4)).astype(np.float32),
                                     "img#rows": np.array([0, 2])},
                         [{"a": 1}, None, {"b": [1, 2]}])
    good = decode_batch(frame)
    rnd = random.Random(3)
    refused = 0
    for trial in range(4000):
        data = bytearray(frame)
        if trial % 10 == 0:
            data = data[: rnd.randrange(len(data))]  # truncated
        else:
            for _ in range(1 + trial % 3):
                data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        try:
            got = decode_batch(bytes(data))
        except CorruptData:
            refused += 1
            continue
        assert got.ids.tolist() == good.ids.tolist() and got.payloads == good.payloads
        assert all(np.array_equal(got.vectors[k], good.vectors[k]) for k in good.vectors)
    assert refused == 4000  # every change is detected (crc32 catches all bursts <= 32 bits)
    with pytest.raises(CorruptData, match="checksum"):
        decode_batch(frame + b"\0")


# ---------------------------------------------------------------- kills


_WRITER = textwrap.dedent("""
    import sys, numpy as np, quiver
    path, start = sys.argv[1], int(sys.argv[2])
    db = quiver.connect(path)
    col = db.create_collection("k", dim=8, metric="l2", index="HNSW8", segment_size=300,
                               ef_construction=16, exist_ok=True)
    rng = np.random.default_rng(start)
    b = start
    while True:
        col.upsert(list(range(b * 50, b * 50 + 50)), rng.standard_normal((50, 8)))
        print(b, flush=True)
        if b % 4 == 0:
            col.flush()          # a seal
        if b % 5 == 0:
            col.snapshot()       # a snapshot
        b += 1
""")


def test_kill9_during_seals_and_snapshots(tmp_path):
    rnd = random.Random(4)
    path = tmp_path / "db"
    acked: list[int] = []
    start = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                cwd=ROOT)
        deadline = time.monotonic() + rnd.uniform(2.0, 5.0)
        out = b""  # a read may end inside a line (the kill too): whole lines only
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                chunk = b""
            if chunk:
                out += chunk
            else:
                time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        os.set_blocking(fd, True)
        while chunk := os.read(fd, 65536):
            out += chunk
        got = [int(x) for x in out[: out.rfind(b"\n") + 1].split()]  # whole lines only
        acked += got
        start = (max(acked) + 1) if acked else start
        with quiver.connect(path, optimizer=False) as db:
            col = db.get_collection("k")
            ids = [i for b in acked for i in range(b * 50, b * 50 + 50)]
            assert len(col.get(ids)) == len(ids)
            assert not list(path.rglob("*.tmp")), list(path.rglob("*.tmp"))
    assert len(acked) >= 12


# ---------------------------------------------------------------- repair


def test_repair_reports_first_then_rebuilds_a_lost_manifest(tmp_path):
    from quiver.engine.repair import repair

    db, col, x = _filled(tmp_path / "d")
    y = np.random.default_rng(8).standard_normal((100, DIM)).astype(np.float32)
    col.upsert(list(range(100, 200)), y)  # replaced: the newest rows must win
    col.flush()
    col.upsert(list(range(300, 320)), y[:20])
    col.flush()
    col.delete([310, 150])
    want = sorted(p.id for p in col.scroll(limit=10_000)[0])
    db.close()
    (tmp_path / "d" / "collections" / "c" / "manifest.json").unlink()
    with pytest.raises(CorruptData, match="missing"):
        quiver.connect(tmp_path / "d").get_collection("c")
    before = _tree(tmp_path / "d")
    (finding,) = repair(tmp_path / "d")
    assert "rebuild it from 3 segment(s)" in finding.action and finding.fixable
    assert _tree(tmp_path / "d") == before  # a report changes nothing
    repair(tmp_path / "d", apply=True)
    with quiver.connect(tmp_path / "d") as again:
        c = again.get_collection("c")
        assert sorted(p.id for p in c.scroll(limit=10_000)[0]) == want
        assert c.search(x[500], 1, params={"exact": True})[0].id == 500
        assert c.search(y[60], 1, params={"exact": True})[0].id == 160
        np.testing.assert_allclose(c.get([160], with_vectors=True)[0].vector, y[60], rtol=1e-6)
    assert repair(tmp_path / "d") == []


def test_repair_cuts_a_damaged_log_and_quarantines_a_damaged_segment(tmp_path):
    from quiver.engine.repair import repair

    db, col, x = _filled(tmp_path / "d", n=300, seal=True)  # one sealed segment (250) + 50
    for b in range(3):
        col.upsert([1000 + b], x[:1])
    db.close()
    base = tmp_path / "d" / "collections" / "c"
    (wal_file,) = sorted((base / "wal").iterdir())
    data = bytearray(wal_file.read_bytes())
    recs, _, _ = wal_module._scan(memoryview(bytes(data)), int(wal_file.name[4:24]))
    data[recs[-2][2] + wal_module.HEADER.size + 3] ^= 0xFF  # the next-to-last record
    wal_file.write_bytes(bytes(data))
    seg = next(p for p in (base / "segments").iterdir())
    vec = seg / "index" / "vectors.npy"
    raw = bytearray(vec.read_bytes())
    raw[-5] ^= 1
    vec.write_bytes(bytes(raw))
    with pytest.raises(CorruptData):
        quiver.connect(tmp_path / "d").get_collection("c")
    findings = repair(tmp_path / "d")
    assert {("damaged record" in f.problem) for f in findings} == {True, False}
    log_fix = next(f for f in findings if "damaged record" in f.problem)
    assert f"every write after seq {recs[-3][0]}" in log_fix.loses
    seg_fix = next(f for f in findings if f is not log_fix)
    assert "quarantine" in seg_fix.action and "checksum" in seg_fix.problem
    repair(tmp_path / "d", apply=True)
    with quiver.connect(tmp_path / "d") as again:
        c = again.get_collection("c")
        ids = {p.id for p in c.scroll(limit=10_000)[0]}
        assert 1000 in ids and 1002 not in ids and 1001 not in ids
        assert (base / "quarantine" / seg.name).is_dir()


def test_repair_command_and_serve_on_a_held_directory(tmp_path):
    db, col, _ = _filled(tmp_path / "d")
    db.close()
    (tmp_path / "d" / "collections" / "c" / "manifest.json").unlink()
    cli = [sys.executable, "-m", "quiver.cli"]
    out = subprocess.run([*cli, "repair", str(tmp_path / "d")], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 1 and "problem: " in out.stdout and "--apply" in out.stdout
    assert not (tmp_path / "d" / "collections" / "c" / "manifest.json").exists()
    out = subprocess.run([*cli, "repair", str(tmp_path / "d"), "--apply"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "repaired 1 of 1" in out.stdout
    with quiver.connect(tmp_path / "d") as held:
        assert held.get_collection("c").count() == 600 - 14
        out = subprocess.run([*cli, "serve", "--data", str(tmp_path / "d"), "--port", "1"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 2
        assert f"in use by a writer (pid {os.getpid()})" in out.stderr
        assert "Traceback" not in out.stderr


# ---------------------------------------------------------------- the REST service


def test_fuzzed_binary_upserts_over_rest_are_400_and_write_nothing(tmp_path_factory):
    import httpx
    from _live_server import serve

    for server in serve(tmp_path_factory, "fuzz"):
        http = httpx.Client(base_url=server.url, timeout=30)
        assert http.put("/collections/f", json={"dim": 4, "metric": "l2"}).status_code == 200
        frame = encode_batch([1, 2, 3], np.arange(12, dtype=np.float32).reshape(3, 4),
                             [{"a": 1}, {"b": 2}, None])
        rnd = random.Random(5)
        statuses = {}
        for trial in range(300):
            data = bytearray(frame)
            if trial % 5 == 0:
                data = data[: rnd.randrange(len(data))]
            else:
                data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
            r = http.put("/collections/f/points", content=bytes(data),
                         headers={"content-type": "application/vnd.quiver.points"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code == 400 and "frame" in r.json()["error"]["message"], r.text
        count = http.post("/collections/f/points/count", json={}).json()["result"]["count"]
        assert count == 0 and statuses == {400: 300}
        r = http.put("/collections/f/points", content=frame,
                     headers={"content-type": "application/vnd.quiver.points"})
        assert r.status_code == 200
        http.close()


def test_kill9_of_the_server_during_rest_upserts_loses_nothing_acknowledged(tmp_path):
    import threading

    import httpx
    from _live_server import LiveServer

    data = tmp_path / "data"
    acked: list[int] = []
    rnd = random.Random(6)
    next_id = 0
    for run in range(3):
        server = LiveServer(data, "--no-warmup").start()
        http = httpx.Client(base_url=server.url, timeout=30)
        if run == 0:
            r = http.put("/collections/k", json={"dim": 8, "metric": "l2", "segment_size": 400})
            assert r.status_code == 200
        stop = threading.Event()

        def writer(start: int, http: httpx.Client, stop: threading.Event) -> None:
            b = start
            rng = np.random.default_rng(start)
            while not stop.is_set():
                ids = list(range(b * 20, b * 20 + 20))
                x = rng.standard_normal((20, 8)).astype(np.float32)
                try:
                    if b % 2:
                        r = http.put("/collections/k/points", content=encode_batch(ids, x),
                                     headers={"content-type": "application/vnd.quiver.points"})
                    else:
                        r = http.put("/collections/k/points", json={"points": [
                            {"id": i, "vector": v.tolist()} for i, v in zip(ids, x, strict=True)]})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append(b)
                b += 1

        t = threading.Thread(target=writer, args=(next_id, http, stop))
        t.start()
        time.sleep(rnd.uniform(1.5, 3.0))
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        stop.set()
        t.join(30)
        http.close()
        next_id = max(acked, default=next_id) + 1000
    with quiver.connect(data, optimizer=False) as db:
        col = db.get_collection("k")
        ids = [i for b in acked for i in range(b * 20, b * 20 + 20)]
        assert len(acked) >= 10 and len(col.get(ids)) == len(ids)


def test_repair_keeps_a_segment_this_install_cannot_read(tmp_path, monkeypatch):
    """A segment built on a GPU, opened where faiss is missing, is not damage: repair says
    what to install and moves nothing to quarantine, even with --apply."""
    from quiver.engine import repair as repair_module
    from quiver.engine.device import DeviceUnavailable

    db, col, x = _filled(tmp_path / "d", n=300, seal=True)
    before = col.count()
    db.close()

    def needs_faiss(*args, **kwargs):
        raise DeviceUnavailable("device: this segment's index was built with faiss on a GPU; "
                                "install quiver[gpu]")

    monkeypatch.setattr(repair_module.Segment, "load", needs_faiss)
    findings = repair_module.repair(tmp_path / "d", apply=True)
    assert findings and all(not f.fixable and "install" in f.problem for f in findings)
    base = tmp_path / "d" / "collections" / "c"
    assert not (base / "quarantine").exists()
    monkeypatch.undo()
    with quiver.connect(tmp_path / "d") as again:
        assert again.get_collection("c").count() == before
