"""Point writes as one function each, from a parsed body to the engine call and its counts:
the single-write routes and Qdrant's batch update (``POST /points/batch``) share them.

Each runs in the worker pool and answers the counts of an ``UpdateResult``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engine.collection import Collection
from ..engine.errors import InvalidArgument
from ..engine.points import upsert_columns
from . import schemas as s

CheckBatch = Callable[[int, str], None]


def upsert(col: Collection, body: s.UpsertPoints, check_batch: CheckBatch) -> dict[str, Any]:
    """A JSON upsert: Qdrant's ``batch`` columns or a list of ``points``."""
    if body.batch is not None:
        b = body.batch
        check_batch(len(b.ids), "batch.ids")
        return {"operation_id": col.upsert(b.ids, b.vectors, b.payloads)}
    pts = body.points
    check_batch(len(pts), "points")
    if not pts:  # nothing to write: the engine answers the last sequence number
        return {"operation_id": col.upsert([], [])}
    flat = [p.vector for p in pts if isinstance(p.vector, list) and p.vector
            and not isinstance(p.vector[0], list)]  # token matrices may differ in rows
    if len({len(v) for v in flat}) > 1:
        raise InvalidArgument("points: vectors have different lengths")
    ids, vectors, payloads = upsert_columns(
        None, None, None, [{"id": p.id, "vector": p.vector, "payload": p.payload} for p in pts])
    return {"operation_id": col.upsert(ids, vectors, payloads)}


def update_vectors(col: Collection, body: s.UpdateVectors, check_batch: CheckBatch) -> dict[str, Any]:
    check_batch(len(body.points), "points")
    ids, vectors, _ = upsert_columns(None, None, None, [{"id": p.id, "vector": p.vector}
                                                        for p in body.points])
    return {"updated": col.update_vectors(ids, vectors)}


SELECTED = {
    # selector body: (collection method, count name, body fields passed first)
    "delete": ("delete", "deleted", ()),
    "set_payload": ("set_payload", "updated", ("payload",)),
    "overwrite_payload": ("overwrite_payload", "updated", ("payload",)),
    "delete_payload": ("delete_payload", "updated", ("keys",)),
    "clear_payload": ("clear_payload", "updated", ()),
    "delete_vectors": ("delete_vectors", "updated", ("vector",)),
}
"""The writes to the points a body selects by ``points`` (ids) or ``filter``."""


def selected(col: Collection, op: str, body: s.PointsSelector, check_batch: CheckBatch) -> dict[str, Any]:
    """Write ``op`` (a ``SELECTED`` key) to the points ``body`` selects; answers how many."""
    method, counted, fields = SELECTED[op]
    if (body.points is None) == (body.filter is None):
        raise InvalidArgument("body: pass exactly one of 'points' (ids) or 'filter'")
    if body.points is not None:
        check_batch(len(body.points), "points")
    extra = {}
    if getattr(body, "key", None) is not None:
        if op != "set_payload":
            raise InvalidArgument("key: only set_payload (POST /points/payload) writes into a "
                                  "nested object; overwrite_payload replaces whole payloads")
        extra["key"] = body.key
    n = getattr(col, method)(*(getattr(body, f) for f in fields), ids=body.points,
                             filter=body.filter, **extra)
    return {counted: n}


def batch(col: Collection, body: s.UpdateOperations, check_batch: CheckBatch) -> list[dict[str, Any]]:
    """Qdrant's batch update: the operations in order, each as its own route would do it
    (each durable when the next starts; a failing one stops the rest, naming its index)."""
    check_batch(len(body.operations), "operations")
    out = []
    for i, operation in enumerate(body.operations):
        op, arg = operation.only()
        try:
            if op == "upsert":
                out.append(upsert(col, arg, check_batch))
            elif op == "update_vectors":
                out.append(update_vectors(col, arg, check_batch))
            else:
                out.append(selected(col, op, arg, check_batch))
        except InvalidArgument as exc:
            raise type(exc)(f"operations[{i}].{op}: {exc}") from None
    return out
