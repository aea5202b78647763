"""Per-call search knobs, defined once for the index layer, collections, REST and the client.

Knobs are passed with each search and never stored on an index, so one index serves callers
with different speed/recall trade-offs at once. Importing this module pulls in no Numba.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

from .errors import InvalidArgument
from .validation import check_flag


def _positive_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or (not isinstance(value, int) and not _is_np_int(value)):
        raise InvalidArgument(f"params.{name}: expected a positive integer, got {value!r}")
    if value < 1:
        raise InvalidArgument(f"params.{name}: expected a positive integer, got {value!r}")
    return int(value)


def _is_np_int(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu"


@dataclass(frozen=True)
class SearchParams:
    """``ef``: HNSW beam width (default max(64, k)); ``nprobe``: IVF lists to visit;
    ``rerank``: re-score the ``ef`` candidates of a lossy codec on the float32 originals
    (``True`` or ``"exact"``; they stay on disk, memory-mapped, until read); default: codes
    only, so no float32 is resident;
    ``exact``: scan every allowed row instead of using the index; ``candidates``: documents a
    multi-vector (MaxSim) search re-ranks exactly (default from k and the field's size). An
    index ignores the knobs
    its structure has no use for (``nprobe`` on HNSW), so one set fits every field."""

    ef: int | None = None
    nprobe: int | None = None
    rerank: bool | Literal["exact"] | None = None
    exact: bool = False
    candidates: int | None = None

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid", "strict": True}
    """REST bodies embed this very type; unknown knobs there are a 422 naming them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ef", _positive_int("ef", self.ef))
        object.__setattr__(self, "nprobe", _positive_int("nprobe", self.nprobe))
        if not (isinstance(self.rerank, str) and self.rerank == "exact"):
            object.__setattr__(self, "rerank", check_flag("params.rerank", self.rerank, optional=True))
        object.__setattr__(self, "exact", check_flag("params.exact", self.exact))
        object.__setattr__(self, "candidates", _positive_int("candidates", self.candidates))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def parse(cls, value: SearchParams | dict | None = None, **overrides: Any) -> SearchParams:
        """From a ``SearchParams``, a dict (REST/JSON shape) or None; ``overrides`` (e.g.
        ``ef=64`` passed as keywords to ``index.search``) win. Unknown names are an error."""
        if value is None and cls is SearchParams:  # keywords only: the per-query path
            try:
                return _parse_keywords(tuple((k, type(v), v) for k, v in overrides.items()))
            except TypeError:  # an unhashable value: the checks below name it
                pass
        return cls._parse(value, overrides)

    @classmethod
    def _parse(cls, value, overrides: dict[str, Any]) -> SearchParams:
        if value is None:
            base: dict[str, Any] = {}
        elif isinstance(value, SearchParams):
            base = asdict(value)
        elif isinstance(value, dict):
            base = dict(value)
        else:
            raise InvalidArgument(f"params: expected a dict of search parameters, got "
                                  f"{type(value).__name__}")
        base.update(overrides)
        unknown = sorted(set(base) - _NAMES)
        if unknown:
            raise InvalidArgument(f"params: unknown search parameter(s) {unknown}; "
                                  f"known: {', '.join(cls.names())}")
        if base.get("exact") is None:
            base.pop("exact", None)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        """The knobs that are set (for JSON bodies and URLs)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if not out.get("exact"):
            out.pop("exact", None)
        return out

    def beam(self, k: int) -> int:
        """The HNSW beam width for top-``k``: ``ef`` or max(64, k), never below k."""
        return max(self.ef if self.ef is not None else 64, k)


_NAMES = frozenset(SearchParams.names())


@functools.lru_cache(maxsize=256)
def _parse_keywords(items: tuple[tuple[str, type, Any], ...]) -> SearchParams:
    """``SearchParams.parse(None, **keywords)``, remembered: a search passes the same few
    knobs query after query, and the checks cost more than the search's Python elsewhere.
    Keyed on each value's type too, so ``ef=True`` is refused however often ``ef=1`` was
    parsed (they hash alike). Params are frozen, so one instance serves every caller."""
    return SearchParams._parse(None, {k: v for k, _, v in items})
