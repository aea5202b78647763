"""Ragged token matrices: what a multi-vector field holds per point (numpy only, no Numba).

A batch of documents travels as one (T, dim) float32 array of all their tokens plus offsets
(n + 1, int64): document i is ``tokens[offsets[i]:offsets[i + 1]]``. ``TokenMatrices`` gives
that pair the shape of a matrix of ``n`` rows, so the code that moves dense vectors between
batches, segments and the WAL (row counts, row subsets, concatenation) moves documents too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidArgument
from .validation import all_finite, beyond_f16

MAX_TOKENS = 4096
"""Tokens one document may have."""


class TokenMatrices:
    """``n`` documents' token matrices: ``tokens`` (T, dim) float32, ``offsets`` (n + 1)."""

    __slots__ = ("offsets", "tokens")

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray):
        self.tokens = tokens
        self.offsets = offsets

    @property
    def shape(self) -> tuple[int, int]:
        """(documents, token dimension): a matrix's shape, one row per document."""
        return self.offsets.shape[0] - 1, self.tokens.shape[1]

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __iter__(self):
        return (self.doc(i) for i in range(len(self)))

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def __getitem__(self, index) -> TokenMatrices:
        """The documents at ``index`` (indices, a boolean mask or a slice), in that order."""
        rows = np.arange(len(self))[index]
        counts = self.counts()[rows]
        offsets = np.zeros(rows.shape[0] + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        if rows.shape[0] == 0:  # the stored dtype kept: float16 codes decode to their dim
            return TokenMatrices(self.tokens[:0], offsets)
        starts = self.offsets[rows]
        take = np.repeat(starts - offsets[:-1], counts) + np.arange(int(offsets[-1]))
        return TokenMatrices(np.ascontiguousarray(self.tokens[take]), offsets)

    @staticmethod
    def concat(parts: list[TokenMatrices], dim: int) -> TokenMatrices:
        if not parts:
            return TokenMatrices(np.zeros((0, dim), np.float32), np.zeros(1, np.int64))
        tokens = np.concatenate([p.tokens for p in parts]) if len(parts) > 1 else parts[0].tokens
        counts = np.concatenate([p.counts() for p in parts])
        offsets = np.zeros(counts.shape[0] + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return TokenMatrices(np.ascontiguousarray(tokens, np.float32), offsets)

    def tolist(self) -> list[list[list[float]]]:
        return [self.doc(i).tolist() for i in range(len(self))]


def as_token_matrices(value: Any, dim: int, what: str) -> TokenMatrices:
    """``TokenMatrices`` from a list of (n_i, dim) token matrices, a (tokens, offsets) pair or
    a ``TokenMatrices``; every document has 1 to ``MAX_TOKENS`` finite tokens. Errors name
    the item."""
    if isinstance(value, TokenMatrices):
        value = (value.tokens, value.offsets)
    if isinstance(value, tuple) and len(value) == 2:
        try:
            tokens = np.ascontiguousarray(value[0], np.float32)
            offsets = np.ascontiguousarray(value[1], np.int64)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{what}: (tokens, offsets) must be numeric arrays") from None
        if tokens.ndim != 2 or tokens.shape[1] != dim:
            raise InvalidArgument(f"{what}: token vectors must be (n, {dim}), got shape "
                                  f"{tokens.shape}")
        counts = np.diff(offsets) if offsets.ndim == 1 else np.zeros(0)
        if (offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0
                or offsets[-1] != tokens.shape[0] or (counts < 1).any()
                or (counts > MAX_TOKENS).any()):
            raise InvalidArgument(f"{what}: offsets must rise from 0 to {tokens.shape[0]} "
                                  f"with 1 to {MAX_TOKENS} tokens per item")
    else:
        if isinstance(value, np.ndarray) and value.ndim == 2:
            items = [value]
        elif isinstance(value, list) or (isinstance(value, np.ndarray) and value.ndim):
            items = list(value)
        else:
            raise InvalidArgument(f"{what}: expected a list of token matrices or a (vectors, "
                                  f"offsets) pair, got {type(value).__name__}")
        mats = []
        for i, item in enumerate(items):
            try:
                m = np.asarray(item, np.float32)
            except (TypeError, ValueError):
                raise InvalidArgument(f"{what}[{i}]: not a matrix of numbers") from None
            if m.ndim != 2 or m.shape[1] != dim:
                raise InvalidArgument(f"{what}[{i}]: expected (tokens, {dim}) token vectors, "
                                      f"got shape {m.shape}")
            if not 1 <= m.shape[0] <= MAX_TOKENS:
                raise InvalidArgument(f"{what}[{i}]: {m.shape[0]} tokens; 1 to {MAX_TOKENS} "
                                      f"allowed")
            mats.append(m)
        if len(mats) == 1:  # one query: no concatenation
            tokens = np.ascontiguousarray(mats[0])
            offsets = np.array([0, tokens.shape[0]], np.int64)
        else:
            tokens = (np.ascontiguousarray(np.concatenate(mats), np.float32) if mats
                      else np.zeros((0, dim), np.float32))
            offsets = np.zeros(len(mats) + 1, np.int64)
            np.cumsum([m.shape[0] for m in mats], out=offsets[1:])
    if not all_finite(tokens):
        bad = int(np.searchsorted(offsets, np.flatnonzero(~np.isfinite(tokens).all(1))[0],
                                  side="right") - 1)
        raise InvalidArgument(f"{what}[{bad}]: NaN or infinite token values")
    return TokenMatrices(tokens, offsets)


def is_one_query(x: Any) -> bool:
    """Whether a multi-vector search input is one query (one token matrix: a 2-D array or a
    list of equal rows) rather than a batch (a list of them, ``TokenMatrices``)."""
    if isinstance(x, TokenMatrices):
        return False
    try:
        nd = np.ndim(x)
    except ValueError:  # token matrices of different lengths: a batch
        return False
    if nd not in (2, 3):
        raise InvalidArgument("vector: a multi-vector query is a token matrix (tokens x dim), "
                              "a batch is a list of them")
    return nd == 2


def normalize_tokens(x: TokenMatrices) -> TokenMatrices:
    """Unit-length tokens (cosine MaxSim is inner-product MaxSim over them)."""
    norms = np.linalg.norm(x.tokens, axis=1, keepdims=True)
    tokens = np.ascontiguousarray(x.tokens / np.where(norms > 0, norms, 1), np.float32)
    return TokenMatrices(tokens, x.offsets)


def check_f16_tokens(tokens: np.ndarray, offsets: np.ndarray, what: str) -> None:
    """Refuse token matrices a float16 store cannot hold, naming the first such item."""
    row = beyond_f16(tokens)
    if row >= 0:
        item = int(np.searchsorted(offsets, row, side="right") - 1)
        raise InvalidArgument(f"{what}[{item}]: a token value beyond the float16 range "
                              f"(|x| <= 65504); store tokens='f32'")
