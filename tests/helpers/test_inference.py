"""The inference engine without HTTP: resolving, admission, deadlines with coalescing,
CPU work off the event loop, jobs as batch work, and shutdown."""

import asyncio
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers.batching import BatchPolicy, DeadlineExceededError, QueueFullError
from helpers.cache import CoalescingCache
from helpers.inference import InferenceEngine, ModelFailedError
from helpers.jobs import Backoff, JobManager, JobState, run_in_chunks
from helpers.metrics import ServingMetrics
from helpers.protocol import ProtocolError
from helpers.registry import ModelRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving_fixtures import SlowModel  # noqa: E402

ROW = np.ones((1, 8), np.float32)


async def engine_with(model, *, max_batch_size=4, max_queue=64, workers=1, **engine_kwargs):
    registry = ModelRegistry(None, BatchPolicy(max_batch_size, 0), max_queue=max_queue,
                             workers=workers, metrics=ServingMetrics())
    await registry.add(model)
    registry.started = True
    return InferenceEngine(registry, **engine_kwargs)


def test_a_request_over_the_max_batch_size_is_a_400_naming_both_sizes():
    async def scenario():
        engine = await engine_with(SlowModel(delay_s=0), max_batch_size=4)
        served = engine.resolve("slow")
        with pytest.raises(ProtocolError, match="batch of 5 is over slow's max batch size of 4"):
            await engine.infer(served, np.ones((5, 8), np.float32))
        out = await engine.infer(served, np.ones((4, 8), np.float32))
        await engine.close()
        return out

    assert asyncio.run(scenario()).shape == (4,)


def test_coalesced_requests_each_wait_with_their_own_deadline():
    slow = SlowModel(delay_s=0)
    slow.release.clear()  # the first batch holds the only worker

    async def scenario():
        engine = await engine_with(slow, cache=CoalescingCache())
        served = engine.resolve("slow")
        blocker = asyncio.ensure_future(engine.infer(served, ROW * 2, 30))
        await asyncio.sleep(0.05)
        assert served.batcher.queue_depth == 0  # the blocker is computing, the worker busy
        impatient = asyncio.ensure_future(engine.infer(served, ROW, 0.05))
        patient = asyncio.ensure_future(engine.infer(served, ROW, 30))
        outcome = await asyncio.gather(impatient, return_exceptions=True)
        slow.release.set()
        answers = await asyncio.gather(blocker, patient)
        await engine.close()
        return outcome[0], answers

    impatient, (_, patient) = asyncio.run(scenario())
    assert isinstance(impatient, DeadlineExceededError)
    np.testing.assert_array_equal(patient, [1.0])  # the short deadline did not fail it
    assert slow.calls == [1, 1]  # the shared computation ran once


def test_a_shared_computation_nobody_waits_for_is_never_run():
    slow = SlowModel(delay_s=0)
    slow.release.clear()

    async def scenario():
        engine = await engine_with(slow, cache=CoalescingCache())
        served = engine.resolve("slow")
        blocker = asyncio.ensure_future(engine.infer(served, ROW * 2, 30))
        await asyncio.sleep(0.05)
        both = [engine.infer(served, ROW, 0.05), engine.infer(served, ROW, 0.08)]
        outcomes = await asyncio.gather(*both, return_exceptions=True)
        slow.release.set()
        await blocker
        await engine.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, DeadlineExceededError) for o in outcomes)
    assert slow.calls == [1]  # only the blocker: the abandoned computation was dropped


class Tokenising(SlowModel):
    """A model with ``prepare`` (as the embedder has): records the thread it runs on."""

    def __init__(self):
        super().__init__(delay_s=0)
        self.prepared_on: list[str] = []

    def prepare(self, rows):
        self.prepared_on.append(threading.current_thread().name)
        return rows


def test_tokenising_a_request_of_several_rows_runs_off_the_event_loop():
    model = Tokenising()

    async def scenario():
        engine = await engine_with(model)
        loop_thread = threading.current_thread().name
        await engine.infer(engine.resolve("slow"), np.ones((3, 8), np.float32))
        await engine.close()
        return loop_thread

    loop_thread = asyncio.run(scenario())
    assert model.prepared_on and loop_thread not in model.prepared_on


class Exploding(SlowModel):
    def predict(self, x):
        raise KeyError("a bug deep in the model")


def test_any_exception_from_the_model_fails_only_as_a_model_failure():
    async def scenario():
        engine = await engine_with(Exploding(delay_s=0))
        with pytest.raises(ModelFailedError, match="KeyError"):
            await engine.infer(engine.resolve("slow"), ROW)
        await engine.close()

    asyncio.run(scenario())


# -- jobs: batch work -----------------------------------------------------------------------
def test_a_job_ignores_the_online_deadline_and_waits_out_a_full_queue():
    slow = SlowModel(delay_s=0.01)

    async def scenario():
        # A queue of 2 and a 1 ms online deadline: online requests would be refused or
        # expire; the job backs off, retries, and finishes every row.
        engine = await engine_with(slow, max_batch_size=4, max_queue=2, default_timeout_s=0.001)
        job = engine.submit_job(engine.resolve("slow"), np.arange(200 * 8, dtype=np.float32)
                                .reshape(200, 8), lambda out: [float(v) for v in out])
        await engine.jobs.wait(job.id)
        await engine.close()
        return job

    job = asyncio.run(scenario())
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.done == 200 and len(job.result) == 200
    assert job.result[:2] == [3.5, 11.5]  # row means, in order


class FailsAfter(SlowModel):
    def predict(self, x):
        if (x[:, 0] >= 512).any():
            raise ValueError("sensor frame corrupt")
        return super().predict(x)


def test_a_failed_job_keeps_what_it_finished():
    async def scenario():
        engine = await engine_with(FailsAfter(delay_s=0), max_batch_size=32)
        rows = np.repeat(np.arange(1024, dtype=np.float32)[:, None], 8, axis=1)
        job = engine.submit_job(engine.resolve("slow"), rows, lambda out: [float(v) for v in out])
        await engine.jobs.wait(job.id)
        await engine.close()
        return job

    job = asyncio.run(scenario())
    assert job.state is JobState.FAILED and "sensor frame corrupt" in job.error
    assert job.result == [float(i) for i in range(512)] and job.done == 512


def test_run_in_chunks_gives_up_after_its_retries_and_publishes_in_order():
    async def scenario():
        job = JobManager().submit(0, lambda job: asyncio.sleep(0))  # a Job to fill
        calls = []

        async def compute(start, stop):
            calls.append(start)
            if start == 4:
                raise QueueFullError(1, 0.1)
            await asyncio.sleep(0.01 if start == 0 else 0)  # chunk 0 finishes last
            return list(range(start, stop))

        with pytest.raises(QueueFullError):
            await run_in_chunks(job, 8, 2, compute, retry_on=(QueueFullError,),
                                backoff=Backoff(first_s=0.001, max_attempts=3), seed=0)
        return job, calls

    job, calls = asyncio.run(scenario())
    assert calls.count(4) == 3  # three attempts, then the failure
    assert job.result == [0, 1, 2, 3]  # the finished prefix, in order


def test_backoff_grows_and_is_capped():
    import random
    backoff = Backoff(first_s=0.1, max_s=1.0)
    rng = random.Random(0)
    assert all(0 <= backoff.delay_s(k, rng) <= min(1.0, 0.1 * 2 ** k) for k in range(10))


# -- shutdown -------------------------------------------------------------------------------
def test_shutdown_drains_within_the_grace_then_answers_the_rest_with_503():
    slow = SlowModel(delay_s=0.05)

    async def scenario():
        engine = await engine_with(slow, max_batch_size=1, shutdown_grace_s=0.3)
        served = engine.resolve("slow")
        requests = [asyncio.ensure_future(engine.infer(served, ROW * i, 60)) for i in range(40)]
        await asyncio.sleep(0.01)
        await engine.close()  # 40 x 50 ms would take 2 s; the grace is 0.3 s
        return await asyncio.gather(*requests, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    done = [o for o in outcomes if isinstance(o, np.ndarray)]
    refused = [o for o in outcomes if not isinstance(o, np.ndarray)]
    assert done and refused and len(done) + len(refused) == 40
    assert all("grace" in str(o) for o in refused), refused[:2]


def test_resolving_uses_the_router_then_the_newest_ready_version():
    async def scenario():
        engine = await engine_with(SlowModel(delay_s=0))
        await engine.registry.add(SlowModel(delay_s=0, version=2))
        newest = engine.resolve("slow").version
        engine.router = lambda name, key: "1" if key == "old" else "2"
        routed = engine.resolve("slow", routing_key="old").version
        pinned = engine.resolve("slow", "2").version
        await engine.close()
        return newest, routed, pinned

    assert asyncio.run(scenario()) == ("2", "1", "2")


def test_rows_of_another_shape_are_refused_before_they_reach_a_batch():
    async def scenario():
        engine = await engine_with(SlowModel(delay_s=0))
        served = engine.resolve("slow")
        for rows in (np.ones((1, 1, 32, 32), np.float32), np.ones((2, 7), np.float32)):
            with pytest.raises(ProtocolError, match=r"takes rows of shape \[-1, 8\]"):
                await engine.infer(served, rows)
        with pytest.raises(ProtocolError, match="shape"):
            engine.submit_job(served, np.ones((5, 3), np.float32), list)
        await engine.close()

    asyncio.run(scenario())


def test_a_chunked_request_has_one_deadline_not_one_per_chunk():
    slow = SlowModel(delay_s=0.05)

    async def scenario():
        engine = await engine_with(slow, max_batch_size=1)
        served = engine.resolve("slow")
        got = []
        with pytest.raises(DeadlineExceededError):
            # 20 chunks of 50 ms need 1 s; the request may take 0.3 s in all
            async for start, _ in engine.infer_chunks(served, np.ones((20, 8), np.float32),
                                                      timeout_s=0.3):
                got.append(start)
        await engine.close()
        return got

    got = asyncio.run(scenario())
    assert 0 < len(got) < 20
