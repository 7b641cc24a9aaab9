def my_hold(desired, current, wanted, at_s, config):
    """Never restarts the wait when the autoscaler changes its mind: an old wish to go up
    lets a sudden wish to go down through at once."""
    if desired == current:
        return current, wanted, "steady"
    direction = 1 if desired > current else -1
    if wanted is None:
        wanted = (direction, at_s)
    delay = config.upscale_delay_s if direction > 0 else config.downscale_delay_s
    if at_s - wanted[1] >= delay:
        return desired, None, "go"
    return current, wanted, "wait"
