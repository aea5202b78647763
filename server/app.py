"""The FastAPI application. Thin: every route validates its body and calls one engine method.

Searches and writes run in worker threads (the kernels release the GIL, so concurrent
requests use every core) while the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.database import Database
from ..engine.errors import AlreadyExists, CorruptData, InvalidArgument, NotFound, QuiverError
from ..engine.hits import NPZ
from ..engine.wal import decode_batch
from . import schemas as s
from .gate import BodyTooLarge, Gate
from .metrics import Metrics
from .settings import Settings
from .warmup import warm_up

log = logging.getLogger("quiver.server")


class JSON(Response):
    """orjson body; engine dataclasses (``Point``) serialise natively, field by field."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def ok(result: Any, started: float, **extra: Any) -> JSON:
    return JSON({"result": result, "time": time.perf_counter() - started, **extra})


def error(status: int, code: str, message: str, details: Any = None) -> JSON:
    return JSON({"error": {"code": code, "message": message, "details": details}}, status_code=status)


_BODY_MODELS: list[type[BaseModel]] = []
_TIMEOUT = getattr(asyncio, "timeout", None)


def body_doc(model: type[BaseModel], *binary: str) -> dict:
    """OpenAPI for a body parsed by hand (``model_validate_json`` on the raw bytes is several
    times cheaper than FastAPI's json.loads + validation)."""
    _BODY_MODELS.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    content: dict[str, Any] = {"application/json": {"schema": ref}}
    for media in binary:
        content[media] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


async def parse(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    return model.model_validate_json(raw if raw.strip() else b"{}")


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, list]:
    errors = exc.errors()
    details = [{"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
               for e in errors[:20]]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(x for x in first["loc"] if x not in ("body",)) or "body"
    return f"{where}: {first['msg']}", details


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    ready = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal db
        if db is None:
            db = Database(settings.data)
        app.state.db = db

        def settle() -> None:
            if settings.warmup:
                warm_up()
            # what exists now (modules, the database, compiled kernels) lives as long as the
            # server: out of the collector's reach, full collections stop walking it (they
            # cost tens of ms per request that triggers one otherwise)
            gc.collect()
            gc.freeze()
            ready.set()

        if settings.warmup:
            threading.Thread(target=settle, daemon=True).start()
        else:
            settle()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(db.close)
            gc.unfreeze()

    app = FastAPI(title="Quiver", version="0.1.0", lifespan=lifespan,
                  description="Vector similarity search with hybrid filtered queries.")

    def database() -> Database:
        return app.state.db

    workers = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="quiver-worker")

    async def run(fn, *args, run_timeout: float | None = None, **kwargs):
        """Run an engine call in the worker pool (kernels release the GIL, so requests use
        every core) under the request timeout (or ``run_timeout``); cheaper than anyio's."""
        fut = asyncio.get_running_loop().run_in_executor(workers, partial(fn, *args, **kwargs))
        limit = settings.request_timeout if run_timeout is None else run_timeout
        expired = TimeoutError(f"request exceeded the {limit:g} s limit")
        if _TIMEOUT is not None:  # Python 3.11+: no extra task per request
            deadline = _TIMEOUT(limit)
            try:
                async with deadline:
                    return await fut
            except TimeoutError:  # the deadline's, or one the engine raised (same class)
                if deadline.expired():
                    raise expired from None
                raise
        try:
            return await asyncio.wait_for(fut, limit)
        except asyncio.TimeoutError:  # distinct from the builtin before 3.11
            raise expired from None

    def check_k(k: int, field: str) -> None:
        if k > settings.max_k:
            raise _Limit(f"{field}: {k} exceeds the server's limit of {settings.max_k}")

    def check_batch(n: int, field: str) -> None:
        if n > settings.max_batch:
            raise _Limit(f"{field}: {n} items exceed the server's batch limit of {settings.max_batch}")

    # --- errors ------------------------------------------------------------------------

    def error_for(exc: Exception) -> JSON | None:
        """The JSON error answer for an exception a request may raise (None: a real bug)."""
        if isinstance(exc, NotFound):
            return error(404, "not_found", str(exc))
        if isinstance(exc, AlreadyExists):
            return error(409, "already_exists", str(exc))
        if isinstance(exc, _Limit):
            return error(422, "limit_exceeded", str(exc))
        if isinstance(exc, BodyTooLarge):
            return error(413, "body_too_large", str(exc))
        if isinstance(exc, InvalidArgument):
            return error(400, "invalid_argument", str(exc))
        if isinstance(exc, CorruptData):
            return error(500, "corrupt_data", str(exc))
        if isinstance(exc, QuiverError):
            return error(400, "error", str(exc))
        if isinstance(exc, (ValidationError, RequestValidationError)):
            msg, details = _validation_message(exc)
            return error(422, "validation_error", msg, details)
        if isinstance(exc, StarletteHTTPException):
            return error(exc.status_code, "http_error", str(exc.detail))
        if isinstance(exc, TimeoutError):
            return error(503, "timeout", str(exc) or
                         f"request exceeded the server's {settings.request_timeout:g} s limit")
        return None

    async def handle_error(_, exc):
        return error_for(exc)

    for exc_type in (QuiverError, BodyTooLarge, ValidationError, RequestValidationError,
                     StarletteHTTPException, TimeoutError):
        app.add_exception_handler(exc_type, handle_error)

    # --- service -----------------------------------------------------------------------

    @app.get("/healthz", tags=["service"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"])
    async def readyz():
        if not ready.is_set():
            return error(503, "warming_up", "compiling search kernels")
        return {"status": "ready"}

    @app.get("/metrics", tags=["service"])
    async def metrics_route():
        infos = {}
        db_ = database()
        for name in db_.list_collections():
            try:
                infos[name] = db_.get_collection(name).info()
            except QuiverError:
                continue
        return Response(metrics.render(infos), media_type="text/plain; version=0.0.4")

    # --- collections -------------------------------------------------------------------

    @app.put("/collections/{name}", tags=["collections"], openapi_extra=body_doc(s.CreateCollection))
    async def create_collection(name: str, request: Request):
        t = time.perf_counter()
        body = await parse(request, s.CreateCollection)
        col = await run(database().create_collection, name, body.dim, body.metric, body.index,
                        ef_construction=body.ef_construction, segment_size=body.segment_size,
                        fsync=body.fsync)
        return ok(col.info(), t)

    @app.get("/collections", tags=["collections"])
    async def list_collections():
        t = time.perf_counter()
        return ok({"collections": [{"name": n} for n in database().list_collections()]}, t)

    @app.get("/collections/{name}", tags=["collections"])
    async def collection_info(name: str):
        t = time.perf_counter()
        return ok(database().get_collection(name).info(), t)

    @app.delete("/collections/{name}", tags=["collections"])
    async def drop_collection(name: str):
        t = time.perf_counter()
        await run(database().drop_collection, name)
        return ok(True, t)

    @app.post("/collections/{name}/flush", tags=["collections"], responses={
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
        except TimeoutError as exc:  # the caller's deadline; the work goes on: 202, not 5xx
            res = ok({"status": "indexing", "message": str(exc)}, t)
            res.status_code = 202
            return res
        return ok({"status": "flushed"}, t)

    # --- points ------------------------------------------------------------------------

    @app.put("/collections/{name}/points", tags=["points"],
             openapi_extra=body_doc(s.UpsertPoints, s.BINARY_POINTS))
    async def upsert(name: str, request: Request):
        t = time.perf_counter()
        col = database().get_collection(name)
        if request.headers.get("content-type", "").startswith(s.BINARY_POINTS):
            try:
                batch = decode_batch(await request.body())
            except (CorruptData, ValueError, KeyError, TypeError) as exc:
                raise InvalidArgument(f"body: malformed {s.BINARY_POINTS} frame ({exc})") from None
            if "" not in batch.vectors:
                raise InvalidArgument("body: the frame holds no vectors")
            ids = batch.ids.tolist() if isinstance(batch.ids, np.ndarray) else batch.ids
            check_batch(len(ids), "points")
            seq = await run(col.upsert, ids, batch.vectors[""], batch.payloads)
        else:
            body = await parse(request, s.UpsertPoints)
            check_batch(len(body.points), "points")
            pts = body.points
            if not pts:  # nothing to write: the engine answers the last sequence number
                seq = await run(col.upsert, [], [])
                return ok({"operation_id": seq, "status": "acknowledged"}, t)
            dims = {len(p.vector) for p in pts}
            if len(dims) != 1:
                raise InvalidArgument("points: vectors have different lengths")
            seq = await run(col.upsert, [p.id for p in pts], [p.vector for p in pts],
                            [p.payload for p in pts])
        return ok({"operation_id": seq, "status": "acknowledged"}, t)

    @app.post("/collections/{name}/points", tags=["points"], openapi_extra=body_doc(s.GetPoints))
    async def get_points(name: str, request: Request):
        t = time.perf_counter()
        body = await parse(request, s.GetPoints)
        check_batch(len(body.ids), "ids")
        pts = await run(database().get_collection(name).get, body.ids, body.with_payload,
                        body.with_vector)
        return ok(pts, t)

    @app.post("/collections/{name}/points/delete", tags=["points"],
              openapi_extra=body_doc(s.PointsSelector))
    async def delete_points(name: str, request: Request):
        return await _selected_write(name, request, s.PointsSelector, "delete", "deleted")

    async def _selected_write(name: str, request: Request, model: type[s.PointsSelector],
                              method: str, counted: str, *fields: str) -> JSON:
        """A write to the points a body selects by ``points`` (ids) or ``filter``: the
        collection's ``method`` gets the body's ``fields`` first; answers how many."""
        t = time.perf_counter()
        body = await parse(request, model)
        col = database().get_collection(name)
        if (body.points is None) == (body.filter is None):
            raise InvalidArgument("body: pass exactly one of 'points' (ids) or 'filter'")
        if body.points is not None:
            check_batch(len(body.points), "points")
        n = await run(getattr(col, method), *(getattr(body, f) for f in fields),
                      ids=body.points, filter=body.filter)
        return ok({counted: n, "status": "acknowledged"}, t)

    @app.post("/collections/{name}/points/payload", tags=["points"],
              openapi_extra=body_doc(s.SetPayload))
    async def set_payload(name: str, request: Request):
        """Merge keys into the selected points' payloads (vectors unchanged)."""
        return await _selected_write(name, request, s.SetPayload, "set_payload", "updated",
                                     "payload")

    @app.put("/collections/{name}/points/payload", tags=["points"],
             openapi_extra=body_doc(s.SetPayload))
    async def overwrite_payload(name: str, request: Request):
        """Replace the selected points' payloads."""
        return await _selected_write(name, request, s.SetPayload, "overwrite_payload", "updated",
                                     "payload")

    @app.post("/collections/{name}/points/payload/delete", tags=["points"],
              openapi_extra=body_doc(s.DeletePayload))
    async def delete_payload(name: str, request: Request):
        """Remove keys from the selected points' payloads."""
        return await _selected_write(name, request, s.DeletePayload, "delete_payload", "updated",
                                     "keys")

    @app.post("/collections/{name}/points/payload/clear", tags=["points"],
              openapi_extra=body_doc(s.PointsSelector))
    async def clear_payload(name: str, request: Request):
        """Empty the selected points' payloads."""
        return await _selected_write(name, request, s.PointsSelector, "clear_payload", "updated")

    def _search_args(req: s.SearchRequest) -> dict:
        check_k(req.limit, "limit")
        params = req.params.model_dump(exclude_none=True) if req.params else {}
        if params.get("exact") is False:
            params.pop("exact")
        if "ef" in params:
            check_k(params["ef"], "params.ef")
        return {"k": req.limit, "filter": req.filter, "params": params,
                "with_payload": req.with_payload, "with_vectors": req.with_vector,
                "score_threshold": req.score_threshold}

    async def search_core(name: str, raw: bytes) -> JSON:
        """One search request from its raw body: shared by the route and the Gate's fast path."""
        t = time.perf_counter()
        req = s.SearchRequest.model_validate_json(raw if raw.strip() else b"{}")
        col = database().get_collection(name)
        if req.explain:
            hits, plan = await run(col.search, req.vector, explain=True, **_search_args(req))
            return ok(hits, t, plan=plan)
        hits = await run(col.search, req.vector, **_search_args(req))
        return ok(hits, t)

    @app.post("/collections/{name}/points/search", tags=["search"],
              openapi_extra=body_doc(s.SearchRequest))
    async def search(name: str, request: Request):
        return await search_core(name, await request.body())

    @app.post("/collections/{name}/points/search/batch", tags=["search"],
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
                           with_payload: bool = False, score_threshold: float | None = None):
        t = time.perf_counter()
        col = database().get_collection(name)
        if request.headers.get("content-type", "").startswith(s.NPY):
            queries = _load_npy(await request.body())
            check_batch(queries.shape[0], "queries")
            check_k(limit, "limit")
            params = {k: v for k, v in (("ef", ef), ("rerank", rerank)) if v is not None}
            if exact:
                params["exact"] = True
            if _accepts_npz(request):
                if with_payload:
                    raise InvalidArgument(f"with_payload: the {NPZ} answer holds ids and scores "
                                          "only; ask for JSON to get payloads")
                arrs = await run(col.search_arrays, queries, k=limit, params=params,
                                 score_threshold=score_threshold)
                return Response(arrs.to_npz(), media_type=NPZ,
                                headers={"x-quiver-time": f"{time.perf_counter() - t:.6f}"})
            if queries.shape[0] == 0:
                return ok([], t)
            res = await run(col.search, queries, k=limit, params=params, with_payload=with_payload,
                            score_threshold=score_threshold)
            return ok(res, t)
        body = await parse(request, s.SearchBatch)
        check_batch(len(body.searches), "searches")

        args = []
        for i, r in enumerate(body.searches):
            try:
                args.append({**_search_args(r), "explain": r.explain})
            except InvalidArgument as exc:
                raise type(exc)(f"searches[{i}]: {exc}") from None
        res, plans = await run(_search_grouped, col, body.searches, args)
        return ok(res, t, plans=plans) if any(r.explain for r in body.searches) else ok(res, t)

    @app.post("/collections/{name}/points/scroll", tags=["points"], openapi_extra=body_doc(s.ScrollRequest))
    async def scroll(name: str, request: Request):
        t = time.perf_counter()
        body = await parse(request, s.ScrollRequest)
        check_k(body.limit, "limit")
        pts, nxt = await run(database().get_collection(name).scroll, body.filter, body.limit,
                             body.offset, body.with_payload, body.with_vector)
        return ok({"points": pts, "next_page_offset": nxt}, t)

    @app.post("/collections/{name}/points/count", tags=["points"], openapi_extra=body_doc(s.CountRequest))
    async def count(name: str, request: Request):
        t = time.perf_counter()
        body = await parse(request, s.CountRequest)
        n = await run(database().get_collection(name).count, body.filter)
        return ok({"count": n}, t)

    # --- payload indexes -----------------------------------------------------------------

    @app.put("/collections/{name}/index", tags=["collections"], openapi_extra=body_doc(s.PayloadIndexRequest))
    async def create_index(name: str, request: Request):
        t = time.perf_counter()
        body = await parse(request, s.PayloadIndexRequest)
        await run(database().get_collection(name).create_payload_index, body.field_name,
                  body.field_schema)
        return ok({"status": "acknowledged"}, t)

    @app.delete("/collections/{name}/index/{field_name}", tags=["collections"])
    async def delete_index(name: str, field_name: str):
        t = time.perf_counter()
        await run(database().get_collection(name).delete_payload_index, field_name)
        return ok({"status": "acknowledged"}, t)

    # --- snapshots -------------------------------------------------------------------------

    def snapshot_dir(name: str) -> Path:
        database().get_collection(name)  # 404 for unknown collections
        return database().path / "snapshots" / name

    @app.post("/collections/{name}/snapshots", tags=["snapshots"])
    async def create_snapshot(name: str):
        t = time.perf_counter()
        path = await run(database().get_collection(name).snapshot, snapshot_dir(name))
        return ok({"name": path.name, "size": path.stat().st_size}, t)

    @app.get("/collections/{name}/snapshots", tags=["snapshots"])
    async def list_snapshots(name: str):
        t = time.perf_counter()
        d = snapshot_dir(name)
        snaps = sorted(d.glob("*.tar")) if d.exists() else []
        return ok([{"name": p.name, "size": p.stat().st_size} for p in snaps], t)

    @app.get("/collections/{name}/snapshots/{snapshot}", tags=["snapshots"])
    async def download_snapshot(name: str, snapshot: str):
        path = snapshot_dir(name) / snapshot
        if "/" in snapshot or snapshot.startswith(".") or not path.is_file():
            raise NotFound(f"snapshot {snapshot!r} of collection {name!r} does not exist")
        return FileResponse(path, media_type="application/x-tar", filename=snapshot)

    @app.post("/collections/{name}/snapshots/upload", tags=["snapshots"],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
    async def restore_snapshot(name: str, request: Request):
        """Create collection ``name`` from an uploaded snapshot archive."""
        t = time.perf_counter()
        db_ = database()
        if name in db_.list_collections():  # before receiving a possibly large body
            raise AlreadyExists(f"name: collection {name!r} already exists")
        # not named after the collection: the name is validated later, by restore_snapshot
        tmp = db_.path / "snapshots" / f".upload-{time.monotonic_ns()}.tar"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
            col = await run(db_.restore_snapshot, tmp, name)
        finally:
            tmp.unlink(missing_ok=True)
        return ok(col.info(), t)

    def custom_openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in _BODY_MODELS:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for k, v in js.pop("$defs", {}).items():
                comps.setdefault(k, v)
            comps.setdefault(model.__name__, js)
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi
    gated = Gate(app, settings, metrics, error_for,
                 fast_routes=[("POST", "/collections/{name}/points/search", search_core)])
    app.state.settings = settings
    app.state.ready = ready
    return gated  # type: ignore[return-value]


def _search_grouped(col, searches: list[s.SearchRequest], args: list[dict]) -> tuple[list, list]:
    """Answers (and, for entries with ``explain``, plans) for a JSON batch, in order. Entries
    asking the same question of different vectors (same filter, limit and parameters: the
    common case) run as one batched search, which uses every core; the answers are the same
    as one search per entry, and an explained entry gets its group's plan (counts in it
    cover the whole group)."""
    groups: dict[bytes, list[int]] = {}
    for i, (r, a) in enumerate(zip(searches, args, strict=True)):
        alone = len(r.vector) != col.dim  # let the engine word the error for this entry
        key = str(i).encode() if alone else orjson.dumps(a, option=orjson.OPT_SORT_KEYS)
        groups.setdefault(key, []).append(i)
    out: list = [None] * len(searches)
    plans: list = [None] * len(searches)

    def put(members: list[int], found: Any, a: dict) -> None:
        hits, plan = found if a["explain"] else (found, None)
        for i, h in zip(members, hits, strict=True):
            out[i], plans[i] = h, plan

    for members in groups.values():
        a = args[members[0]]
        if len(members) > 1:
            try:
                found = col.search([searches[i].vector for i in members], **a)
            except InvalidArgument:  # one bad entry: find it below and name it
                pass
            else:
                put(members, found, a)
                continue
        for i in members:
            try:
                found = col.search([searches[i].vector], **a)
            except InvalidArgument as exc:
                raise type(exc)(f"searches[{i}]: {exc}") from None
            put([i], found, a)
    return out, plans


class _Limit(InvalidArgument):
    """A request over one of the server's limits (422)."""


def _accepts_npz(request: Request) -> bool:
    return NPZ in request.headers.get("accept", "")


def _load_npy(raw: bytes) -> np.ndarray:
    import io

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
