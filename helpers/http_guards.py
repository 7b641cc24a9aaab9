"""The server's guards at the HTTP boundary: body size, load shedding, and the map from
failures to status codes. Every request gets an answer, and this module decides which.

| failure                                   | answer                    |
|-------------------------------------------|---------------------------|
| a malformed or invalid request            | 400 / 422, naming it      |
| an unknown model, version or job          | 404                       |
| a body over the limit                     | 413                       |
| queue full, too many in flight, not ready | 503 + Retry-After         |
| deadline passed before the batch ran      | 504 (never computed)      |
| ... or before a shared computation ended  | 504 (computed for others) |
| the model raised for this batch           | 500 (this batch only)     |
| anything unforeseen                       | 500, the v2 error body    |

Every error body is the v2 one, ``{"error": "..."}`` — unmatched routes included —
and none carries a host path or a traceback.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import (
    BatcherClosedError,
    BatcherFailedError,
    DeadlineExceededError,
    ItemTooLargeError,
    QueueFullError,
)
from .inference import ModelFailedError
from .jobs import JobNotFoundError, JobsFullError
from .metrics import ServingMetrics
from .protocol import ProtocolError, describe_errors
from .registry import NotReadyError
from .repository import ModelNotFoundError

__all__ = ["BodyTooLargeError", "ModelFailedError", "BodySizeLimit", "FrontDoor",
           "install_error_handlers", "UNRESOLVED"]

log = logging.getLogger("helpers.server")
# The metrics label of a request whose model or version is not known (yet, or at all).
# Labels come only from models the server has, so random names in URLs cannot grow /metrics.
UNRESOLVED = ("_unresolved", "")
_LENGTH = re.compile(rb"[0-9]{1,15}")  # ASCII digits only, and no 5,000-digit numbers


class BodyTooLargeError(ProtocolError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the {limit}-byte limit", 413)


class BodySizeLimit:
    """ASGI middleware: refuse bodies over the limit (declared or streamed) with 413.

    ``limits`` gives some POST paths their own limit (``{"/jobs": 64 << 20}``): bulk
    routes take bigger bodies than online ones.
    """

    def __init__(self, app, max_bytes: int, limits: dict[str, int] | None = None) -> None:
        self.app, self.max_bytes, self.limits = app, max_bytes, limits or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope["path"], self.max_bytes) if scope["method"] == "POST" \
            else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not _LENGTH.fullmatch(declared):
                return await _error(400, "invalid Content-Length")(scope, receive, send)
            if int(declared) > limit:
                return await _error(413, str(BodyTooLargeError(limit)))(scope, receive, send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # a chunked body that lied by omission
                raise BodyTooLargeError(limit)
            return message

        await self.app(scope, counted_receive, send)


class FrontDoor:
    """ASGI middleware: shed load at the door, and count every answer for Prometheus.

    The batcher's queue bounds the work waiting for the model, but when requests
    arrive faster than the HTTP layer itself can parse them, they pile up *before*
    the batcher, in the event loop. Capping the requests in flight answers the
    excess with an immediate 503 instead of letting every request's latency grow.

    Health checks and metrics scrapes are never shed: a liveness probe that gets 503
    under load would have the pod restarted exactly when it is busiest.
    """

    UNCAPPED = ("/v2/health/", "/metrics")

    def __init__(self, app, max_in_flight: int, metrics: ServingMetrics) -> None:
        self.app, self.max_in_flight, self.metrics = app, max_in_flight, metrics
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"].startswith(self.UNCAPPED):
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            model, version = UNRESOLVED
            self.metrics.requests.labels(model=model, version=version, code="503").inc()
            self.metrics.failures.labels(model=model, version=version, reason="503").inc()
            response = _error(503, f"server busy: {self.in_flight} requests in flight",
                              {"Retry-After": "1"})
            return await response(scope, receive, send)
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        start, status = time.perf_counter(), 500

        async def watch_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch_status)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)
            # Set by the route once it knows the model (request.state); inference routes
            # that fail before that count as unresolved.
            served = scope.get("state", {}).get("served")
            if served is None and status >= 400 and scope["path"].startswith(
                    ("/v2/models/", "/predict", "/jobs")) and scope["method"] == "POST":
                served = UNRESOLVED
            if served is not None:
                labels = {"model": served[0], "version": served[1]}
                self.metrics.requests.labels(**labels, code=str(status)).inc()
                self.metrics.request_duration.labels(**labels).observe(
                    time.perf_counter() - start)
                if status >= 400:
                    self.metrics.failures.labels(**labels, reason=str(status)).inc()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    handlers: dict[type[Exception], Callable[[Exception], JSONResponse]] = {
        ProtocolError: lambda e: _error(e.status, str(e)),
        ModelNotFoundError: lambda e: _error(404, str(e)),
        JobNotFoundError: lambda e: _error(404, str(e)),
        NotReadyError: lambda e: _error(503, str(e), {"Retry-After": "1"}),
        QueueFullError: lambda e: _error(
            503, str(e), {"Retry-After": str(max(1, math.ceil(e.retry_after_s)))}),
        BatcherClosedError: lambda e: _error(503, str(e), {"Retry-After": "1"}),
        BatcherFailedError: lambda e: _error(500, str(e)),
        ItemTooLargeError: lambda e: _error(400, str(e)),
        JobsFullError: lambda e: _error(503, str(e), {"Retry-After": "5"}),
        DeadlineExceededError: lambda e: _error(504, str(e)),
        ModelFailedError: lambda e: _error(500, str(e)),
    }
    for exc_type, make in handlers.items():
        app.add_exception_handler(exc_type, lambda request, exc, make=make: make(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        return _error(422, describe_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Unmatched routes (404), wrong methods (405): the v2 error body, not "detail".
        message = exc.detail if exc.status_code != 404 else \
            f"no route {request.method} {request.url.path}"
        return _error(exc.status_code, str(message), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unforeseen(request: Request, exc: Exception):
        # A bug, not the client's fault: log it whole, answer without internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has details")
