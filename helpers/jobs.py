"""Async jobs: submit a long request, get an id, poll it, fetch the result, or cancel it.

For work too long to hold an HTTP connection open (scoring a whole lot, a day's
records): the server answers ``202 Accepted`` with a job id at once, runs the job
in the background through the same batchers as online traffic, and keeps the
result until it is fetched or pushed out by newer jobs.

Jobs are *batch* work, so they play by batch rules (``run_in_chunks``): no online
deadline, a full queue means "back off and try again" rather than failure, and
what finished is kept — a job that fails at row 512 of 1,024 still returns its
first 512 predictions, marked incomplete.

What the manager keeps is bounded twice: at most ``max_jobs`` jobs, and at most
``max_result_bytes`` of results (each job reserves its full result's size when it
is submitted). The oldest *finished* jobs make room; when only unfinished ones
remain, a new job is refused (``JobsFullError``, a 503) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["JobState", "Job", "JobManager", "JobsFullError", "JobNotFoundError", "Backoff",
           "run_in_chunks"]


class JobState(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobNotFoundError(KeyError):
    """No job with that id (unknown, or evicted to make room): a 404."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such job"


class JobsFullError(RuntimeError):
    """No room for another job: every slot or result byte is held by unfinished jobs (503)."""


@dataclass
class Job:
    id: str
    total: int  # units of work (rows), for progress
    reserved_bytes: int = 0  # what its full result may take
    state: JobState = JobState.QUEUED
    done: int = 0
    created: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: Any = None  # filled as the job goes: partial results survive a failure
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # what the job ran: model, version
    task: asyncio.Task | None = field(default=None, repr=False)

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state.value, "done": self.done,
                "total": self.total, "progress": self.done / self.total if self.total else 1.0,
                "created": self.created, "finished": self.finished_at, "error": self.error}


class JobManager:
    """Holds at most ``max_jobs`` jobs and ``max_result_bytes`` of their results."""

    def __init__(self, max_jobs: int = 256, max_result_bytes: int = 256 << 20) -> None:
        if max_jobs < 1 or max_result_bytes < 1:
            raise ValueError(f"max_jobs and max_result_bytes must be >= 1, got {max_jobs}, "
                             f"{max_result_bytes}")
        self.max_jobs = max_jobs
        self.max_result_bytes = max_result_bytes
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    @property
    def reserved_bytes(self) -> int:
        return sum(job.reserved_bytes for job in self._jobs.values())

    def submit(self, total: int, run: Callable[[Job], Awaitable[Any]],
               result_bytes: int = 0, info: dict[str, Any] | None = None) -> Job:
        """Start ``run(job)`` in the background; it may update ``job.done`` and
        ``job.result`` as it goes. ``result_bytes``: what the full result will hold."""
        if result_bytes > self.max_result_bytes:
            raise JobsFullError(f"a job whose result takes {result_bytes:,} bytes is over the "
                                f"{self.max_result_bytes:,}-byte limit; split it")
        self._make_room(result_bytes)
        job = Job(uuid.uuid4().hex, total, result_bytes, info=info or {})
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, run), name=f"job-{job.id}")
        # Final states come from the task's end, whatever ended it: a job cancelled
        # before it ever started is CANCELLED too, never QUEUED forever.
        job.task.add_done_callback(lambda task: self._finished(job, task))
        return job

    def _make_room(self, result_bytes: int) -> None:
        while (len(self._jobs) >= self.max_jobs
               or self.reserved_bytes + result_bytes > self.max_result_bytes):
            oldest_finished = next((j for j in self._jobs.values() if j.state.finished), None)
            if oldest_finished is None:
                raise JobsFullError(f"{len(self._jobs)} unfinished jobs hold every slot "
                                    f"({self.max_jobs} jobs, {self.max_result_bytes:,} result "
                                    "bytes); try again later")
            del self._jobs[oldest_finished.id]

    async def _run(self, job: Job, run: Callable[[Job], Awaitable[Any]]) -> None:
        job.state = JobState.RUNNING
        result = await run(job)
        job.result = result if result is not None else job.result

    @staticmethod
    def _finished(job: Job, task: asyncio.Task) -> None:
        if task.cancelled():
            job.state = JobState.CANCELLED
            job.error = job.error or "cancelled"
        elif task.exception() is not None:  # the job fails, the server does not
            exc = task.exception()
            job.state, job.error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
        else:
            job.state = JobState.SUCCEEDED
        job.finished_at = time.time()

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFoundError(f"no job {job_id!r} (unknown, or evicted to make room)") \
                from None

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if not job.state.finished and job.task is not None:
            job.task.cancel()
        return job

    def cancel_all(self) -> None:
        for job in list(self._jobs.values()):
            if not job.state.finished and job.task is not None:
                job.task.cancel()

    async def wait(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.task is not None:
            await asyncio.gather(job.task, return_exceptions=True)
        return job

    async def close(self, timeout_s: float | None = None) -> None:
        """Let every admitted job finish (a shutdown drains, it does not drop) — for at
        most ``timeout_s``; jobs still running then are cancelled, their partial
        results kept."""
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


# -- running a job in chunks --------------------------------------------------------------
@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (AWS's recipe): how long to wait before retry k.

    Pure: ``delay_s(attempt, rng)`` for attempt 0, 1, 2, ... Jitter spreads the retries of
    many jobs so they do not hit a full queue again in lockstep.
    """

    first_s: float = 0.05
    max_s: float = 2.0
    max_attempts: int = 50  # ~ a minute and a half of a full queue before a chunk gives up

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_s, self.first_s * 2 ** attempt))


async def run_in_chunks(job: Job, n_rows: int, chunk: int,
                        compute: Callable[[int, int], Awaitable[list[Any]]],
                        retry_on: tuple[type[BaseException], ...],
                        backoff: Backoff = Backoff(), concurrency: int = 2,
                        seed: int | None = None) -> list[Any]:
    """Run ``compute(start, stop)`` over ``[0, n_rows)`` in chunks, ``concurrency`` at a time.

    ``job.result`` holds the finished prefix as it grows (in order), so a failure keeps
    everything before the failed chunk: after a failure no new chunk starts, the ones
    running finish, then the error is raised. Exceptions in ``retry_on`` (a full queue)
    are retried with ``backoff``; anything else fails the job.
    """
    rng = random.Random(seed)
    job.result = []
    done_chunks: dict[int, list[Any]] = {}
    next_to_publish = 0

    async def one(start: int) -> None:
        nonlocal next_to_publish
        for attempt in range(backoff.max_attempts):
            try:
                done_chunks[start] = await compute(start, min(start + chunk, n_rows))
                break
            except retry_on:
                if attempt + 1 == backoff.max_attempts:
                    raise
                await asyncio.sleep(backoff.delay_s(attempt, rng))
        while next_to_publish in done_chunks:  # publish the finished prefix, in order
            job.result.extend(done_chunks.pop(next_to_publish))
            next_to_publish += chunk
            job.done = len(job.result)

    starts = iter(range(0, n_rows, chunk))
    errors: list[BaseException] = []

    async def worker() -> None:
        for start in starts:  # shared iterator: each chunk taken once
            if errors:  # another chunk failed: take no new ones, let running ones finish
                return
            try:
                await one(start)
            except Exception as exc:
                errors.append(exc)
                return

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if errors:
        raise errors[0]
    return job.result
