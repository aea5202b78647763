"""External int64 ids <-> internal row positions."""

from __future__ import annotations

import numpy as np

from .errors import DuplicateId, NotFound

_DICT_BYTES_PER_ENTRY = 104


class IdMap:
    """Positions are dense row numbers in an index; ids are what users see.

    While every id equals its position (what segments of a collection add, and what an index
    whose ids were left to default gets), the map is the identity and holds no dictionary:
    a Python dict costs ~100 bytes a point, more than an int8 vector. The first id that breaks
    the pattern (or a removal) builds the dictionary."""

    def __init__(self) -> None:
        self._pos: dict[int, int] | None = None
        self._n = 0
        """Identity over positions [0, _n) while ``_pos`` is None."""

    def __len__(self) -> int:
        return self._n if self._pos is None else len(self._pos)

    def __contains__(self, ext_id: int) -> bool:
        i = int(ext_id)
        return 0 <= i < self._n if self._pos is None else i in self._pos

    @property
    def identity(self) -> bool:
        return self._pos is None

    def _materialise(self) -> dict[int, int]:
        if self._pos is None:
            self._pos = dict(zip(range(self._n), range(self._n), strict=True))
        return self._pos

    def check_new(self, ids: np.ndarray) -> None:
        if self._pos is None:
            old = ids[ids < self._n] if ids.size else ids
            if old.size:
                raise DuplicateId(f"ids: id {int(old[0])} is already in the index (remove it first)")
            return
        for i in ids.tolist():
            if i in self._pos:
                raise DuplicateId(f"ids: id {i} is already in the index (remove it first)")

    def assign(self, ids: np.ndarray, positions: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        positions = np.asarray(positions, np.int64)
        if (self._pos is None and ids.size and positions[0] == self._n
                and np.array_equal(ids, positions)
                and np.array_equal(positions, np.arange(self._n, self._n + ids.size))):
            self._n += int(ids.size)
            return
        if ids.size:
            self._materialise().update(zip(ids.tolist(), positions.tolist(), strict=True))

    def drop(self, ids: np.ndarray) -> None:
        if np.asarray(ids).size == 0:
            return
        pos = self._materialise()
        for i in np.asarray(ids).tolist():
            pos.pop(i, None)

    def positions(self, ids, missing: str = "raise") -> np.ndarray:
        """Positions of ``ids``; unknown ids raise NotFound, or are left out if missing='skip'."""
        arr = np.asarray(ids, dtype=np.int64).ravel()
        if self._pos is None:
            known = (arr >= 0) & (arr < self._n)
            if missing == "raise" and not known.all():
                raise NotFound(f"ids: id {int(arr[~known][0])} is not in the index")
            return arr[known]
        out = []
        for i in arr.tolist():
            p = self._pos.get(i)
            if p is None:
                if missing == "raise":
                    raise NotFound(f"ids: id {i} is not in the index")
                continue
            out.append(p)
        return np.asarray(out, dtype=np.int64)

    def nbytes(self) -> int:
        """Resident bytes of the dictionary, estimated from its size alone (what it holds
        depends on its growth history): ~40 bytes of table per entry plus two int objects."""
        return 0 if self._pos is None else _DICT_BYTES_PER_ENTRY * len(self._pos)

    @classmethod
    def from_array(cls, ids: np.ndarray, live: np.ndarray | None = None) -> IdMap:
        m = cls()
        pos = np.arange(ids.shape[0]) if live is None else np.flatnonzero(live)
        m.assign(np.asarray(ids)[pos], pos)
        return m
