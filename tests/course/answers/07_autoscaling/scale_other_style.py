import math


def my_scale_rule(stable_load, panic_load, current, panicking, config):
    """Bounds applied with sorted(); the panic test written the other way round."""
    def replicas_for(load):
        if load <= 0:
            return config.min_replicas
        return sorted([config.min_replicas, math.ceil(load / config.target_in_flight - 1e-9),
                       config.max_replicas])[1]

    stable, burst = replicas_for(stable_load), replicas_for(panic_load)
    panic_now = not (burst <= current or burst < config.panic_threshold * max(current, 1))
    if panic_now or panicking:
        return max([stable, burst, current]), panic_now
    return stable, False
