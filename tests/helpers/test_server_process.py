"""`python -m helpers.server` as its own process: signals, overload, defaults."""

import asyncio
import os
import re
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from helpers import data, models, training
from helpers.serving import serve_subprocess

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from serving_fixtures import POISON, FaultyEstimator, SlowEstimator  # noqa: E402

ROW = data.feature_matrix(data.make_wafer_records(1))
BODY = {"inputs": [{"name": "process_features", "shape": [1, 8], "datatype": "FP32",
                    "data": ROW.ravel().tolist()}]}
# The subprocess loads SlowEstimator from the test repository: skops rebuilds it only
# because the operator (this test) trusts its type.
ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
       "SERVE_TRUSTED_TYPES": "serving_fixtures.SlowEstimator,serving_fixtures.FaultyEstimator"}


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("slow-repo")
    models.save_sklearn_model(SlowEstimator(delay_s=0.05), "slow", 1, root)
    models.save_sklearn_model(FaultyEstimator(), "faulty", 1, root)
    return root


async def queue_depth(client, model="slow"):
    text = (await client.get("/metrics")).text
    match = re.search(rf'inference_queue_depth{{model="{model}",version="1"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


async def fire(url, n):
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(client.post("/v2/models/slow/infer", json=BODY)
                                      for _ in range(n)), return_exceptions=True)


def terminate_under_load(server, n: int, queued: int) -> list:
    """Send ``n`` requests, SIGTERM the server once ``queued`` of them wait; the answers."""
    async def scenario():
        requests = asyncio.ensure_future(fire(server.url, n))
        async with httpx.AsyncClient(base_url=server.url) as probe:
            while await queue_depth(probe) < queued:
                await asyncio.sleep(0.01)
        server.terminate()
        return await requests

    return asyncio.run(scenario())


def test_sigterm_under_load_completes_every_admitted_request(slow_repo):
    args = ["--repository", str(slow_repo), "--max-batch-size", "4", "--max-wait-ms", "0",
            "--max-queue", "256", "--timeout-ms", "60000", "--workers", "1"]
    with serve_subprocess(*args, env=ENV) as server:
        responses = terminate_under_load(server, 40, queued=20)  # 20+ admitted and waiting
        errors = [r for r in responses if isinstance(r, Exception)]
        assert not errors, f"lost requests: {errors[:3]}"
        assert [r.status_code for r in responses] == [200] * 40
        # uvicorn finishes the work, then exits by the signal it received
        assert server.process.wait(timeout=60) in (0, -15)


def test_overload_answers_everything_and_memory_stays_bounded(slow_repo):
    args = ["--repository", str(slow_repo), "--max-batch-size", "4", "--max-wait-ms", "0",
            "--max-queue", "8"]
    with serve_subprocess(*args, env=ENV) as server:
        process = psutil.Process(server.process.pid)
        before = process.memory_info().rss
        # Capacity is ~80 requests/s (4 per 50 ms); send 300 at once, twice.
        results = asyncio.run(fire(server.url, 300)) + asyncio.run(fire(server.url, 300))
        grown_mb = (process.memory_info().rss - before) / 2**20
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"unanswered requests: {errors[:3]}"
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 503} and codes.count(503) > 300
    assert all(int(r.headers["retry-after"]) >= 1 for r in results if r.status_code == 503)
    assert grown_mb < 150, f"server RSS grew {grown_mb:.0f} MiB under overload"


def test_a_restart_on_the_same_port_serves_again():
    """A rolling restart: the first process drains and exits, the second binds the port."""
    from helpers.serving import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve_subprocess("--models", "wafer-mlp", port=port) as first:
        assert first.url == url and httpx.get(url + "/v2/health/ready").status_code == 200
    with pytest.raises(httpx.ConnectError):  # down between the two
        httpx.get(url + "/v2/health/live")
    with serve_subprocess("--models", "wafer-mlp", port=port) as second:
        assert second.process.pid != first.process.pid
        assert httpx.get(url + "/v2/health/ready").status_code == 200


def test_no_flags_serves_the_default_repository():
    if not models.list_models():
        training.ensure_wafer_models()
    with serve_subprocess() as server, httpx.Client(base_url=server.url) as client:
        names = {row["name"] for row in client.post("/v2/repository/index").json()}
        assert {"wafer-forest", "wafer-mlp"} <= names
        response = client.post("/v2/models/wafer-mlp/infer", json={
            "inputs": [{**BODY["inputs"][0], "name": "process_features"}]})
        assert response.status_code == 200 and response.headers["x-model-version"] == "2"


def test_a_server_dies_with_the_process_that_started_it(slow_repo, tmp_path):
    """A crashed notebook kernel (SIGKILL: no clean-up code runs) leaves no server behind."""
    import signal
    import subprocess
    import time

    parent_script = tmp_path / "parent.py"
    parent_script.write_text(
        "import sys, time\n"
        "from helpers.serving import serve_subprocess\n"
        f"with serve_subprocess('--repository', {str(slow_repo)!r}, env={ENV!r}) as s:\n"
        "    print(s.process.pid, flush=True)\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(parent_script)], stdout=subprocess.PIPE,
                              text=True)
    server_pid = int(parent.stdout.readline())
    assert psutil.pid_exists(server_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while psutil.pid_exists(server_pid) and \
            psutil.Process(server_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the server outlived the process that started it"
        time.sleep(0.1)


def body_of(row):
    return {"inputs": [{"name": "process_features", "shape": [1, 8], "datatype": "FP32",
                        "data": list(map(float, row))}]}


def test_a_model_that_raises_fails_only_its_own_batch(slow_repo):
    poisoned = ROW[0].copy()
    poisoned[0] = POISON
    args = ["--repository", str(slow_repo), "--models", "faulty", "--max-wait-ms", "0"]
    with serve_subprocess(*args, env=ENV) as server, httpx.Client(base_url=server.url) as c:
        bad = c.post("/v2/models/faulty/infer", json=body_of(poisoned))
        good = [c.post("/v2/models/faulty/infer", json=body_of(ROW[0])) for _ in range(3)]
        live = c.get("/v2/health/ready")
    assert bad.status_code == 500 and "sensor frame corrupt" in bad.json()["error"]
    assert [r.status_code for r in good] == [200, 200, 200] and live.status_code == 200


def test_an_expired_deadline_is_a_504_and_never_computed(slow_repo):
    args = ["--repository", str(slow_repo), "--models", "slow", "--max-batch-size", "1",
            "--max-wait-ms", "0", "--timeout-ms", "60000", "--workers", "1"]
    with serve_subprocess(*args, env=ENV) as server:
        async def scenario():
            limits = httpx.Limits(max_connections=10)
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c:
                # five requests keep the only worker busy for ~0.25 s ...
                busy = [asyncio.ensure_future(c.post("/v2/models/slow/infer", json=BODY))
                        for _ in range(5)]
                await asyncio.sleep(0.05)
                # ... so one that may wait only 20 ms expires in the queue
                late = await c.post("/v2/models/slow/infer", json=BODY,
                                    headers={"x-timeout-ms": "20"})
                return late, await asyncio.gather(*busy), (await c.get("/metrics")).text

        late, busy, metrics = asyncio.run(scenario())
    assert late.status_code == 504 and "not computed" in late.json()["error"]
    assert [r.status_code for r in busy] == [200] * 5
    # the model computed exactly the five admitted rows, not the expired one
    assert re.search(r'inference_batch_size_sum{model="slow",version="1"} 5\.0', metrics)


def test_sigterm_drains_for_at_most_the_grace_then_answers_the_rest_with_503(slow_repo):
    # One worker, one row per batch, 50 ms each: 40 requests need 2 s; the grace is 0.5 s.
    args = ["--repository", str(slow_repo), "--models", "slow", "--max-batch-size", "1",
            "--max-wait-ms", "0", "--workers", "1", "--timeout-ms", "60000",
            "--shutdown-grace-s", "0.5"]
    with serve_subprocess(*args, env=ENV) as server:
        responses = terminate_under_load(server, 40, queued=30)
        exit_code = server.process.wait(timeout=60)  # it exits: nothing holds it
        log = server.log()
    errors = [r for r in responses if isinstance(r, Exception)]
    assert not errors, f"lost requests: {errors[:3]}"
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503}, codes  # drained some, then stopped waiting
    assert all("grace" in r.json()["error"] and r.headers["retry-after"]
               for r in responses if r.status_code == 503)
    assert exit_code in (0, -15) and "draining for at most 0.5 s" in log


def test_the_server_logs_where_it_listens_its_layout_and_on_request_each_request(slow_repo):
    from helpers.device import default_workers

    for flags, logged in [([], False), (["--access-log"], True)]:
        with serve_subprocess("--repository", str(slow_repo), "--models", "slow", *flags,
                              env=ENV) as server:
            httpx.post(server.url + "/v2/models/slow/infer", json=BODY)
            log = server.log()
        assert server.url in log
        assert f"{default_workers('cpu')} worker(s)" in log
        assert ("POST /v2/models/slow/infer" in log) == logged
