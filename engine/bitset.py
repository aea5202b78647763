"""``Bitset``: the set of allowed rows a filter hands to a search."""

from __future__ import annotations

import numpy as np

from ..kernels import bitset as kb


class Bitset:
    """A packed set of row positions in [0, n)."""

    __slots__ = ("n", "words")

    def __init__(self, words: np.ndarray, n: int):
        self.words = words
        self.n = n

    @classmethod
    def empty(cls, n: int) -> Bitset:
        return cls(np.zeros((n + 63) >> 6, np.uint64), n)

    @classmethod
    def full(cls, n: int) -> Bitset:
        return cls.from_mask(np.ones(n, bool))

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Bitset:
        mask = np.ascontiguousarray(mask, dtype=np.bool_)
        return cls(kb.bitset_from_bool(mask), mask.shape[0])

    @classmethod
    def from_positions(cls, positions, n: int) -> Bitset:
        pos = np.ascontiguousarray(positions, dtype=np.int64).ravel()
        return cls(kb.bitset_from_positions(pos, n), n)

    def count(self) -> int:
        return int(kb.bitset_count(self.words))

    def positions(self) -> np.ndarray:
        return kb.bitset_to_positions(self.words, self.n)

    def to_mask(self) -> np.ndarray:
        bits = np.unpackbits(self.words.view(np.uint8), bitorder="little")
        return bits[: self.n].astype(bool)

    def __contains__(self, i: int) -> bool:
        return 0 <= i < self.n and bool(kb.bitset_test(self.words, int(i)))

    def __and__(self, other: Bitset) -> Bitset:
        return Bitset(self.words & other.words, self.n)

    def __or__(self, other: Bitset) -> Bitset:
        return Bitset(self.words | other.words, self.n)

    def __invert__(self) -> Bitset:
        return Bitset.from_mask(~self.to_mask())

    def __len__(self) -> int:
        return self.count()
