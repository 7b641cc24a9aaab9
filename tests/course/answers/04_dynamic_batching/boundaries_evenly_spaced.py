import numpy as np


def choose_boundaries(lengths, n_buckets):
    # Evenly spaced between the shortest and the longest note.
    cuts = np.linspace(min(lengths), max(lengths), n_buckets + 1)[1:-1]
    return tuple(sorted({int(c) for c in cuts if int(c) < max(lengths)}))
