"""Which shard holds a point: a stable hash of its id, the same in every process and release
(Python's own ``hash`` of a string changes per process). Part of the on-disk format: a
collection's ``cluster.json`` records the scheme by name."""

from __future__ import annotations

import hashlib

import numpy as np

SCHEME = "splitmix64-blake2b-v1"
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def shard_of(ids: list[int | str], shards: int) -> np.ndarray:
    """The shard (0..shards-1) of each normalised id: integers by SplitMix64, UUID strings by
    BLAKE2b (sequential ids and time-ordered UUIDs still spread evenly)."""
    out = np.empty(len(ids), np.int64)
    if shards == 1:
        out[:] = 0
        return out
    ints = [j for j, x in enumerate(ids) if type(x) is int]
    if ints:
        h = _splitmix64(np.fromiter((ids[j] for j in ints), np.uint64, len(ints)))
        out[ints] = (h % np.uint64(shards)).astype(np.int64)
    for j, x in enumerate(ids):
        if type(x) is not int:
            digest = hashlib.blake2b(str(x).encode(), digest_size=8).digest()
            out[j] = int.from_bytes(digest, "little") % shards
    return out
