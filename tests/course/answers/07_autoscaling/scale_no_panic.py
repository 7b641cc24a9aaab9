import math


def my_scale_rule(stable_load, panic_load, current, panicking, config):
    """The stable window only: never panics, so a burst waits for the long average."""
    wanted = math.ceil(stable_load / config.target_in_flight - 1e-9) if stable_load > 0 else 0
    return max(config.min_replicas, min(config.max_replicas, wanted)), False
