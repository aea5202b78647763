"""Collections and their payload indexes: the writes that change a collection's shape."""

from __future__ import annotations

import time

import orjson
from fastapi import FastAPI, Query, Request

from ...engine.cluster import ClusterDatabase
from ...engine.errors import InvalidArgument
from .. import schemas as s
from ..context import ServerContext, body_doc, ok, parse
from ..qdrant import collections as qc
from ..qdrant import schemas as q

TAGS = ["collections"]


def register(app: FastAPI, ctx: ServerContext) -> None:
    database, run = ctx.database, ctx.run

    @app.put("/collections/{name}", tags=TAGS,
             openapi_extra=body_doc(q.QdrantCreateCollection, also=[s.CreateCollection]))
    async def create_collection(name: str, request: Request):
        """Qdrant's body (``vectors: {size, distance}`` or named ones; answers ``true``), or
        Quiver's (``dim`` or ``vectors: {name: {dim, metric, index}}``; answers the info)."""
        t = time.perf_counter()
        raw = await request.body()
        db = database()
        clustered = isinstance(db, ClusterDatabase)
        if _qdrant_form(raw):
            body = await parse(request, q.QdrantCreateCollection)
            await run(db.create_collection, name, **qc.create_kwargs(body, clustered))
            return ok(True, t)
        body = await parse(request, s.CreateCollection)
        vectors = ({n: f.model_dump(exclude_none=True) for n, f in body.vectors.items()}
                   if body.vectors is not None else None)
        sharding = body.cluster_kwargs()
        if sharding and not clustered:
            raise InvalidArgument(f"{', '.join(sharding)}: this server has no cluster; start it "
                                  f"with `quiver serve --cluster auto`")
        col = await run(db.create_collection, name, body.dim, body.metric, body.index,
                        vectors=vectors, ef_construction=body.ef_construction,
                        segment_size=body.segment_size, fsync=body.fsync, **sharding)
        return ok(await run(col.info), t)

    @app.patch("/collections/{name}", tags=TAGS, openapi_extra=body_doc(q.UpdateCollection))
    async def update_collection(name: str, request: Request):
        """Qdrant's collection update: settings Quiver's engine leaves to itself are
        accepted; index changes are a 400."""
        t = time.perf_counter()
        body = await parse(request, q.UpdateCollection)
        database().get_collection(name)  # 404 for an unknown one
        try:
            body.check()
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        return ok(True, t)

    @app.get("/collections", tags=TAGS)
    async def list_collections():
        """Each collection's name; one that failed to open (a damaged config or manifest) also
        has ``"status": "failed"`` and the ``error`` it failed with."""
        t = time.perf_counter()
        found = await run(ctx.collections)
        return ok({"collections": [
            {"name": n} if not isinstance(c, Exception) else
            {"name": n, "status": "failed", "error": str(c)}
            for n, c in found.items()]}, t)

    @app.get("/collections/{name}", tags=TAGS)
    async def collection_info(name: str):
        """Quiver's info and Qdrant's ``CollectionInfo`` in one object."""
        t = time.perf_counter()
        col = database().get_collection(name)
        counts = await run(qc.payload_points, col)
        return ok(qc.collection_info(col, col.info(), counts), t)

    @app.get("/collections/{name}/exists", tags=TAGS)
    async def collection_exists(name: str):
        t = time.perf_counter()
        return ok({"exists": name in await run(database().list_collections)}, t)

    @app.delete("/collections/{name}", tags=TAGS)
    async def drop_collection(name: str):
        t = time.perf_counter()
        await run(database().drop_collection, name)
        return ok(True, t)

    @app.post("/collections/{name}/flush", tags=TAGS, responses={
        200: {"description": 'Done: `{"result": {"status": "flushed"}}`'},
        202: {"description": 'Not done by `timeout` (the work goes on): '
                             '`{"result": {"status": "indexing", "message": ...}}`'}})
    async def flush(name: str, timeout: float = Query(600.0, gt=0, le=86400)):
        """Seal the appendable segment into an indexed one now and answer once the optimizer
        is idle (a write; may take as long as an index build, so it has its own ``timeout``,
        in seconds, instead of the request timeout). Not done by then: 202 with status
        "indexing" (the work goes on; poll the collection's status)."""
        t = time.perf_counter()
        col = database().get_collection(name)
        try:
            await run(col.flush, timeout, run_timeout=timeout + 5)
        except TimeoutError:  # the caller's deadline; the work goes on: 202, not 5xx. One
            # message whether the engine's check or the run's (a build past it) fired first
            msg = f"flush: optimizer still busy after the {timeout:g} s timeout"
            res = ok({"status": "indexing", "message": msg}, t)
            res.status_code = 202
            return res
        return ok({"status": "flushed"}, t)

    @app.post("/collections/{name}/train_queries", tags=TAGS,
              openapi_extra=body_doc(s.TrainQueriesRequest))
    async def train_queries(name: str, request: Request):
        """Keep a sample of a field's queries: segments sealed from now on train query-aware
        codecs (LeanVec-OOD) on it and link it into their HNSW graphs. A Quiver extension;
        answers how many queries were kept."""
        t = time.perf_counter()
        body = await parse(request, s.TrainQueriesRequest)
        kept = await run(database().get_collection(name).train_queries, body.queries, body.using)
        return ok({"kept": kept}, t)

    # --- payload indexes -----------------------------------------------------------------

    @app.put("/collections/{name}/index", tags=TAGS, openapi_extra=body_doc(s.PayloadIndexRequest))
    async def create_index(name: str, request: Request, wait: bool = False):
        t = time.perf_counter()
        body = await parse(request, s.PayloadIndexRequest)
        await run(database().get_collection(name).create_payload_index, body.field_name,
                  body.field_type)
        return ok(s.update_result(wait), t)

    @app.delete("/collections/{name}/index/{field_name}", tags=TAGS)
    async def delete_index(name: str, field_name: str, wait: bool = False):
        t = time.perf_counter()
        await run(database().get_collection(name).delete_payload_index, field_name)
        return ok(s.update_result(wait), t)


def _qdrant_form(raw: bytes) -> bool:
    """Whether a create body is Qdrant's: ``vectors`` given, but neither ``dim`` at the top
    nor named fields that each have a ``dim`` (Quiver's forms, and what a body that is
    neither is checked against, so its errors name ``dim``)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(obj, dict) or "dim" in obj or not isinstance(obj.get("vectors"), dict):
        return False
    vectors = obj["vectors"]
    return "size" in vectors or not all(isinstance(v, dict) and "dim" in v
                                        for v in vectors.values())

