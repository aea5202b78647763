"""Points and their vector fields as the embedded database and the HTTP client both see them.

A batch of points carries, per vector field, a matrix and which of the batch's points it
belongs to (a field may be missing for some points). In a batch frame (``engine.frame``) a
field ``name`` travels as the array ``name`` plus, when some points lack it, the int64 array
``name#rows``; a multi-vector field's token rows travel as ``name`` (all the tokens) plus
``name#offsets`` (where each point's tokens start). Importing this module pulls in no Numba.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgument, NotFound
from .tokens import TokenMatrices

DEFAULT_FIELD = ""
"""The unnamed vector field of a single-vector collection (Qdrant's name for it too)."""
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ROWS = "#rows"
_OFFSETS = "#offsets"

FieldBatch = dict[str, tuple[np.ndarray, "np.ndarray | None"]]
"""Field name -> (vectors, indices of the batch's points they belong to; None: all)."""


@dataclass
class Point:
    """A stored point; ``score`` is set in search results (order documented on ``Metric``).
    ``vector`` is a list of floats in a single-vector collection, a dict of them by field
    name in one with named fields."""

    id: int | str
    score: float | None = None
    payload: dict | None = None
    vector: list[float] | dict[str, list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "payload": self.payload, "vector": self.vector}


def check_field_name(name: Any, what: str = "vectors") -> str:
    """A vector field name: 1-64 of A-Z a-z 0-9 _ . - (it names files on disk)."""
    if not isinstance(name, str) or not _FIELD_NAME.match(name):
        raise InvalidArgument(f"{what}: {name!r} is not a valid vector name "
                              f"(1-64 of A-Z a-z 0-9 _ . -)")
    return name


def require_points(ids: list, exists: Callable[[Any], bool]) -> None:
    """A write to points named by id changes existing points only (Qdrant answers 404 too):
    NotFound naming the first missing ids, before anything is written."""
    missing = [x for x in ids if not exists(x)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NotFound(f"ids: no point with id {missing[0]!r}{more}; nothing was written")


def upsert_columns(ids, vectors, payloads, points) -> tuple[Any, Any, Any]:
    """The columnar form of an upsert given either as columns or as ``points=[{"id",
    "vector", "payload"}, ...]`` (the embedded database and the client accept both). A
    point's ``vector`` is a list, or a dict by field name that may leave fields out."""
    if points is not None:
        if ids is not None or vectors is not None or payloads is not None:
            raise InvalidArgument("points: pass either points or ids/vectors/payloads")
        if not isinstance(points, (list, tuple)):
            raise InvalidArgument("points: expected a list of {id, vector, payload} objects")
        for i, p in enumerate(points):
            if not isinstance(p, dict) or "id" not in p or "vector" not in p:
                raise InvalidArgument(f"points[{i}]: expected an object with 'id' and 'vector'")
        ids = [p["id"] for p in points]
        payloads = [p.get("payload") for p in points]
        vecs = [p["vector"] for p in points]
        if vecs and all(isinstance(v, dict) for v in vecs):
            names = dict.fromkeys(n for v in vecs for n in v)
            vectors = {n: [v.get(n) for v in vecs] for n in names}
        elif any(isinstance(v, dict) for v in vecs):
            raise InvalidArgument("points: give every point's vector as a list, or every one "
                                  "as a dict of named vectors, not a mix")
        else:
            vectors = vecs
    if ids is None or vectors is None:
        raise InvalidArgument("ids and vectors are required")
    return ids, vectors, payloads


def pack_fields(fields: FieldBatch) -> dict[str, np.ndarray]:
    """Field vectors as the named arrays of a batch frame."""
    out: dict[str, np.ndarray] = {}
    for name, (x, rows) in fields.items():
        if isinstance(x, TokenMatrices):
            out[name], out[name + _OFFSETS] = x.tokens, x.offsets
        else:
            out[name] = x
        if rows is not None:
            out[name + _ROWS] = np.asarray(rows, np.int64)
    return out


def check_rows(rows: Any, m: int, n: int, where: str) -> np.ndarray:
    """Indices of the ``m`` points (of ``n``) a field's vectors belong to, increasing."""
    try:
        r = np.atleast_1d(np.asarray(rows))
    except (TypeError, ValueError):
        r = np.zeros((0, 0))
    if (r.ndim != 1 or (r.size and r.dtype.kind not in "iu") or r.shape[0] != m
            or (r.size and (r.min() < 0 or r.max() >= n or (np.diff(r) <= 0).any()))):
        raise InvalidArgument(f"{where}: rows must be {m} increasing indices of the batch's "
                              f"{n} points, one per vector")
    return r.astype(np.int64)


def field_rows(value: Any, n: int, where: str) -> tuple[Any, np.ndarray | None]:
    """One field's value in an upsert of ``n`` points as (vectors, rows): a ``(matrix,
    rows)`` pair, a list with None for points without the field, or vectors for all (rows
    None). Dimensions are checked by whoever knows the field."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidArgument(f"{where}: expected a (matrix, rows) pair")
        x, rows = value
        if rows is None:
            return x, None
        if not hasattr(x, "__len__"):
            raise InvalidArgument(f"{where}: expected a (matrix, rows) pair, got a "
                                  f"{type(x).__name__} for the matrix")
        rows = check_rows(rows, len(x), n, where)
        return x, (None if rows.shape[0] == n else rows)
    if isinstance(value, list) and any(v is None for v in value):
        if len(value) != n:
            raise InvalidArgument(f"{where}: got {len(value)} entries for {n} ids")
        rows = np.array([i for i, v in enumerate(value) if v is not None], np.int64)
        return [v for v in value if v is not None], rows
    return value, None


def unpack_fields(arrays: dict[str, np.ndarray], n: int) -> FieldBatch:
    """Inverse of ``pack_fields`` for a batch of ``n`` points; malformed arrays are an
    ``InvalidArgument`` naming the field."""
    out: FieldBatch = {}
    for name, x in arrays.items():
        if "#" in name:
            if name.split("#", 1)[0] not in arrays:
                raise InvalidArgument(f"vectors: {name!r} has no field {name.split('#', 1)[0]!r}")
            continue
        offsets = arrays.get(name + _OFFSETS)
        if offsets is not None:
            offsets = np.asarray(offsets)
            if (offsets.ndim != 1 or offsets.dtype.kind not in "iu" or not offsets.size
                    or np.ndim(x) != 2):
                raise InvalidArgument(f"vectors[{name!r}]: token rows need 1-D integer offsets")
            x = TokenMatrices(x, offsets.astype(np.int64))
        rows = arrays.get(name + _ROWS)
        if rows is not None:  # (without rows, shapes are the collection's to judge)
            rows = check_rows(rows, len(x), n, f"vectors[{name!r}]")
        out[name] = (x, rows)
    return out
