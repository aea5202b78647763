"""The service's own state (health, readiness, metrics), apart from the data routes."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from ...engine.errors import QuiverError
from ..context import ServerContext, error

TAGS = ["service"]


def register(app: FastAPI, ctx: ServerContext) -> None:
    database, ready, metrics = ctx.database, ctx.ready, ctx.metrics

    @app.get("/healthz", tags=TAGS)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=TAGS)
    async def readyz():
        if not ready.is_set():
            return error(503, "warming_up", "compiling search kernels")
        return {"status": "ready"}

    @app.get("/metrics", tags=TAGS)
    async def metrics_route():
        infos = {}
        db_ = database()
        for name in db_.list_collections():
            try:
                infos[name] = db_.get_collection(name).info()
            except QuiverError:
                continue
        return Response(metrics.render(infos), media_type="text/plain; version=0.0.4")

