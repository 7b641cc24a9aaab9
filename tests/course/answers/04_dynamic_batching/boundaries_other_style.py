from functools import cache


def choose_boundaries(lengths, n_buckets):
    """Top-down: the cheapest split of the distinct lengths into at most n_buckets runs."""
    values = tuple(sorted(set(lengths)))
    weight = {v: list(lengths).count(v) for v in values}

    def bucket_padding(run):
        return sum(weight[v] * (run[-1] - v) for v in run)

    @cache
    def cheapest(end, buckets):  # values[:end] in at most `buckets` buckets
        whole = (bucket_padding(values[:end]), ())
        if buckets == 1:
            return whole
        options = [whole]
        for cut in range(1, end):
            cost, bounds = cheapest(cut, buckets - 1)
            options.append((cost + bucket_padding(values[cut:end]), bounds + (values[cut - 1],)))
        return min(options)

    return cheapest(len(values), n_buckets)[1] if values else ()
