"""Packed bitsets over row positions (uint64 words), the currency of filters."""

import numpy as np
from numba import njit

from . import INLINE, JIT


@njit(**JIT)
def bitset_words(n: int) -> int:
    return (n + 63) >> 6


@njit(**INLINE)
def bitset_test(words: np.ndarray, i: int) -> bool:
    return (words[i >> 6] >> np.uint64(i & 63)) & np.uint64(1) != 0


@njit(**INLINE)
def bitset_set(words: np.ndarray, i: int) -> None:
    words[i >> 6] |= np.uint64(1) << np.uint64(i & 63)


@njit(**INLINE)
def bitset_clear(words: np.ndarray, i: int) -> None:
    words[i >> 6] &= ~(np.uint64(1) << np.uint64(i & 63))


@njit(**JIT)
def bitset_set_many(words: np.ndarray, positions: np.ndarray) -> None:
    for p in positions:
        bitset_set(words, p)


@njit(**JIT)
def bitset_clear_many(words: np.ndarray, positions: np.ndarray) -> None:
    for p in positions:
        bitset_clear(words, p)


@njit(**INLINE)
def _popcount64(x: np.uint64) -> int:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(**JIT)
def bitset_count(words: np.ndarray) -> int:
    total = 0
    for w in words:
        total += _popcount64(w)
    return total


@njit(**JIT)
def bitset_from_bool(mask: np.ndarray) -> np.ndarray:
    n = mask.shape[0]
    words = np.zeros((n + 63) >> 6, np.uint64)
    for i in range(n):
        if mask[i]:
            words[i >> 6] |= np.uint64(1) << np.uint64(i & 63)
    return words


@njit(**JIT)
def bitset_from_positions(positions: np.ndarray, n: int) -> np.ndarray:
    words = np.zeros((n + 63) >> 6, np.uint64)
    for p in positions:
        if 0 <= p < n:
            words[p >> 6] |= np.uint64(1) << np.uint64(p & 63)
    return words


@njit(**JIT)
def bitset_to_positions(words: np.ndarray, n: int) -> np.ndarray:
    out = np.empty(bitset_count(words), np.int64)
    c = 0
    for w in range(words.shape[0]):
        x = words[w]
        while x != 0:
            low = x & (~x + np.uint64(1))
            b = _popcount64(low - np.uint64(1))
            p = (w << 6) + b
            if p < n:
                out[c] = p
                c += 1
            x ^= low
    return out[:c]
