from helpers.autoscaler import AutoscalingConfig

# Scales up well, then never comes down: the night costs as much as the busiest burst.
MY_CONFIG = AutoscalingConfig(target_in_flight=0.5, min_replicas=1, max_replicas=8,
                              stable_window_s=60, panic_window_s=6, panic_threshold=3,
                              downscale_delay_s=1e9)
