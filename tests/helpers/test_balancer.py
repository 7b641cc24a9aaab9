"""The balancer's decisions, without sockets: pickers, peak EWMA, ejection, retry budget."""

import asyncio
import math
import random
from collections import Counter

import pytest

from helpers.balancer import (
    Candidate,
    LeastOutstanding,
    OutlierDetector,
    PeakEwma,
    PeakEwmaP2C,
    PowerOfTwo,
    RandomPick,
    RetryBudget,
    RoundRobin,
)


class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def replicas(*in_flight, latency=None):
    latency = latency or [0.0] * len(in_flight)
    return [Candidate(f"r{i}", n, lat) for i, (n, lat) in enumerate(zip(in_flight, latency,
                                                                         strict=True))]


def shares(picker, candidates, n=3000):
    return Counter(picker.pick(candidates).name for _ in range(n))


def test_round_robin_takes_turns_whatever_the_load():
    picker = RoundRobin()
    assert [picker.pick(replicas(0, 50, 0)).name for _ in range(6)] == ["r0", "r1", "r2"] * 2


def test_random_spreads_evenly():
    counts = shares(RandomPick(random.Random(1)), replicas(0, 0, 0))
    assert all(900 < counts[f"r{i}"] < 1100 for i in range(3))


def test_least_outstanding_picks_the_least_loaded_and_breaks_ties_at_random():
    picker = LeastOutstanding(random.Random(2))
    assert {picker.pick(replicas(3, 1, 2)).name for _ in range(50)} == {"r1"}
    assert set(shares(picker, replicas(1, 0, 0), 200)) == {"r1", "r2"}  # not always the first


def test_power_of_two_compares_two_distinct_replicas():
    picker = PowerOfTwo(random.Random(3))
    counts = shares(picker, replicas(9, 0, 0))
    # r0 wins only against itself, which two distinct draws never allow
    assert counts["r0"] == 0 and counts["r1"] > 1200 and counts["r2"] > 1200
    # the most loaded of three is never chosen; the least loaded wins 2 pairs of 3
    counts = shares(picker, replicas(5, 0, 9))
    assert counts["r2"] == 0 and 1800 < counts["r1"] < 2200
    assert picker.pick(replicas(7)).name == "r0"  # one replica: it


def test_peak_ewma_p2c_weighs_latency_by_load():
    picker = PeakEwmaP2C(random.Random(4))
    slow_idle_vs_fast_busy = replicas(0, 3, latency=[0.200, 0.010])
    assert {picker.pick(slow_idle_vs_fast_busy).name for _ in range(20)} == {"r1"}  # 0.2 > 0.04
    untried = replicas(0, 0, latency=[0.0, 0.010])
    assert {picker.pick(untried).name for _ in range(20)} == {"r0"}  # tried first


def test_pickers_refuse_an_empty_list():
    for picker in (RoundRobin(), RandomPick(), LeastOutstanding(), PowerOfTwo(), PeakEwmaP2C()):
        with pytest.raises(ValueError, match="no replica"):
            picker.pick([])


def test_peak_ewma_jumps_on_a_slow_sample_and_decays_after():
    clock = Clock()
    ewma = PeakEwma(tau_s=10, clock=clock)
    assert ewma.value == 0.0  # cold: no estimate
    ewma.observe(0.010)
    assert ewma.value == pytest.approx(0.010)
    ewma.observe(0.500)  # a peak replaces the estimate at once
    assert ewma.value == pytest.approx(0.500)
    clock.now += 10  # one tau later, a fast sample pulls it most of the way down
    ewma.observe(0.010)
    assert ewma.value == pytest.approx(0.500 * math.exp(-1) + 0.010 * (1 - math.exp(-1)))
    clock.now += 30  # left alone, the estimate decays towards zero
    assert ewma.value < 0.01
    same_time = PeakEwma(tau_s=10, clock=Clock())
    same_time.observe(0.5)
    same_time.observe(0.01)  # no time passed: a lower sample moves nothing
    assert same_time.value == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ewma.observe(float("nan"))


def test_a_replica_is_ejected_after_consecutive_failures_and_comes_back():
    clock, names = Clock(), ["a", "b", "c"]
    detector = OutlierDetector(consecutive_failures=3, eject_s=2, clock=clock)
    for outcome in [False, False, True, False, False]:  # a success resets the count
        assert not detector.record("a", outcome, names)
    assert detector.record("a", False, names)
    assert detector.available(names) == ["b", "c"] and detector.ejected(names) == ["a"]
    clock.now += 2
    assert detector.available(names) == names  # back, to be tried
    for _ in range(3):
        detector.record("a", False, names)
    clock.now += 2  # the second ejection lasts twice as long
    assert detector.ejected(names) == ["a"]
    clock.now += 2
    assert detector.ejected(names) == []


def test_the_last_replica_standing_is_never_ejected():
    detector = OutlierDetector(consecutive_failures=1, eject_s=5, clock=Clock())
    names = ["a", "b"]
    assert detector.record("a", False, names)
    assert not detector.record("b", False, names) and detector.available(names) == ["b"]


def test_the_retry_budget_is_a_share_of_requests_plus_a_floor_over_a_window():
    clock = Clock()
    budget = RetryBudget(ratio=0.1, min_retries=2, window_s=10, clock=clock)
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]  # the floor
    for _ in range(30):
        budget.request()
    assert [budget.try_retry() for _ in range(4)] == [True, True, True, False]  # 2 + 3
    assert (budget.granted, budget.refused) == (5, 2)
    clock.now += 10.001  # the window moved on: requests and retries forgotten
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]


# -- the async balancer, over fake replicas ------------------------------------------------------
def fake_balancer(behaviour, picker=None, **kwargs):
    """A Balancer whose replicas answer ``behaviour[url](request) -> status``, no sockets."""
    from helpers.balancer import Balancer

    balancer = Balancer(list(behaviour), picker or RoundRobin(), **kwargs)
    for url, answer in behaviour.items():
        async def send(request, answer=answer):
            await asyncio.sleep(0)
            status = answer(request)
            return status, "" if status == 200 else f"status {status}", "1"
        balancer.replicas[url].sender = send
    return balancer


def run_requests(balancer, n):
    from helpers.loadgen import Request

    async def go():
        return [await balancer(Request("POST", "/v2/models/m/infer")) for _ in range(n)]
    return asyncio.run(go())


def test_the_balancer_sends_through_its_picker_and_counts_each_replica():
    balancer = fake_balancer({"http://a": lambda r: 200, "http://b": lambda r: 200})
    assert [status for status, _, _ in run_requests(balancer, 10)] == [200] * 10
    stats = balancer.stats()
    assert list(stats["attempts"]) == [5, 5] and list(stats["share"]) == [0.5, 0.5]


def test_without_ejection_or_retries_a_dead_replica_fails_its_share():
    balancer = fake_balancer({"http://a": lambda r: 200, "http://dead": lambda r: 0})
    statuses = [status for status, _, _ in run_requests(balancer, 10)]
    assert statuses.count(0) == 5 and balancer.retries == 0


def test_ejection_and_a_retry_budget_hide_a_dead_replica():
    clock = Clock()
    balancer = fake_balancer(
        {"http://a": lambda r: 200, "http://b": lambda r: 200, "http://dead": lambda r: 0},
        detector=OutlierDetector(consecutive_failures=2, eject_s=30, clock=clock),
        budget=RetryBudget(ratio=0.2, min_retries=1, clock=clock), clock=clock)
    statuses = [status for status, _, _ in run_requests(balancer, 30)]
    assert statuses == [200] * 30  # every failure was retried elsewhere
    stats = balancer.stats()
    assert stats.loc["http://dead", "failures"] == 2 and stats.loc["http://dead", "ejected now"]
    assert balancer.retries == 2 <= 1 + 0.2 * 30


def test_retries_stop_at_the_budget_and_client_errors_are_not_retried():
    clock = Clock()
    balancer = fake_balancer({"http://a": lambda r: 503, "http://b": lambda r: 503},
                             budget=RetryBudget(ratio=0.0, min_retries=3, clock=clock),
                             clock=clock)
    statuses = [status for status, _, _ in run_requests(balancer, 10)]
    assert statuses == [503] * 10 and balancer.retries == 3  # the floor, then no more
    picky = fake_balancer({"http://a": lambda r: 422, "http://b": lambda r: 200},
                          budget=RetryBudget(clock=clock), clock=clock)
    assert run_requests(picky, 1)[0][0] == 422 and picky.retries == 0


def test_a_request_stops_after_max_attempts_whatever_the_budget():
    clock = Clock()
    balancer = fake_balancer({"http://a": lambda r: 0, "http://b": lambda r: 0},
                             budget=RetryBudget(ratio=1.0, min_retries=1000, clock=clock),
                             max_attempts=3, clock=clock)
    assert [status for status, _, _ in run_requests(balancer, 5)] == [0] * 5
    assert balancer.retries == 10 and balancer.stats()["attempts"].sum() == 15


def test_each_replica_gets_its_own_latency_tracker_from_the_factory_given():
    made = []

    class Fixed:  # a tracker that remembers every sample: proves the balancer feeds it
        def __init__(self, tau_s, clock):
            self.samples, self.tau_s = [], tau_s
            made.append(self)

        def observe(self, latency_s):
            self.samples.append(latency_s)

        @property
        def value(self):
            return 0.25

    clock = Clock()
    balancer = fake_balancer({"http://a": lambda r: 200, "http://b": lambda r: 503},
                             latency_tracker=Fixed, tau_s=3.0, clock=clock)
    run_requests(balancer, 4)
    assert len(made) == 2 and {t.tau_s for t in made} == {3.0}
    assert [len(t.samples) for t in made] == [2, 2]  # an error's latency counts too
    assert list(balancer.stats()["latency estimate ms"]) == [250.0, 250.0]


def test_the_attempt_log_records_every_try_with_its_replica_and_outcome():
    clock = Clock()
    balancer = fake_balancer({"http://a": lambda r: 0, "http://b": lambda r: 200},
                             budget=RetryBudget(ratio=1.0, clock=clock), clock=clock)
    run_requests(balancer, 2)  # each request fails on a, then is retried on b
    log = balancer.attempt_log()
    assert list(log.columns) == ["sent_s", "replica", "status", "latency_ms"]
    assert list(log["replica"]) == ["http://a", "http://b", "http://a", "http://b"]
    assert list(log["status"]) == [0, 200, 0, 200] and (log["sent_s"] == 0).all()


def test_drive_runs_faults_on_time_and_sums_up_the_run():
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from serving_fixtures import SlowModel

    from helpers.balancer import drive
    from helpers.loadgen import v2_request
    from helpers.server import ServerSettings, create_app
    from helpers.serving import free_port, serve_in_thread

    app = create_app(ServerSettings(repository=Path("/nonexistent")),
                     models=[SlowModel("wafer-mlp", delay_s=0)])
    make = v2_request("wafer-mlp", np.zeros((4, 8), np.float32))
    fired = []
    with serve_in_thread(app) as url:
        dead = f"http://127.0.0.1:{free_port()}"
        run = asyncio.run(drive([url, dead], RoundRobin(), make, rate_per_s=100, seconds=1.0,
                                warmup_s=0.2, faults=[(0.5, lambda: fired.append(1))]))
    assert fired == [1]  # the fault ran once, within the run
    summary = run.summary()
    assert summary["requests"] == len(run.result.measured) > 50  # warm-up excluded
    assert summary["share 0"] == pytest.approx(0.5, abs=0.01)  # round robin over both
    assert 0.4 < summary["error share"] < 0.6 and summary["retries"] == 0
    assert set(run.balancer.attempt_log()["status"]) == {0, 200}


def test_a_replica_that_stops_answering_looks_as_slow_as_its_oldest_request_has_waited():
    from helpers.loadgen import Request

    clock = Clock()
    balancer = fake_balancer({"http://a": lambda r: 200, "http://b": lambda r: 200},
                             tau_s=0.1, clock=clock)
    stalled = asyncio.Event()

    async def frozen(request):
        await stalled.wait()
        return 200, "", "1"
    balancer.replicas["http://b"].sender = frozen

    async def go():
        await balancer(Request("POST", "/"))  # a, answered at once: its estimate stays 0
        hanging = [asyncio.ensure_future(balancer(Request("POST", "/"))) for _ in range(2)]
        for _ in range(3):  # b and a again: a answers, b does not
            await asyncio.sleep(0)
        clock.now += 2.0       # long enough for b's estimate to decay to nothing
        seen = {c.name: c for c in balancer.candidates()}
        stalled.set()
        await asyncio.gather(*hanging)
        return seen
    seen = asyncio.run(go())
    assert seen["http://b"].in_flight == 1 and seen["http://b"].latency_s == 2.0
    assert seen["http://a"].latency_s == 0.0
    assert balancer.replicas["http://b"].in_flight == 0  # answered: nothing left in flight


def test_a_removed_replica_drains_then_gets_nothing_and_can_come_back():
    from helpers.loadgen import Request

    clock = Clock()
    balancer = fake_balancer({"http://a": lambda r: 200, "http://b": lambda r: 200},
                             clock=clock)
    release = asyncio.Event()

    async def held(request):
        await release.wait()
        return 200, "", "1"
    balancer.replicas["http://b"].sender = held

    async def go():
        first = [asyncio.ensure_future(balancer(Request("POST", "/"))) for _ in range(2)]
        await asyncio.sleep(0)  # round robin: one to a, one held at b
        removing = asyncio.ensure_future(balancer.remove("http://b"))
        await asyncio.sleep(0.05)
        assert not removing.done(), "remove must wait for b's request in flight"
        assert balancer.serving == ["http://a"]
        during = [await balancer(Request("POST", "/")) for _ in range(4)]
        release.set()
        await removing
        await asyncio.gather(*first)
        return during
    during = asyncio.run(go())
    assert [s for s, _, _ in during] == [200] * 4
    stats = balancer.stats()
    assert stats.loc["http://b", "attempts"] == 1 and not stats.loc["http://b", "serving"]
    assert balancer.replicas["http://b"].sender is None  # its connections closed

    async def back():
        await balancer.add("http://b")
        balancer.replicas["http://b"].sender = held
        await balancer.add("http://c")  # a new one, with a fresh latency estimate
        await balancer.replicas["http://c"].sender.__aexit__(None, None, None)
    asyncio.run(back())
    assert balancer.serving == ["http://a", "http://b", "http://c"]
    assert balancer.replicas["http://c"].latency.value == 0
