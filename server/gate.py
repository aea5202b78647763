"""Pure ASGI middleware in front of the app: body-size limit and timeout, API keys, metrics.

One small layer instead of several BaseHTTPMiddleware ones keeps the per-request overhead
down (each of those costs a task and a queue per request)."""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Iterable
from typing import Any

import orjson

from .metrics import Metrics
from .settings import Settings

_OPEN = {"/", "/healthz", "/readyz", "/livez", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
_READ_POST = re.compile(r"^/collections/[^/]+/points(/(search|query|recommend)(/batch)?|/scroll|/count)?$")
_TIMEOUT = getattr(asyncio, "timeout", None)


class BodyTooLarge(Exception):
    """A streamed body (no or a false content-length) went past ``max_body_bytes``."""


class BodyTimeout(Exception):
    """The body stopped arriving for ``body_timeout`` seconds: answered 408, and the
    connection closed (the rest of the body would be read as the next request)."""


async def _receive_within(receive, seconds: float):
    if _TIMEOUT is None:  # Python 3.10
        return await asyncio.wait_for(receive(), seconds)
    async with _TIMEOUT(seconds):
        return await receive()


def _known(key: bytes, keys: list[bytes]) -> bool:
    """Whether ``key`` is one of ``keys``; compared with each in constant time, so the
    answer's timing does not tell how much of a key was right."""
    found = False
    for k in keys:
        found |= hmac.compare_digest(key, k)
    return found


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """Qdrant's error envelope ``{"status": {"error": message}}`` first (qdrant-client's
    exceptions show the body's first 200 bytes), then Quiver's ``error`` object."""
    return {"status": {"error": message}, "time": 0.0,
            "error": {"code": code, "message": message, "details": details}}


def _error_body(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps(error_body(code, message))


def _endpoint(app, method: str, path: str):
    """The endpoint of ``app``'s route for ``method`` and ``path``."""
    for route in app.routes:
        if getattr(route, "path", None) == path and method in (getattr(route, "methods", None) or ()):
            return route.endpoint
    raise LookupError(f"no {method} {path} route to serve on the fast path")


class Gate:
    """``fast_routes``: (method, path template) of app routes served here directly, skipping
    the framework's middleware and dependency machinery on the hottest request (single
    search). Each is served by calling the documented route's own endpoint, which must take
    (name, raw body, content type) and answer a Response: one handler, whichever way a
    request comes in."""

    def __init__(self, app, settings: Settings, metrics: Metrics, error_for,
                 fast_routes: Iterable[tuple[str, str]] = ()):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.error_for = error_for
        self.fast = [(method, re.compile("^" + re.escape(path).replace(r"\{name\}", "([^/]+)") + "$"),
                      path, _endpoint(app, method, path)) for method, path in fast_routes]
        self.state = app.state
        self._keys = [k.encode() for k in settings.api_keys]
        self._read_only_keys = [k.encode() for k in settings.read_only_keys]
        self._entry = self._handle
        if settings.cors_origins:  # outermost: preflights need no key, and every answer
            from starlette.middleware.cors import CORSMiddleware  # (fast, 4xx) gets the headers

            self._entry = CORSMiddleware(self._handle, allow_origins=settings.cors_origins,
                                         allow_methods=["*"], allow_headers=["*"])

    def openapi(self):
        return self.state  # pragma: no cover - for introspection only

    async def __call__(self, scope, receive, send):
        await self._entry(scope, receive, send)

    async def _handle(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status_holder = [500]
        answered = False

        async def send_wrapper(message):
            nonlocal answered
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                answered = True
            await send(message)

        headers = dict(scope["headers"])
        denied = self._check(scope, headers)
        if denied is not None:
            await self._reply(send, *denied)
            status_holder[0] = denied[0]
        else:
            limit, wait = self.settings.max_body_bytes, self.settings.body_timeout
            received = 0
            body_done = False

            async def receive_limited():
                # raised inside the route's body read: the app's handlers answer 413 / 408
                nonlocal received, body_done
                if body_done:  # what comes after the body (a disconnect) may take any time
                    return await receive()
                try:
                    message = await _receive_within(receive, wait)
                except (TimeoutError, asyncio.TimeoutError):
                    raise BodyTimeout(f"body: nothing arrived for {wait:g} s after {received} "
                                      f"bytes (the server's body timeout)") from None
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLarge(f"body: larger than the server's limit of {limit} bytes")
                    body_done = not message.get("more_body", False)
                else:
                    body_done = True
                return message

            for method, pattern, template, handler in self.fast:
                m = pattern.match(scope["path"]) if scope["method"] == method else None
                if m is not None:
                    ctype = headers.get(b"content-type")
                    status = await self._serve_fast(
                        handler, m.group(1), None if ctype is None else ctype.decode("latin-1"),
                        receive_limited, send)
                    self.metrics.observe(method, template, status, time.perf_counter() - started)
                    return
            try:
                await self.app(scope, receive_limited, send_wrapper)
            except Exception as exc:
                # a bug: the app's handler has answered 500 and logged it before re-raising;
                # raised on, the server would drop the connection under the client's next
                # request
                if not answered:
                    response = self.error_for(exc)
                    await send({"type": "http.response.start", "status": response.status_code,
                                "headers": response.raw_headers})
                    await send({"type": "http.response.body", "body": response.body})
                    status_holder[0] = response.status_code
            finally:
                self._observe(scope, status_holder[0], started)
            return
        self._observe(scope, status_holder[0], started)

    async def _serve_fast(self, handler, name: str, content_type: str | None, receive, send) -> int:
        try:
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return 499
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            response = await handler(name, b"".join(chunks), content_type)
        except Exception as exc:
            response = self.error_for(exc)
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})
        return response.status_code

    def _observe(self, scope, status: int, started: float) -> None:
        route = scope.get("route")
        self.metrics.observe(scope["method"], getattr(route, "path", "unmatched"), status,
                             time.perf_counter() - started)

    def _check(self, scope, headers: dict[bytes, bytes]) -> tuple[int, bytes] | None:
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.settings.max_body_bytes:
                    return _error_body(413, "body_too_large",
                                       f"body: {int(length)} bytes exceed the server's limit of "
                                       f"{self.settings.max_body_bytes}")
            except ValueError:
                return _error_body(400, "bad_request", "content-length: not an integer")
        if not self.settings.auth_enabled or scope["path"] in _OPEN:
            return None
        key = headers.get(b"api-key")
        if key is None:
            auth = headers.get(b"authorization", b"")
            if auth.lower().startswith(b"bearer "):
                key = auth[7:].strip()
        if key is None:
            return _error_body(401, "unauthorized", "api-key: header missing")
        if _known(key, self._keys):
            return None
        if _known(key, self._read_only_keys):
            method = scope["method"]
            if method in ("GET", "HEAD", "OPTIONS") or (
                    method == "POST" and _READ_POST.match(scope["path"])):
                return None
            return _error_body(403, "forbidden", "api-key: this key is read-only")
        return _error_body(401, "unauthorized", "api-key: invalid key")

    @staticmethod
    async def _reply(send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
