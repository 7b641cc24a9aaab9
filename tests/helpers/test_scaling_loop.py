"""The scaling loop over real replicas: it reads the in-flight gauge, starts a replica when
the load asks for one (which then takes traffic), and drains one away when the load goes."""

import asyncio

import numpy as np
import pytest

from helpers import models
from helpers.autoscaler import AutoscalingConfig
from helpers.balancer import Balancer, RoundRobin
from helpers.loadgen import open_loop, v2_request
from helpers.replicas import ReplicaSet
from helpers.scaling_loop import ScalingLoop, in_flight_of


def test_the_in_flight_gauge_is_read_from_a_metrics_page():
    page = "# HELP http_requests_in_flight ...\n# TYPE http_requests_in_flight gauge\n" \
           "http_requests_in_flight 3.0\ninference_queue_depth 1.0\n"
    assert in_flight_of(page) == 3.0 and in_flight_of("nothing here") == 0.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling-models")
    models.save_torch_model(models.WaferMLP(hidden=8), "mlp", 1, root)
    return root


def test_the_loop_scales_up_under_load_and_back_down_after(repo):
    # each row sleeps 40 ms: at 40 requests/s one replica has about 1.6 in flight, over the
    # target of 0.5, so the loop asks for the maximum of 2; without load it asks for 1
    # A long deadline: until the second replica is up, one replica is over capacity and its
    # queue grows; on a machine busy with other tests the cold start can outlast the default
    # 2 s deadline, and those 504s are the deadline working, not the drain this test is about.
    args = ("--repository", str(repo), "--models", "mlp", "--workers", "1",
            "--fault-delay-ms", "40", "--max-batch-size", "1", "--timeout-ms", "30000")
    config = AutoscalingConfig(target_in_flight=0.5, min_replicas=1, max_replicas=2,
                               stable_window_s=1.5, panic_window_s=0.5, upscale_delay_s=0,
                               downscale_delay_s=1.0)
    make = v2_request("mlp", np.zeros((4, 8), np.float32))
    with ReplicaSet(1, *args) as replicas:
        async def scenario():
            async with Balancer(replicas.urls, RoundRobin(), timeout_s=30) as balancer:
                loop = ScalingLoop(replicas, balancer, config, tick_s=0.25)
                load = open_loop(None, make, rate_per_s=40, duration_s=8, send=balancer,
                                 progress=False)
                timeline, result = await asyncio.gather(loop.run(14), load)
                return timeline, result, balancer.stats()
        timeline, result, stats = asyncio.run(scenario())
        assert len(replicas) == 2  # one was started
        new = replicas[1]
        assert new.startup_s > 0 and not new.alive  # started, then drained and stopped
    assert timeline["in_flight"].max() >= 1
    assert timeline["serving"].max() == 2 and timeline["serving"].iloc[-1] == 1
    assert stats.loc[new.url, "attempts"] > 0  # the new replica took traffic once ready
    assert not stats.loc[new.url, "serving"]
    statuses = result.frame["status"].value_counts().to_dict()
    assert statuses == {200: len(result.frame)}, f"nothing may be lost on the way down: {statuses}"
    up = timeline[timeline["target"] == 2]["t_s"].iloc[0]
    joined = timeline[timeline["serving"] == 2]["t_s"].iloc[0]
    assert joined > up  # the cold start: it served only after starting
