"""Traces and the autoscaling simulator: arrivals follow the trace, queues grow when capacity
is short, cold starts cost what they should, and a policy's decisions shape the cost."""

import numpy as np
import pytest

from helpers.autoscaler import AutoscalingConfig
from helpers.traces import ReplicaModel, Trace, day_of_shifts, simulate, spike_trace, step_trace


def test_arrivals_follow_the_rates_of_each_step():
    trace = step_trace(before=100, after=400, at_s=10, duration_s=20)
    arrivals = trace.arrivals(seed=1)
    assert np.all(np.diff(arrivals) >= 0) and arrivals[-1] < 20
    first, second = (arrivals < 10).sum(), (arrivals >= 10).sum()
    assert abs(first - 1000) < 150 and abs(second - 4000) < 300
    assert np.array_equal(arrivals, trace.arrivals(seed=1))  # deterministic in the seed
    assert trace.rate_at(9.5) == 100 and trace.rate_at(10) == 400 and trace.rate_at(99) == 400


def test_a_trace_refuses_rates_it_cannot_replay():
    for rates in ([], [1.0, -1.0], [np.nan]):
        with pytest.raises(ValueError):
            Trace("bad", np.array(rates))


def test_a_spike_and_a_day_have_the_shape_of_the_story():
    spike = spike_trace(base=50, peak=200, at_s=5, length_s=3, duration_s=12)
    assert list(spike.rates) == [50] * 5 + [200] * 3 + [50] * 4
    day = day_of_shifts(peak_rate=300, bursts=0, seed=0)
    assert day.duration_s == 1440
    at = {h: day.rate_at(h * 60) for h in (3, 10, 18)}  # 1 s = 1 minute of the day
    assert at[10] == 300 and at[18] == pytest.approx(240) and at[3] == pytest.approx(105)
    assert day.rate_at(6 * 60) < 0.5 * at[10]  # the shift change dips
    bursty = day_of_shifts(peak_rate=300, bursts=12, seed=3)
    assert bursty.rates.max() > 300 and np.array_equal(
        bursty.rates, day_of_shifts(peak_rate=300, bursts=12, seed=3).rates)


FIXED = AutoscalingConfig(min_replicas=1, max_replicas=8)


def test_under_capacity_latency_is_the_service_time_and_over_it_the_queue_grows():
    replica = ReplicaModel(capacity_per_s=100, startup_s=5)
    light = simulate(step_trace(30, 30, 0, 20), FIXED, replica, slo_ms=50, autoscale=False)
    assert light.p99_ms < 50 and light.slo_misses < 0.01
    assert np.percentile(light.latencies_s, 1) == pytest.approx(0.01)  # 1/capacity
    heavy = simulate(step_trace(150, 150, 0, 20), FIXED, replica, slo_ms=50, autoscale=False)
    # 50 % over capacity for 20 s: about 1,000 requests queue up, waits grow to seconds
    assert heavy.slo_misses > 0.8 and heavy.p99_ms > 5000
    assert heavy.replica_seconds == pytest.approx(20) and heavy.timeline["replicas"].max() == 1


def test_scaling_up_pays_the_start_up_and_a_warm_spare_hides_it():
    replica = ReplicaModel(capacity_per_s=100, startup_s=5)
    trace = step_trace(before=40, after=150, at_s=10, duration_s=40)
    config = AutoscalingConfig(target_in_flight=4, min_replicas=1, max_replicas=4,
                               stable_window_s=4, panic_window_s=1, upscale_delay_s=0,
                               downscale_delay_s=30)
    cold = simulate(trace, config, replica, slo_ms=100)
    spare = simulate(trace, AutoscalingConfig(**{**config.__dict__, "warm_spares": 1}),
                     replica, slo_ms=100)
    fixed = simulate(trace, config, replica, slo_ms=100, autoscale=False)
    assert cold.timeline["replicas"].max() >= 2 and fixed.timeline["replicas"].max() == 1
    assert cold.slo_misses < fixed.slo_misses        # scaling helps
    assert spare.slo_misses < cold.slo_misses        # the spare skips the 5 s start-up
    assert spare.replica_seconds > cold.replica_seconds  # and costs while idle
    # the cold replica took traffic only once ready: 5 s after the decision
    first_up = next(d for d in cold.decisions if d.changed)
    ready_rows = cold.timeline[cold.timeline["ready"] >= 2]
    assert ready_rows["t_s"].iloc[0] >= first_up.at_s + 5


def test_scale_down_waits_for_the_delay_and_the_replica_drains_first():
    replica = ReplicaModel(capacity_per_s=100, startup_s=1)
    trace = step_trace(before=150, after=10, at_s=10, duration_s=40)
    config = AutoscalingConfig(target_in_flight=1, min_replicas=1, max_replicas=4,
                               stable_window_s=2, panic_window_s=1, panic_threshold=float("inf"),
                               downscale_delay_s=10)
    result = simulate(trace, config, replica, slo_ms=100, initial_replicas=3)
    down = next(d for d in result.decisions if d.replicas < d.previous)
    assert down.at_s >= 10 + 10 and result.timeline["replicas"].iloc[-1] == 1
    # cost: 3 replicas until the scale-down, then 1 (drained ones stop costing then)
    assert result.replica_seconds == pytest.approx(3 * down.at_s + (40 - down.at_s), abs=1)


def test_the_simulation_refuses_to_scale_from_zero():
    with pytest.raises(ValueError, match="min_replicas >= 1"):
        simulate(step_trace(1, 1, 0, 2), AutoscalingConfig(min_replicas=0), ReplicaModel(10, 1),
                 slo_ms=50)


def test_the_simulation_uses_the_delay_rule_it_is_given():
    def never(desired, current, wanted, at_s, config):
        return current, None, "never changes"

    trace = step_trace(before=40, after=150, at_s=5, duration_s=20)
    config = AutoscalingConfig(target_in_flight=4, max_replicas=4, panic_threshold=100)
    held = simulate(trace, config, ReplicaModel(100, 1), slo_ms=100, hold=never)
    free = simulate(trace, config, ReplicaModel(100, 1), slo_ms=100)
    assert held.timeline["replicas"].max() == 1 < free.timeline["replicas"].max()
    assert held.decisions[-1].reason == "never changes"
