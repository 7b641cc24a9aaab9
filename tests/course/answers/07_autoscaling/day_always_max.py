from helpers.autoscaler import AutoscalingConfig

# Never misses, pays for eight replicas all day.
MY_CONFIG = AutoscalingConfig(min_replicas=8, max_replicas=8)
