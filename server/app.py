"""The FastAPI application. Thin: every route validates its body and calls one engine method.

Searches and writes run in worker threads (the kernels release the GIL, so concurrent
requests use every core) while the event loop keeps accepting requests. The routes live in
``routes/``, one module per resource; this module only assembles them.
"""

from __future__ import annotations

import gc
import logging
import threading
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..engine.database import Database, connect
from .context import BODY_MODELS, HANDLED, JSON, ServerContext
from .gate import Gate
from .routes import ROUTES, query, search
from .routes.search import _load_npy
from .settings import Settings
from .warmup import warm_background, warm_for_requests

log = logging.getLogger("quiver.server")
__all__ = ["JSON", "_load_npy", "create_app"]  # the bench times the server's own body handling


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = ServerContext(settings, db)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if ctx.db is None:
            ctx.db = connect(settings.data, on_corrupt=settings.on_corrupt,
                             **({"cluster": settings.cluster} if settings.cluster else {}))
        app.state.db = ctx.db

        def settle() -> None:
            if settings.warmup:
                try:
                    warm_for_requests(ctx.db)
                except Exception:  # a failed warm-up only costs speed: serve anyway
                    log.exception("warm-up failed; kernels compile on first use")
            # what exists now (modules, the database, compiled kernels) lives as long as the
            # server: out of the collector's reach, full collections stop walking it (they
            # cost tens of ms per request that triggers one otherwise)
            gc.collect()
            gc.freeze()
            ctx.ready.set()
            if settings.warmup:
                try:
                    warm_background()
                except Exception:
                    log.exception("background warm-up failed; kernels compile on first use")

        if settings.warmup:
            threading.Thread(target=settle, daemon=True).start()
        else:
            settle()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(ctx.db.close)
            gc.unfreeze()

    app = FastAPI(title="Quiver", version="0.1.0", lifespan=lifespan,
                  description="Vector similarity search with hybrid filtered queries.")
    for exc_type in (*HANDLED, Exception):  # Exception: a bug, answered 500 in the envelope
        app.add_exception_handler(exc_type, ctx.handle_error)
    # straight onto the app, not include_router: that adds one lazy entry to app.routes,
    # hiding the endpoints (the Gate takes its fast path's handler from there)
    for module in ROUTES:
        module.register(app, ctx)

    def custom_openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in BODY_MODELS:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for k, v in js.pop("$defs", {}).items():
                comps.setdefault(k, v)
            comps.setdefault(model.__name__, js)
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi
    gated = Gate(app, settings, ctx.metrics, ctx.error_for, fast_routes=[search.SEARCH, query.QUERY])
    app.state.settings = settings
    app.state.ready = ctx.ready
    return gated  # type: ignore[return-value]
