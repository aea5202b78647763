"""Collection aliases, in Qdrant's shape: other names a collection answers to (every route
that opens a collection by name resolves them), swapped atomically in one request."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request

from ...engine.errors import InvalidArgument
from ..context import ServerContext, body_doc, ok, parse
from ..qdrant import schemas as q

TAGS = ["aliases"]


def _listing(aliases: dict[str, str], collection: str | None = None) -> dict:
    return {"aliases": [{"alias_name": a, "collection_name": c} for a, c in sorted(aliases.items())
                        if collection is None or c == collection]}


def register(app: FastAPI, ctx: ServerContext) -> None:
    database, run = ctx.database, ctx.run

    @app.post("/collections/aliases", tags=TAGS, openapi_extra=body_doc(q.AliasActions))
    async def update_aliases(request: Request):
        """Create, delete and rename aliases, all or none."""
        t = time.perf_counter()
        body = await parse(request, q.AliasActions)
        ctx.check_batch(len(body.actions), "actions")
        actions = []
        for i, a in enumerate(body.actions):
            try:
                actions.append(a.engine())
            except ValueError as exc:
                raise InvalidArgument(f"actions[{i}]: {exc}") from None
        await run(database().update_aliases, actions)
        return ok(True, t)

    @app.get("/aliases", tags=TAGS)
    async def list_aliases():
        t = time.perf_counter()
        return ok(_listing(database().aliases()), t)

    @app.get("/collections/{name}/aliases", tags=TAGS)
    async def collection_aliases(name: str):
        t = time.perf_counter()
        col = database().get_collection(name)  # 404 for an unknown one; an alias resolves
        return ok(_listing(database().aliases(), col.name), t)
