"""Qdrant's universal query API: ``/points/query`` and ``/points/query/batch`` (the only
search calls current qdrant-client versions make). Translation lives in ``qdrant.query``;
batches run through the same grouped search as legacy batches."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request

from ...engine.collection import Collection
from ...engine.errors import InvalidArgument
from ..context import ServerContext, body_doc, ok, parse
from ..qdrant import query as qq
from ..qdrant import schemas as q
from .search import search_grouped

TAGS = ["search"]


def register(app: FastAPI, ctx: ServerContext) -> None:
    database, run, check_k, check_batch = ctx.database, ctx.run, ctx.check_k, ctx.check_batch

    def prepared(col: Collection, req: q.QueryRequest) -> qq.Query:
        p = req.params
        if p is not None and (p.ef or p.hnsw_ef) is not None:
            check_k(p.ef or p.hnsw_ef, "params.hnsw_ef")
        return qq.query(col, req, check_k)

    @app.post("/collections/{name}/points/query", tags=TAGS, openapi_extra=body_doc(q.QueryRequest))
    async def query_points(name: str, request: Request):
        """Nearest points to a vector, or to a stored point (``"query": id``, the point
        itself left out); answers ``{"points": [ScoredPoint, ...]}``."""
        t = time.perf_counter()
        body = await parse(request, q.QueryRequest)
        col = database().get_collection(name)

        def work() -> list[dict]:
            query = prepared(col, body)
            return query.answer(col.search(query.vector, **query.args))

        return ok({"points": await run(work)}, t)

    @app.post("/collections/{name}/points/query/batch", tags=TAGS,
              openapi_extra=body_doc(q.QueryBatch))
    async def query_batch(name: str, request: Request):
        """Several queries; entries sharing filter, limit and parameters run as one batched
        search. Answers one ``{"points": [...]}`` per entry."""
        t = time.perf_counter()
        body = await parse(request, q.QueryBatch)
        check_batch(len(body.searches), "searches")
        col = database().get_collection(name)

        def work() -> list[dict]:
            queries = []
            for i, req in enumerate(body.searches):
                try:
                    queries.append(prepared(col, req))
                except InvalidArgument as exc:
                    raise type(exc)(f"searches[{i}]: {exc}") from None
            hits, _ = search_grouped(col, queries, [False] * len(queries))
            return [{"points": query.answer(h)} for query, h in zip(queries, hits, strict=True)]

        return ok(await run(work), t)
