from helpers.bucketing import bucket_for


def choose_boundaries(lengths, n_buckets):
    # Adds, one at a time, the boundary that lowers the padding most: good, not the least.
    def cost(bounds):
        buckets = {}
        for n in lengths:
            buckets.setdefault(bucket_for(n, bounds), []).append(n)
        return sum(len(b) * max(b) - sum(b) for b in buckets.values())

    chosen, candidates = [], sorted(set(lengths))[:-1]
    for _ in range(n_buckets - 1):
        options = [c for c in candidates if c not in chosen]
        if not options:
            break
        best = min(options, key=lambda c: cost(sorted(chosen + [c])))
        if cost(sorted(chosen + [best])) >= cost(chosen):
            break
        chosen = sorted(chosen + [best])
    return tuple(chosen)
