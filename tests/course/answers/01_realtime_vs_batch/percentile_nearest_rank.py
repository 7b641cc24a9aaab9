import math


def percentile(values, q):
    """The nearest-rank percentile: a value of the sample, never between two."""
    q = float(q)
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("an empty sample has no percentile")
    if any(math.isnan(x) for x in xs):
        raise ValueError("values contain NaN")
    rank = max(1, math.ceil(q / 100.0 * len(xs)))
    return xs[rank - 1]


def meets_slo(latencies_ms, threshold_ms, q=99.0):
    return percentile(latencies_ms, q) <= threshold_ms
