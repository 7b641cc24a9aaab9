"""The repository extension: list, load and unload models at run time."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .common import Engine, json_body

router = APIRouter(tags=["repository"])


@router.post("/v2/repository/index")
async def repository_index(request: Request, engine: Engine):
    """Every model and version with its state; ``{"ready": true}`` lists the ready ones only."""
    body: Any = await json_body(request) if await request.body() else {}
    rows = engine.registry.index()
    if isinstance(body, dict) and body.get("ready") is True:
        rows = [row for row in rows if row["state"] == "READY"]
    return rows


@router.post("/v2/repository/models/{name}/load")
async def load(name: str, engine: Engine):
    loaded = await engine.registry.load(name)
    failed = [f"v{s.version}: {s.reason}" for s in loaded if s.reason]
    if failed:
        return JSONResponse({"error": f"{name} failed to load: {failed}"}, 500)
    return {"name": name, "versions": [s.version for s in loaded]}


@router.post("/v2/repository/models/{name}/unload")
async def unload(name: str, engine: Engine):
    await engine.registry.unload(name)
    return {"name": name, "unloaded": True}
