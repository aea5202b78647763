"""The binary batch frame: points as ``u8 version | u32 header length | u32 crc32 | JSON
header | raw little-endian arrays (each 8-byte aligned from the frame's start)``.

The crc32 covers the header length and every byte after the crc, so a flipped, truncated or
extended frame is refused before anything is written. Version 1 frames (no crc) are what
write-ahead logs written before it hold; they are read only from the log, whose records
carry their own crc.

One format for the write-ahead log's bodies, binary REST upserts and the client, so a batch
is encoded once by whoever has it and never converted on the way to disk. Importing this
module pulls in no Numba (the HTTP client uses it).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from .errors import CorruptData, InvalidArgument

_BATCH_VERSION = 2
_LEGACY_VERSION = 1
_PREFIX = struct.Struct("<BII")  # version, header length, crc32
_LEGACY_PREFIX = struct.Struct("<BI")


class Batch(NamedTuple):
    """Decoded points batch: ``ids`` (uint64 array, or a list when any id is a UUID string),
    named arrays (``""`` is the default vector), payloads (None when not sent)."""
    ids: np.ndarray | list
    vectors: dict[str, np.ndarray]
    payloads: list | None


def _pad8(n: int) -> int:
    return -n % 8


def encode_batch(ids: Sequence[int | str] | np.ndarray,
                 vectors: np.ndarray | Mapping[str, np.ndarray] | None = None,
                 payloads: Sequence[dict | None] | None = None) -> bytes:
    """Compact body for a batch of points: ``u8 version | u32 header length | u32 crc32 |
    JSON header | pad | raw arrays``, each array 8-byte aligned. Integer ids travel as raw uint64, UUIDs and
    payloads as orjson. Vectors may be one matrix (named "") or a name -> array mapping (e.g.
    multi-vector token rows plus offsets); any numeric dtype and shape round-trips."""
    arrays: dict[str, np.ndarray] = {}
    if vectors is not None:
        vec_map = {"": vectors} if isinstance(vectors, np.ndarray) else dict(vectors)
        for name, a in vec_map.items():
            if not isinstance(name, str):
                raise InvalidArgument(f"vectors: name {name!r} is not a string")
            a = np.asarray(a)
            if a.dtype.kind not in "biuf":
                raise InvalidArgument(f"vectors[{name!r}]: dtype {a.dtype} is not numeric")
            arrays[name] = np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
    id_arr = np.asarray(ids) if isinstance(ids, np.ndarray) else None
    if id_arr is not None and id_arr.dtype.kind in "iu":
        if id_arr.size and id_arr.min() < 0:
            raise InvalidArgument("ids: negative id")
        raw_ids: np.ndarray | None = id_arr.astype("<u8").ravel()
        json_ids = None
    else:
        ids = list(ids.tolist() if id_arr is not None else ids)
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer, str)) or (
                    not isinstance(i, str) and not 0 <= i < 1 << 64):
                raise InvalidArgument(f"ids: {i!r} is not an unsigned 64-bit id or a UUID string")
        if all(type(i) is int for i in ids):
            raw_ids, json_ids = np.asarray(ids, "<u8"), None
        else:
            raw_ids, json_ids = None, ids
    header: dict[str, Any] = {"n": len(raw_ids) if raw_ids is not None else len(json_ids),
                              "ids": json_ids, "payloads": None if payloads is None
                              else list(payloads), "arrays": []}
    blobs = []
    if raw_ids is not None:
        blobs.append(raw_ids.tobytes())
    for name, a in arrays.items():
        header["arrays"].append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        blobs.append(a.tobytes())
    try:
        head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise InvalidArgument(f"payloads: not JSON-serialisable ({exc})") from None
    out = [head]
    size = _PREFIX.size + len(head)
    for b in blobs:
        out.append(b"\0" * _pad8(size))
        size += _pad8(size)
        out.append(b)
        size += len(b)
    rest = b"".join(out)
    hlen = struct.pack("<I", len(head))
    return _PREFIX.pack(_BATCH_VERSION, len(head), zlib.crc32(rest, zlib.crc32(hlen))) + rest


def decode_batch(body: bytes | memoryview, legacy: bool = False) -> Batch:
    """Inverse of ``encode_batch``; raises ``CorruptData`` on a malformed body or a failed
    checksum. ``legacy`` also reads unchecked version 1 frames (write-ahead log replay)."""
    try:
        version = body[0] if len(body) else None
        if version == _BATCH_VERSION:
            _, hlen, crc = _PREFIX.unpack_from(body, 0)
            start = _PREFIX.size
            if zlib.crc32(memoryview(body)[start:], zlib.crc32(struct.pack("<I", hlen))) != crc:
                raise CorruptData("batch body: checksum mismatch (damaged or truncated frame)")
        elif version == _LEGACY_VERSION and legacy:
            _, hlen = _LEGACY_PREFIX.unpack_from(body, 0)
            start = _LEGACY_PREFIX.size
        else:
            raise CorruptData(f"batch body: frame version {version}, this Quiver reads "
                              f"{_BATCH_VERSION}")
        header = orjson.loads(bytes(body[start:start + hlen]))
        off = start + hlen

        def take(dtype: str, shape: list[int]) -> np.ndarray:
            nonlocal off
            off += _pad8(off)
            dt = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            if off + count * dt.itemsize > len(body):
                raise CorruptData("batch body: array data is truncated")
            a = np.frombuffer(body, dt, count, off).reshape(shape).copy()
            off += count * dt.itemsize
            return a

        ids = header["ids"] if header["ids"] is not None else take("<u8", [header["n"]])
        vectors = {a["name"]: take(a["dtype"], a["shape"]) for a in header["arrays"]}
        if off != len(body):
            raise CorruptData(f"batch body: {len(body) - off} bytes after the last array")
        payloads = header["payloads"]
        n = len(ids)
        if n != header["n"] or (payloads is not None and len(payloads) != n):
            raise CorruptData("batch body: id and payload counts disagree with the header")
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError,
            IndexError) as exc:
        raise CorruptData(f"batch body: malformed ({exc})") from None
    return Batch(ids, vectors, payloads)
