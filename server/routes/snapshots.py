"""Snapshots: a collection's archive, kept under the database's ``snapshots/<name>/``,
described as Qdrant's ``SnapshotDescription`` (name, size, creation time)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from ...engine.errors import AlreadyExists, InvalidArgument, NotFound
from ..context import ServerContext, body_doc, ok, parse

TAGS = ["snapshots"]


class RecoverSnapshot(BaseModel):
    """Qdrant's recover body. ``location``: ``file://`` a snapshot under this server's
    snapshot directory (URLs of other servers are not fetched); ``priority`` and
    ``checksum`` are accepted for Qdrant's clients."""

    model_config = ConfigDict(extra="forbid")
    location: str = Field(min_length=1, max_length=4096)
    priority: str | None = None
    checksum: str | None = None
    api_key: str | None = None


def describe(path: Path) -> dict:
    st = path.stat()
    created = datetime.fromtimestamp(st.st_mtime, timezone.utc).replace(tzinfo=None)
    return {"name": path.name, "size": st.st_size,
            "creation_time": created.isoformat(timespec="seconds")}


def register(app: FastAPI, ctx: ServerContext) -> None:
    database, run = ctx.database, ctx.run

    def snapshot_dir(name: str) -> Path:
        database().get_collection(name)  # 404 for unknown collections
        return database().path / "snapshots" / name

    @app.post("/collections/{name}/snapshots", tags=TAGS)
    async def create_snapshot(name: str):
        t = time.perf_counter()
        path = await run(database().get_collection(name).snapshot, snapshot_dir(name))
        return ok(describe(path), t)

    @app.get("/collections/{name}/snapshots", tags=TAGS)
    async def list_snapshots(name: str):
        t = time.perf_counter()
        d = snapshot_dir(name)
        snaps = sorted(d.glob("*.tar")) if d.exists() else []
        return ok([describe(p) for p in snaps], t)

    def snapshot_file(name: str, snapshot: str) -> Path:
        path = snapshot_dir(name) / snapshot
        if "/" in snapshot or snapshot.startswith(".") or not path.is_file():
            raise NotFound(f"snapshot {snapshot!r} of collection {name!r} does not exist")
        return path

    @app.get("/collections/{name}/snapshots/{snapshot}", tags=TAGS)
    async def download_snapshot(name: str, snapshot: str):
        return FileResponse(snapshot_file(name, snapshot), media_type="application/x-tar",
                            filename=snapshot)

    @app.delete("/collections/{name}/snapshots/{snapshot}", tags=TAGS)
    async def delete_snapshot(name: str, snapshot: str):
        t = time.perf_counter()
        snapshot_file(name, snapshot).unlink()
        return ok(True, t)

    @app.put("/collections/{name}/snapshots/recover", tags=TAGS,
             openapi_extra=body_doc(RecoverSnapshot))
    async def recover_snapshot(name: str, request: Request):
        """Create collection ``name`` from a snapshot this server holds (``file://`` its
        path under the snapshot directory); answers ``true``."""
        t = time.perf_counter()
        body = await parse(request, RecoverSnapshot)
        root = (database().path / "snapshots").resolve()
        url = urlparse(body.location)
        try:
            path = Path(unquote(url.path)).resolve() if url.scheme == "file" else None
        except (ValueError, OSError):  # a NUL byte, a loop of links: not a snapshot of ours
            path = None
        if path is None or not path.is_relative_to(root) or not path.is_file():
            raise InvalidArgument(f"location: expected file:// and a snapshot under {root} (this "
                                  f"server's snapshots; send others to .../snapshots/upload)")
        await run(database().restore_snapshot, path, name)
        return ok(True, t)

    @app.post("/collections/{name}/snapshots/upload", tags=TAGS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "snapshot": {"type": "string", "format": "binary"}}}}}}})
    async def restore_snapshot(name: str, request: Request):
        """Create collection ``name`` from an uploaded snapshot archive: the raw tar, or
        Qdrant's form upload (the file in field ``snapshot``)."""
        t = time.perf_counter()
        db_ = database()
        if name in db_.list_collections():  # before receiving a possibly large body
            raise AlreadyExists(f"name: collection {name!r} already exists")
        # not named after the collection: the name is validated later, by restore_snapshot
        tmp = db_.path / "snapshots" / f".upload-{time.monotonic_ns()}.tar"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                ctype = request.headers.get("content-type", "")
                if ctype.startswith("multipart/form-data"):  # Qdrant's form: field "snapshot"
                    await _receive_form_file(request, ctype, f)
                else:
                    async for chunk in request.stream():
                        f.write(chunk)
            col = await run(db_.restore_snapshot, tmp, name)
        finally:
            tmp.unlink(missing_ok=True)
        return ok(col.info(), t)



async def _receive_form_file(request: Request, content_type: str, out) -> None:
    """The ``snapshot`` field (or, with none, the form's only file) of a multipart body,
    streamed into ``out`` as it arrives: a snapshot may be larger than memory."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise InvalidArgument("content-type: multipart/form-data without a boundary")
    part: dict = {"headers": {}, "field": b"", "value": b"", "target": False}
    seen = {"snapshot": 0, "files": 0}

    def on_header_field(data, start, end):
        part["field"] += data[start:end]

    def on_header_value(data, start, end):
        part["value"] += data[start:end]

    def on_header_end():
        part["headers"][part["field"].lower()] = part["value"]
        part["field"] = part["value"] = b""

    def on_headers_finished():
        _, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if opts.get(b"name") == b"snapshot":
            seen["snapshot"] += 1
            if seen["snapshot"] > 1:
                raise InvalidArgument("body: more than one 'snapshot' field in the form")
            out.seek(0)  # a file written as the fallback is not the snapshot
            out.truncate()
            part["target"] = True
        elif b"filename" in opts:
            seen["files"] += 1  # the fallback: the first file, while no field is "snapshot"
            part["target"] = not seen["snapshot"] and seen["files"] == 1

    def on_part_data(data, start, end):
        if part["target"]:
            out.write(data[start:end])

    def on_part_begin():
        part["headers"], part["target"] = {}, False

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except InvalidArgument:
        raise
    except Exception as exc:  # the parser's own errors: a malformed form
        raise InvalidArgument(f"body: unreadable multipart form ({exc})") from None
    if not seen["snapshot"]:
        if not seen["files"]:
            raise InvalidArgument("body: the form has no 'snapshot' file field")
        if seen["files"] > 1:
            raise InvalidArgument("body: the form has several files and none is named "
                                  "'snapshot'; name the snapshot's field 'snapshot'")
