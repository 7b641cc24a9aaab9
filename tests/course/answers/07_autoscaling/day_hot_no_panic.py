import math

from helpers.autoscaler import AutoscalingConfig

# Cheap: replicas run hot (3 in flight each) and bursts wait for the long window.
MY_CONFIG = AutoscalingConfig(target_in_flight=3, min_replicas=1, max_replicas=8,
                              stable_window_s=60, panic_window_s=6, panic_threshold=math.inf,
                              downscale_delay_s=30)
