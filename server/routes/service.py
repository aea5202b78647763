"""The service's own state (health, readiness, metrics), apart from the data routes."""

from __future__ import annotations

import contextlib
import time

from fastapi import FastAPI
from fastapi.responses import Response

from ...engine.errors import QuiverError
from ..context import ServerContext, error, ok

TAGS = ["service"]
QDRANT_API = "1.20.0"
"""The Qdrant REST API version whose dialect Quiver speaks (what qdrant-client 1.20 sends):
``GET /`` answers it as ``version``, so the client's compatibility check passes."""


def register(app: FastAPI, ctx: ServerContext) -> None:
    ready, metrics = ctx.ready, ctx.metrics

    @app.get("/", tags=TAGS)
    async def root():
        """Qdrant's version info: ``title``, ``version`` (the Qdrant API spoken) and Quiver's
        own version."""
        return {"title": "quiver - vector search engine", "version": QDRANT_API,
                "quiver_version": app.version}

    @app.get("/cluster", tags=TAGS)
    async def cluster():
        """Qdrant's cluster status: ``disabled``, as for a Qdrant without its Raft cluster
        (Quiver shards collections over Ray actors instead: ``GET /collections/{name}``)."""
        t = time.perf_counter()
        return ok({"status": "disabled"}, t)

    @app.get("/telemetry", tags=TAGS)
    async def telemetry():
        """Qdrant's telemetry, in brief: the app and how many collections there are (nothing
        leaves the machine; the metrics are at ``/metrics``)."""
        t = time.perf_counter()
        names = await ctx.run(lambda: ctx.database().list_collections())
        return ok({"app": {"name": "quiver", "version": app.version, "qdrant_api": QDRANT_API},
                   "collections": {"number_of_collections": len(names)}}, t)

    @app.get("/healthz", tags=TAGS)
    async def healthz():
        return {"status": "ok"}

    @app.get("/livez", tags=TAGS)
    async def livez():
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
            if not isinstance(col, Exception):
                with contextlib.suppress(QuiverError, OSError):
                    info = col.info()
            if info is None:
                failed.append(name)
            else:
                infos[name] = info
        return infos, failed

