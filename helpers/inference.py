"""The inference engine: everything between "a request for model m" and the model call.

The HTTP layer (``helpers.routes``) parses and answers; this object decides. It owns

- **resolving** a model and version: a pinned version, or the router's / traffic
  split's choice for unversioned requests, else the newest ready version;
- **admission**: a request holds at most ``max_batch_size`` rows (Triton refuses a
  larger batch dimension the same way), and the batcher's queue is bounded;
- **deadlines and cancellation**: each request waits at most its own deadline, and a
  request that is abandoned or expires is never computed;
- the **cache** and **coalescing**: identical concurrent misses share one computation
  that runs under no single caller's deadline, while each caller waits with its own;
- the **batchers** (through the ``ModelRegistry``) and **async jobs**;
- a **shutdown** that drains for at most a grace period, then answers what is left.

No FastAPI in here: the tests drive it with plain asyncio.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from .batching import (
    BatcherClosedError,
    BatcherFailedError,
    DeadlineExceededError,
    ItemTooLargeError,
    QueueFullError,
)
from .cache import cache_key as content_cache_key
from .jobs import Job, JobManager, run_in_chunks
from .protocol import ProtocolError
from .registry import ModelRegistry, ServedVersion
from .routing import TrafficSplit

__all__ = ["InferenceEngine", "ModelFailedError", "parse_timeout_ms"]


# Requests of at least this many rows are tokenised in a worker thread.
OFFLOAD_TOKENISE_ROWS = 2


class ModelFailedError(RuntimeError):
    """The model raised while computing this request's batch (500, this batch only)."""


def parse_timeout_ms(raw: str | None, default_s: float, header: str = "x-timeout-ms") -> float:
    """A request's deadline in seconds from its header (milliseconds), or the default."""
    if raw is None:
        return default_s
    try:
        value = float(raw)
    except ValueError:
        raise ProtocolError(f"{header}: {raw[:40]!r} is not a number of milliseconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise ProtocolError(f"{header} must be a positive number, got {raw[:40]}")
    return value / 1000


class InferenceEngine:
    """Resolve, admit, cache or coalesce, batch; plus jobs and shutdown. See the module doc."""

    def __init__(self, registry: ModelRegistry, *, cache: Any = None,
                 router: Callable[[str, str | None], str] | None = None,
                 splits: dict[str, TrafficSplit] | None = None,
                 default_timeout_s: float = 2.0, jobs: JobManager | None = None,
                 shutdown_grace_s: float = 30.0,
                 cache_key: Callable[[str, str, np.ndarray], str] | None = None) -> None:
        self.registry = registry
        self.cache = cache
        # (model, version, rows) -> key; the version is the resolved one, never "newest"
        self.cache_key = cache_key or content_cache_key
        self.router = router
        self.splits = splits or {}
        self.default_timeout_s = default_timeout_s
        self.jobs = jobs or JobManager()
        self.shutdown_grace_s = shutdown_grace_s
        self._shutdown_deadline: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()

    def start(self) -> None:
        """Call once from the serving event loop (the server's lifespan does)."""
        self._loop = asyncio.get_running_loop()

    # -- resolving and admitting ----------------------------------------------------------
    @property
    def max_rows(self) -> int:
        """The most rows one request may hold: one full batch."""
        return self.registry.policy.max_batch_size

    def resolve(self, name: str, version: str | None = None,
                routing_key: str | None = None) -> ServedVersion:
        """The version that serves this request (raises ModelNotFound / NotReady)."""
        if version is None:
            if self.router is not None:
                version = str(self.router(name, routing_key))
            elif name in self.splits:
                version = self.splits[name].choose(routing_key)
        return self.registry.get(name, version)

    def admit(self, served: ServedVersion, rows: np.ndarray) -> None:
        """Refuse (400) what must not reach a batch: too many rows, none, or rows of another
        shape than the model takes — one such request would fail everyone's batch."""
        if len(rows) > self.max_rows:
            raise ProtocolError(
                f"a batch of {len(rows)} is over {served.name}'s max batch size of "
                f"{self.max_rows}: split it, or use /jobs for bulk work")
        if len(rows) == 0:
            raise ProtocolError("the batch dimension is 0: send at least one row")
        want = served.model.config.inputs[0].shape
        if rows.ndim != len(want) or any(w not in (-1, g)
                                         for w, g in zip(want, rows.shape, strict=True)):
            raise ProtocolError(f"{served.name} takes rows of shape {want} (-1: any), got "
                                f"{list(rows.shape)}")

    # -- online inference ---------------------------------------------------------------
    async def infer(self, served: ServedVersion, rows: np.ndarray,
                    timeout_s: float | None = None) -> np.ndarray:
        """One request's outputs, ``(n, ...)``; waits at most ``timeout_s`` (None: default)."""
        self.admit(served, rows)
        timeout_s = self.default_timeout_s if timeout_s is None else timeout_s
        cache = self.cache
        if cache is None:
            return await self._compute(served, rows, timeout_s)
        key = self.cache_key(served.name, served.version, rows)
        if hasattr(cache, "get_or_compute"):  # coalescing: identical misses compute once
            # The shared computation runs under no caller's deadline (a caller with a
            # short one must not fail the others); each caller waits with its own. The
            # cache cancels the computation if every caller leaves before it runs.
            try:
                return await asyncio.wait_for(
                    cache.get_or_compute(key, lambda: self._compute(served, rows, None)),
                    timeout_s)
            except DeadlineExceededError:
                raise
            except TimeoutError:
                raise DeadlineExceededError(
                    f"deadline of {timeout_s:.3f} s passed waiting for the computation this "
                    "request shares with identical ones") from None
        if hasattr(cache, "alookup"):  # a shared cache (Redis): waits without blocking the loop
            found, value = await cache.alookup(key)
            if found:
                return value
            value = await self._compute(served, rows, timeout_s)
            await cache.aput(key, value)
            return value
        found, value = cache.lookup(key)
        if found:
            return value
        value = await self._compute(served, rows, timeout_s)
        cache.put(key, value)
        return value

    async def _compute(self, served: ServedVersion, rows: np.ndarray,
                       timeout_s: float | None) -> np.ndarray:
        model = served.model
        # Tokenising is CPU work: off the event loop, except for a row or two, where the
        # hop to a thread costs about as much as the work.
        if hasattr(model, "prepare") and len(rows) >= OFFLOAD_TOKENISE_ROWS:
            work = await asyncio.to_thread(self.registry.work, model, rows)
        else:
            work = self.registry.work(model, rows)
        try:
            return await served.batcher.submit(work, timeout_s=timeout_s)
        except (QueueFullError, DeadlineExceededError, BatcherClosedError, BatcherFailedError,
                ItemTooLargeError):
            raise
        except Exception as exc:  # the model raised for this batch
            raise ModelFailedError(f"{served.name} v{served.version} failed: "
                                   f"{type(exc).__name__}: {exc}") from exc

    async def infer_chunks(self, served: ServedVersion, rows: np.ndarray,
                           timeout_s: float | None = None, chunk: int | None = None,
                           in_flight: int = 4) -> AsyncIterator[tuple[int, np.ndarray]]:
        """Many rows as ``(start, outputs)`` chunks, in order, a few in flight at a time.

        For the plain routes' large requests: each chunk is one admitted request, so a
        10,000-record body cannot occupy the model as one giant batch. The deadline is the
        whole request's: each chunk gets what is left of it.
        """
        chunk = min(chunk or self.max_rows, self.max_rows)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.default_timeout_s if timeout_s is None else timeout_s)
        pending: list[tuple[int, asyncio.Future]] = []
        try:
            for start in range(0, len(rows), chunk):
                left = deadline - loop.time()
                if left <= 0:
                    raise DeadlineExceededError(f"the request's deadline passed after "
                                                f"{start} of {len(rows)} rows")
                pending.append((start, asyncio.ensure_future(
                    self.infer(served, rows[start:start + chunk], left))))
                if len(pending) >= in_flight:
                    start0, task = pending.pop(0)
                    yield start0, await task
            while pending:
                start0, task = pending.pop(0)
                yield start0, await task
        finally:  # the client went away, or a chunk failed: stop the rest
            for _, task in pending:
                task.cancel()

    # -- batch work: jobs ---------------------------------------------------------------
    def submit_job(self, served: ServedVersion, rows: np.ndarray,
                   to_result: Callable[[np.ndarray], list[Any]]) -> Job:
        """Score ``rows`` in the background: no online deadline, retried on a full queue,
        partial results kept. ``to_result`` turns one chunk's outputs into result items."""
        self.admit(served, rows[:self.max_rows])  # the rows' shape, before any is queued

        async def compute(start: int, stop: int) -> list[Any]:
            return to_result(await self._compute(served, rows[start:stop], None))

        async def run(job: Job) -> list[Any]:
            return await run_in_chunks(job, len(rows), self.max_rows, compute,
                                       retry_on=(QueueFullError,))

        out_bytes = 8 * int(np.prod(served.model.config.outputs[0].shape[1:] or [1]))
        return self.jobs.submit(len(rows), run, result_bytes=len(rows) * max(out_bytes, 8),
                                info={"model": served.name, "version": served.version})

    # -- shutdown ---------------------------------------------------------------------
    def begin_shutdown(self, grace_s: float | None = None) -> None:
        """Start the grace period (at SIGTERM): after it, whatever is left gets a 503.

        Idempotent; ``close`` calls it too, for servers stopped without a signal.
        """
        if self._shutdown_deadline is not None:
            return
        loop = asyncio.get_running_loop()
        grace_s = self.shutdown_grace_s if grace_s is None else grace_s
        self._shutdown_deadline = loop.time() + grace_s
        loop.call_later(grace_s, self._grace_ran_out)

    def begin_shutdown_threadsafe(self) -> None:
        """``begin_shutdown`` from a signal handler or another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.begin_shutdown)

    def _grace_ran_out(self) -> None:
        self.jobs.cancel_all()
        for batcher in self.registry.batchers():
            batcher.abort(BatcherClosedError("the server shut down: its grace period ran out "
                                             "before this request ran"))

    async def close(self) -> None:
        """Finish admitted work (jobs, then batches) within the grace period, then stop."""
        self.begin_shutdown()
        loop = asyncio.get_running_loop()
        await self.jobs.close(max(0.0, self._shutdown_deadline - loop.time()))
        await self.registry.close(max(0.0, self._shutdown_deadline - loop.time()))
