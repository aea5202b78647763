"""Points: writes, reads by id, payload edits, scroll and count (searches: ``search``)."""

from __future__ import annotations

import time

import numpy as np
from fastapi import FastAPI, Request

from ...engine.errors import CorruptData, InvalidArgument
from ...engine.frame import decode_batch
from ...engine.points import unpack_fields
from .. import schemas as s
from .. import writes
from ..context import JSON, ServerContext, body_doc, ok, parse
from ..qdrant.query import check_vector_names, select_vectors

TAGS = ["points"]


def register(app: FastAPI, ctx: ServerContext) -> None:
    database, run, check_k, check_batch = ctx.database, ctx.run, ctx.check_k, ctx.check_batch

    @app.put("/collections/{name}/points", tags=TAGS, openapi_extra=body_doc(s.UpsertPoints, s.BINARY_POINTS))
    async def upsert(name: str, request: Request, wait: bool = False):
        t = time.perf_counter()
        col = database().get_collection(name)
        if request.headers.get("content-type", "").startswith(s.BINARY_POINTS):
            try:
                batch = decode_batch(await request.body())
            except (CorruptData, ValueError, KeyError, TypeError) as exc:
                raise InvalidArgument(f"body: malformed {s.BINARY_POINTS} frame ({exc})") from None
            if not batch.vectors:
                raise InvalidArgument("body: the frame holds no vectors")
            ids = batch.ids.tolist() if isinstance(batch.ids, np.ndarray) else batch.ids
            check_batch(len(ids), "points")
            fields = unpack_fields(batch.vectors, len(ids))
            seq = await run(col.upsert, ids, fields, batch.payloads)
            return ok(s.update_result(wait, operation_id=seq), t)
        body = await parse(request, s.UpsertPoints, s.BINARY_POINTS)
        return ok(s.update_result(wait, **await run(writes.upsert, col, body, check_batch)), t)

    @app.post("/collections/{name}/points", tags=TAGS, openapi_extra=body_doc(s.GetPoints))
    async def get_points(name: str, request: Request):
        t = time.perf_counter()
        body = await parse(request, s.GetPoints)
        check_batch(len(body.ids), "ids")
        col = database().get_collection(name)
        check_vector_names(col, body.with_vector)
        pts = await run(col.get, body.ids, body.with_payload, bool(body.with_vector))
        return ok(select_vectors(pts, body.with_vector), t)

    @app.post("/collections/{name}/points/delete", tags=TAGS, openapi_extra=body_doc(s.PointsSelector))
    async def delete_points(name: str, request: Request, wait: bool = False):
        return await _selected_write(name, request, wait, s.PointsSelector, "delete")

    async def _selected_write(name: str, request: Request, wait: bool,
                              model: type[s.PointsSelector], op: str) -> JSON:
        """Write ``op`` (``writes.SELECTED``) to the points a body selects by ``points``
        (ids) or ``filter``; answers how many."""
        t = time.perf_counter()
        body = await parse(request, model)
        col = database().get_collection(name)
        return ok(s.update_result(wait, **await run(writes.selected, col, op, body, check_batch)), t)

    @app.post("/collections/{name}/points/payload", tags=TAGS, openapi_extra=body_doc(s.SetPayload))
    async def set_payload(name: str, request: Request, wait: bool = False):
        """Merge keys into the selected points' payloads (vectors unchanged)."""
        return await _selected_write(name, request, wait, s.SetPayload, "set_payload")

    @app.put("/collections/{name}/points/payload", tags=TAGS, openapi_extra=body_doc(s.SetPayload))
    async def overwrite_payload(name: str, request: Request, wait: bool = False):
        """Replace the selected points' payloads."""
        return await _selected_write(name, request, wait, s.SetPayload, "overwrite_payload")

    @app.post("/collections/{name}/points/payload/delete", tags=TAGS, openapi_extra=body_doc(s.DeletePayload))
    async def delete_payload(name: str, request: Request, wait: bool = False):
        """Remove keys from the selected points' payloads."""
        return await _selected_write(name, request, wait, s.DeletePayload, "delete_payload")

    @app.post("/collections/{name}/points/payload/clear", tags=TAGS, openapi_extra=body_doc(s.PointsSelector))
    async def clear_payload(name: str, request: Request, wait: bool = False):
        """Empty the selected points' payloads."""
        return await _selected_write(name, request, wait, s.PointsSelector, "clear_payload")

    @app.put("/collections/{name}/points/vectors", tags=TAGS, openapi_extra=body_doc(s.UpdateVectors))
    async def update_vectors(name: str, request: Request, wait: bool = False):
        """Replace some vector fields of existing points (other fields and payloads kept)."""
        t = time.perf_counter()
        body = await parse(request, s.UpdateVectors)
        col = database().get_collection(name)
        return ok(s.update_result(wait, **await run(writes.update_vectors, col, body, check_batch)), t)

    @app.post("/collections/{name}/points/vectors/delete", tags=TAGS,
              openapi_extra=body_doc(s.DeleteVectors))
    async def delete_vectors(name: str, request: Request, wait: bool = False):
        """Remove named vector fields from the selected points."""
        return await _selected_write(name, request, wait, s.DeleteVectors, "delete_vectors")

    @app.post("/collections/{name}/points/batch", tags=TAGS,
              openapi_extra=body_doc(s.UpdateOperations))
    async def batch_update(name: str, request: Request, wait: bool = False):
        """Several writes in order (upsert, delete, payload edits, vector updates); answers
        one UpdateResult each."""
        t = time.perf_counter()
        body = await parse(request, s.UpdateOperations)
        col = database().get_collection(name)
        done = await run(writes.batch, col, body, check_batch)
        return ok([s.update_result(wait, **counts) for counts in done], t)

    @app.post("/collections/{name}/points/scroll", tags=TAGS, openapi_extra=body_doc(s.ScrollRequest))
    async def scroll(name: str, request: Request):
        t = time.perf_counter()
        body = await parse(request, s.ScrollRequest)
        check_k(body.limit, "limit")
        col = database().get_collection(name)
        check_vector_names(col, body.with_vector)
        pts, nxt = await run(col.scroll, body.filter, body.limit, body.offset, body.with_payload,
                             bool(body.with_vector), body.order_by)
        pts = select_vectors(pts, body.with_vector)
        if body.order_by is not None:  # Qdrant's Record carries the value it was ordered by
            pts = [{"id": p.id, "payload": p.payload, "vector": p.vector, "order_value": p.score}
                   for p in pts]
        return ok({"points": pts, "next_page_offset": nxt}, t)

    @app.post("/collections/{name}/facet", tags=TAGS, openapi_extra=body_doc(s.FacetRequest))
    async def facet(name: str, request: Request):
        """The ``limit`` most frequent values of the payload key ``key`` among the points
        ``filter`` admits: ``{"hits": [{"value", "count"}, ...]}``, most frequent first."""
        t = time.perf_counter()
        body = await parse(request, s.FacetRequest)
        found = await run(database().get_collection(name).facet, body.key, body.filter,
                          body.limit)
        return ok({"hits": [{"value": v, "count": n} for v, n in found]}, t)

    @app.post("/collections/{name}/points/count", tags=TAGS, openapi_extra=body_doc(s.CountRequest))
    async def count(name: str, request: Request):
        t = time.perf_counter()
        body = await parse(request, s.CountRequest)
        n = await run(database().get_collection(name).count, body.filter)
        return ok({"count": n}, t)

