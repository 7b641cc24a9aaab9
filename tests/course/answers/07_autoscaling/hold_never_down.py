def my_hold(desired, current, wanted, at_s, config):
    """Up after the delay, but never down: no flapping, and no savings."""
    if desired <= current:
        return current, None, "keep"
    if wanted is None or wanted[0] != 1:
        wanted = (1, at_s)
    if at_s - wanted[1] >= config.upscale_delay_s:
        return desired, None, "up"
    return current, wanted, "wait"
