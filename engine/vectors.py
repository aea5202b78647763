"""Growable, codec-encoded vector rows: the storage every index reads through its codec."""

from __future__ import annotations

import numpy as np

from .codecs import Codec


def readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view. Kernels get these for rows built here as for rows memory-mapped
    from disk, so each compiles once, not once per writability: two variants would also be
    free to round differently (fastmath), and a reloaded index must score as it did."""
    v = a.view()
    v.flags.writeable = False
    return v


class VectorStore:
    """Rows [0, n) of ``codes``/``aux`` are live storage; capacity grows by doubling.

    Arrays loaded from disk are read-only memory maps until the first write copies them."""

    def __init__(self, codec: Codec, codes: np.ndarray | None = None,
                 aux: np.ndarray | None = None):
        self.codec = codec
        if codes is None:
            codes, aux = codec.empty(0)
        self.codes = codes
        self.aux = aux
        self.n = codes.shape[0]

    @property
    def capacity(self) -> int:
        return self.codes.shape[0]

    def reserve(self, total: int) -> None:
        """Room for ``total`` rows without further copies (untouched rows cost no memory)."""
        self._reserve(total)

    def _reserve(self, total: int) -> None:
        writable = self.codes.flags.writeable and self.aux.flags.writeable
        if total <= self.capacity and writable:
            return
        cap = max(total, 2 * self.capacity, 1024) if total > self.capacity else self.capacity
        codes, aux = self.codec.empty(cap)
        codes[: self.n] = self.codes[: self.n]
        aux[: self.n] = self.aux[: self.n]
        self.codes, self.aux = codes, aux

    def append(self, x: np.ndarray) -> np.ndarray:
        """Encode float32 rows and append them; returns their positions."""
        codes, aux = self.codec.encode(x)
        start = self.n
        self._reserve(start + x.shape[0])
        self.codes[start : start + x.shape[0]] = codes
        self.aux[start : start + x.shape[0]] = aux
        self.n = start + x.shape[0]
        return np.arange(start, self.n, dtype=np.int64)

    def move(self, src: np.ndarray, dst: np.ndarray) -> None:
        self._reserve(self.n)
        self.codes[dst] = self.codes[src]
        self.aux[dst] = self.aux[src]

    def truncate(self, n: int) -> None:
        self.n = n

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        """The live rows, read-only (``readonly``); writes go through this store."""
        return readonly(self.codes[: self.n]), readonly(self.aux[: self.n])

    def nbytes(self) -> int:
        return self.n * self.codec.bytes_per_vector()
