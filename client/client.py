"""``Client`` / ``AsyncClient``: the embedded database's API over HTTP.

    import quiver
    db = quiver.Client("http://127.0.0.1:6333", api_key="...")   # or quiver.connect("./data")
    col = db.create_collection("docs", dim=384, metric="cosine", index="HNSW16,LVQ8")
    col.upsert(ids, vectors, payloads)
    hits = col.search(query, k=10, filter={"must": [{"key": "lang", "match": {"value": "en"}}]})

Collections returned here mirror ``quiver.Collection``: the same methods, arguments, return
types (``quiver.Point`` lists, ``(points, cursor)`` from scroll) and exceptions (HTTP errors
become ``NotFound``, ``InvalidArgument``, ``AlreadyExists``, ``AuthError`` with the server's
message). Calls that are safe to repeat are retried with backoff on connection errors.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson

from ..engine.errors import QuiverError
from ..engine.groups import Group
from ..engine.hits import SearchArrays
from ..engine.metric import Metric
from ..engine.points import Point
from ..engine.validation import check_using
from . import _ops as ops
from ._ops import Req, ServerUnavailable, error_for

DEFAULT_URL = "http://127.0.0.1:6333"
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
"""Transport errors raised before a request reached the server: any call may be retried."""


class _Base:
    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int,
                 headers: dict[str, str] | None):
        self.url = url.rstrip("/")
        self.retries = max(0, int(retries))
        self.timeout = timeout
        self._headers = {"user-agent": "quiver-client/0.1", **(headers or {})}
        if api_key:
            self._headers["api-key"] = api_key

    def _retryable(self, req: Req, exc: httpx.TransportError, attempt: int) -> bool:
        return attempt < self.retries and (req.idempotent or isinstance(exc, _NEVER_SENT))

    @staticmethod
    def _decode(req: Req, resp: httpx.Response, body: bytes) -> Any:
        if resp.status_code >= 400:
            raise error_for(resp.status_code, body, f"{req.method} {req.path}")
        if req.text:
            return body.decode("utf-8", "replace")
        if req.raw and not resp.headers.get("content-type", "").startswith("application/json"):
            return body
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise QuiverError(f"{req.method} {req.path}: the server's answer is not JSON ({exc})"
                              ) from None

    @staticmethod
    def _unavailable(req: Req, exc: Exception) -> ServerUnavailable:
        return ServerUnavailable(f"{req.method} {req.path}: {type(exc).__name__}: {exc}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class Client(_Base):
    """Blocking client. ``Client(url, api_key=None, timeout=30.0, retries=3)``."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30.0,
                 retries: int = 3, *, headers: dict[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None):
        super().__init__(url, api_key, timeout, retries, headers)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=self._headers,
                                  transport=transport)

    # --- plumbing ------------------------------------------------------------------------

    def _send(self, req: Req) -> Any:
        attempt = 0
        while True:
            try:
                return self._send_once(req)
            except httpx.TransportError as exc:
                if not self._retryable(req, exc, attempt):
                    raise self._unavailable(req, exc) from exc
                time.sleep(ops.backoff(attempt, random.random()))
                attempt += 1

    def _send_once(self, req: Req) -> Any:
        kw: dict[str, Any] = {"params": req.params, "headers": req.request_headers()}
        if req.timeout is not None:
            kw["timeout"] = req.timeout
        if req.download is not None:
            with self._http.stream(req.method, req.path, **kw) as resp:
                if resp.status_code >= 400:
                    return self._decode(req, resp, resp.read())
                tmp = req.download.with_name(req.download.name + ".part")
                try:
                    with open(tmp, "wb") as f:
                        for chunk in resp.iter_bytes(1 << 20):
                            f.write(chunk)
                    tmp.replace(req.download)
                finally:
                    tmp.unlink(missing_ok=True)
            return None
        if req.upload is not None:
            with open(req.upload, "rb") as f:
                resp = self._http.request(req.method, req.path, content=f, **kw)
        else:
            resp = self._http.request(req.method, req.path, content=req.body, **kw)
        return self._decode(req, resp, resp.content)

    def _drive(self, op: ops.Op) -> Any:
        try:
            req = next(op)
            while True:
                try:
                    answer = self._send(req)
                except QuiverError as exc:
                    req = op.throw(exc)
                else:
                    req = op.send(answer)
        except StopIteration as stop:
            return stop.value

    # --- database API --------------------------------------------------------------------

    def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine",
                          index: str = "HNSW16,F32", *, vectors: dict | None = None,
                          ef_construction: int = 200,
                          segment_size: int = 50_000, fsync: str = "batch",
                          exist_ok: bool = False, shards: int | None = None,
                          replicas: int | None = None,
                          write_quorum: int | None = None) -> RemoteCollection:
        """As ``Database.create_collection``; ``shards``/``replicas``/``write_quorum`` spread
        it over the server's Ray cluster (``quiver serve --cluster``)."""
        sharding = {"shards": shards, "replicas": replicas, "write_quorum": write_quorum}
        info = self._drive(ops.create_collection(name, dim, metric, index, ef_construction,
                                                 segment_size, fsync, exist_ok, vectors, sharding))
        return RemoteCollection(self, info)

    def get_collection(self, name: str) -> RemoteCollection:
        return RemoteCollection(self, self._drive(ops.collection_info(name)))

    def list_collections(self) -> list[str]:
        return self._drive(ops.list_collections())

    def drop_collection(self, name: str) -> None:
        self._drive(ops.drop_collection(name))

    def aliases(self) -> dict[str, str]:
        """Every alias and the collection it names."""
        return self._drive(ops.aliases())

    def update_aliases(self, actions: list[tuple[str, ...]]) -> None:
        """``("create", alias, collection)``, ``("delete", alias)``, ``("rename", old, new)``,
        applied all or none; see ``Database.update_aliases``."""
        self._drive(ops.update_aliases(actions))

    def restore_snapshot(self, snapshot: str | Path, name: str) -> RemoteCollection:
        """Upload a snapshot archive (a local file) as the new collection ``name``."""
        return RemoteCollection(self, self._drive(ops.restore_snapshot(snapshot, name)))

    def metrics(self) -> str:
        """The server's Prometheus metrics text."""
        return self._drive(ops.metrics())

    def ready(self) -> bool:
        """Whether the server answers /readyz with 200 (kernels compiled)."""
        try:
            return self._http.get("/readyz", timeout=min(self.timeout, 5.0)).status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_Base):
    """``Client`` with ``async`` methods (``await client.create_collection(...)``)."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30.0,
                 retries: int = 3, *, headers: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(url, api_key, timeout, retries, headers)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=self._headers,
                                       transport=transport)

    async def _send(self, req: Req) -> Any:
        attempt = 0
        while True:
            try:
                return await self._send_once(req)
            except httpx.TransportError as exc:
                if not self._retryable(req, exc, attempt):
                    raise self._unavailable(req, exc) from exc
                await anyio.sleep(ops.backoff(attempt, random.random()))
                attempt += 1

    async def _send_once(self, req: Req) -> Any:
        kw: dict[str, Any] = {"params": req.params, "headers": req.request_headers()}
        if req.timeout is not None:
            kw["timeout"] = req.timeout
        if req.download is not None:
            async with self._http.stream(req.method, req.path, **kw) as resp:
                if resp.status_code >= 400:
                    return self._decode(req, resp, await resp.aread())
                tmp = req.download.with_name(req.download.name + ".part")
                try:
                    async with await anyio.open_file(tmp, "wb") as f:
                        async for chunk in resp.aiter_bytes(1 << 20):
                            await f.write(chunk)
                    tmp.replace(req.download)
                finally:
                    tmp.unlink(missing_ok=True)
            return None
        if req.upload is not None:
            path = req.upload
            kw["headers"]["content-length"] = str(path.stat().st_size)

            async def chunks():
                async with await anyio.open_file(path, "rb") as f:
                    while chunk := await f.read(1 << 20):
                        yield chunk

            resp = await self._http.request(req.method, req.path, content=chunks(), **kw)
        else:
            resp = await self._http.request(req.method, req.path, content=req.body, **kw)
        return self._decode(req, resp, resp.content)

    async def _drive(self, op: ops.Op) -> Any:
        try:
            req = next(op)
            while True:
                try:
                    answer = await self._send(req)
                except QuiverError as exc:
                    req = op.throw(exc)
                else:
                    req = op.send(answer)
        except StopIteration as stop:
            return stop.value

    async def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine",
                                index: str = "HNSW16,F32", *, vectors: dict | None = None,
                                ef_construction: int = 200,
                                segment_size: int = 50_000, fsync: str = "batch",
                                exist_ok: bool = False, shards: int | None = None,
                                replicas: int | None = None,
                                write_quorum: int | None = None) -> AsyncRemoteCollection:
        sharding = {"shards": shards, "replicas": replicas, "write_quorum": write_quorum}
        info = await self._drive(ops.create_collection(name, dim, metric, index, ef_construction,
                                                       segment_size, fsync, exist_ok, vectors,
                                                       sharding))
        return AsyncRemoteCollection(self, info)

    async def get_collection(self, name: str) -> AsyncRemoteCollection:
        return AsyncRemoteCollection(self, await self._drive(ops.collection_info(name)))

    async def list_collections(self) -> list[str]:
        return await self._drive(ops.list_collections())

    async def drop_collection(self, name: str) -> None:
        await self._drive(ops.drop_collection(name))

    async def aliases(self) -> dict[str, str]:
        return await self._drive(ops.aliases())

    async def update_aliases(self, actions: list[tuple[str, ...]]) -> None:
        await self._drive(ops.update_aliases(actions))

    async def restore_snapshot(self, snapshot: str | Path, name: str) -> AsyncRemoteCollection:
        return AsyncRemoteCollection(self, await self._drive(ops.restore_snapshot(snapshot, name)))

    async def metrics(self) -> str:
        return await self._drive(ops.metrics())

    async def ready(self) -> bool:
        try:
            resp = await self._http.get("/readyz", timeout=min(self.timeout, 5.0))
        except httpx.TransportError:
            return False
        return resp.status_code == 200

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class _RemoteBase:
    def __init__(self, client: Any, info: dict[str, Any]):
        self.client = client
        self.name: str = info["name"]
        self.vectors: dict[str, dict] = info.get("vectors") or {}
        """The vector fields by name ("" alone: one unnamed vector)."""
        self.named = "" not in self.vectors and bool(self.vectors)
        self.dim: int | None = int(info["dim"]) if info.get("dim") is not None else None
        self.metric = Metric.parse(info["metric"]) if info.get("metric") else None
        self.index: str = info.get("index", "")
        self._multi = {n: int(f["dim"]) for n, f in self.vectors.items()
                       if isinstance(f, dict) and f.get("kind") == "multi"}
        """Multi-vector fields by name, with their token dimension."""

    def _is_multi(self, using: str | None) -> bool:
        check_using(using)
        if using is None and len(self.vectors) == 1:
            using = next(iter(self.vectors))
        return using in self._multi

    def __repr__(self) -> str:
        if self.named:
            return f"{type(self).__name__}({self.name!r}, vectors={sorted(self.vectors)})"
        metric = self.metric.value if self.metric else None
        return f"{type(self).__name__}({self.name!r}, dim={self.dim}, metric={metric!r})"


class RemoteCollection(_RemoteBase):
    """A collection on a server, with ``quiver.Collection``'s methods."""

    client: Client

    def upsert(self, ids=None, vectors=None, payloads=None, *, points=None,
               batch_size: int | None = None) -> int:
        """Insert or replace points: columnar (``ids``, ``vectors``, ``payloads``) or
        ``points=[{"id", "vector", "payload"}, ...]``; returns the write's sequence number.
        ``batch_size`` splits a large upsert into several requests (each atomic on its own)."""
        return self.client._drive(ops.upsert(self.name, ids, vectors, payloads, points, batch_size,
                                             self._multi))

    def get(self, ids, with_payload: bool | list | dict = True, with_vectors: bool = False) -> list[Point]:
        return self.client._drive(ops.get(self.name, ids, with_payload, with_vectors))

    def delete(self, ids=None, filter: dict | None = None) -> int:
        return self.client._drive(ops.delete(self.name, ids, filter))

    def count(self, filter: dict | None = None) -> int:
        return self.client._drive(ops.count(self.name, filter))

    def set_payload(self, payload: dict, ids=None, filter: dict | None = None,
                    key: str | None = None) -> int:
        """Merge ``payload`` into the selected points' payloads (or the object at ``key``);
        see ``Collection``."""
        return self.client._drive(ops.update_payload(self.name, "set", ids, filter, payload,
                                                     key=key))

    def overwrite_payload(self, payload: dict, ids=None, filter: dict | None = None) -> int:
        return self.client._drive(ops.update_payload(self.name, "overwrite", ids, filter,
                                                     payload))

    def delete_payload(self, keys: list[str], ids=None, filter: dict | None = None) -> int:
        return self.client._drive(ops.update_payload(self.name, "delete", ids, filter,
                                                     keys=keys))

    def clear_payload(self, ids=None, filter: dict | None = None) -> int:
        return self.client._drive(ops.update_payload(self.name, "clear", ids, filter))

    def update_vectors(self, ids, vectors) -> int:
        """Replace some vector fields of existing points; see ``Collection.update_vectors``."""
        return self.client._drive(ops.update_vectors(self.name, ids, vectors))

    def delete_vectors(self, names: list[str], ids=None, filter: dict | None = None) -> int:
        return self.client._drive(ops.delete_vectors(self.name, names, ids, filter))

    def scroll(self, filter: dict | None = None, limit: int = 10, cursor=None,
               with_payload: bool | list | dict = True,
               with_vectors: bool = False,
               order_by: str | dict | None = None) -> tuple[list[Point], Any]:
        return self.client._drive(ops.scroll(self.name, filter, limit, cursor, with_payload,
                                             with_vectors, order_by))

    def facet(self, key: str, filter: dict | None = None, limit: int = 10
              ) -> list[tuple[Any, int]]:
        """The most frequent values of a payload key, with counts; see ``Collection.facet``."""
        return self.client._drive(ops.facet(self.name, key, filter, limit))

    def sample(self, k: int = 10, filter: dict | None = None,
               with_payload: bool | list | dict = True, with_vectors: bool = False
               ) -> list[Point]:
        """Points drawn uniformly at random; see ``Collection.sample``."""
        return self.client._drive(ops.sample(self.name, k, filter, with_payload, with_vectors))

    def search(self, vector, k: int = 10, filter: dict | None = None, params: dict | None = None,
               with_payload: bool | list | dict = False, with_vectors: bool = False, explain: bool = False,
               score_threshold: float | None = None, using: str | None = None):
        """Top-k points for one query (a list of Points) or a batch (a list of lists); with
        ``explain``, ``(results, plan)``; see ``Collection.search``."""
        return self.client._drive(ops.search(self.name, vector, k, filter, params, with_payload,
                                             with_vectors, explain, score_threshold, using,
                                             self._is_multi(using)))

    def search_groups(self, vector, group_by: str, limit: int = 10, group_size: int = 3,
                      filter: dict | None = None, params: dict | None = None,
                      with_payload: bool | list | dict = False, with_vectors: bool = False,
                      score_threshold: float | None = None,
                      using: str | None = None) -> list[Group]:
        """The best ``limit`` groups by the payload key ``group_by``, ``group_size`` hits
        each; see ``Collection.search_groups``."""
        return self.client._drive(ops.search_groups(
            self.name, vector, group_by, limit, group_size, filter, params, with_payload,
            with_vectors, score_threshold, using, self._is_multi(using)))

    def search_arrays(self, queries, k: int = 10, filter: dict | None = None,
                      params: dict | None = None,
                      score_threshold: float | None = None,
                      using: str | None = None) -> SearchArrays:
        """Top-k of a batch as matrices (``ids``, ``scores``, ``counts``); see
        ``Collection.search_arrays``."""
        return self.client._drive(ops.search_arrays(self.name, queries, k, filter, params,
                                                    score_threshold, using, self._is_multi(using)))

    def create_payload_index(self, field_name: str, field_type: str) -> None:
        self.client._drive(ops.create_payload_index(self.name, field_name, field_type))

    def delete_payload_index(self, field_name: str) -> None:
        self.client._drive(ops.delete_payload_index(self.name, field_name))

    def snapshot(self) -> str:
        """Create a snapshot on the server; returns its name (see ``download_snapshot``)."""
        return self.client._drive(ops.snapshot(self.name))

    def list_snapshots(self) -> list[dict[str, Any]]:
        return self.client._drive(ops.list_snapshots(self.name))

    def download_snapshot(self, name: str, path: str | Path) -> Path:
        """Save snapshot ``name`` to ``path`` (a file, or a folder to put it in)."""
        return self.client._drive(ops.download_snapshot(self.name, name, path))

    def info(self) -> dict[str, Any]:
        return self.client._drive(ops.collection_info(self.name))

    def flush(self, timeout: float = 600.0) -> None:
        """Seal the appendable segment now and wait until the server's optimizer is idle."""
        self.client._drive(ops.flush(self.name, timeout))

    def train_queries(self, queries, using: str | None = None) -> int:
        """Keep a sample of a field's queries (``Collection.train_queries``)."""
        return self.client._drive(ops.train_queries(self.name, queries, using))

    def wait_indexed(self, timeout: float = 600.0, poll: float = 0.1) -> None:
        """Block until the server reports the collection green (nothing left to index)."""
        deadline = time.monotonic() + timeout
        while self.info()["status"] != "green":
            if time.monotonic() > deadline:
                raise TimeoutError("collection not indexed in time")
            time.sleep(poll)

    def __len__(self) -> int:
        return self.count()


class AsyncRemoteCollection(_RemoteBase):
    """``RemoteCollection`` with ``async`` methods."""

    client: AsyncClient

    async def upsert(self, ids=None, vectors=None, payloads=None, *, points=None,
                     batch_size: int | None = None) -> int:
        return await self.client._drive(ops.upsert(self.name, ids, vectors, payloads, points,
                                                   batch_size, self._multi))

    async def get(self, ids, with_payload: bool | list | dict = True,
                  with_vectors: bool = False) -> list[Point]:
        return await self.client._drive(ops.get(self.name, ids, with_payload, with_vectors))

    async def delete(self, ids=None, filter: dict | None = None) -> int:
        return await self.client._drive(ops.delete(self.name, ids, filter))

    async def count(self, filter: dict | None = None) -> int:
        return await self.client._drive(ops.count(self.name, filter))

    async def set_payload(self, payload: dict, ids=None, filter: dict | None = None,
                          key: str | None = None) -> int:
        return await self.client._drive(ops.update_payload(self.name, "set", ids, filter,
                                                           payload, key=key))

    async def overwrite_payload(self, payload: dict, ids=None,
                                filter: dict | None = None) -> int:
        return await self.client._drive(ops.update_payload(self.name, "overwrite", ids, filter,
                                                           payload))

    async def delete_payload(self, keys: list[str], ids=None,
                             filter: dict | None = None) -> int:
        return await self.client._drive(ops.update_payload(self.name, "delete", ids, filter,
                                                           keys=keys))

    async def clear_payload(self, ids=None, filter: dict | None = None) -> int:
        return await self.client._drive(ops.update_payload(self.name, "clear", ids, filter))

    async def update_vectors(self, ids, vectors) -> int:
        return await self.client._drive(ops.update_vectors(self.name, ids, vectors))

    async def delete_vectors(self, names: list[str], ids=None, filter: dict | None = None) -> int:
        return await self.client._drive(ops.delete_vectors(self.name, names, ids, filter))

    async def scroll(self, filter: dict | None = None, limit: int = 10, cursor=None,
                     with_payload: bool | list | dict = True,
                     with_vectors: bool = False,
                     order_by: str | dict | None = None) -> tuple[list[Point], Any]:
        return await self.client._drive(ops.scroll(self.name, filter, limit, cursor, with_payload,
                                                   with_vectors, order_by))

    async def facet(self, key: str, filter: dict | None = None, limit: int = 10
                    ) -> list[tuple[Any, int]]:
        return await self.client._drive(ops.facet(self.name, key, filter, limit))

    async def sample(self, k: int = 10, filter: dict | None = None,
                     with_payload: bool | list | dict = True, with_vectors: bool = False
                     ) -> list[Point]:
        return await self.client._drive(ops.sample(self.name, k, filter, with_payload,
                                                   with_vectors))

    async def search(self, vector, k: int = 10, filter: dict | None = None,
                     params: dict | None = None, with_payload: bool | list | dict = False,
                     with_vectors: bool = False, explain: bool = False,
                     score_threshold: float | None = None, using: str | None = None):
        return await self.client._drive(ops.search(self.name, vector, k, filter, params,
                                                   with_payload, with_vectors, explain,
                                                   score_threshold, using,
                                                   self._is_multi(using)))

    async def search_groups(self, vector, group_by: str, limit: int = 10, group_size: int = 3,
                            filter: dict | None = None, params: dict | None = None,
                            with_payload: bool | list | dict = False,
                            with_vectors: bool = False, score_threshold: float | None = None,
                            using: str | None = None) -> list[Group]:
        return await self.client._drive(ops.search_groups(
            self.name, vector, group_by, limit, group_size, filter, params, with_payload,
            with_vectors, score_threshold, using, self._is_multi(using)))

    async def search_arrays(self, queries, k: int = 10, filter: dict | None = None,
                            params: dict | None = None,
                            score_threshold: float | None = None,
                            using: str | None = None) -> SearchArrays:
        return await self.client._drive(ops.search_arrays(self.name, queries, k, filter, params,
                                                          score_threshold, using,
                                                          self._is_multi(using)))

    async def create_payload_index(self, field_name: str, field_type: str) -> None:
        await self.client._drive(ops.create_payload_index(self.name, field_name, field_type))

    async def delete_payload_index(self, field_name: str) -> None:
        await self.client._drive(ops.delete_payload_index(self.name, field_name))

    async def snapshot(self) -> str:
        return await self.client._drive(ops.snapshot(self.name))

    async def list_snapshots(self) -> list[dict[str, Any]]:
        return await self.client._drive(ops.list_snapshots(self.name))

    async def download_snapshot(self, name: str, path: str | Path) -> Path:
        return await self.client._drive(ops.download_snapshot(self.name, name, path))

    async def info(self) -> dict[str, Any]:
        return await self.client._drive(ops.collection_info(self.name))

    async def flush(self, timeout: float = 600.0) -> None:
        await self.client._drive(ops.flush(self.name, timeout))

    async def train_queries(self, queries, using: str | None = None) -> int:
        return await self.client._drive(ops.train_queries(self.name, queries, using))

    async def wait_indexed(self, timeout: float = 600.0, poll: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while (await self.info())["status"] != "green":
            if time.monotonic() > deadline:
                raise TimeoutError("collection not indexed in time")
            await anyio.sleep(poll)
