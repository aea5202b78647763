"""Snapshots: a collection's archive, kept under the database's ``snapshots/<name>/``."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse

from ...engine.errors import AlreadyExists, NotFound
from ..context import ServerContext, ok

TAGS = ["snapshots"]


def register(app: FastAPI, ctx: ServerContext) -> None:
    database, run = ctx.database, ctx.run

    def snapshot_dir(name: str) -> Path:
        database().get_collection(name)  # 404 for unknown collections
        return database().path / "snapshots" / name

    @app.post("/collections/{name}/snapshots", tags=TAGS)
    async def create_snapshot(name: str):
        t = time.perf_counter()
        path = await run(database().get_collection(name).snapshot, snapshot_dir(name))
        return ok({"name": path.name, "size": path.stat().st_size}, t)

    @app.get("/collections/{name}/snapshots", tags=TAGS)
    async def list_snapshots(name: str):
        t = time.perf_counter()
        d = snapshot_dir(name)
        snaps = sorted(d.glob("*.tar")) if d.exists() else []
        return ok([{"name": p.name, "size": p.stat().st_size} for p in snaps], t)

    @app.get("/collections/{name}/snapshots/{snapshot}", tags=TAGS)
    async def download_snapshot(name: str, snapshot: str):
        path = snapshot_dir(name) / snapshot
        if "/" in snapshot or snapshot.startswith(".") or not path.is_file():
            raise NotFound(f"snapshot {snapshot!r} of collection {name!r} does not exist")
        return FileResponse(path, media_type="application/x-tar", filename=snapshot)

    @app.post("/collections/{name}/snapshots/upload", tags=TAGS,
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

