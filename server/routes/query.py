"""Qdrant's universal query API (``/points/query``, ``/points/query/batch``: the only search
calls current qdrant-client versions make) and the legacy ``/points/recommend``. Translation
lives in ``qdrant.query``; batches run through the same grouped search as legacy batches."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request

from ...engine.errors import InvalidArgument
from ..context import ContentType, RawBody, ServerContext, body_doc, ok, parse, parse_raw
from ..qdrant import query as qq
from ..qdrant import schemas as q

TAGS = ["search"]


QUERY = ("POST", "/collections/{name}/points/query")
"""Served on the Gate's fast path too (the call Qdrant's clients make per query): its
endpoint is ``handler(name, raw body, content type)``."""


def register(app: FastAPI, ctx: ServerContext) -> None:
    database, run, check_k, check_batch = ctx.database, ctx.run, ctx.check_k, ctx.check_batch

    def answers(name: str, requests: list[q.QueryRequest]) -> list[list[dict]]:
        """Plan and run ``requests`` on collection ``name`` (in the worker pool)."""
        col = database().get_collection(name)
        planner = qq.Planner(col, check_k, database().get_collection)
        queries = []
        for i, req in enumerate(requests):
            try:
                queries.append(planner.query(req))
            except InvalidArgument as exc:
                raise (type(exc)(f"searches[{i}]: {exc}") if len(requests) > 1 else exc) from None
        return qq.run(col, queries)

    @app.post(QUERY[1], tags=TAGS, openapi_extra=body_doc(q.QueryRequest))
    async def query_points(name: str, raw: RawBody, content_type: ContentType = None):
        """Nearest points to a vector, to a stored point (``"query": id``, the point itself
        left out) or to examples (``recommend``), or a fusion of ``prefetch`` searches;
        answers ``{"points": [ScoredPoint, ...]}``."""
        t = time.perf_counter()
        body = parse_raw(raw, q.QueryRequest, content_type)
        return ok({"points": (await run(answers, name, [body]))[0]}, t)

    @app.post("/collections/{name}/points/query/batch", tags=TAGS,
              openapi_extra=body_doc(q.QueryBatch))
    async def query_batch(name: str, request: Request):
        """Several queries; entries sharing filter, limit and parameters run as one batched
        search. Answers one ``{"points": [...]}`` per entry."""
        t = time.perf_counter()
        body = await parse(request, q.QueryBatch)
        check_batch(len(body.searches), "searches")
        found = await run(answers, name, body.searches)
        return ok([{"points": points} for points in found], t)

    @app.post("/collections/{name}/points/query/groups", tags=TAGS,
              openapi_extra=body_doc(q.QueryGroupsRequest))
    async def query_groups(name: str, request: Request):
        """The best ``limit`` groups of points sharing a value of the payload key
        ``group_by``, each with its best ``group_size`` hits: ``{"groups": [{"id", "hits"}]}``."""
        t = time.perf_counter()
        body = await parse(request, q.QueryGroupsRequest)
        return ok(await run(groups, name, body, True), t)

    def groups(name: str, body: q.QueryGroupsRequest, euclid: bool) -> dict:
        col = database().get_collection(name)
        return qq.search_groups(qq.Planner(col, check_k, database().get_collection), body, ctx.settings.max_k,
                                database().get_collection, euclid)

    @app.post("/collections/{name}/points/recommend", tags=TAGS,
              openapi_extra=body_doc(q.RecommendRequest))
    async def recommend(name: str, request: Request):
        """Legacy recommendation: points like ``positive`` and unlike ``negative`` (vectors
        or ids, the examples left out); answers a list of ScoredPoints."""
        t = time.perf_counter()
        body = await parse(request, q.RecommendRequest)
        return ok((await run(answers, name, [body.as_query()]))[0], t)

    @app.post("/collections/{name}/points/recommend/batch", tags=TAGS,
              openapi_extra=body_doc(q.RecommendBatch))
    async def recommend_batch(name: str, request: Request):
        t = time.perf_counter()
        body = await parse(request, q.RecommendBatch)
        check_batch(len(body.searches), "searches")
        return ok(await run(answers, name, [r.as_query() for r in body.searches]), t)
