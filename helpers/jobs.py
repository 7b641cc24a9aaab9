"""Async jobs: submit a long request, get an id, poll it, fetch the result, or cancel it.

For work too long to hold an HTTP connection open (scoring a whole lot, a day's
records): the server answers ``202 Accepted`` with a job id at once, runs the job
in the background through the same batcher as online traffic, and keeps the
result until it is fetched or pushed out by newer jobs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["JobState", "Job", "JobManager", "JobsFullError"]


class JobState(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobsFullError(RuntimeError):
    """Every job slot holds an unfinished job; try again later (503)."""


@dataclass
class Job:
    id: str
    total: int  # units of work (rows), for progress
    state: JobState = JobState.QUEUED
    done: int = 0
    created: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: Any = None
    error: str = ""
    task: asyncio.Task | None = field(default=None, repr=False)

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state.value, "done": self.done,
                "total": self.total, "progress": self.done / self.total if self.total else 1.0,
                "created": self.created, "finished": self.finished_at, "error": self.error}


class JobManager:
    """Holds at most ``max_jobs`` jobs; the oldest *finished* ones make room for new ones."""

    def __init__(self, max_jobs: int = 256) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def submit(self, total: int, run: Callable[[Job], Awaitable[Any]]) -> Job:
        """Start ``run(job)`` in the background; it may update ``job.done`` as it goes."""
        self._make_room()
        job = Job(uuid.uuid4().hex, total)
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, run), name=f"job-{job.id}")
        return job

    def _make_room(self) -> None:
        while len(self._jobs) >= self.max_jobs:
            oldest_finished = next((j for j in self._jobs.values() if j.state.finished), None)
            if oldest_finished is None:
                raise JobsFullError(f"{self.max_jobs} jobs are still running or queued")
            del self._jobs[oldest_finished.id]

    async def _run(self, job: Job, run: Callable[[Job], Awaitable[Any]]) -> None:
        job.state = JobState.RUNNING
        try:
            job.result = await run(job)
            job.state = JobState.SUCCEEDED
        except asyncio.CancelledError:
            job.state = JobState.CANCELLED
        except Exception as exc:  # the job fails, the server does not
            job.state, job.error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = time.time()

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"no job {job_id!r} (unknown, or expired to make room)") from None

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if not job.state.finished and job.task is not None:
            job.task.cancel()
        return job

    async def wait(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.task is not None:
            await asyncio.gather(job.task, return_exceptions=True)
        return job

    async def close(self) -> None:
        """Let every admitted job finish (a shutdown drains, it does not drop)."""
        tasks = [j.task for j in self._jobs.values() if j.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
