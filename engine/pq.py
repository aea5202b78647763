"""Product quantisation (Jégou, Douze & Schmid, 2011): ``PQ<m>x8`` codes, one byte per
sub-vector, or ``PQ<m>x4fs``, 4 bits per sub-vector, two per byte.

The ``dim`` dimensions are split into ``m`` sub-vectors of ``dim / m``; each sub-space gets its
own 256 k-means centroids (a codebook), and a vector is stored as the ``m`` indices of its
nearest sub-centroids. Distances are computed from the codes by asymmetric distance
computation (ADC): per query, a float32 table of the query's distance to every sub-centroid,
then a sum of ``m`` table look-ups per row. IVF stores residuals (row minus its list's
centroid), which quantise far better than the rows themselves.

PQ codes are scored by the IVF kernels (``kernels/pq.py``; 4-bit codes by the fast scan of
``kernels/fastscan.py``), not through ``dispatch.codec_distance``: ``IVF<nlist>,PQ<m>x8`` and
``IVF<nlist>,PQ<m>x4fs`` are the way to use them. A 4-bit code packs sub-vector 2p in the low
nibble of byte p and 2p+1 in the high one.
"""

from __future__ import annotations

import numpy as np

from ..kernels import pq as kp
from .codecs import Codec, register_codec
from .errors import InvalidArgument
from .kmeans import assign, kmeans, sq_norms
from .spec import SpecPart

NBITS = (8, 4)
"""Bits per code: 8 (256 centroids per sub-space, table look-ups) or 4 (16 centroids, scanned
by the fast scan; written ``PQ<m>x4fs`` or ``PQ<m>x4``)."""
TRAIN_NITER = 25
TRAIN_EXACT_ITERS = 3
"""Sub-quantizer k-means: 25 iterations as FAISS's ProductQuantizer, pruned after 3 (see
``engine.kmeans``); at most 256 points per centroid (65,536 per sub-space)."""


class PQCodec(Codec):
    """``m`` sub-quantizers of ``2**nbits`` centroids each; codes are (n, m) uint8, or
    (n, m / 2) for 4 bits (two codes a byte)."""

    code_dtype = np.uint8
    aux_width = 0
    lossy = True

    def __init__(self, dim: int, m: int | None = None, nbits: int = 8):
        super().__init__(dim)
        if m is None:  # make_codec("pq"): a PQ codec needs its size from a spec
            raise InvalidArgument("codec: PQ needs its size; write PQ<m>x8, e.g. PQ48x8")
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise InvalidArgument(f"spec: PQ<m>x8 needs a positive m, got {m!r}")
        if dim % m:
            raise InvalidArgument(f"spec: PQ{m}: m={m} does not divide the dimension {dim}")
        if nbits not in NBITS:
            raise InvalidArgument(f"spec: PQ{m}x{nbits}: {nbits}-bit codes are not supported; "
                                  f"write PQ{m}x8 or PQ{m}x4fs")
        if nbits == 4 and m % 2:
            raise InvalidArgument(f"spec: PQ{m}x4fs packs two 4-bit codes a byte, so m must be "
                                  f"even; got m={m}")
        self.m, self.nbits = int(m), int(nbits)
        self.ksub = 1 << self.nbits
        self.dsub = dim // self.m
        self.name = f"pq{self.m}x{self.nbits}" + ("fs" if self.nbits == 4 else "")
        self.codebooks: np.ndarray | None = None
        """(m, ksub, dsub) float32 sub-centroids."""
        self._books_t: np.ndarray | None = None
        """The same, (m, dsub, ksub): the layout ``inner_tables`` reads."""

    @property
    def trained(self) -> bool:
        return self.codebooks is not None

    @property
    def code_width(self) -> int:
        """Bytes a row's code takes: m, or m / 2 for 4 bits."""
        return self.m if self.nbits == 8 else self.m // 2

    def _sub(self, x: np.ndarray, j: int) -> np.ndarray:
        return np.ascontiguousarray(x[:, j * self.dsub : (j + 1) * self.dsub])

    def fit(self, x: np.ndarray, seed: int = 1234, niter: int = TRAIN_NITER,
            adapt: bool = False) -> None:
        """k-means in every sub-space (l2, as FAISS's ProductQuantizer). ``adapt``: with fewer
        than ``ksub`` training points (a collection's small segment), each point is its own
        centroid, repeated to fill the codebook: where k-means with k >= n ends, and exact
        for those points; otherwise too few points are an error."""
        n = x.shape[0]
        if n < self.ksub and not (adapt and n):
            raise InvalidArgument(f"PQ{self.m}x{self.nbits}: {self.ksub} centroids per sub-vector "
                                  f"need at least {self.ksub} training points, got {n}")
        books = np.empty((self.m, self.ksub, self.dsub), np.float32)
        for j in range(self.m):
            sub = self._sub(x, j)
            books[j] = (sub[np.arange(self.ksub) % n] if n < self.ksub else
                        kmeans(sub, self.ksub, niter=niter, seed=seed + j,
                               exact_iters=TRAIN_EXACT_ITERS).centroids)
        self.codebooks, self._books_t = books, None

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = np.empty((x.shape[0], self.m), np.uint8)
        for j in range(self.m):
            codes[:, j] = assign(self._sub(x, j), self.codebooks[j])[0]
        if self.nbits == 4:
            codes = np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4))
        return codes, np.zeros((x.shape[0], 0), np.float32)

    def unpack(self, codes: np.ndarray) -> np.ndarray:
        """(n, m) centroid indices of stored codes (4-bit ones unpacked)."""
        if self.nbits == 8:
            return np.asarray(codes)
        out = np.empty((codes.shape[0], self.m), np.uint8)
        out[:, 0::2] = codes & 15
        out[:, 1::2] = codes >> 4
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, dim) float32 reconstructions of stored codes."""
        idx = self.unpack(codes)
        out = np.empty((codes.shape[0], self.dim), np.float32)
        for j in range(self.m):
            out[:, j * self.dsub : (j + 1) * self.dsub] = self.codebooks[j][idx[:, j]]
        return out

    def books_t(self) -> np.ndarray:
        """Codebooks as (m, dsub, ksub): the layout the table kernels read."""
        if self._books_t is None:
            self._books_t = np.ascontiguousarray(self.codebooks.transpose(0, 2, 1))
        return self._books_t

    def inner_tables(self, q: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """(nq, m * ksub) float32: ``scale`` <q_j, c_ji>, the query's inner product with
        every sub-centroid of every sub-space (what ADC tables are built from)."""
        out = np.empty((q.shape[0], self.m * self.ksub), np.float32)
        kp.inner_tables(np.ascontiguousarray(q, np.float32), self.books_t(), np.float32(scale),
                        out)
        return out

    def sq_norms(self) -> np.ndarray:
        """(m, ksub) float32: ||c_ji||^2."""
        return np.stack([sq_norms(b) for b in self.codebooks])

    def prepare(self, q: np.ndarray) -> np.ndarray:
        raise InvalidArgument("codec: PQ codes are scored by IVF only (e.g. IVF1024,PQ48x8)")

    def dist(self, kernel_metric: str):
        raise InvalidArgument("codec: PQ codes are scored by IVF only (e.g. IVF1024,PQ48x8)")

    def state(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        books = np.array(arrays["codebooks"], np.float32)
        if books.shape != (self.m, self.ksub, self.dsub):
            raise InvalidArgument(f"codebooks: shape {books.shape}, expected "
                                  f"{(self.m, self.ksub, self.dsub)}")
        self.codebooks, self._books_t = books, None


def _build(part: SpecPart, dim: int) -> PQCodec:
    if part.args or len(part.numbers) not in (1, 2) or part.suffix not in ("", "fs"):
        raise InvalidArgument(f"spec: write PQ<m>x8 (m sub-vectors of 8 bits, e.g. PQ48x8) or "
                              f"PQ<m>x4fs (4 bits, fast scan), got {part}")
    if part.suffix == "fs" and part.numbers[1:] != (4,):
        raise InvalidArgument(f"spec: the fast scan ('fs') is for 4-bit codes; write "
                              f"PQ{part.numbers[0]}x4fs, got {part}")
    return PQCodec(dim, *part.numbers)


register_codec("PQ", "PQ<m>x8|PQ<m>x4fs", PQCodec, _build)
