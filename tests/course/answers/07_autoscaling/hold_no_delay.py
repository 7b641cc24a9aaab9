def my_hold(desired, current, wanted, at_s, config):
    """Obeys every tick at once: flaps with the noise."""
    return desired, None, "at once"
