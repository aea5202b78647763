"""What every routes module shares: one ``ServerContext`` per app, handed to each module's
``register``, so the routes are closures over it instead of one long ``create_app``."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.collection import Collection
from ..engine.database import Database
from ..engine.errors import (
    AlreadyExists,
    CorruptData,
    InvalidArgument,
    NotFound,
    QuiverError,
    ReadOnly,
    ShardUnavailable,
)
from .gate import BodyTimeout, BodyTooLarge, error_body
from .metrics import Metrics
from .settings import Settings

_TIMEOUT = getattr(asyncio, "timeout", None)
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # no EDQUOT on some systems
log = logging.getLogger("quiver.server")

BODY_MODELS: list[type[BaseModel]] = []
"""Models of the bodies parsed by hand (``body_doc``): the app's OpenAPI adds their schemas."""

HANDLED = (QuiverError, BodyTooLarge, BodyTimeout, ValidationError, RequestValidationError,
           StarletteHTTPException, TimeoutError, OSError)
"""Exception types ``ServerContext.error_for`` answers."""


class JSON(Response):
    """orjson body; engine dataclasses (``Point``) serialise natively, field by field."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def ok(result: Any, started: float, **extra: Any) -> JSON:
    """Qdrant's envelope: ``{"result", "status": "ok", "time"}`` (``extra``: Quiver's keys)."""
    return JSON({"result": result, "status": "ok", "time": time.perf_counter() - started, **extra})


def error(status: int, code: str, message: str, details: Any = None) -> JSON:
    return JSON(error_body(code, message, details), status_code=status)


def body_doc(model: type[BaseModel], *binary: str, also: Sequence[type[BaseModel]] = ()) -> dict:
    """OpenAPI for a body parsed by hand (``model_validate_json`` on the raw bytes is several
    times cheaper than FastAPI's json.loads + validation); ``also``: other models the route
    reads the body as (Quiver's form beside Qdrant's)."""
    BODY_MODELS.extend((model, *also))
    refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in (model, *also)]
    ref = refs[0] if len(refs) == 1 else {"anyOf": refs}
    content: dict[str, Any] = {"application/json": {"schema": ref}}
    for media in binary:
        content[media] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


async def raw_body(request: Request) -> bytes:
    """The request's body, as a dependency: routes taking it keep a (name, raw) signature
    the Gate's fast path can call directly."""
    return await request.body()


RawBody = Annotated[bytes, Depends(raw_body)]
"""A route parameter holding the raw request body."""
ContentType = Annotated[str | None, Header(include_in_schema=False)]
"""A route parameter holding the request's Content-Type header (None when not sent)."""


class Limit(InvalidArgument):
    """A request over one of the server's limits (422)."""


class UnsupportedMediaType(InvalidArgument):
    """A body in a media type the route does not take (415)."""


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "application/json") or (
        media.startswith("application/") and media.endswith("+json"))


def parse_raw(raw: bytes, model: type[BaseModel], content_type: str | None, *binary: str) -> Any:
    """``raw`` as ``model``. The body must be JSON (no Content-Type counts as JSON), so that a
    client sending something else learns it from a 415 instead of by luck; ``binary`` names
    the route's other media types, for that message. No body at all is ``{}``."""
    if not raw.strip():
        return model.model_validate_json(b"{}")
    if content_type and not is_json(content_type):
        accepted = " or ".join(("application/json", *binary))
        raise UnsupportedMediaType(f"content-type: {content_type!r} is not accepted here; "
                                   f"send {accepted}")
    return model.model_validate_json(raw)


async def parse(request: Request, model: type[BaseModel], *binary: str) -> Any:
    return parse_raw(await request.body(), model, request.headers.get("content-type"), *binary)


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, list]:
    errors = exc.errors()
    details = [{"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
               for e in errors[:20]]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(x for x in first["loc"] if x not in ("body",)) or "body"
    return f"{where}: {first['msg']}", details


class ServerContext:
    """Settings, metrics, the ready flag, the worker pool and the database of one app."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.db = db  # opened by the app's lifespan when not given
        self.workers = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="quiver-worker")

    def database(self) -> Database:
        db = self.db
        if db is None:
            raise RuntimeError("the database opens with the app's lifespan")
        return db

    async def run(self, fn, *args: Any, run_timeout: float | None = None, **kwargs: Any) -> Any:
        """Run an engine call in the worker pool (kernels release the GIL, so requests use
        every core) under the request timeout (or ``run_timeout``); cheaper than anyio's."""
        fut = asyncio.get_running_loop().run_in_executor(self.workers, partial(fn, *args, **kwargs))
        limit = self.settings.request_timeout if run_timeout is None else run_timeout
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

    def collections(self) -> dict[str, Collection | QuiverError | OSError]:
        """Every collection by name: opened, or the error it failed to open with (a damaged
        config or manifest), so listings report it instead of hiding it. Opens each: call it
        in the worker pool."""
        db = self.database()
        out: dict[str, Collection | QuiverError | OSError] = {}
        for name in db.list_collections():
            try:
                out[name] = db.get_collection(name)
            except (QuiverError, OSError) as exc:
                out[name] = exc
        return out

    def check_k(self, k: int, field: str) -> None:
        if k > self.settings.max_k:
            raise Limit(f"{field}: {k} exceeds the server's limit of {self.settings.max_k}")

    def check_batch(self, n: int, field: str) -> None:
        if n > self.settings.max_batch:
            raise Limit(f"{field}: {n} items exceed the server's batch limit of {self.settings.max_batch}")

    def error_for(self, exc: Exception) -> JSON:
        """The JSON error answer for any exception a request raises (an unexpected one, a
        bug, is logged with its traceback and answered 500 in the same envelope)."""
        if isinstance(exc, NotFound):
            return error(404, "not_found", str(exc))
        if isinstance(exc, ReadOnly):
            return error(403, "read_only", str(exc))
        if isinstance(exc, AlreadyExists):
            return error(409, "already_exists", str(exc))
        if isinstance(exc, Limit):
            return error(422, "limit_exceeded", str(exc))
        if isinstance(exc, BodyTooLarge):
            return error(413, "body_too_large", str(exc))
        if isinstance(exc, UnsupportedMediaType):
            return error(415, "unsupported_media_type", str(exc))
        if isinstance(exc, ShardUnavailable):  # the cluster, not the request: try again later
            return error(503, "shard_unavailable", str(exc))
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
        if isinstance(exc, BodyTimeout):
            res = error(408, "request_timeout", str(exc))
            res.headers["connection"] = "close"  # the unread rest of the body ends with it
            return res
        if isinstance(exc, TimeoutError):  # before OSError, its base class
            return error(503, "timeout", str(exc) or
                         f"request exceeded the server's {self.settings.request_timeout:g} s limit")
        if isinstance(exc, OSError):  # the server's storage, not the request: a 5xx, as JSON
            if exc.errno in _FULL:
                log.warning("storage full answering a request: %s", exc)
                return error(507, "insufficient_storage", f"storage full: {exc}")
            log.warning("I/O error answering a request: %s", exc, exc_info=exc)
            return error(503, "io_error", f"I/O error: {exc}")
        log.error("unexpected error answering a request", exc_info=exc)
        return error(500, "internal_error", f"internal error ({type(exc).__name__}: {exc}); "
                                           f"the server log has the traceback")

    async def handle_error(self, _request: Request, exc: Exception) -> JSON:
        """The app's exception handler, for the ``HANDLED`` types and (a bug) any other."""
        return self.error_for(exc)
