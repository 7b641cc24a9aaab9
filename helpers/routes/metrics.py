"""``GET /metrics``: the server's Prometheus metrics, and the values read at scrape time."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..generation_service import GenerationServices
from ..registry import ModelRegistry

router = APIRouter(tags=["metrics"])


@router.get("/metrics")
async def prometheus(request: Request):
    return Response(request.app.state.metrics.exposition(),
                    media_type="text/plain; version=0.0.4")


def live_values(registry: ModelRegistry, cache: Any, generation: GenerationServices | None = None):
    """Gauges that live in other objects: queue depth per version, cache hits and misses,
    and each generative version's sequences and KV blocks."""
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
    if generation is not None:
        yield from _generation_gauges(generation)


def _generation_gauges(generation: GenerationServices):
    gauges = {field: GaugeMetricFamily(f"generation_{name}", help_text,
                                       labels=["model", "version"])
              for field, name, help_text in [
                  ("running", "sequences_running", "Sequences decoding in the engine"),
                  ("waiting", "sequences_waiting", "Sequences waiting for KV blocks or a slot"),
                  ("used_blocks", "kv_blocks_used", "KV cache blocks held by sequences"),
                  ("total_blocks", "kv_blocks_total", "KV cache blocks in the pool")]}
    for service in generation.current():
        stats = service.stats
        for field, gauge in gauges.items():
            gauge.add_metric([service.name, service.version], getattr(stats, field))
    yield from gauges.values()
