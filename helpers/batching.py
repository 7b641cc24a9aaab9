"""Dynamic batching: group concurrent requests into one model call.

Two layers, as in TGI's router and Triton's dynamic batcher:

- ``BatchPolicy`` is the *decision*: given how many requests wait and how long the
  oldest has waited, how many to send now (0 means keep waiting). It is pure — no
  event loop, no clock, no model — so every rule is testable in one line.
- ``DynamicBatcher`` is the *plumbing*: an asyncio front door with a bounded
  queue, deadlines and a worker pool that runs the model off the event loop, so
  the loop keeps accepting requests while a batch computes.

Batching only helps while the model is busy: requests that arrive during a
computation queue up and leave together as the next batch. The batcher therefore
asks the policy only when a worker is free (Triton does the same: "when a model
instance becomes available").

Requests that must not share a batch (different sequence-length buckets, see
``helpers.bucketing``) wait in separate groups, one queue each, that share the
same workers: the model still runs one batch per worker at a time, and a free
worker takes the ready group whose oldest request has waited longest.

A request may carry several rows (a wafer lot, a batch of notes): ``size_of(item)``
says how many, and the policy then counts rows, not requests, so a batch never
holds more rows than ``max_batch_size`` and no single request may hold more.

Every request gets an answer: its result; ``QueueFullError`` at once when the
queue is full (a server turns it into 503 + Retry-After); ``DeadlineExceededError``
when its deadline passed before its batch ran (504; it is never computed);
``BatcherClosedError`` after ``close()`` began (503); ``ItemTooLargeError`` for a
request bigger than a batch (400); or the exception the model raised for *its*
batch (500) — other batches are unaffected. If the scheduler itself fails (a
policy that raises), every waiting request gets ``BatcherFailedError`` (500) and
so does every later one: nothing waits for a scheduler that is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .metrics import LatencyRecorder

__all__ = [
    "BatchPolicy",
    "BatcherStats",
    "DynamicBatcher",
    "QueueFullError",
    "DeadlineExceededError",
    "BatcherClosedError",
    "BatcherFailedError",
    "ItemTooLargeError",
]


class QueueFullError(RuntimeError):
    """The batcher's queue is full: shed load now rather than queue without bound."""

    def __init__(self, max_queue: int, retry_after_s: float) -> None:
        super().__init__(f"queue full ({max_queue} requests waiting); retry after "
                         f"{retry_after_s:.2f} s")
        self.retry_after_s = retry_after_s


class DeadlineExceededError(TimeoutError):
    """The request's deadline passed before its batch ran; it was not computed."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new requests."""


class BatcherFailedError(RuntimeError):
    """The batcher's scheduler died; it cannot run this (or any later) request."""


class ItemTooLargeError(ValueError):
    """One request holds more rows than a whole batch may."""


@dataclass(frozen=True)
class BatchPolicy:
    """When to cut a batch: ``decide(queued, oldest_wait_s) -> how many to send now``.

    The rules, in order (Triton's dynamic batcher):

    1. a full batch (``max_batch_size``) is waiting: send it;
    2. a preferred size can be formed: send the largest one that can;
    3. the oldest request has waited ``max_wait_s``: send everything waiting;
    4. otherwise wait (0).
    """

    # Past the size where the model's throughput stops growing, a bigger batch only
    # adds latency; 32 suits the course's CPU models, tune it per model.
    max_batch_size: int = 32
    # How long the oldest request may wait for company. A few ms is a small share of
    # a 50 ms SLO and lets a burst fill a batch; 0 never waits.
    max_wait_s: float = 0.005
    # Sizes the model runs best at (e.g. powers of two on a GPU); sent without waiting.
    preferred_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int) \
                or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")
        if not (self.max_wait_s >= 0 and self.max_wait_s < float("inf")):
            raise ValueError(f"max_wait_s must be a finite number >= 0, got {self.max_wait_s!r}")
        bad = [s for s in self.preferred_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_sizes {bad} are outside 1..max_batch_size "
                             f"({self.max_batch_size})")
        object.__setattr__(self, "preferred_sizes", tuple(sorted(set(self.preferred_sizes))))

    def decide(self, queued: int, oldest_wait_s: float) -> int:
        """How many of the ``queued`` requests to send now (0: keep waiting)."""
        if queued <= 0:
            return 0
        if queued >= self.max_batch_size:
            return self.max_batch_size
        formable = [s for s in self.preferred_sizes if s <= queued]
        if formable:
            return formable[-1]
        if oldest_wait_s >= self.max_wait_s:
            return queued
        return 0

    def wait_budget_s(self, oldest_wait_s: float) -> float:
        """How much longer the oldest request may wait before rule 3 fires."""
        return max(0.0, self.max_wait_s - oldest_wait_s)


@dataclass
class BatcherStats:
    """What a batcher did: the numbers a dashboard (or a lesson) reads."""

    batch_sizes: Counter = field(default_factory=Counter)  # size -> number of batches
    queue_time: LatencyRecorder = field(default_factory=LatencyRecorder)
    compute_time: LatencyRecorder = field(default_factory=LatencyRecorder)
    completed: int = 0
    rejected: int = 0   # queue full
    expired: int = 0    # deadline passed before the batch ran
    cancelled: int = 0  # caller gave up before the batch ran (never computed)
    failed: int = 0     # requests in batches whose model call raised

    @property
    def batches(self) -> int:
        return sum(self.batch_sizes.values())

    @property
    def mean_batch_size(self) -> float:
        return sum(s * n for s, n in self.batch_sizes.items()) / max(1, self.batches)


@dataclass(eq=False)  # compared and hashed by identity: it sits in sets
class _Pending:
    item: Any
    future: asyncio.Future
    enqueued: float
    deadline: float | None
    size: int = 1          # rows
    started: bool = False  # its batch is computing: too late to withdraw it


class DynamicBatcher:
    """Batches concurrent ``submit(item)`` calls into ``predict_batch(items)`` calls.

    ``predict_batch`` takes a list of items and returns one result per item, in
    order. It runs in a worker thread (``workers`` of them), never on the event
    loop. Use it as ``async with DynamicBatcher(fn, policy) as batcher: ...``.

    ``group_of(item)``, if given, names the group an item belongs to; a batch only
    ever holds items of one group, and the policy decides per group.
    ``size_of(item)``, if given, is how many rows an item holds (default 1): the
    policy's ``queued`` and its answer are then rows.
    """

    def __init__(
        self,
        predict_batch: Callable[[list[Any]], Sequence[Any]],
        policy: BatchPolicy | None = None,
        *,
        max_queue: int = 1024,
        workers: int = 1,
        default_timeout_s: float | None = None,
        group_of: Callable[[Any], Hashable] | None = None,
        size_of: Callable[[Any], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queue < 1 or workers < 1:
            raise ValueError(f"max_queue and workers must be >= 1, got {max_queue}, {workers}")
        self.predict_batch = predict_batch
        self.policy = policy or BatchPolicy()
        self.max_queue = max_queue
        self.default_timeout_s = default_timeout_s
        self.group_of = group_of
        self.size_of = size_of
        self.stats = BatcherStats()
        self._clock = clock
        self._workers = workers
        # group -> its waiting requests, oldest first; a group with none is removed
        self._queues: dict[Hashable, deque[_Pending]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._scheduler: asyncio.Task | None = None
        self._arrived: asyncio.Event | None = None
        self._free_workers: asyncio.Semaphore | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._closing = False
        self._failure: BaseException | None = None  # why the scheduler died, if it did
        self._computing: set[_Pending] = set()  # requests whose batch is running now

    # -- lifetime --------------------------------------------------------------------
    async def start(self) -> DynamicBatcher:
        if self._scheduler is not None:
            raise RuntimeError("batcher already started")
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="batch-worker")
        self._arrived = asyncio.Event()
        self._free_workers = asyncio.Semaphore(self._workers)
        self._scheduler = asyncio.create_task(self._schedule(), name="batch-scheduler")
        return self

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop taking requests, finish every admitted one, then stop the workers.

        With ``timeout_s``, draining stops after that long: what is still waiting
        gets ``BatcherClosedError`` (503), and the callers of batches still computing
        are answered the same way rather than held past the grace period.
        """
        if self._scheduler is None or self._closing:
            return
        self._closing = True
        self._arrived.set()  # wake the scheduler: it drains without waiting for company

        async def drain() -> None:
            # asyncio.wait, not gather: when the grace runs out, cancelling this waiter
            # must not cancel the batches it waits for (abort answers their callers).
            await asyncio.wait([self._scheduler])
            while self._in_flight:
                await asyncio.wait(list(self._in_flight))

        try:
            await asyncio.wait_for(drain(), timeout_s)
        except TimeoutError:
            self.abort(BatcherClosedError(
                f"the server shut down: {timeout_s:g} s of grace ran out before this ran"))
            return
        self._executor.shutdown(wait=True)

    def abort(self, error: Exception) -> None:
        """Stop now: every waiting *and* computing request is answered with ``error``.

        A batch already in a worker thread cannot be interrupted; it finishes in the
        background and its results are dropped.
        """
        if self._scheduler is None:
            return
        self._closing = True
        self._scheduler.cancel()
        self._fail_everything(error)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> DynamicBatcher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch whose callers still want an answer."""
        return sum(1 for queue in self._queues.values() for p in queue if not p.future.done())

    @property
    def failure(self) -> BaseException | None:
        """Why the scheduler died (None while it runs)."""
        return self._failure

    # -- the front door --------------------------------------------------------------
    async def submit(self, item: Any, timeout_s: float | None = None) -> Any:
        """Queue ``item`` and wait for its result (see the module docstring for errors)."""
        if self._scheduler is None:
            raise RuntimeError("start the batcher first (async with DynamicBatcher(...))")
        if self._failure is not None:
            raise BatcherFailedError(f"the batch scheduler stopped: {self._failure!r}")
        if self._closing:
            raise BatcherClosedError("the batcher is shutting down")
        size = self._size(item)
        if size > self.policy.max_batch_size:
            raise ItemTooLargeError(f"a request of {size} rows is larger than a whole batch "
                                    f"(max_batch_size {self.policy.max_batch_size})")
        if self._queued >= self.max_queue:  # one bound over all groups
            self._drop_finished()  # count live requests only: expired and abandoned ones go
            if self._queued >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFullError(self.max_queue, self._retry_after_s())
        timeout_s = self.default_timeout_s if timeout_s is None else timeout_s
        now = self._clock()
        pending = _Pending(item, asyncio.get_running_loop().create_future(), now,
                           None if timeout_s is None else now + timeout_s, size)
        group = None if self.group_of is None else self.group_of(item)
        self._queues.setdefault(group, deque()).append(pending)
        self._arrived.set()
        try:
            # shield: our timer or our caller's cancellation must not cancel the
            # shared future from under a batch that is already computing it.
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout_s)
        except DeadlineExceededError:  # the scheduler found it expired (and counted it)
            raise
        except TimeoutError:
            if pending.future.done():  # answered in the same instant: that answer stands
                return pending.future.result()  # (or its error, counted where it was set)
            if pending.started:  # computing now: the answer is moments away
                return await pending.future
            pending.future.cancel()  # the scheduler drops it, it is never computed
            self.stats.expired += 1
            raise DeadlineExceededError(
                f"deadline of {timeout_s:.3f} s passed in the queue; not computed") from None
        except asyncio.CancelledError:
            if not pending.started and not pending.future.done():
                pending.future.cancel()
                self.stats.cancelled += 1
            raise

    def _size(self, item: Any) -> int:
        return 1 if self.size_of is None else int(self.size_of(item))

    @property
    def _queued(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def _retry_after_s(self) -> float:
        """A hint for clients: about the time to work through one full queue."""
        per_batch = self.stats.compute_time.mean_s if self.stats.compute_time.count else 0.01
        batches = self.max_queue / max(1.0, self.stats.mean_batch_size) / self._workers
        return max(0.1, per_batch * batches)

    # -- the scheduler ---------------------------------------------------------------
    async def _schedule(self) -> None:
        """Cut batches while the batcher lives; if this loop dies, nobody is left waiting."""
        try:
            while True:
                await self._free_workers.acquire()  # only cut a batch a worker can run now
                batch = await self._next_batch()
                if batch is None:  # closing and nothing left
                    self._free_workers.release()
                    return
                task = asyncio.create_task(self._run(batch))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug (a policy that raises): fail loudly, not silently
            self._failure = exc
            # Batches already computing finish normally; the waiting ones have nobody
            # left to run them.
            self._fail_everything(BatcherFailedError(f"the batch scheduler stopped: {exc!r}"),
                                  computing=False)

    def _fail_everything(self, error: Exception, computing: bool = True) -> None:
        """Answer every waiting request (and, if ``computing``, every running one) with
        ``error``."""
        doomed = [p for queue in self._queues.values() for p in queue]
        self._queues.clear()
        if computing:
            doomed += list(self._computing)
        for p in doomed:
            if not p.future.done():
                p.future.set_exception(error)

    async def _next_batch(self) -> list[_Pending] | None:
        while True:
            self._drop_finished()
            if not self._queues:
                if self._closing:
                    return None
                self._arrived.clear()
                await self._arrived.wait()
                continue
            now, ready, wait_s = self._clock(), [], float("inf")
            limit = self.policy.max_batch_size
            for group, queue in self._queues.items():
                oldest_wait = now - queue[0].enqueued
                queued = sum(p.size for p in queue)
                # Clamp what the policy says: a policy (a student's, say) that asks for
                # more than is queued, or a negative number, must not break the loop.
                take = max(0, min(int(self.policy.decide(queued, oldest_wait)), queued, limit))
                if self._closing:  # draining: nobody else is coming
                    take = min(queued, limit)
                if take:
                    ready.append((queue[0].enqueued, group, take))
                else:
                    wait_s = min(wait_s, max(0.0, self.policy.wait_budget_s(oldest_wait)))
            if ready:  # the group whose oldest request has waited longest goes first
                _, group, take = min(ready, key=lambda r: r[0])
                queue = self._queues[group]
                batch = [queue.popleft()]
                rows = batch[0].size  # the oldest always goes (admission kept it <= a batch)
                while queue and rows + queue[0].size <= take:
                    rows += queue[0].size
                    batch.append(queue.popleft())
                if not queue:
                    del self._queues[group]
                return batch
            self._arrived.clear()
            try:  # wait for company, at most until some oldest request's wait runs out
                await asyncio.wait_for(self._arrived.wait(), wait_s)
            except TimeoutError:
                pass

    def _drop_finished(self) -> None:
        """Apply ``_keep_live`` to every group's queue and forget the groups left empty."""
        for group in list(self._queues):
            live = self._keep_live(self._queues[group])
            if live:
                self._queues[group] = deque(live)
            else:
                del self._queues[group]

    def _keep_live(self, pendings) -> list[_Pending]:
        """Drop requests whose caller left; fail those whose deadline just passed."""
        now = self._clock()
        live = []
        for p in pendings:
            if p.future.done():  # cancelled by its caller or by its own timer
                continue
            if p.deadline is not None and now >= p.deadline:
                self.stats.expired += 1
                p.future.set_exception(DeadlineExceededError(
                    f"deadline passed after {now - p.enqueued:.3f} s in the queue; not computed"))
            else:
                live.append(p)
        return live

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            # Last look before computing: a caller may have left, a deadline may have passed.
            batch = self._keep_live(batch)
            if not batch:
                return
            start = self._clock()
            for p in batch:
                p.started = True
                self.stats.queue_time.record(start - p.enqueued)
            self._computing.update(batch)
            loop = asyncio.get_running_loop()
            items = [p.item for p in batch]
            try:
                results = await loop.run_in_executor(self._executor, self.predict_batch, items)
                if len(results) != len(batch):
                    raise RuntimeError(f"predict_batch returned {len(results)} results for "
                                       f"{len(batch)} items")
            except Exception as exc:  # the model failed: fail this batch only
                self.stats.failed += len(batch)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
            finally:
                self.stats.compute_time.record(max(0.0, self._clock() - start))
                self.stats.batch_sizes[sum(p.size for p in batch)] += 1
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():  # the caller may have cancelled meanwhile
                    p.future.set_result(result)
                    self.stats.completed += 1
        finally:
            self._computing.difference_update(batch)
            self._free_workers.release()
