import math


def percentile(values, q):
    q = float(q)
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("an empty sample has no percentile")
    if any(math.isnan(x) for x in xs):
        raise ValueError("values contain NaN")
    position = (len(xs) - 1) * q / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(xs) - 1)
    return xs[lower] + (xs[upper] - xs[lower]) * (position - lower)


def meets_slo(latencies_ms, threshold_ms, q=99.0):
    """Met only strictly below the threshold: a p99 of exactly 50 ms 'misses' a 50 ms SLO."""
    return percentile(latencies_ms, q) < threshold_ms
