"""Pure ASGI middleware in front of the app: body-size limit, API keys, metrics.

One small layer instead of several BaseHTTPMiddleware ones keeps the per-request overhead
down (each of those costs a task and a queue per request)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

import orjson

from .metrics import Metrics
from .settings import Settings

_OPEN = {"/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
_READ_POST = re.compile(r"^/collections/[^/]+/points(/search(/batch)?|/scroll|/count)?$")


class BodyTooLarge(Exception):
    """A streamed body (no or a false content-length) went past ``max_body_bytes``."""


def _error_body(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"code": code, "message": message, "details": None}})


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
    (name, raw body) and answer a Response: one handler, whichever way a request comes in."""

    def __init__(self, app, settings: Settings, metrics: Metrics, error_for=None,
                 fast_routes: Iterable[tuple[str, str]] = ()):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.error_for = error_for
        self.fast = [(method, re.compile("^" + re.escape(path).replace(r"\{name\}", "([^/]+)") + "$"),
                      path, _endpoint(app, method, path)) for method, path in fast_routes]
        self.state = app.state
        if settings.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            self.app = CORSMiddleware(app, allow_origins=settings.cors_origins,
                                      allow_methods=["*"], allow_headers=["*"])

    def openapi(self):
        return self.state  # pragma: no cover - for introspection only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status_holder = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
            await send(message)

        denied = self._check(scope)
        if denied is not None:
            await self._reply(send, *denied)
            status_holder[0] = denied[0]
        else:
            limit = self.settings.max_body_bytes
            received = 0

            async def receive_limited():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        # raised inside the route's body read: the app's handler answers 413
                        raise BodyTooLarge(f"body: larger than the server's limit of {limit} bytes")
                return message

            for method, pattern, template, handler in self.fast:
                m = pattern.match(scope["path"]) if scope["method"] == method else None
                if m is not None:
                    status = await self._serve_fast(handler, m.group(1), receive_limited, send)
                    self.metrics.observe(method, template, status, time.perf_counter() - started)
                    return
            try:
                await self.app(scope, receive_limited, send_wrapper)
            finally:  # unhandled errors too: the app has answered 500 before re-raising
                self._observe(scope, status_holder[0], started)
            return
        self._observe(scope, status_holder[0], started)

    async def _serve_fast(self, handler, name: str, receive, send) -> int:
        try:
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return 499
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            response = await handler(name, b"".join(chunks))
        except Exception as exc:
            response = self.error_for(exc) if self.error_for else None
            if response is None:
                raise
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})
        return response.status_code

    def _observe(self, scope, status: int, started: float) -> None:
        route = scope.get("route")
        self.metrics.observe(scope["method"], getattr(route, "path", "unmatched"), status,
                             time.perf_counter() - started)

    def _check(self, scope) -> tuple[int, bytes] | None:
        headers = dict(scope["headers"])
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
        k = key.decode("latin-1")
        if k in self.settings.api_keys:
            return None
        if k in self.settings.read_only_keys:
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
