"""The course's model server: FastAPI over the model repository, speaking the Open
Inference Protocol (KServe v2 REST, as Triton serves it), with dynamic batching, an
optional prediction cache, A/B version splits, async jobs, token generation with
continuous batching over a paged KV cache, and Prometheus metrics.

    python -m helpers.server            # serves data/models on 127.0.0.1:8000
    python -m helpers.server --help     # every setting; each has a SERVE_* variable too

This module is wiring only: ``ServerSettings`` (every knob), ``create_app`` (the engine,
its registry and cache, the guards and the routers) and ``main``. What each part does
lives in its own module: the engine in ``helpers.inference``, the endpoints in
``helpers.routes``, the guards at the HTTP boundary in ``helpers.http_guards``.

Every request gets an answer: 200; 400/404/413/422 naming what is wrong; 503 with
``Retry-After`` when the queue is full or a model is not ready; 504 when the
request's deadline passed before it ran; 500 for the requests of a batch whose
model call failed, and only those. The defaults are the safe production ones: a
bounded queue, a default deadline, a body-size limit, a bounded shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI

from . import __version__
from .batching import BatchPolicy
from .device import default_workers, threads_per_worker
from .generation_service import GenerationServices
from .http_guards import BodySizeLimit, FrontDoor, install_error_handlers
from .inference import InferenceEngine
from .jobs import JobManager
from .metrics import ServingMetrics
from .models import default_repository, list_models
from .registry import ModelRegistry
from .routes import ROUTERS
from .routes.metrics import live_values
from .routes.plain import features_to_rows
from .routing import TrafficSplit

__all__ = ["ServerSettings", "create_app", "features_to_rows", "main"]

log = logging.getLogger("helpers.server")


@dataclass
class ServerSettings:
    """Every knob of the server; each field reads ``SERVE_<NAME>`` in ``from_env``."""

    repository: Path | None = None  # None: data/models
    models: tuple[str, ...] = ()    # empty: every model in the repository
    default_model: str = "wafer-mlp"  # what /predict serves
    max_batch_size: int = 32        # rows per model call, and the most one request may send
    max_wait_ms: float = 2.0        # a small share of the 50 ms SLO
    max_queue: int = 256            # bounded: overload answers 503 instead of queueing forever
    max_in_flight: int = 512        # HTTP requests being handled at once; more get 503 at the door
    workers: int = 0                # model threads per version; 0: 2 on a multi-core CPU, else 1
    torch_threads: int = 0          # intra-op threads per worker; 0: cores // workers
    buckets: tuple[int, ...] = ()   # token-length bucket bounds for text models, e.g. (16, 32, 64)
    timeout_ms: float = 2000.0      # default deadline: nothing waits forever
    max_body_bytes: int = 1 << 20   # 1 MiB: ~4,000 wafer records as JSON (~260 bytes each)
    max_job_body_bytes: int = 64 << 20  # POST /jobs: bulk work, ~250,000 records
    max_records: int = 10_000       # per /predict/batch or /predict/stream request
    cache_entries: int = 0          # 0: no prediction cache
    cache_ttl_s: float = 60.0
    cache_url: str = ""             # redis://host:port/db: one cache shared by every replica
    splits: dict[str, str] = field(default_factory=dict)  # model -> "1:0.9,2:0.1"
    max_jobs: int = 256
    max_job_result_bytes: int = 256 << 20  # results kept for jobs; oldest finished evicted
    shutdown_grace_s: float = 25.0  # on SIGTERM: finish admitted work this long, then 503
    #                                 (under Kubernetes' default 30 s before SIGKILL)
    trusted_types: tuple[str, ...] = ()  # extra Python types skops model files may hold
    device: str | None = None       # None: helpers.device.pick_device()
    fault_delay_ms: float = 0.0     # FAULT INJECTION, for experiments only: each row of every
    #                                 batch sleeps this long in the model worker (a slow host)
    # generation (POST .../generate and generate_stream)
    max_new_tokens: int = 128       # the most tokens one generate request may ask for
    max_running_sequences: int = 8  # sequences decoding together, one token each per step
    max_waiting_sequences: int = 64  # generate requests not yet started; more get 503
    kv_blocks: int = 0              # KV cache blocks of 16 tokens; 0: sized by the device

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

    def model_workers(self) -> int:
        """Model threads per version: ``workers``, or the device's faster default."""
        return self.workers or default_workers(self.device)

    def intra_op_threads(self) -> int:
        """Torch threads per model worker: ``torch_threads``, or the cores shared out."""
        return self.torch_threads or threads_per_worker(self.model_workers())


_INT_SETTINGS = {"max_batch_size", "max_queue", "max_in_flight", "workers", "torch_threads",
                 "max_body_bytes", "max_job_body_bytes", "max_records", "cache_entries",
                 "max_jobs", "max_job_result_bytes", "max_new_tokens",
                 "max_running_sequences", "max_waiting_sequences", "kv_blocks"}


def _parse_setting(name: str, raw: str) -> Any:
    if name == "repository":
        return Path(raw)
    if name in ("models", "trusted_types"):
        return tuple(m.strip() for m in raw.split(",") if m.strip())
    if name == "buckets":
        return tuple(int(b) for b in raw.split(",") if b.strip())
    if name == "splits":  # "wafer-mlp=1:0.9,2:0.1;other=1:1"
        return dict(part.split("=", 1) for part in raw.split(";") if part.strip())
    if name in ("default_model", "device", "cache_url"):
        return raw
    number = float(raw)
    return int(number) if name in _INT_SETTINGS else number


def create_app(settings: ServerSettings | None = None, *, models: list[Any] = (),
               cache: Any = None, router: Callable[[str, str | None], str] | None = None,
               validate: Callable[[list[dict]], np.ndarray] = features_to_rows,
               policy: Any = None,
               cache_key: Callable[[str, str, np.ndarray], str] | None = None) -> FastAPI:
    """Build the server. Plug-in points for lessons and tests:

    - ``models``: extra model objects to serve (``.config`` and ``.predict``);
    - ``cache``: any object with ``lookup(key) -> (found, value)``, ``put(key, value)``
      and ``stats.hits`` / ``stats.misses`` (default: a ``TTLCache`` if
      ``settings.cache_entries`` > 0, else none); one with ``get_or_compute`` (a
      ``CoalescingCache``) also shares a computation between identical misses;
    - ``router``: ``router(model, routing_key) -> version`` for unversioned requests
      (default: the settings' traffic splits, else the newest ready version);
    - ``validate``: plain-JSON records -> ``(n, 8)`` float32 rows (default ``features_to_rows``);
      a ``ValueError`` it raises becomes a 422 with its message;
    - ``policy``: the batch policy of every batcher (anything with ``max_batch_size``,
      ``decide(queued_rows, oldest_wait_s)`` and ``wait_budget_s(oldest_wait_s)``; default a
      ``BatchPolicy`` from the settings);
    - ``cache_key``: ``cache_key(model, version, rows) -> str``, the key the cache stores an
      answer under; the version is the one that served the request, never the one asked for
      (default ``helpers.cache.cache_key``, a SHA-256 over the canonical bytes).
    """
    settings = settings or ServerSettings()
    repository = settings.repository or default_repository()
    metrics = ServingMetrics()
    registry = ModelRegistry(repository if repository.is_dir() else None,
                             policy or settings.batch_policy(), max_queue=settings.max_queue,
                             workers=settings.model_workers(), metrics=metrics,
                             device=settings.device, buckets=settings.buckets,
                             trusted_types=settings.trusted_types,
                             drain_timeout_s=settings.shutdown_grace_s,
                             fault_delay_s=settings.fault_delay_ms / 1000)
    if cache is None and settings.cache_url:
        from .shared_cache import RedisCache
        cache = RedisCache(settings.cache_url, settings.cache_ttl_s)
    elif cache is None and settings.cache_entries > 0:
        from .cache import TTLCache
        cache = TTLCache(settings.cache_entries, settings.cache_ttl_s)
    engine = InferenceEngine(
        registry, cache=cache, router=router,
        splits={name: TrafficSplit.parse(text) for name, text in settings.splits.items()},
        default_timeout_s=settings.timeout_ms / 1000,
        jobs=JobManager(settings.max_jobs, settings.max_job_result_bytes),
        shutdown_grace_s=settings.shutdown_grace_s, cache_key=cache_key)
    generation = GenerationServices(
        max_running=settings.max_running_sequences, max_waiting=settings.max_waiting_sequences,
        max_new_tokens=settings.max_new_tokens, kv_blocks=settings.kv_blocks, metrics=metrics,
        grace_s=settings.shutdown_grace_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        for model in models:
            await registry.add(model)
        names = settings.models or (list_models(repository) if registry.repository else [])
        for name in names:
            await registry.load(name)  # loads and warms every version before "ready"
        generation.start([registry.get(name, version) for name in registry.names()
                          for version in registry.ready_versions(name)])  # pools before traffic
        registry.started = True
        for failed in registry.failed():
            log.error("%s v%s is not served: %s", failed.name, failed.version, failed.reason)
        yield
        # uvicorn has stopped accepting; finish what was admitted, within the grace period.
        await asyncio.gather(engine.close(), generation.close(settings.shutdown_grace_s))
        if hasattr(cache, "aclose"):  # a shared cache's connections
            await cache.aclose()

    app = FastAPI(title="Real-Time ML Serving", version=__version__, lifespan=lifespan)
    app.state.engine, app.state.metrics, app.state.settings = engine, metrics, settings
    app.state.generation = generation
    app.state.validate = validate
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes,
                       limits={"/jobs": settings.max_job_body_bytes})
    app.add_middleware(FrontDoor, max_in_flight=settings.max_in_flight, metrics=metrics)
    metrics.add_collector(lambda: live_values(registry, cache, generation))
    install_error_handlers(app)
    for routes in ROUTERS:
        app.include_router(routes)
    return app


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
    parser.add_argument("--access-log", action="store_true",
                        help="log every request (one line each; off by default: it costs CPU)")
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    log.info("serving %s with %d worker(s) x %d torch thread(s) per version on http://%s:%d",
             settings.repository or default_repository(), settings.model_workers(),
             settings.intra_op_threads(), args.host, args.port)
    app = create_app(settings)

    class Server(uvicorn.Server):
        """uvicorn, whose SIGTERM also starts the engine's grace period: admitted work
        gets ``shutdown_grace_s`` from the signal, then whatever is left gets a 503."""

        def handle_exit(self, sig, frame) -> None:
            app.state.engine.begin_shutdown_threadsafe()
            app.state.generation.begin_shutdown()  # flags only: safe from a signal handler
            log.info("signal %s at %.3f: draining for at most %g s", sig, time.time(),
                     settings.shutdown_grace_s)
            super().handle_exit(sig, frame)

    # uvicorn waits for open connections a little past the grace: by then the engine
    # has answered every request, so nothing is cut off mid-answer.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                            access_log=args.access_log,
                            timeout_graceful_shutdown=settings.shutdown_grace_s + 2)
    Server(config).run()
    # A model call stuck in a worker thread would hold the interpreter's exit forever
    # (worker threads are joined at exit); every request was answered, so leave now.
    stuck = [t.name for t in threading.enumerate() if t.name.startswith("batch-worker")]
    if stuck:
        log.warning("exiting with %d model call(s) still running: %s", len(stuck), stuck)
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
