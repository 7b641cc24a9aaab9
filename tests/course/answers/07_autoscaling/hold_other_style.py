def my_hold(desired, current, wanted, at_s, config):
    """Keyed on a sign computed by comparison; delays looked up in a dict."""
    sign = (desired > current) - (desired < current)
    if not sign:
        return current, None, "nothing to change"
    since = wanted[1] if wanted is not None and wanted[0] == sign else at_s
    delay = {1: config.upscale_delay_s, -1: config.downscale_delay_s}[sign]
    if at_s - since < delay:
        return current, (sign, since), f"holding {current}, {desired} wanted since {since:g}"
    return desired, None, f"now {desired}"
