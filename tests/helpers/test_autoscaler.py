"""The autoscaling decision, with made-up times and loads: the ratio, the windows, panic,
the delays that stop flapping."""

import pytest

from helpers.autoscaler import Autoscaler, AutoscalingConfig, desired_replicas


def test_desired_replicas_is_load_over_target_rounded_up_within_bounds():
    assert desired_replicas(4.0, 2.0) == 2
    assert desired_replicas(4.01, 2.0) == 3  # a replica short is a queue
    assert desired_replicas(4.000000001, 2.0) == 2  # float noise is not load
    assert desired_replicas(0.0, 2.0, min_replicas=1) == 1
    assert desired_replicas(0.0, 2.0, min_replicas=0) == 0
    assert desired_replicas(100.0, 2.0, min_replicas=1, max_replicas=5) == 5
    with pytest.raises(ValueError):
        desired_replicas(-1.0, 2.0)
    with pytest.raises(ValueError):
        desired_replicas(float("nan"), 2.0)


def test_a_config_that_cannot_work_is_refused_with_every_reason():
    with pytest.raises(ValueError, match="target_in_flight.*panic_window_s"):
        AutoscalingConfig(target_in_flight=0, panic_window_s=30, stable_window_s=10)
    with pytest.raises(ValueError, match="min_replicas"):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="outside"):
        Autoscaler(AutoscalingConfig(max_replicas=2), replicas=3)


def run(scaler, loads, every_s=1.0, start_s=0.0):
    """Observe each load and decide, one tick per ``every_s``; the replicas after each."""
    out = []
    for i, load in enumerate(loads):
        at = start_s + i * every_s
        scaler.observe(at, load)
        out.append(scaler.decide(at).replicas)
    return out


def test_the_stable_window_averages_and_the_delays_hold_changes_back():
    config = AutoscalingConfig(target_in_flight=2, max_replicas=4, stable_window_s=4,
                               panic_window_s=1, panic_threshold=10, upscale_delay_s=2,
                               downscale_delay_s=3)
    scaler = Autoscaler(config)
    # load 6 from t=0: the 4 s mean climbs, wants 3; after 2 s of wanting it, scales up
    replicas = run(scaler, [6, 6, 6, 6, 6])
    assert replicas == [1, 1, 3, 3, 3]
    decision = scaler.decisions[2]
    assert decision.changed and "scale up to 3" in decision.reason and not decision.panic
    # the load goes away: the 4 s mean falls below 4 at t=6, so "down" is wanted from then;
    # 3 s later (t=9) the replicas go straight to what the load asks for then
    replicas = run(scaler, [0] * 8, start_s=5)
    assert replicas == [3, 3, 3, 3, 1, 1, 1, 1]
    assert "scale down to 1: wanted for 3.0 s" in scaler.decisions[9].reason
    assert all(not d.panic for d in scaler.decisions)


def test_a_change_of_mind_restarts_the_delay_so_noise_does_not_flap():
    config = AutoscalingConfig(target_in_flight=1, max_replicas=4, stable_window_s=1,
                               panic_window_s=1, panic_threshold=10, upscale_delay_s=3,
                               downscale_delay_s=3)
    scaler = Autoscaler(config, replicas=2)
    noisy = [3, 1, 3, 1, 3, 1, 3, 1, 3, 1]  # asks for 3, then 1, then 3 ...
    assert run(scaler, noisy) == [2] * 10
    assert sum(d.changed for d in scaler.decisions) == 0


def test_panic_scales_up_at_once_and_never_down_for_a_stable_window():
    config = AutoscalingConfig(target_in_flight=2, max_replicas=8, stable_window_s=10,
                               panic_window_s=1, panic_threshold=2, upscale_delay_s=5,
                               downscale_delay_s=0)
    scaler = Autoscaler(config, replicas=1)
    assert run(scaler, [1, 1, 1]) == [1, 1, 1]
    # a jump: the 1 s window asks for 6 >= 2 x 1, the stable window only for 2 or 3
    scaler.observe(3, 12)
    decision = scaler.decide(3)
    assert decision.panic and decision.replicas == 6 and "panic" in decision.reason
    # the load falls back at once: still panicking, so no scale down for 10 s
    replicas = run(scaler, [1] * 9, start_s=4)
    assert replicas == [6] * 9 and all(d.panic for d in scaler.decisions[-9:])
    # a stable window after the jump, panic ends and the (zero) down delay applies
    scaler.observe(13, 1)
    after = scaler.decide(13)
    assert not after.panic and after.replicas == 1 and after.changed


def test_without_panic_a_jump_waits_for_the_up_delay():
    config = AutoscalingConfig(target_in_flight=2, max_replicas=8, stable_window_s=10,
                               panic_window_s=1, panic_threshold=float("inf"),
                               upscale_delay_s=3)
    scaler = Autoscaler(config)
    replicas = run(scaler, [12] * 6)
    assert replicas[:3] == [1, 1, 1] and replicas[3] > 1 and not any(
        d.panic for d in scaler.decisions)


def test_samples_out_of_order_or_negative_are_refused():
    scaler = Autoscaler(AutoscalingConfig())
    scaler.observe(5.0, 1)
    with pytest.raises(ValueError, match="time order"):
        scaler.observe(4.0, 1)
    with pytest.raises(ValueError, match=">= 0"):
        scaler.observe(6.0, -1)


def test_old_samples_leave_the_window():
    config = AutoscalingConfig(target_in_flight=1, max_replicas=10, stable_window_s=3,
                               panic_window_s=1, panic_threshold=100, downscale_delay_s=0)
    scaler = Autoscaler(config, replicas=10)
    scaler.observe(0, 10)
    scaler.observe(5, 2)  # the 10 is more than 3 s old: only the 2 counts
    decision = scaler.decide(5)
    assert decision.stable_load == 2 and decision.replicas == 2


def test_the_delay_rule_is_a_pure_function_an_autoscaler_can_take_from_outside():
    from helpers.autoscaler import hold_changes

    config = AutoscalingConfig(upscale_delay_s=2, downscale_delay_s=5, max_replicas=8)
    assert hold_changes(3, 3, None, 10.0, config)[:2] == (3, None)
    assert hold_changes(4, 3, None, 10.0, config)[:2] == (3, (1, 10.0))
    assert hold_changes(4, 3, (1, 10.0), 12.0, config)[:2] == (4, None)
    assert hold_changes(2, 3, (1, 10.0), 12.0, config)[:2] == (3, (-1, 12.0))  # changed mind
    calls = []

    def never(desired, current, wanted, at_s, config):
        calls.append(desired)
        return current, None, "held by the test"
    scaler = Autoscaler(AutoscalingConfig(target_in_flight=1, panic_threshold=100,
                                          max_replicas=8), hold=never)
    assert run(scaler, [5, 5, 5]) == [1, 1, 1] and calls == [5, 5, 5]
    assert scaler.decisions[-1].reason == "held by the test"


def test_the_scale_rule_enters_panic_on_a_jump_and_never_goes_down_while_panicking():
    from helpers.autoscaler import scale_rule

    config = AutoscalingConfig(target_in_flight=2, min_replicas=1, max_replicas=10,
                               panic_threshold=2)
    assert scale_rule(6, 6, 3, False, config) == (3, False)      # steady
    assert scale_rule(2, 2, 3, False, config) == (1, False)      # down, outside panic
    assert scale_rule(4, 12, 3, False, config) == (6, True)      # 6 >= 2 x 3: panic
    assert scale_rule(4, 10, 3, False, config) == (2, False)     # 5 < 6: no panic
    assert scale_rule(2, 2, 6, True, config) == (6, False)       # panicking: never down
    assert scale_rule(0, 40, 1, False, config) == (10, True)     # bounded by max_replicas
    assert scale_rule(0, 0, 1, False, config) == (1, False)      # no load: the minimum
    calls = []

    def frozen(stable, burst, current, panicking, config):
        calls.append((stable, burst, current, panicking))
        return current, False
    scaler = Autoscaler(config, scale=frozen)
    run(scaler, [20, 20])
    assert [c[2] for c in calls] == [1, 1] and scaler.replicas == 1
