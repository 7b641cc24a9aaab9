"""What every router shares: the engine from the app, header names, resolving with
bounded metric labels, and reading a JSON body safely."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import Depends, Request

from ..http_guards import UNRESOLVED
from ..inference import InferenceEngine, parse_timeout_ms
from ..protocol import ProtocolError
from ..registry import ServedVersion
from ..repository import ModelNotFoundError

__all__ = ["ROUTING_HEADER", "TIMEOUT_HEADER", "VERSION_HEADER", "UNRESOLVED", "OFFLOAD_BODY_BYTES",
           "Engine",
           "resolve", "deadline_s", "json_body", "json_body_doc"]

ROUTING_HEADER = "x-routing-key"   # sticky A/B: same key, same version
TIMEOUT_HEADER = "x-timeout-ms"    # per-request deadline; default from the settings
VERSION_HEADER = "x-model-version"  # every response says which version answered


def get_engine(request: Request) -> InferenceEngine:
    return request.app.state.engine


# A route parameter ``engine: Engine`` receives the app's engine (a FastAPI dependency).
Engine = Annotated[InferenceEngine, Depends(get_engine)]


def resolve(request: Request, name: str, version: str | None) -> ServedVersion:
    """The served version, labelling the request's metrics only once it is known."""
    try:
        served = request.app.state.engine.resolve(name, version,
                                                  request.headers.get(ROUTING_HEADER))
    except ModelNotFoundError:
        request.state.served = UNRESOLVED
        raise
    except Exception:  # not ready: the model exists, its label is bounded
        request.state.served = (name, "") if name in request.app.state.engine.registry.names() \
            else UNRESOLVED
        raise
    request.state.served = (name, served.version)
    return served


def deadline_s(request: Request) -> float:
    return parse_timeout_ms(request.headers.get(TIMEOUT_HEADER),
                            request.app.state.engine.default_timeout_s, TIMEOUT_HEADER)


# Bodies larger than this are parsed in a worker thread: a 64 MiB job body parsed on the
# event loop would stall every other request (and the health checks) for seconds.
OFFLOAD_BODY_BYTES = 64 << 10


async def json_body(request: Request) -> Any:
    """The body as JSON, or a 400 naming why not (malformed, not UTF-8, nested too deep)."""
    raw = await request.body()
    try:
        if len(raw) > OFFLOAD_BODY_BYTES:
            return await asyncio.to_thread(json.loads, raw)
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ProtocolError("body is not UTF-8 text") from None
    except RecursionError:
        raise ProtocolError("body is nested too deeply to be a request") from None


def json_body_doc(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself: what /docs shows."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema, "example": example}}}}
