"""``GET /metrics``: the server's Prometheus metrics, and the values read at scrape time."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..registry import ModelRegistry

router = APIRouter(tags=["metrics"])


@router.get("/metrics")
async def prometheus(request: Request):
    return Response(request.app.state.metrics.exposition(),
                    media_type="text/plain; version=0.0.4")


def live_values(registry: ModelRegistry, cache: Any):
    """Gauges that live in other objects: queue depth per version, cache hits and misses."""
    depth = GaugeMetricFamily("inference_queue_depth", "Requests waiting for a batch",
                              labels=["model", "version"])
    for name in registry.names():
        for version, served in registry.versions(name).items():
            if served.batcher is not None:
                depth.add_metric([name, version], served.batcher.queue_depth)
    yield depth
    if cache is not None:
        yield CounterMetricFamily("inference_cache_hits", "Prediction cache hits",
                                  value=cache.stats.hits)
        yield CounterMetricFamily("inference_cache_misses", "Prediction cache misses",
                                  value=cache.stats.misses)
