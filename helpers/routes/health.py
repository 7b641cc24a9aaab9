"""Liveness, readiness and server metadata (KServe v2 health endpoints)."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .. import __version__
from .common import Engine

router = APIRouter(tags=["health"])


@router.get("/v2")
async def server_metadata():
    return {"name": "realtime-ml-serving", "version": __version__,
            "extensions": ["binary_tensor_data", "model_repository", "generate", "jobs",
                           "predict"]}


@router.get("/v2/health/live")
async def live():
    """Alive: the process answers. A load balancer restarts a server that stops."""
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(engine: Engine):
    """Ready: start-up loads done and at least one model version serves. A version that
    failed to load shows in its model's readiness and the repository index instead."""
    is_ready, reason = engine.registry.readiness()
    # The process id lets whoever started this server know the answer is from *its*
    # process, not another that took the same port first (free ports can collide).
    pid = {"x-server-pid": str(os.getpid())}
    if is_ready:
        return JSONResponse({"ready": True}, headers=pid)
    return JSONResponse({"ready": False, "reason": reason}, 503,
                        headers={"Retry-After": "1", **pid})
