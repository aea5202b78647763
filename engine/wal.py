"""Append-only write-ahead log: every acknowledged write survives ``kill -9``.

A WAL is a directory of files ``wal-<first_seq>.log`` (first_seq zero-padded to 20 digits so
names sort). Each holds records ``length u32 | crc32 u32 | seq u64 | op u8 | body``
(little-endian; ``length`` counts the body; the crc covers length, seq, op and body). Sequence
numbers are assigned here, consecutive across files. Records are written with one unbuffered
``os.write`` per batch, so a killed process never leaves data in a user-space buffer, and
fsynced by policy before ``append`` returns:

- ``"batch"`` (default): one fsync per ``append`` / ``append_many`` call, i.e. per acknowledged
  batch;
- ``"always"``: one fsync per record;
- ``"never"``: the OS decides (survives a process crash, not a power cut).

Opening scans the last file: a torn tail (short header, short body, bad crc with no valid
record after it) is what an interrupted write leaves, so it is truncated and reported (a
``logging`` warning naming file and offset, and ``WAL.repair``). A bad record followed by valid
ones is damage, not a torn write: opening raises ``CorruptData`` rather than drop acknowledged
records (``on_corrupt="truncate"`` drops them on purpose). ``replay`` checks every record and
raises ``CorruptData`` naming the file, offset and seq where it has to stop.

Bodies are opaque bytes; the collection writes points as batch frames (``engine.frame``,
the same bytes the REST API and the client send).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

from .errors import CorruptData, InvalidArgument
from .persist import fsync_dir

log = logging.getLogger(__name__)

HEADER = struct.Struct("<IIQB")  # length, crc32, seq, op
_CRC_TAIL = struct.Struct("<QB")  # seq, op: covered by the crc after the length
MAX_BODY = (1 << 32) - 1
FSYNC_POLICIES = ("batch", "always", "never")
_NAME = re.compile(r"^wal-(\d{20})\.log$")

OP_UPSERT, OP_DELETE, OP_SET_PAYLOAD, OP_DELETE_PAYLOAD = 1, 2, 3, 4
"""Suggested op codes; the WAL itself treats op as an opaque u8."""


class Record(NamedTuple):
    seq: int
    op: int
    body: bytes


@dataclass(frozen=True)
class TailRepair:
    """What opening cut off: ``dropped`` bytes from ``offset`` of ``file``, and why."""
    file: Path
    offset: int
    dropped: int
    reason: str


def _crc(length: int, seq: int, op: int, body: bytes | memoryview) -> int:
    crc = zlib.crc32(struct.pack("<I", length))
    crc = zlib.crc32(_CRC_TAIL.pack(seq, op), crc)
    return zlib.crc32(body, crc)


def encode_record(seq: int, op: int, body: bytes) -> bytes:
    return HEADER.pack(len(body), _crc(len(body), seq, op, body), seq, op) + body


def _file_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.log"


def _read_record(data: memoryview, off: int) -> tuple[int, int, int] | str:
    """(seq, op, end) of the valid record at ``off`` (body is data[off+HEADER.size:end]), or
    why there is none."""
    if off + HEADER.size > len(data):
        return "short header"
    length, crc, seq, op = HEADER.unpack_from(data, off)
    end = off + HEADER.size + length
    if end > len(data):
        return "short body"
    if _crc(length, seq, op, data[off + HEADER.size:end]) != crc:
        return "crc mismatch"
    return seq, op, end


def _scan(data: memoryview, expect: int) -> tuple[list[tuple[int, int, int]], int, str | None]:
    """Parse records from the start: ([(seq, op, offset)], offset of the first bad byte, why)."""
    out: list[tuple[int, int, int]] = []
    off = 0
    while off < len(data):
        r = _read_record(data, off)
        if isinstance(r, str):
            return out, off, r
        seq, op, nxt = r
        if seq != expect:
            return out, off, f"seq {seq} where {expect} was expected"
        out.append((seq, op, off))
        off, expect = nxt, expect + 1
    return out, off, None


def _valid_record_after(data: memoryview, start: int, seq: int) -> int | None:
    """Offset of a valid record numbered ``seq`` at or after ``start``, if any (found by
    searching for its seq bytes, so a damaged record's successors can be told apart from
    torn-write garbage without parsing every offset)."""
    needle = struct.pack("<Q", seq)
    raw = data.obj if isinstance(data.obj, bytes) else bytes(data)
    i = raw.find(needle, start + 8)
    while i != -1:
        off = i - 8
        r = _read_record(data, off)
        if not isinstance(r, str) and r[0] == seq:
            return off
        i = raw.find(needle, i + 1)
    return None


class WAL:
    """A write-ahead log in directory ``path``. Appends are thread-safe."""

    def __init__(self, path: str | os.PathLike, fsync: str = "batch", *,
                 max_file_bytes: int = 64 << 20, start_seq: int = 1, on_corrupt: str = "raise"):
        if fsync not in FSYNC_POLICIES:
            raise InvalidArgument(f"fsync: {fsync!r}, expected one of {', '.join(FSYNC_POLICIES)}")
        if on_corrupt not in ("raise", "truncate"):
            raise InvalidArgument(f"on_corrupt: {on_corrupt!r}, expected 'raise' or 'truncate'")
        if start_seq < 1:
            raise InvalidArgument(f"start_seq: {start_seq}, expected >= 1")
        self.path = Path(path)
        self.fsync = fsync
        self.max_file_bytes = max_file_bytes
        self.repair: TailRepair | None = None
        self._broken: OSError | None = None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.path.mkdir(parents=True, exist_ok=True)
        files = self._list()
        if not files:
            self._open_new(start_seq)
            return
        first, last = files[-1]
        self._recover(last, first, on_corrupt)
        self._fd = os.open(last, os.O_WRONLY | os.O_APPEND)
        self._active, self._active_first = last, first
        self._size = last.stat().st_size

    # ---- files

    def _list(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.path.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def files(self) -> list[Path]:
        """The log files, oldest first."""
        return [p for _, p in self._list()]

    def _open_new(self, first_seq: int) -> None:
        p = self.path / _file_name(first_seq)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if self.fsync != "never":
                os.fsync(fd)
                fsync_dir(self.path)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._active, self._active_first, self._size = p, first_seq, 0
        self._next = first_seq

    def _recover(self, path: Path, first: int, on_corrupt: str) -> None:
        data = memoryview(path.read_bytes())
        recs, bad, why = _scan(data, first)
        self._next = recs[-1][0] + 1 if recs else first
        if why is None:
            return
        nxt = _valid_record_after(data, bad + 1, self._next + 1)
        if nxt is not None and on_corrupt == "raise":
            raise CorruptData(
                f"{path}: record at offset {bad} (seq {self._next}) is damaged ({why}) but valid "
                f"records follow at offset {nxt}; refusing to drop them (open with "
                f"on_corrupt='truncate' to cut the log at offset {bad})")
        dropped = len(data) - bad
        data.release()
        with open(path, "r+b") as f:
            f.truncate(bad)
            f.flush()
            os.fsync(f.fileno())
        kind = "damaged record" if nxt is not None else "torn tail"
        self.repair = TailRepair(path, bad, dropped, f"{kind}: {why}")
        log.warning("%s: %s at offset %d (%s); truncated %d bytes, last good seq %d",
                    path, kind, bad, why, dropped, self._next - 1)

    # ---- writing

    @property
    def last_seq(self) -> int:
        """Seq of the newest record (first seq - 1 when empty)."""
        return self._next - 1

    @property
    def next_seq(self) -> int:
        return self._next

    def _check(self, op: int, body: bytes) -> None:
        if self._fd is None:
            raise InvalidArgument(f"{self.path}: the WAL is closed")
        if not isinstance(op, int) or not 0 <= op <= 255:
            raise InvalidArgument(f"op: {op!r}, expected an integer in [0, 255]")
        if len(body) > MAX_BODY:
            raise InvalidArgument(f"body: {len(body)} bytes, at most {MAX_BODY}")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a regular-file write can be short; finish it before acknowledging
            view = view[os.write(self._fd, view):]
        self._size += len(data)

    def append(self, op: int, body: bytes) -> int:
        """Write one record, fsync by policy; returns its seq once durable per the policy."""
        return self.append_many([(op, body)]).start

    def append_many(self, records: Iterable[tuple[int, bytes]]) -> range:
        """Write records as one batch (one write, one fsync under ``"batch"``); returns their
        seqs. Nothing in the batch is acknowledged until this returns.

        A failed write or fsync (a full disk, an I/O error) cuts the file back to where the
        batch began before the error is raised, so writes acknowledged later never land
        behind a partial record; if even that fails the log refuses writes until reopened."""
        records = [(op, bytes(body)) for op, body in records]
        with self._lock:
            for op, body in records:
                self._check(op, body)
            if self._broken is not None:
                raise OSError(self._broken.errno, f"{self._active}: the write-ahead log could "
                              f"not be cut back after a failed write ({self._broken}); "
                              f"reopen the collection")
            if self._size >= self.max_file_bytes and records:
                self._rotate_locked()
            first, start_size = self._next, self._size
            try:
                if self.fsync == "always":
                    for op, body in records:
                        self._write(encode_record(self._next, op, body))
                        os.fsync(self._fd)
                        self._next += 1
                else:
                    chunks = [encode_record(first + i, op, body) for i, (op, body) in
                              enumerate(records)]
                    self._write(b"".join(chunks))
                    self._next += len(records)
                    if self.fsync == "batch" and records:
                        os.fsync(self._fd)
            except OSError:
                self._cut_back(start_size, first)
                raise
            return range(first, self._next)

    def _cut_back(self, size: int, next_seq: int) -> None:
        self._next, self._size = next_seq, size
        try:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        except OSError as exc:
            self._broken = exc
            log.error("%s: could not truncate back to %d bytes after a failed append: %s",
                      self._active, size, exc)

    def sync(self) -> None:
        """fsync now (for ``fsync="never"`` users that want a durability point)."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

    def _rotate_locked(self) -> None:
        if self._size == 0:
            return
        if self.fsync != "never":
            os.fsync(self._fd)
        old = self._fd
        self._open_new(self._next)  # first: if it fails (a full disk) the old file stays open
        os.close(old)

    def rotate(self) -> None:
        """Start a new file at the next seq (no-op if the current one is empty)."""
        with self._lock:
            self._rotate_locked()

    def truncate_before(self, seq: int) -> list[Path]:
        """Delete whole files holding only records with seq < ``seq`` (e.g. once a snapshot or
        sealed segment covers them); returns the deleted paths. The newest file always stays,
        so its name keeps the next seq even when the log is otherwise empty."""
        with self._lock:
            if self._fd is not None and self._next <= seq:
                self._rotate_locked()
            files = self._list()
            gone = []
            for (_, p), (nxt_first, _) in pairwise(files):
                if nxt_first <= seq:
                    p.unlink()
                    gone.append(p)
            if gone:
                fsync_dir(self.path)
            return gone

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                if self.fsync != "never":
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- reading

    def replay(self, after_seq: int | None = None) -> Iterator[Record]:
        """Records with seq > ``after_seq`` in order (None: all that are left). Raises
        ``CorruptData`` (after yielding every record before it) at a damaged record, a seq gap,
        a missing file, or when records after ``after_seq`` were already deleted."""
        check_start = after_seq is not None
        after_seq = 0 if after_seq is None else after_seq
        with self._lock:
            files = self._list()
            active, active_size = self._active, self._size
        expect = None
        for i, (first, p) in enumerate(files):
            if i + 1 < len(files) and files[i + 1][0] <= after_seq + 1:
                expect = files[i + 1][0]
                continue  # every record in this file is <= after_seq
            if check_start and expect is None and first > after_seq + 1:
                raise CorruptData(f"{self.path}: records {after_seq + 1}..{first - 1} were "
                                  f"requested but the log starts at {first} (truncated?)")
            if expect is not None and first != expect:
                raise CorruptData(f"{p}: starts at seq {first}, expected {expect} "
                                  f"(a log file is missing)")
            data = p.read_bytes()
            if p == active:
                data = data[:active_size]
            recs, bad, why = _scan(memoryview(data), first)
            for seq, op, off in recs:
                if seq > after_seq:
                    length = HEADER.unpack_from(data, off)[0]
                    yield Record(seq, op, data[off + HEADER.size:off + HEADER.size + length])
            expect = recs[-1][0] + 1 if recs else first
            if why is not None:
                raise CorruptData(f"{p}: damaged record at offset {bad} (seq {expect}): {why}; "
                                  f"replay stopped after seq {expect - 1}")
