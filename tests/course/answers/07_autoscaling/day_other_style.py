from helpers.autoscaler import AutoscalingConfig

# A shorter window and a longer down delay than the reference: reacts sooner, removes later.
MY_CONFIG = AutoscalingConfig(target_in_flight=0.5, min_replicas=1, max_replicas=7,
                              stable_window_s=40, panic_window_s=4, panic_threshold=2.5,
                              upscale_delay_s=0, downscale_delay_s=45)
