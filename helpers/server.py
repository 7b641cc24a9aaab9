"""The course's model server: FastAPI over the model repository, speaking the Open
Inference Protocol (KServe v2 REST, as Triton serves it), with dynamic batching, an
optional prediction cache, A/B version splits, async jobs and Prometheus metrics.

    python -m helpers.server            # serves data/models on 127.0.0.1:8000
    python -m helpers.server --help     # every setting; each has a SERVE_* variable too

Endpoints: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
``GET /v2/models/{m}[/versions/{v}][/ready]``, ``POST /v2/models/{m}[/versions/{v}]/infer``
(JSON tensors, or binary ones: the binary tensor data extension),
``POST /v2/repository/index``, ``POST /v2/repository/models/{m}/load|unload``,
``POST /predict``, ``/predict/batch``, ``/predict/stream`` (NDJSON), ``/jobs`` (async),
and ``GET /metrics``.

Every request gets an answer: 200; 400/404/413/422 naming what is wrong; 503 with
``Retry-After`` when the queue is full or a model is not ready; 504 when the
request's deadline passed before it ran; 500 for the requests of a batch whose
model call failed, and only those. The defaults are the safe production ones: a
bounded queue, a default deadline, a body-size limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
from collections import deque
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__
from .batching import BatcherClosedError, BatchPolicy, DeadlineExceededError, QueueFullError
from .cache import cache_key
from .data import FEATURES
from .device import threads_per_worker
from .http_guards import (
    BodySizeLimit,
    FrontDoor,
    ModelFailedError,
    install_error_handlers,
)
from .jobs import JobManager
from .metrics import ServingMetrics
from .models import default_repository, list_models
from .protocol import (
    BINARY_HEADER,
    InferenceRequest,
    ProtocolError,
    decode_inputs,
    encode_response,
    inline_json_schema,
    parse_infer_request,
    wants_binary_output,
)
from .registry import ModelRegistry, NotReadyError, ServedVersion
from .routing import TrafficSplit

__all__ = ["ServerSettings", "create_app", "features_to_rows", "main"]

ROUTING_HEADER = "x-routing-key"   # sticky A/B: same key, same version
TIMEOUT_HEADER = "x-timeout-ms"    # per-request deadline; default from the settings
VERSION_HEADER = "x-model-version"  # every response says which version answered


@dataclass
class ServerSettings:
    """Every knob of the server; each field reads ``SERVE_<NAME>`` in ``from_env``."""

    repository: Path | None = None  # None: data/models
    models: tuple[str, ...] = ()    # empty: every model in the repository
    default_model: str = "wafer-mlp"  # what /predict serves
    max_batch_size: int = 32
    max_wait_ms: float = 2.0        # a small share of the 50 ms SLO
    max_queue: int = 256            # bounded: overload answers 503 instead of queueing forever
    max_in_flight: int = 512        # HTTP requests being handled at once; more get 503 at the door
    workers: int = 1                # model threads per version (model instances, in Triton's words)
    torch_threads: int = 0          # intra-op threads per worker; 0: cores // workers
    buckets: tuple[int, ...] = ()   # token-length bucket bounds for text models, e.g. (16, 32, 64)
    timeout_ms: float = 2000.0      # default deadline: nothing waits forever
    max_body_bytes: int = 1 << 20   # 1 MiB: ~40,000 wafer records in one body
    max_records: int = 10_000       # per /predict/batch, /predict/stream or job request
    cache_entries: int = 0          # 0: no prediction cache
    cache_ttl_s: float = 60.0
    splits: dict[str, str] = field(default_factory=dict)  # model -> "1:0.9,2:0.1"
    max_jobs: int = 256
    device: str | None = None       # None: helpers.device.pick_device()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> ServerSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"SERVE_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse_setting(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_flags(cls, flags: list[str]) -> ServerSettings:
        """Settings from ``python -m helpers.server`` flags: ``["--max-batch-size", "8", ...]``.

        For building in-process what a server started with these flags would run.
        """
        names = [flag.removeprefix("--").replace("-", "_") for flag in flags[::2]]
        return cls(**{name: _parse_setting(name, raw)
                      for name, raw in zip(names, flags[1::2], strict=True)})

    def batch_policy(self) -> BatchPolicy:
        return BatchPolicy(self.max_batch_size, self.max_wait_ms / 1000)

    def intra_op_threads(self) -> int:
        """Torch threads per model worker: ``torch_threads``, or the cores shared out."""
        return self.torch_threads or threads_per_worker(self.workers)


def _parse_setting(name: str, raw: str) -> Any:
    if name == "repository":
        return Path(raw)
    if name == "models":
        return tuple(m.strip() for m in raw.split(",") if m.strip())
    if name == "buckets":
        return tuple(int(b) for b in raw.split(",") if b.strip())
    if name == "splits":  # "wafer-mlp=1:0.9,2:0.1;other=1:1"
        return dict(part.split("=", 1) for part in raw.split(";") if part.strip())
    if name in ("default_model", "device"):
        return raw
    number = float(raw)
    return int(number) if name in ("max_batch_size", "max_queue", "max_in_flight", "workers",
                                   "torch_threads", "max_body_bytes", "max_records",
                                   "cache_entries", "max_jobs") else number


# -- request checks ------------------------------------------------------------------
def features_to_rows(records: list[dict[str, Any]]) -> np.ndarray:
    """Plain-JSON wafer records -> a ``(n, 8)`` float32 array, or a 422 naming the problem."""
    if not isinstance(records, list) or not records:
        raise ProtocolError("send at least one record", 422)
    rows = np.empty((len(records), len(FEATURES)), dtype=np.float32)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ProtocolError(f"record {i} is not an object of feature values", 422)
        missing = [f for f in FEATURES if f not in record]
        unknown = sorted(set(record) - set(FEATURES))
        if missing or unknown:
            raise ProtocolError(f"record {i}: missing {missing}, unknown {unknown}", 422)
        for j, name in enumerate(FEATURES):
            value = record[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ProtocolError(f"record {i}: {name}={value!r} is not a number", 422)
            if not math.isfinite(value):
                raise ProtocolError(f"record {i}: {name}={value!r} is not finite", 422)
            rows[i, j] = value
    return rows


# -- what /docs shows ----------------------------------------------------------------
# The routes below read their raw bodies themselves (to accept binary tensors, and to
# answer a malformed body with a message of our own), so FastAPI cannot infer them:
# these tell /docs what to send, with an example ready to try.
_RECORD_EXAMPLE = {"temperature_c": 349.4, "pressure_torr": 2.12, "gas_flow_sccm": 115.0,
                   "particle_count": 25, "humidity_pct": 44.5, "rf_power_w": 1539.9,
                   "chamber_hours": 7.25, "vibration_mm_s": 0.62}
_RECORD_SCHEMA = {"type": "object", "required": list(FEATURES),
                  "properties": {name: {"type": "number"} for name in FEATURES}}


def _json_body(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema, "example": example}}}}


INFER_BODY = _json_body(inline_json_schema(InferenceRequest), {"inputs": [{
    "name": "process_features", "shape": [1, len(FEATURES)], "datatype": "FP32",
    "data": [_RECORD_EXAMPLE[name] for name in FEATURES]}]})
FEATURES_BODY = _json_body({"type": "object", "required": ["features"],
                            "properties": {"features": _RECORD_SCHEMA}},
                           {"features": _RECORD_EXAMPLE})
RECORDS_BODY = _json_body({"type": "object", "required": ["records"],
                           "properties": {"records": {"type": "array", "items": _RECORD_SCHEMA}}},
                          {"records": [_RECORD_EXAMPLE, _RECORD_EXAMPLE]})


# -- the app -------------------------------------------------------------------------
def create_app(settings: ServerSettings | None = None, *, models: list[Any] = (),
               cache: Any = None, router: Callable[[str, str | None], str] | None = None,
               validate: Callable[[list[dict]], np.ndarray] = features_to_rows,
               policy: Any = None) -> FastAPI:
    """Build the server. Plug-in points for lessons and tests:

    - ``models``: extra model objects to serve (``.config`` and ``.predict_proba``);
    - ``cache``: any object with ``lookup(key) -> (found, value)``, ``put(key, value)``
      and ``stats.hits`` / ``stats.misses`` (default: a ``TTLCache`` if
      ``settings.cache_entries`` > 0, else none); one with ``get_or_compute`` (a
      ``CoalescingCache``) also shares a computation between identical misses;
    - ``router``: ``router(model, routing_key) -> version`` for unversioned requests
      (default: the settings' traffic splits, else the newest ready version);
    - ``validate``: plain-JSON records -> ``(n, 8)`` float32 rows (default ``features_to_rows``);
      a ``ValueError`` it raises becomes a 422 with its message;
    - ``policy``: the batch policy of every batcher (anything with ``max_batch_size``,
      ``decide(queued, oldest_wait_s)`` and ``wait_budget_s(oldest_wait_s)``; default a
      ``BatchPolicy`` from the settings).
    """
    settings = settings or ServerSettings()
    repository = settings.repository or default_repository()
    metrics = ServingMetrics()
    policy = policy or settings.batch_policy()
    registry = ModelRegistry(repository if repository.is_dir() else None, policy,
                             max_queue=settings.max_queue, workers=settings.workers,
                             metrics=metrics, device=settings.device, buckets=settings.buckets)
    if cache is None and settings.cache_entries > 0:
        from .cache import TTLCache
        cache = TTLCache(settings.cache_entries, settings.cache_ttl_s)
    splits = {name: TrafficSplit.parse(text) for name, text in settings.splits.items()}
    jobs = JobManager(settings.max_jobs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for model in models:
            await registry.add(model)
        names = settings.models or (list_models(repository) if registry.repository else [])
        for name in names:
            await registry.load(name)  # loads and warms every version before "ready"
        yield
        # uvicorn has stopped accepting and finished in-flight requests; drain the rest.
        await jobs.close()
        await registry.close()

    app = FastAPI(title="Real-Time ML Serving", version=__version__, lifespan=lifespan)
    app.state.registry, app.state.metrics, app.state.cache = registry, metrics, cache
    app.state.jobs, app.state.settings = jobs, settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(FrontDoor, max_in_flight=settings.max_in_flight, metrics=metrics)
    metrics.add_collector(lambda: _live_values(registry, cache))
    install_error_handlers(app)

    # -- helpers used by the routes -----------------------------------------------------
    def resolve(request: Request, name: str, version: str | None) -> ServedVersion:
        request.state.served = (name, version or "")
        if version is None:
            key = request.headers.get(ROUTING_HEADER)
            if router is not None:
                version = str(router(name, key))
            elif name in splits:
                version = splits[name].choose(key)
        served = registry.get(name, version)
        request.state.served = (name, served.version)
        return served

    def deadline_s(request: Request) -> float:
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is None:
            return settings.timeout_ms / 1000
        try:
            value = float(raw)
        except ValueError:
            raise ProtocolError(f"{TIMEOUT_HEADER}: {raw!r} is not a number of milliseconds") \
                from None
        if not (value > 0 and math.isfinite(value)):
            raise ProtocolError(f"{TIMEOUT_HEADER} must be a positive number, got {raw}")
        return value / 1000

    async def predict(served: ServedVersion, rows: np.ndarray, timeout_s: float) -> np.ndarray:
        async def compute() -> np.ndarray:
            try:
                return await served.batcher.submit(registry.work(served.model, rows),
                                                   timeout_s=timeout_s)
            except (QueueFullError, DeadlineExceededError, BatcherClosedError):
                raise
            except Exception as exc:  # the model raised for this batch
                raise ModelFailedError(f"{served.name} v{served.version} failed: {exc}") \
                    from exc

        if cache is None:
            return await compute()
        key = cache_key(served.name, served.version, rows)
        if hasattr(cache, "get_or_compute"):  # coalescing: identical misses compute once
            return await cache.get_or_compute(key, compute)
        found, value = cache.lookup(key)
        if found:
            return value
        value = await compute()
        cache.put(key, value)
        return value

    def checked_rows(records: list) -> np.ndarray:
        try:
            return validate(records)
        except ProtocolError:
            raise
        except ValueError as exc:  # a plugged-in validator names the problem this way
            raise ProtocolError(str(exc), 422) from None

    def plain(served: ServedVersion, **body: Any) -> JSONResponse:
        return JSONResponse({"model": served.name, "version": served.version, **body},
                            headers={VERSION_HEADER: served.version})

    def records_of(body: Any, limited: bool = True) -> list:
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise ProtocolError('send {"records": [{feature: value, ...}, ...]}', 422)
        if limited and len(records) > settings.max_records:
            raise ProtocolError(f"{len(records)} records is over the {settings.max_records} "
                                "limit per request; use /jobs for more", 413)
        return records

    async def json_body(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"body is not valid JSON: {exc}") from None

    # -- inference (registered first: routes are tried in order, and this is the hot path)
    @app.post("/v2/models/{name}/infer", openapi_extra=INFER_BODY)
    @app.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY)
    async def infer(name: str, request: Request, version: str | None = None):
        """v2 infer: a JSON body, or JSON + binary tensors (the binary data extension)."""
        served = resolve(request, name, version)
        body, binary = parse_infer_request(await request.body(),
                                           request.headers.get(BINARY_HEADER))
        config = served.model.config
        rows = decode_inputs(body, config.inputs, binary)[config.inputs[0].name]
        probs = await predict(served, rows, deadline_s(request))
        content, headers = encode_response(
            name, served.version, body.id,
            {config.outputs[0].name: np.asarray(probs, np.float32)}, wants_binary_output(body))
        return Response(content, headers={**headers, VERSION_HEADER: served.version})

    # -- health and metadata ------------------------------------------------------------
    @app.get("/v2")
    async def server_metadata():
        return {"name": "realtime-ml-serving", "version": __version__,
                "extensions": ["binary_tensor_data", "model_repository", "jobs", "predict"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if registry.is_ready():
            return {"ready": True}
        reason = "no model is loaded" if not registry.names() else "models are loading"
        return JSONResponse({"ready": False, "reason": reason}, 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        versions = registry.versions(name)
        served = registry.get(name, version)
        config = served.model.config
        return {"name": name, "versions": sorted(versions, key=int), "platform": config.platform,
                "inputs": [vars(t) for t in config.inputs],
                "outputs": [vars(t) for t in config.outputs]}

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        registry.versions(name)  # 404 for an unknown model
        try:
            served = registry.get(name, version)
        except NotReadyError as exc:
            return JSONResponse({"name": name, "ready": False, "error": str(exc)}, 503)
        return {"name": name, "version": served.version, "ready": True}

    @app.post("/predict", openapi_extra=FEATURES_BODY)
    async def predict_one(request: Request, model: str | None = None):
        body = await json_body(request)
        features = body.get("features") if isinstance(body, dict) else None
        if not isinstance(features, dict):
            raise ProtocolError('send {"features": {feature: value, ...}}', 422)
        served = resolve(request, model or settings.default_model, None)
        rows = checked_rows([features])
        probs = await predict(served, rows, deadline_s(request))
        return plain(served, defect_probability=float(probs[0]))

    @app.post("/predict/batch", openapi_extra=RECORDS_BODY)
    async def predict_batch(request: Request, model: str | None = None):
        records = records_of(await json_body(request))
        served = resolve(request, model or settings.default_model, None)
        probs = await predict(served, checked_rows(records), deadline_s(request))
        return plain(served, predictions=[float(p) for p in probs])

    @app.post("/predict/stream", openapi_extra=RECORDS_BODY)
    async def predict_stream(request: Request, model: str | None = None, chunk: int = 64):
        """NDJSON: one line per record, in order, sent as each chunk completes."""
        records = records_of(await json_body(request))
        if not 1 <= chunk <= settings.max_records:
            raise ProtocolError(f"chunk must be within 1..{settings.max_records}, got {chunk}")
        served = resolve(request, model or settings.default_model, None)
        rows, timeout_s = checked_rows(records), deadline_s(request)

        async def lines():
            # A few chunks in flight let the batcher group them; lines leave in order.
            in_flight: deque[tuple[int, asyncio.Task]] = deque()
            try:
                for start in range(0, len(rows), chunk):
                    task = asyncio.ensure_future(
                        predict(served, rows[start:start + chunk], timeout_s))
                    in_flight.append((start, task))
                    if len(in_flight) >= 4:
                        yield await ndjson(*in_flight.popleft())
                while in_flight:
                    yield await ndjson(*in_flight.popleft())
            except (ProtocolError, QueueFullError, DeadlineExceededError, BatcherClosedError,
                    ModelFailedError) as exc:
                # The 200 and earlier lines are already sent: say what broke, then stop.
                yield json.dumps({"error": str(exc)}) + "\n"
            finally:
                for _, task in in_flight:  # the client went away, or an error: stop the rest
                    task.cancel()

        async def ndjson(start: int, task: asyncio.Task) -> str:
            probs = await task
            return "".join(json.dumps({"index": start + k, "defect_probability": float(p)})
                           + "\n" for k, p in enumerate(probs))

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={VERSION_HEADER: served.version})

    # -- async jobs ---------------------------------------------------------------------
    @app.post("/jobs", status_code=202, openapi_extra=RECORDS_BODY)
    async def submit_job(request: Request, model: str | None = None):
        # no max_records: jobs exist for big requests (the body limit still applies)
        records = records_of(await json_body(request), limited=False)
        served = resolve(request, model or settings.default_model, None)
        rows = checked_rows(records)

        async def run(job):
            out = []
            for start in range(0, len(rows), 256):
                probs = await predict(served, rows[start:start + 256], settings.timeout_ms / 1000)
                out.extend(float(p) for p in probs)
                job.done = len(out)
            return {"model": served.name, "version": served.version, "predictions": out}

        job = jobs.submit(len(rows), run)
        return {**job.status(), "status_url": f"/jobs/{job.id}",
                "result_url": f"/jobs/{job.id}/result"}

    @app.get("/jobs/{job_id}")
    async def job_status(job_id: str):
        return jobs.get(job_id).status()

    @app.get("/jobs/{job_id}/result")
    async def job_result(job_id: str):
        job = jobs.get(job_id)
        if job.state.value != "SUCCEEDED":
            return JSONResponse({"error": f"job is {job.state.value}", **job.status()}, 409)
        return job.result

    @app.delete("/jobs/{job_id}")
    async def cancel_job(job_id: str):
        return jobs.cancel(job_id).status()

    # -- repository extension -----------------------------------------------------------
    @app.post("/v2/repository/index")
    async def repository_index():
        return registry.index()

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str):
        loaded = await registry.load(name)
        failed = [f"v{s.version}: {s.reason}" for s in loaded if s.reason]
        if failed:
            return JSONResponse({"error": f"{name} failed to load: {failed}"}, 500)
        return {"name": name, "versions": [s.version for s in loaded]}

    @app.post("/v2/repository/models/{name}/unload")
    async def unload(name: str):
        await registry.unload(name)
        return {"name": name, "unloaded": True}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app


def _live_values(registry: ModelRegistry, cache: Any):
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


# -- python -m helpers.server ----------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    import torch
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m helpers.server",
        description="Serve the model repository over the Open Inference Protocol. Every "
                    "setting also reads SERVE_<NAME> (e.g. SERVE_MAX_QUEUE=64).")
    parser.add_argument("--host", default=os.environ.get("SERVE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SERVE_PORT", "8000")))
    parser.add_argument("--shutdown-grace-s", type=float, default=30.0,
                        help="on SIGTERM, how long in-flight requests may take to finish")
    for f in fields(ServerSettings):
        parser.add_argument(f"--{f.name.replace('_', '-')}", default=None,
                            help=f"default {f.default!r}" if f.default is not None
                            and not callable(f.default) else None)
    args = parser.parse_args(argv)
    overrides = {f.name: _parse_setting(f.name, getattr(args, f.name))
                 for f in fields(ServerSettings) if getattr(args, f.name) is not None}
    settings = ServerSettings.from_env(**overrides)
    # Process-wide, so only here: a server run in a notebook's thread leaves the
    # notebook's torch settings alone.
    torch.set_num_threads(settings.intra_op_threads())
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=args.shutdown_grace_s)


if __name__ == "__main__":
    main()
