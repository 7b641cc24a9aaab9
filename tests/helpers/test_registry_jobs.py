"""The registry under concurrent loads and unloads, readiness with a broken model, and the
job manager's bounds and final states."""

import asyncio

import pytest

from helpers import models
from helpers.batching import BatchPolicy
from helpers.jobs import JobManager, JobsFullError, JobState
from helpers.metrics import ServingMetrics
from helpers.registry import ModelRegistry, State


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-models")
    for version in (1, 2):
        models.save_torch_model(models.WaferMLP(hidden=8), "mlp", version, root)
    folder = models.save_torch_model(models.WaferMLP(hidden=8), "broken", 1, root)
    (folder / "model.safetensors").write_bytes(b"truncated")  # its hash no longer matches
    return root


def registry_of(repo):
    return ModelRegistry(repo, BatchPolicy(4, 0), max_queue=8, workers=1,
                         metrics=ServingMetrics(), device="cpu")


def schedulers() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name() == "batch-scheduler"
               and not t.done())


def test_two_concurrent_loads_of_one_model_share_one_load(repo):
    async def scenario():
        registry = registry_of(repo_path)
        first, second = await asyncio.gather(registry.load("mlp"), registry.load("mlp"))
        running = schedulers()
        await registry.close()
        return first, second, running, schedulers()

    repo_path = repo
    first, second, running, after_close = asyncio.run(scenario())
    assert [s.version for s in first] == ["1", "2"]
    assert all(a is b for a, b in zip(first, second, strict=True))  # joined, not duplicated
    assert running == 2 and after_close == 0  # one batcher per version, all closed


def test_a_load_during_an_unload_waits_for_it_and_leaves_one_consistent_state(repo):
    async def scenario():
        registry = registry_of(repo_path)
        await registry.load("mlp")
        await asyncio.gather(registry.unload("mlp"), registry.load("mlp"))
        states = {v: s.state for v, s in registry.versions("mlp").items()}
        served = registry.get("mlp")  # raised on the old code
        running = schedulers()
        await registry.close()
        return states, served.version, running

    repo_path = repo
    states, newest, running = asyncio.run(scenario())
    assert states == {"1": State.READY, "2": State.READY} and newest == "2"
    assert running == 2


def test_a_version_that_fails_to_load_is_reported_and_the_server_stays_ready(repo):
    async def scenario():
        registry = registry_of(repo_path)
        await registry.load("mlp")
        await registry.load("broken")
        registry.started = True
        ready = registry.readiness()
        failed = [(s.name, s.reason) for s in registry.failed()]
        await registry.close()
        return ready, failed

    repo_path = repo
    (ready, reason), failed = asyncio.run(scenario())
    assert ready and reason == ""
    assert failed and failed[0][0] == "broken" and "SHA-256" in failed[0][1]
    assert str(repo_path) not in failed[0][1]  # no host path in what clients may see


def test_readiness_waits_for_the_start_up_loads():
    registry = registry_of(None)
    assert registry.readiness() == (False, "models are loading")
    registry.started = True
    assert registry.readiness() == (False, "no model version is ready")


# -- jobs ------------------------------------------------------------------------------------
def test_a_job_cancelled_before_it_starts_ends_cancelled_and_can_be_evicted():
    async def scenario():
        manager = JobManager(max_jobs=1)
        job = manager.submit(10, lambda job: asyncio.sleep(10))
        manager.cancel(job.id)  # before the event loop ever ran it
        await manager.wait(job.id)
        state, finished = job.state, job.finished_at
        replacement = manager.submit(1, lambda job: asyncio.sleep(0))  # evicts the cancelled
        await manager.wait(replacement.id)
        return state, finished, replacement.state

    state, finished, replacement = asyncio.run(scenario())
    assert state is JobState.CANCELLED and finished is not None
    assert replacement is JobState.SUCCEEDED


def test_result_bytes_are_bounded_oldest_finished_evicted_first():
    async def scenario():
        manager = JobManager(max_jobs=10, max_result_bytes=1000)
        done = [manager.submit(1, lambda job: asyncio.sleep(0), result_bytes=400)
                for _ in range(2)]
        for job in done:
            await manager.wait(job.id)
        third = manager.submit(1, lambda job: asyncio.sleep(0), result_bytes=400)  # evicts 1st
        ids_after_third = [j.id for j in manager._jobs.values()]
        gate = asyncio.Event()
        running = manager.submit(1, lambda job: gate.wait(), result_bytes=400)  # evicts 2nd
        await manager.wait(third.id)
        with pytest.raises(JobsFullError, match="unfinished"):
            manager.submit(1, lambda job: asyncio.sleep(0), result_bytes=900)
        with pytest.raises(JobsFullError, match="over the 1,000-byte limit"):
            manager.submit(1, lambda job: asyncio.sleep(0), result_bytes=5000)
        gate.set()
        await manager.close()
        return done, third, running, ids_after_third, manager.reserved_bytes

    done, third, running, ids_after_third, reserved = asyncio.run(scenario())
    assert done[0].id not in ids_after_third and done[1].id in ids_after_third
    assert reserved <= 1000


def test_close_cancels_jobs_still_running_after_the_grace():
    async def scenario():
        manager = JobManager()
        job = manager.submit(1, lambda job: asyncio.sleep(30))
        await asyncio.sleep(0)
        await manager.close(timeout_s=0.05)
        return job.state

    assert asyncio.run(scenario()) is JobState.CANCELLED


def test_an_unforeseen_load_error_shows_its_kind_not_host_paths(tmp_path):
    folder = models.save_torch_model(models.WaferMLP(hidden=8), "looped", 1, tmp_path)
    weights = folder / "model.safetensors"
    weights.unlink()
    weights.symlink_to(weights)  # a symlink loop: resolve() raises with the full path

    async def scenario():
        registry = registry_of(tmp_path)
        await registry.load("looped")
        index = registry.index()
        await registry.close()
        return index

    (row,) = asyncio.run(scenario())
    assert row["state"] == "UNAVAILABLE" and row["reason"].startswith("load failed:")
    assert str(tmp_path) not in row["reason"] and "server log" in row["reason"]


def test_fault_injection_sleeps_per_row_in_the_worker_and_is_off_by_default(repo, monkeypatch):
    import numpy as np

    import helpers.registry

    slept = []
    monkeypatch.setattr(helpers.registry.time, "sleep", slept.append)

    async def scenario(fault_delay_s):
        registry = ModelRegistry(repo, BatchPolicy(4, 0), max_queue=8, workers=1,
                                 metrics=ServingMetrics(), device="cpu",
                                 fault_delay_s=fault_delay_s)
        (served, _) = await registry.load("mlp")
        slept.clear()  # the warm-up batch slept too
        out = await served.batcher.submit(registry.work(served.model,
                                                        np.zeros((3, 8), np.float32)))
        await registry.close()
        return out

    assert len(asyncio.run(scenario(0.002))) == 3
    assert slept == [pytest.approx(0.006)]  # 3 rows x 2 ms, in one batch
    asyncio.run(scenario(0.0))
    assert slept == []
