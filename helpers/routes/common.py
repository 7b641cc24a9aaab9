"""What every router shares: the engine from the app, header names, resolving with
bounded metric labels, and reading a JSON body safely."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request

from ..inference import InferenceEngine, parse_timeout_ms
from ..protocol import ProtocolError
from ..registry import ServedVersion
from ..repository import ModelNotFoundError

__all__ = ["ROUTING_HEADER", "TIMEOUT_HEADER", "VERSION_HEADER", "UNRESOLVED", "Engine",
           "resolve", "deadline_s", "json_body", "json_body_doc"]

ROUTING_HEADER = "x-routing-key"   # sticky A/B: same key, same version
TIMEOUT_HEADER = "x-timeout-ms"    # per-request deadline; default from the settings
VERSION_HEADER = "x-model-version"  # every response says which version answered
# The metrics label of a request whose model or version does not exist. Labels come
# only from models the server has, so random names in URLs cannot grow /metrics.
UNRESOLVED = ("_unresolved", "")


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


async def json_body(request: Request) -> Any:
    """The body as JSON, or a 400 naming why not (malformed, not UTF-8, nested too deep)."""
    try:
        return json.loads(await request.body())
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
