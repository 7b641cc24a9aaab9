"""The models a server is serving: which versions are loaded, their state, their batchers.

A served version moves through LOADING -> READY -> UNLOADING -> gone; a version
whose load failed is UNAVAILABLE with the reason. Loading reads the weights and
runs a warm-up batch off the event loop, so the server keeps answering health
checks while a model loads.

Loads and unloads of one model name are serialised by a lock per name, and a
second ``load`` of a model that is loading joins the first instead of starting
another: whatever order requests arrive in, each version has one state and at
most one batcher.

Readiness (``readiness()``) is the server's: true once the start-up loads have been
tried and at least one version serves. A version that failed to load is reported
per model (``/v2/models/{m}/ready``, the repository index) and does not make the
whole server unready: a load balancer would otherwise pull a pod that serves
every other model fine.

Each version gets its own ``DynamicBatcher``. A request's rows travel as one
item whose size is its row count; the batch function stacks the items of a batch
into one array, calls the model once, and hands each caller its own rows back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .batching import BatchPolicy, DynamicBatcher
from .bucketing import BucketedBatcher
from .metrics import ServingMetrics
from .models import ModelNotFoundError, list_models, list_versions, load_model
from .repository import ModelFormatError

__all__ = ["State", "ServedVersion", "ModelRegistry", "NotReadyError"]

log = logging.getLogger("helpers.server")
# Warm-up builds one row of the model's input: a config may not make that absurd.
MAX_WARMUP_VALUES = 1 << 24


class State(str, Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


class NotReadyError(RuntimeError):
    """The model exists but cannot serve right now (loading, unloading, failed)."""


@dataclass
class Work:
    """One request's rows, as the batcher carries them."""

    rows: np.ndarray  # (n, ...): what the model's predict takes, one entry per row
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        """Rows: what the batch policy counts."""
        return len(self.rows)

    @property
    def length(self) -> int:
        """Longest row, for models whose rows are sequences (token ids)."""
        return max((len(r) for r in self.rows), default=0)


@dataclass
class ServedVersion:
    name: str
    version: str
    state: State
    model: Any = None  # anything with .config and .predict((B, ...)) -> (B, ...)
    batcher: DynamicBatcher | None = None
    reason: str = ""


class ModelRegistry:
    def __init__(self, repository: Path | None, policy: BatchPolicy, *, max_queue: int,
                 workers: int, metrics: ServingMetrics, device: str | None = None,
                 buckets: tuple[int, ...] = (), trusted_types: tuple[str, ...] = (),
                 drain_timeout_s: float = 25.0, fault_delay_s: float = 0.0) -> None:
        self.repository = repository
        self.policy = policy
        self.buckets = buckets  # length bucket bounds for sequence models; () = no bucketing
        self.max_queue = max_queue
        self.workers = workers
        self.metrics = metrics
        self.device = device
        self.trusted_types = trusted_types  # extra skops types the operator trusts
        self.drain_timeout_s = drain_timeout_s  # how long an unload waits for admitted work
        # Fault injection for experiments (lesson 06's slow replica): every row of a batch
        # takes this much longer, asleep in the model's worker, as on a slower or busier host.
        self.fault_delay_s = fault_delay_s
        self._versions: dict[str, dict[str, ServedVersion]] = {}
        self._locks: dict[str, asyncio.Lock] = {}      # one per model name
        self._loading: dict[str, asyncio.Task] = {}    # name -> the load in progress
        self.started = False  # the start-up loads have been tried (set by the server)

    # -- reading ---------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> dict[str, ServedVersion]:
        if name not in self._versions:
            raise ModelNotFoundError(f"model {name!r} is not loaded; loaded: {self.names()}")
        return self._versions[name]

    def ready_versions(self, name: str) -> list[str]:
        return sorted((v for v, s in self.versions(name).items() if s.state is State.READY),
                      key=int)

    def get(self, name: str, version: str | None = None) -> ServedVersion:
        """The version to serve: ``version``, or the newest ready one."""
        versions = self.versions(name)
        if version is None:
            ready = self.ready_versions(name)
            if not ready:
                failed = [f"v{s.version} {s.reason}" for s in versions.values() if s.reason]
                raise NotReadyError(f"model {name!r} has no ready version"
                                    + (f": {'; '.join(failed)}" if failed else " yet"))
            version = ready[-1]
        served = versions.get(str(version))
        if served is None:
            raise ModelNotFoundError(f"model {name!r} has no version {version}; loaded "
                                     f"versions: {sorted(versions, key=int)}")
        if served.state is not State.READY:
            raise NotReadyError(f"{name} version {version} is {served.state.value}"
                                f"{': ' + served.reason if served.reason else ''}")
        return served

    def readiness(self) -> tuple[bool, str]:
        """``(ready, why not)``: start-up loads tried and at least one version serving."""
        if not self.started:
            return False, "models are loading"
        if not any(s.state is State.READY for versions in self._versions.values()
                   for s in versions.values()):
            return False, "no model version is ready"
        return True, ""

    def is_ready(self) -> bool:
        return self.readiness()[0]

    def failed(self) -> list[ServedVersion]:
        """Versions whose load failed, with the reason (reported, not fatal)."""
        return [s for versions in self._versions.values() for s in versions.values()
                if s.state is State.UNAVAILABLE]

    def batchers(self) -> list[DynamicBatcher]:
        return [s.batcher for versions in self._versions.values() for s in versions.values()
                if s.batcher is not None]

    def index(self) -> list[dict[str, str]]:
        """The repository extension's index: every model and version, with its state."""
        rows = []
        names = set(self._versions)
        if self.repository is not None:
            names |= set(list_models(self.repository))
        for name in sorted(names):
            served = self._versions.get(name, {})
            on_disk = [str(v) for v in list_versions(name, self.repository)] \
                if self.repository is not None else []
            for version in sorted(set(on_disk) | set(served), key=int):
                s = served.get(version)
                rows.append({"name": name, "version": version,
                             "state": s.state.value if s else "UNAVAILABLE",
                             "reason": s.reason if s else "not loaded"})
        return rows

    # -- changing --------------------------------------------------------------------
    async def add(self, model: Any) -> ServedVersion:
        """Serve an already-loaded model object (a test double, a student's model)."""
        name, version = model.config.name, str(model.config.version)
        batcher = await self._batcher(name, version, model).start()
        served = ServedVersion(name, version, State.READY, model, batcher)
        self._versions.setdefault(name, {})[version] = served
        return served

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str) -> list[ServedVersion]:
        """Load every version of ``name`` in the repository (several at once for A/B).

        A load of a model that is already loading joins that load.
        """
        if self.repository is None:
            raise ModelNotFoundError("this server has no model repository to load from")
        if not list_versions(name, self.repository):  # also [] for names that are not one folder
            raise ModelNotFoundError(f"no model named {name!r} in the repository; available: "
                                     f"{list_models(self.repository)}")
        task = self._loading.get(name)
        if task is None:
            task = asyncio.ensure_future(self._load_locked(name))
            self._loading[name] = task
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        return await asyncio.shield(task)  # a caller that leaves does not stop the load

    async def _load_locked(self, name: str) -> list[ServedVersion]:
        async with self._lock(name):  # an unload in progress finishes first
            versions = [str(v) for v in list_versions(name, self.repository)]
            table = self._versions.setdefault(name, {})
            for version in versions:
                if version in table and table[version].state is State.READY:
                    continue
                table[version] = ServedVersion(name, version, State.LOADING)
            await asyncio.gather(*(self._load_one(table[v]) for v in versions
                                   if table[v].state is State.LOADING))
            return [table[v] for v in versions]

    async def _load_one(self, served: ServedVersion) -> None:
        try:
            model = await asyncio.to_thread(load_model, served.name, served.version,
                                            self.repository, self.device, self.trusted_types)
            # Warm-up: the first call pays for lazy initialisation; no request should.
            shape = [1 if d == -1 else d for d in model.config.inputs[0].shape]
            if int(np.prod(shape)) > MAX_WARMUP_VALUES:
                raise ModelFormatError(f"its input shape {model.config.inputs[0].shape} is "
                                       f"over {MAX_WARMUP_VALUES:,} values per row")
            warm = np.array(["warm-up"], dtype=object) if model.config.inputs[0].datatype \
                == "BYTES" else np.zeros(shape, np.float32)
            await asyncio.to_thread(model.predict, self.work(model, warm).rows)
        except (ModelFormatError, ModelNotFoundError) as exc:  # messages written for clients
            served.state, served.reason = State.UNAVAILABLE, f"load failed: {exc}"
            return
        except Exception as exc:  # a broken version must not take the server down; its
            # message may hold host paths, so clients see the kind and the log the detail
            log.exception("loading %s v%s failed", served.name, served.version)
            served.state = State.UNAVAILABLE
            served.reason = f"load failed: {type(exc).__name__} (the server log has details)"
            return
        served.model = model
        served.batcher = await self._batcher(served.name, served.version, model).start()
        served.state, served.reason = State.READY, ""

    async def unload(self, name: str) -> None:
        """Stop routing to ``name``, finish what its batchers admitted, then drop it."""
        self.versions(name)  # 404 for a model that is not loaded
        async with self._lock(name):  # a load in progress finishes first
            versions = self._versions.get(name, {})
            for served in versions.values():
                served.state = State.UNLOADING
            await asyncio.gather(*(s.batcher.close(self.drain_timeout_s)
                                   for s in versions.values() if s.batcher))
            self._versions.pop(name, None)

    async def close(self, timeout_s: float | None = None) -> None:
        """Close every batcher: drain for at most ``timeout_s``, then fail what is left."""
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*(b.close(timeout_s) for b in self.batchers()))

    # -- the batch function ------------------------------------------------------------
    @staticmethod
    def work(model: Any, rows: np.ndarray) -> Work:
        """Wrap a request's rows; a model with ``prepare`` (a tokeniser) converts them once."""
        prepare = getattr(model, "prepare", None)
        return Work(prepare(rows) if prepare is not None else rows)

    def _batcher(self, name: str, version: str, model: Any) -> DynamicBatcher:
        labels = {"model": name, "version": version}
        queue_duration = self.metrics.queue_duration.labels(**labels)
        compute_duration = self.metrics.compute_duration.labels(**labels)
        batch_size = self.metrics.batch_size.labels(**labels)

        def predict_batch(items: list[Work]) -> list[np.ndarray]:
            start = time.perf_counter()
            for work in items:
                queue_duration.observe(start - work.submitted)
            rows = np.concatenate([w.rows for w in items])  # (sum n_i, ...), one model call
            if self.fault_delay_s:  # injected slowness: a sleep, so no CPU is taken
                time.sleep(self.fault_delay_s * len(rows))
            probs = np.asarray(model.predict(rows))
            compute_duration.observe(time.perf_counter() - start)
            batch_size.observe(len(rows))
            bounds = np.cumsum([len(w.rows) for w in items])[:-1]
            return np.split(probs, bounds)

        # The policy counts rows: a request's rows are one item of len(rows).
        if self.buckets and hasattr(model, "prepare"):  # sequences: batch similar lengths
            return BucketedBatcher(predict_batch, self.policy, self.buckets,
                                   lambda work: work.length, max_queue=self.max_queue,
                                   workers=self.workers, size_of=lambda work: work.size)
        return DynamicBatcher(predict_batch, self.policy, max_queue=self.max_queue,
                              workers=self.workers, size_of=lambda work: work.size)
