"""Searches: single and batched. The single search is the hottest request: the Gate serves it
on a fast path that calls this module's route endpoint itself, skipping the framework."""

from __future__ import annotations

import io
import time
from typing import Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from ...engine.collection import Collection
from ...engine.errors import InvalidArgument
from ...engine.hits import NPZ
from ...engine.params import SearchParams
from .. import schemas as s
from ..context import ContentType, RawBody, ServerContext, body_doc, ok, parse, parse_raw
from ..qdrant.matrix import search_matrix as search_matrix_of
from ..qdrant.query import Planner, Query, search_grouped
from ..qdrant.query import search_groups as qq_search_groups
from ..qdrant.schemas import NamedVector, QueryGroupsRequest

TAGS = ["search"]
SEARCH = ("POST", "/collections/{name}/points/search")
"""The route the Gate serves on its fast path: its endpoint is ``handler(name, raw body)``."""


def register(app: FastAPI, ctx: ServerContext) -> None:
    database, run, check_k, check_batch = ctx.database, ctx.run, ctx.check_k, ctx.check_batch

    def _legacy(col: Collection, req: s.SearchRequest) -> Query:
        """A legacy search body as a ``Query`` (scores as the engine gives them: Euclid
        distances stay squared, as Quiver's clients expect)."""
        vector, using = _vector_and_field(col, req.vector, req.using)
        return Planner(col, check_k, database().get_collection).legacy(req, using, vector)

    # the body comes as raw bytes (a dependency), so the Gate's fast path calls this very
    # function with (name, body, content type); no docstring: it would become the OpenAPI
    # description
    @app.post(SEARCH[1], tags=TAGS, openapi_extra=body_doc(s.SearchRequest))
    async def search(name: str, raw: RawBody, content_type: ContentType = None):
        t = time.perf_counter()
        req = parse_raw(raw, s.SearchRequest, content_type)
        col = database().get_collection(name)
        query = _legacy(col, req)
        if req.explain:
            hits, plan = await run(col.search, query.vector, explain=True, **query.args)
            return ok(query.answer(hits), t, plan=plan)
        return ok(query.answer(await run(col.search, query.vector, **query.args)), t)

    @app.post("/collections/{name}/points/search/matrix/{form}", tags=TAGS,
              openapi_extra=body_doc(s.SearchMatrixRequest))
    async def search_matrix(name: str, form: Literal["pairs", "offsets"], request: Request):
        """A random ``sample`` of points and each one's ``limit`` nearest among them, as
        ``{"pairs": [{"a", "b", "score"}, ...]}`` or as sparse coordinates (``offsets``:
        ``{"offsets_row", "offsets_col", "scores", "ids"}``)."""
        t = time.perf_counter()
        req = await parse(request, s.SearchMatrixRequest)
        return ok(await run(search_matrix_of, database().get_collection(name), req, check_k,
                            form), t)

    @app.post("/collections/{name}/points/search/groups", tags=TAGS,
              openapi_extra=body_doc(s.SearchGroupsRequest))
    async def search_groups(name: str, request: Request):
        """The best ``limit`` groups of points sharing a value of the payload key
        ``group_by``, each with its best ``group_size`` hits: ``{"groups": [{"id", "hits"}]}``
        (Euclid distances squared, as in a legacy search)."""
        t = time.perf_counter()
        req = await parse(request, s.SearchGroupsRequest)
        return ok(await run(_groups, name, req), t)

    def _groups(name: str, req: s.SearchGroupsRequest) -> dict:
        col = database().get_collection(name)
        vector, using = _vector_and_field(col, req.vector, req.using)
        body = QueryGroupsRequest.model_construct(
            query=vector, using=using, filter=req.filter, params=req.params,
            score_threshold=req.score_threshold, limit=req.limit, group_by=req.group_by,
            group_size=req.group_size, with_vector=req.with_vector,
            with_payload=req.with_payload, with_lookup=req.with_lookup, prefetch=None)
        return qq_search_groups(Planner(col, check_k, database().get_collection), body, ctx.settings.max_k,
                                database().get_collection, euclid=False)

    @app.post("/collections/{name}/points/search/batch", tags=TAGS,
              openapi_extra={**body_doc(s.SearchBatch, s.NPY), "responses": {"200": {
                  "description": f"JSON lists of hits; or, for a .npy body sent with "
                                 f"`Accept: {NPZ}`, an uncompressed .npz of `ids` and `scores` "
                                 f"(shape (queries, limit), best first; ids uint64, or strings "
                                 f"for every hit when any hit has a UUID id; padding 0 or '' "
                                 f"and NaN) and `counts` (int32, hits per query)",
                  "content": {"application/json": {},
                              NPZ: {"schema": {"type": "string", "format": "binary"}}}}}})
    async def search_batch(name: str, request: Request, limit: int = 10, ef: int | None = None,
                           exact: bool = False, rerank: bool | None = None,
                           nprobe: int | None = None, using: str | None = None,
                           with_payload: bool = False, score_threshold: float | None = None):
        t = time.perf_counter()
        col = database().get_collection(name)
        if request.headers.get("content-type", "").startswith(s.NPY):
            if col.vector_field(using).kind == "multi":  # its rows would read as one query
                raise InvalidArgument(f"body: a {s.NPY} batch holds one dense query a row; search "
                                      f"multi-vector field {using!r} with JSON token matrices")
            queries = _load_npy(await request.body())
            check_batch(queries.shape[0], "queries")
            check_k(limit, "limit")
            params = SearchParams.parse({"ef": ef, "rerank": rerank, "nprobe": nprobe,
                                         "exact": exact})
            if ef is not None:
                check_k(ef, "ef")
            if _accepts_npz(request):
                if with_payload:
                    raise InvalidArgument(f"with_payload: the {NPZ} answer holds ids and scores "
                                          "only; ask for JSON to get payloads")
                arrs = await run(col.search_arrays, queries, k=limit, params=params,
                                 score_threshold=score_threshold, using=using)
                return Response(arrs.to_npz(), media_type=NPZ,
                                headers={"x-quiver-time": f"{time.perf_counter() - t:.6f}"})
            if queries.shape[0] == 0:
                return ok([], t)
            res = await run(col.search, queries, k=limit, params=params, with_payload=with_payload,
                            score_threshold=score_threshold, using=using)
            return ok(res, t)
        body = await parse(request, s.SearchBatch, s.NPY)
        check_batch(len(body.searches), "searches")

        queries = []
        for i, req in enumerate(body.searches):
            try:
                queries.append(_legacy(col, req))
            except InvalidArgument as exc:
                raise type(exc)(f"searches[{i}]: {exc}") from None
        explain = [req.explain for req in body.searches]
        hits, plans = await run(search_grouped, col, queries, explain)
        res = [query.answer(h) for query, h in zip(queries, hits, strict=True)]
        return ok(res, t, plans=plans) if any(explain) else ok(res, t)



def _vector_and_field(col: Collection, vector, using: str | None) -> tuple[list, str | None]:
    """A legacy body's ``vector`` (maybe ``{"name", "vector"}``) and ``using`` as one query
    vector and the field it searches."""
    if isinstance(vector, NamedVector):
        if using is not None and using != vector.name:
            raise InvalidArgument(f"using: {using!r} disagrees with vector.name "
                                  f"{vector.name!r}; give one")
        vector, using = vector.vector, vector.name
    if vector and isinstance(vector[0], list) and col.vector_field(using).kind != "multi":
        raise InvalidArgument("vector: expected one vector (a list of numbers); a matrix "
                              "of token vectors is for multi-vector fields")
    return vector, using


def _accepts_npz(request: Request) -> bool:
    return NPZ in request.headers.get("accept", "")


def _load_npy(raw: bytes) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:  # truncated, pickled, a broken zip...: the caller's bytes
        raise InvalidArgument(f"body: not a .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise InvalidArgument("body: expected one .npy array, got an .npz archive")
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise InvalidArgument(f"body: expected a 2-D float matrix, got {arr.dtype} {arr.shape}")
    return arr

