"""External int64 ids <-> internal row positions."""

from __future__ import annotations

import numpy as np

from .errors import DuplicateId, NotFound


class IdMap:
    """Positions are dense row numbers in an index; ids are what users see."""

    def __init__(self) -> None:
        self._pos: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._pos)

    def __contains__(self, ext_id: int) -> bool:
        return int(ext_id) in self._pos

    def check_new(self, ids: np.ndarray) -> None:
        for i in ids.tolist():
            if i in self._pos:
                raise DuplicateId(f"ids: id {i} is already in the index (remove it first)")

    def assign(self, ids: np.ndarray, positions: np.ndarray) -> None:
        self._pos.update(zip(ids.tolist(), positions.tolist(), strict=True))

    def drop(self, ids: np.ndarray) -> None:
        for i in ids.tolist():
            self._pos.pop(i, None)

    def positions(self, ids, missing: str = "raise") -> np.ndarray:
        """Positions of ``ids``; unknown ids raise NotFound, or are left out if missing='skip'."""
        out = []
        for i in np.asarray(ids, dtype=np.int64).ravel().tolist():
            p = self._pos.get(i)
            if p is None:
                if missing == "raise":
                    raise NotFound(f"ids: id {i} is not in the index")
                continue
            out.append(p)
        return np.asarray(out, dtype=np.int64)

    @classmethod
    def from_array(cls, ids: np.ndarray, live: np.ndarray | None = None) -> IdMap:
        m = cls()
        pos = np.arange(ids.shape[0]) if live is None else np.flatnonzero(live)
        m.assign(np.asarray(ids)[pos], pos)
        return m
