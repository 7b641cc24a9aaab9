"""Starts the autograde round trip (``round_trip.py``) in the background as soon as tests
that read it are collected, so that its kernels run beside the grading corpus's."""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from round_trip import LESSONS, RELEASE_LESSON, autograde_round_trip, pipeline

ROUND_TRIP = "autograded_course"  # the fixture that waits for it
_started = pytest.StashKey[tuple[Future, Path]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    # Not for a listing, and not in an xdist worker: the fixture then runs it when needed.
    if config.option.collectonly or hasattr(config, "workerinput"):
        return
    if any(ROUND_TRIP in getattr(item, "fixturenames", ()) for item in session.items):
        workdir = Path(tempfile.mkdtemp(prefix="course-autograde-"))
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autograde")
        config.stash[_started] = (pool.submit(autograde_round_trip, workdir / "course"), workdir)
        pool.shutdown(wait=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    started = session.config.stash.get(_started, None)
    if started is None:
        return
    future, workdir = started
    if not future.done() and not future.cancel():
        # Still running: the session stopped early (-x, Ctrl-C). Stop nbgrader and its
        # kernels, then wait for the thread, which ends with them.
        pipeline.stop_all()
        future.exception()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def autograded_course(request, tmp_path_factory) -> Path:
    """The course copy the round trip graded (waits for the background run to finish)."""
    started = request.config.stash.get(_started, None)
    if started is None:
        course = tmp_path_factory.mktemp("round-trip") / "course"
        seconds = autograde_round_trip(course)
    else:
        future, workdir = started
        seconds, course = future.result(), workdir / "course"
    print(f"autograde round trip: {len(LESSONS)} sources and the release of "
          f"{RELEASE_LESSON} in {seconds:.0f} s")
    return course
