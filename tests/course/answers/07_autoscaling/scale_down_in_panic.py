import math


def my_scale_rule(stable_load, panic_load, current, panicking, config):
    """Panics on a jump, but forgets it the next tick: scales down while the backlog drains."""
    def ratio(load):
        wanted = math.ceil(load / config.target_in_flight - 1e-9) if load > 0 else 0
        return max(config.min_replicas, min(config.max_replicas, wanted))

    stable, burst = ratio(stable_load), ratio(panic_load)
    starts_panic = burst > current and burst >= config.panic_threshold * max(current, 1)
    if starts_panic:
        return max(current, stable, burst), True
    return stable, False
