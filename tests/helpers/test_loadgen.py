import asyncio
import json

import numpy as np
import pytest

from helpers.loadgen import Request, arrival_times, closed_loop, open_loop, v2_request
from helpers.serving import free_port, serve_in_thread


def test_constant_arrivals_are_evenly_spaced():
    times = arrival_times(200, 0.5, "constant")
    assert len(times) == 100 and times[0] == 0
    np.testing.assert_allclose(np.diff(times), 0.005)


def test_poisson_arrivals_have_the_target_rate_and_are_reproducible():
    times = arrival_times(1000, 20, "poisson", seed=1)
    assert len(times) == pytest.approx(20_000, rel=0.03)
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(0.001, rel=0.03)
    assert gaps.std() == pytest.approx(0.001, rel=0.05)  # exponential: std == mean
    np.testing.assert_array_equal(times, arrival_times(1000, 20, "poisson", seed=1))
    assert (times < 20).all()


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="positive"):
        arrival_times(0, 1)
    with pytest.raises(ValueError, match="'bursty'"):
        arrival_times(10, 1, "bursty")


def stalling_server(stall_s=0.3, stall_at_request=5, status_for=lambda i: 200):
    """A fake server (a ``send`` function): answers at once, except request number
    `stall_at_request` holds the only 'worker' for `stall_s`, so everything behind it
    waits (a GC pause)."""
    worker = asyncio.Lock()
    seen = 0

    async def send(request: Request) -> tuple[int, str, str]:
        nonlocal seen
        seen += 1
        me = seen
        async with worker:
            if me == stall_at_request:
                await asyncio.sleep(stall_s)
        status = status_for(me)
        return status, "" if status == 200 else "busy", "1"

    return send


def request(i):
    return Request("POST", "/v2/models/m/infer", {"i": i})


def test_open_loop_counts_the_stall_for_every_request_scheduled_during_it():
    result = asyncio.run(open_loop(None, request, rate_per_s=100, duration_s=1.0,
                                   arrivals="constant", send=stalling_server(),
                                   progress=False))
    frame = result.frame
    assert len(frame) == 100 and (frame["status"] == 200).all()
    # ~30 requests were scheduled during the 0.3 s stall and each waited for it.
    assert (frame["latency_s"] > 0.1).sum() >= 15
    assert result.summary()["p99_ms"] > 100


def test_replay_sends_on_a_given_schedule_and_refuses_a_disordered_one():
    from helpers.loadgen import replay

    schedule = np.array([0.0, 0.05, 0.06, 0.2, 0.21, 0.22])  # a burst, a pause, a burst
    result = asyncio.run(replay(None, request, schedule, warmup_s=0.01, send=stalling_server(
        stall_at_request=99), progress=False))
    frame = result.frame
    assert list(frame["intended_s"]) == list(schedule) and (frame["status"] == 200).all()
    assert (frame["sent_s"] >= frame["intended_s"] - 1e-3).all()  # never early
    assert len(result.measured) == 5 and result.target_rate == pytest.approx(6 / 0.22)
    with pytest.raises(ValueError, match="sorted"):
        asyncio.run(replay(None, request, np.array([0.2, 0.1]), send=stalling_server()))


def test_closed_loop_hides_the_same_stall():
    result = asyncio.run(closed_loop(None, request, users=1, duration_s=1.0,
                                     send=stalling_server(), progress=False))
    assert result.mode == "closed" and len(result.frame) > 100
    # Coordinated omission: only the stalled request saw the 0.3 s stall, where the open loop
    # above counts it in every request scheduled during it (>= 15). A threshold near the
    # stall, and room for two more: one of 200,000 requests may meet a pause of the machine
    # itself when another test shares its cores (seen once in CI).
    assert 1 <= (result.frame["latency_s"] >= 0.25).sum() <= 3
    assert result.frame["latency_s"].median() < 0.01


def test_warmup_is_excluded_and_errors_are_counted_by_status():
    server = stalling_server(stall_s=0, status_for=lambda i: 503 if i % 4 == 0 else 200)
    result = asyncio.run(open_loop(None, request, rate_per_s=200, duration_s=0.5,
                                   arrivals="constant", warmup_s=0.1, send=server,
                                   progress=False))
    summary = result.summary()
    assert len(result.frame) == 100 and summary["requests"] == 80
    assert summary["errors"] == {"503": int((result.measured["status"] == 503).sum())}
    assert summary["ok"] + summary["errors"]["503"] == 80
    window = result.measured["done_s"].max() - 0.1
    assert summary["achieved_rate"] == pytest.approx(summary["ok"] / window)
    assert 0 <= summary["p99_send_lag_ms"] < 1000
    assert set(result.frame["version"]) == {"1"}


def test_unanswered_requests_are_status_0_with_the_reason():
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    result = asyncio.run(open_loop(url, request, rate_per_s=50, duration_s=0.1,
                                   arrivals="constant", progress=False))
    assert (result.frame["status"] == 0).all()
    assert result.frame["error"].str.contains("ClientConnectorError").all()
    assert result.summary()["errors"] == {"0": 5}


def test_the_http_sender_talks_to_a_real_server():
    """Real HTTP through aiohttp: status, error text and the served version come back."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.post("/v2/models/m/infer")
    async def infer(body: dict):
        if body["i"] % 2:
            return JSONResponse({"error": f"odd {body['i']}"}, 422)
        return JSONResponse({"ok": True}, headers={"x-model-version": "7"})

    with serve_in_thread(app) as url:
        result = asyncio.run(open_loop(url, request, rate_per_s=100, duration_s=0.2,
                                       arrivals="constant", progress=False))
    frame = result.frame
    assert list(frame["status"]) == [200, 422] * 10
    assert set(frame.loc[frame["status"] == 200, "version"]) == {"7"}
    assert frame.loc[1, "error"] == '{"error":"odd 1"}'


def test_v2_request_cycles_rows_and_sets_routing_keys():
    rows = np.arange(16, dtype=np.float32).reshape(2, 8)
    make = v2_request("wafer-mlp", rows, version="2", routing_key=lambda i: f"tool-{i % 3}")
    first, third = make(0), make(2)
    assert first.path == "/v2/models/wafer-mlp/versions/2/infer"
    body = json.loads(first.content)
    assert first.content == third.content and body["inputs"][0]["data"] == list(range(8))
    assert make(1).headers == {"x-routing-key": "tool-1"}


def test_requests_that_time_out_count_at_their_timeout_in_the_percentiles():
    async def send(request: Request) -> tuple[int, str, str]:
        if request.json["i"] % 10 == 0:  # one in ten never answers within the timeout
            await asyncio.sleep(0.02)
            return 0, "TimeoutError: no answer within the client's timeout", ""
        return 200, "", "1"

    result = asyncio.run(open_loop(None, request, rate_per_s=500, duration_s=0.4,
                                   arrivals="constant", timeout_s=2.0, send=send,
                                   progress=False))
    summary = result.summary()
    assert summary["timeouts"] == 20 and summary["errors"] == {"0": 20}
    assert summary["p99_ms"] >= 2000  # 10 % at the 2 s timeout: the SLO check must see them
    assert summary["p50_ms"] < 2000


def test_a_real_timeout_is_reported_as_a_timeout():
    from helpers.loadgen import HTTPSender

    async def scenario(url):
        async with HTTPSender(url, 4, timeout_s=0.2) as send:
            return await send(Request("GET", "/slow"))

    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.get("/slow")
    async def slow():
        await asyncio.sleep(2)
        return {}

    with serve_in_thread(app) as url:
        status, error, _ = asyncio.run(scenario(url))
    assert status == 0 and error.startswith("TimeoutError")


def test_capacity_is_the_highest_rate_that_meets_the_slo():
    from helpers.loadgen import capacity_at_slo

    worker = asyncio.Lock()

    async def one_at_a_time(request):  # 10 ms each, one at a time: 100 requests/s at most
        async with worker:
            await asyncio.sleep(0.01)
        return 200, "", "1"

    capacity, runs = asyncio.run(capacity_at_slo(None, request, rates=[200, 30, 50, 400],
                                                 seconds=1.0, slo_ms=100,
                                                 send=one_at_a_time))
    assert capacity == 50
    assert list(runs["rate_per_s"]) == [30, 50, 200]  # lowest first, stops after a miss
    assert list(runs["meets SLO"]) == [True, True, False] and runs["p99 ms"].iloc[2] > 100
    assert 60 < runs["achieved_per_s"].iloc[2] <= 105  # saturated: about its 100/s at most
