import random


class MyPowerOfTwo:
    """Draw two different indexes, compare loads; a correct answer unlike the reference."""

    def __init__(self, rng=None):
        self.rng = rng or random.Random()

    def pick(self, candidates):
        n = len(candidates)
        if n == 0:
            raise ValueError("nothing to pick from")
        if n == 1:
            return candidates[0]
        i = self.rng.randrange(n)
        j = self.rng.randrange(n - 1)
        if j >= i:       # skip i: j is uniform over the others
            j += 1
        a, b = candidates[i], candidates[j]
        return min((a, b), key=lambda c: c.in_flight) if a.in_flight != b.in_flight else a
