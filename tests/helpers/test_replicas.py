"""Real replicas of the server on loopback: started in parallel, broken on purpose, balanced
over, and always stopped."""

import asyncio
import signal
import time

import httpx
import numpy as np
import pytest

from helpers import models
from helpers.balancer import Balancer, OutlierDetector, PowerOfTwo, RetryBudget
from helpers.loadgen import v2_request
from helpers.replicas import ReplicaSet


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("replica-models")
    models.save_torch_model(models.WaferMLP(hidden=8), "mlp", 1, root)
    return root


def infer(url):
    body = {"inputs": [{"name": "process_features", "shape": [1, 8], "datatype": "FP32",
                        "data": [0.0] * 8}]}
    return httpx.post(url + "/v2/models/mlp/infer", json=body, timeout=10).status_code


def test_replicas_start_in_parallel_break_on_purpose_and_always_stop(repo):
    args = ("--repository", str(repo), "--models", "mlp", "--workers", "1")
    with ReplicaSet(2, *args) as replicas:
        assert len(set(replicas.urls)) == 2 and all(infer(url) == 200 for url in replicas.urls)
        table = replicas.table()
        assert list(table["alive"]) == [True, True]
        assert (table["start-up s"] > 0).all() and (table["RSS MB"] > 10).all()
        processes = [r.server.process for r in replicas]

        replicas.kill(0)  # a crash
        assert replicas.health() == {"replica-0": False, "replica-1": True}
        assert not replicas[0].alive and replicas.table()["RSS MB"].iloc[0] == 0

        replicas.restart(0, "--fault-delay-ms", "1")  # back, slower, on the same port
        assert replicas.health() == {"replica-0": True, "replica-1": True}
        assert infer(replicas[0].url) == 200
        assert replicas.table()["extra args"].tolist() == ["--fault-delay-ms 1", ""]
        processes.append(replicas[0].server.process)
    assert all(p.poll() is not None for p in processes)  # nothing left running


def test_some_replicas_can_start_with_arguments_of_their_own(repo):
    args = ("--repository", str(repo), "--models", "mlp", "--workers", "1")
    with pytest.raises(ValueError, match="replicas 0..1"):
        ReplicaSet(2, *args, extra={2: ["--fault-delay-ms", "1"]})
    with ReplicaSet(2, *args, extra={1: ["--fault-delay-ms", "1"]}) as replicas:
        assert replicas.table()["extra args"].tolist() == ["", "--fault-delay-ms 1"]
        assert all(infer(url) == 200 for url in replicas.urls)


def test_a_set_grows_one_replica_at_a_time_and_counts_what_its_replicas_cost(repo):
    args = ("--repository", str(repo), "--models", "mlp", "--workers", "1")
    with ReplicaSet(1, *args) as replicas:
        assert replicas.add("--fault-delay-ms", "1") == 1  # scaling up: waits until ready
        assert len(replicas) == 2 and infer(replicas[1].url) == 200
        assert replicas.table()["extra args"].tolist() == ["", "--fault-delay-ms 1"]
        replicas.stop(1)  # scaling down
        assert replicas[1].seconds_before >= replicas[1].startup_s > 0  # start-up is billed
        start = time.perf_counter()
        before = replicas.replica_seconds()
        time.sleep(0.3)
        after = replicas.replica_seconds()
        elapsed = time.perf_counter() - start
        assert 0.3 <= after - before <= elapsed  # one replica still running, one stopped


def test_the_balancer_routes_around_a_killed_replica(repo):
    args = ("--repository", str(repo), "--models", "mlp", "--workers", "1")
    make = v2_request("mlp", np.zeros((4, 8), np.float32))
    with ReplicaSet(3, *args) as replicas:
        replicas.kill(2)

        async def send(n):
            async with Balancer(replicas.urls, PowerOfTwo(),
                                detector=OutlierDetector(consecutive_failures=2, eject_s=60),
                                budget=RetryBudget(ratio=0.2, min_retries=2)) as balancer:
                statuses = [(await balancer(make(i)))[0] for i in range(n)]
                return statuses, balancer.stats(), balancer.retries

        statuses, stats, retries = asyncio.run(send(40))
    assert statuses == [200] * 40  # the dead one's failures were retried elsewhere
    dead = stats.loc[replicas.urls[2]]
    assert dead["failures"] == 2 and dead["ejected now"] and retries == 2


def test_a_paused_replica_answers_when_it_resumes_and_a_set_stops_a_paused_one(repo):
    args = ("--repository", str(repo), "--models", "mlp", "--workers", "1")
    with ReplicaSet(1, *args) as replicas:
        replicas.pause(0, 1.5)  # longer than health()'s 1 s timeout
        assert replicas.health() == {"replica-0": False}  # frozen: no answer within 1 s
        assert infer(replicas[0].url) == 200  # waited for the resume, then answered
        assert replicas.health() == {"replica-0": True}
        replicas.pause(0, 60)  # closing the set must not wait a minute for it
        process = replicas[0].server.process
    # resumed, then ended by its SIGTERM (uvicorn re-raises it after draining), not SIGKILLed
    assert process.returncode == -signal.SIGTERM


def test_replicas_added_at_once_from_threads_each_get_their_own_index(repo):
    from concurrent.futures import ThreadPoolExecutor

    args = ("--repository", str(repo), "--models", "mlp", "--workers", "1")
    with ReplicaSet(1, *args) as replicas:
        with ThreadPoolExecutor(2) as pool:
            added = sorted(pool.map(lambda _: replicas.add(), range(2)))
        assert added == [1, 2]  # not the same index twice, not one still starting
        assert all(infer(replicas[i].url) == 200 for i in added)


def test_a_replica_whose_port_was_taken_meanwhile_moves_to_another(repo):
    from helpers.serving import serve_subprocess

    args = ("--repository", str(repo), "--models", "mlp", "--workers", "1")
    with serve_subprocess(*args) as squatter:  # already listening where the replica will go
        taken = int(squatter.url.rsplit(":", 1)[1])
        replicas = ReplicaSet(1, *args)
        replicas[0].port = taken
        with replicas:
            assert replicas[0].port != taken and infer(replicas[0].url) == 200
            mine = replicas[0].server.process.pid
            answered = httpx.get(replicas[0].url + "/v2/health/ready").headers["x-server-pid"]
            assert answered == str(mine)  # the replica's own process answers, not the squatter
