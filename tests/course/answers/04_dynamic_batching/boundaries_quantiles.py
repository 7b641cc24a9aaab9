import numpy as np


def choose_boundaries(lengths, n_buckets):
    # Equal-count buckets: each holds about the same number of notes.
    cuts = np.quantile(lengths, [k / n_buckets for k in range(1, n_buckets)], method="lower")
    return tuple(sorted({int(c) for c in cuts if c < max(lengths)}))
