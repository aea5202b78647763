"""The service's own state (health, readiness, metrics), apart from the data routes."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI
from fastapi.responses import Response

from ...engine.collection import Collection
from ...engine.errors import QuiverError
from ..context import ServerContext, error

TAGS = ["service"]


def register(app: FastAPI, ctx: ServerContext) -> None:
    ready, metrics = ctx.ready, ctx.metrics

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
        return Response(metrics.render(*await ctx.run(_infos)), media_type="text/plain; version=0.0.4")

    def _infos() -> tuple[dict[str, dict], list[str]]:
        """The open collections' infos and the names of those that failed to open."""
        infos, failed = {}, []
        for name, col in ctx.collections().items():
            info = None
            if isinstance(col, Collection):
                with contextlib.suppress(QuiverError, OSError):
                    info = col.info()
            if info is None:
                failed.append(name)
            else:
                infos[name] = info
        return infos, failed

