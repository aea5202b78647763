"""Batch search results as arrays, and their ``.npz`` wire form.

``Point`` lists suit applications; offline evaluation and bulk pipelines want FAISS-style
matrices they can score with NumPy, and a binary answer that costs nothing to parse. This is
that shape, used by ``Collection.search_arrays``, the REST batch route's ``.npz`` answer and
the client, so the three agree by construction.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np

from .errors import InvalidArgument

NPZ = "application/x-npz"
"""Binary batch-search answer: an uncompressed ``.npz`` with ``ids``, ``scores``, ``counts``."""


class SearchArrays(NamedTuple):
    """Top-k of ``nq`` queries: row ``i`` holds ``counts[i]`` hits, best first.

    ``ids``: uint64, or unicode strings if any hit has a UUID id (then every id is its
    string form); ``scores``: float32 (order documented on ``quiver.Metric``). Entries past
    ``counts[i]`` are padding (id 0 or "", score NaN)."""

    ids: np.ndarray
    scores: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_rows(cls, ids: list[list], scores: list[list], k: int) -> SearchArrays:
        """From per-query lists of external ids and scores (each at most ``k`` long)."""
        nq = len(ids)
        counts = np.fromiter((len(r) for r in ids), np.int32, nq)
        flat = [x for r in ids for x in r]
        mask = np.arange(k)[None, :] < counts[:, None]
        if all(type(x) is int for x in flat):
            out_ids = np.zeros((nq, k), np.uint64)
            out_ids[mask] = np.array(flat, np.uint64)
        else:
            out_ids = np.zeros((nq, k), "<U36")
            out_ids[mask] = [str(x) for x in flat]
        out_scores = np.full((nq, k), np.nan, np.float32)
        out_scores[mask] = np.array([s for r in scores for s in r], np.float32)
        return cls(out_ids, out_scores, counts)

    @classmethod
    def from_points(cls, hits: list[list], k: int) -> SearchArrays:
        """From ``Collection.search`` results (per-query ``Point`` lists)."""
        return cls.from_rows([[h.id for h in r] for r in hits], [[h.score for h in r] for r in hits],
                             k)

    def to_points(self) -> list[list]:
        """Per-query ``Point`` lists, as ``Collection.search`` returns them."""
        from .points import Point

        text = self.ids.dtype.kind == "U"  # UUIDs have dashes; integer ids never do
        out = []
        for row_ids, row_scores, n in zip(self.ids.tolist(), self.scores.tolist(),
                                          self.counts.tolist(), strict=True):
            out.append([Point(int(i) if not text or i.isdigit() else i, s)
                        for i, s in zip(row_ids[:n], row_scores[:n], strict=True)])
        return out

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, ids=self.ids, scores=self.scores, counts=self.counts)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, raw: bytes) -> SearchArrays:
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                arrs = cls(z["ids"], z["scores"], z["counts"])
        except Exception as exc:  # not an archive, or one missing a member
            raise InvalidArgument(f"body: not a search-results .npz ({exc})") from None
        return arrs
