def largest_batch_within(sizes, per_call_s, slo_ms, max_wait_ms):
    """Walk the curve from the largest batch down; the first one that fits wins."""
    curve = sorted(zip(sizes, per_call_s, strict=True), reverse=True)

    def worst_ms(seconds):
        return max_wait_ms + 2 * seconds * 1e3

    for size, seconds in curve:
        if worst_ms(seconds) <= slo_ms:
            return size, worst_ms(seconds)
    size, seconds = curve[-1]  # nothing fits: the smallest, and by how much it misses
    return size, worst_ms(seconds)
