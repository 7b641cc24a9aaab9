def largest_batch_within(sizes, per_call_s, slo_ms, max_wait_ms):
    # "Within" read as strictly below: a worst case equal to the SLO is refused.
    worst = {s: max_wait_ms + 2000 * t for s, t in zip(sizes, per_call_s, strict=True)}
    fitting = [s for s in sizes if worst[s] < slo_ms]
    chosen = max(fitting) if fitting else min(sizes)
    return chosen, worst[chosen]
