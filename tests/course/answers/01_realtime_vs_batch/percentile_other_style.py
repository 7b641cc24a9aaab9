def percentile(values, q):
    """The q-th percentile (0 <= q <= 100) of values, numpy's linear definition."""
    if not (0 <= q <= 100):  # NaN fails every comparison, so it lands here too
        raise ValueError(f"percentile q={q} is outside [0, 100]")
    ordered = sorted(map(float, values))
    if len(ordered) == 0:
        raise ValueError("no values")
    if any(x != x for x in ordered):  # NaN is the one float unequal to itself
        raise ValueError("NaN among the values")
    rank = q / 100 * (len(ordered) - 1)
    below = int(rank)
    if below == len(ordered) - 1:
        return ordered[-1]
    return ordered[below] + (rank - below) * (ordered[below + 1] - ordered[below])


def meets_slo(latencies_ms, threshold_ms, q=99.0):
    """True when the q-th percentile of latencies_ms is at or below threshold_ms."""
    return not percentile(latencies_ms, q) > threshold_ms
