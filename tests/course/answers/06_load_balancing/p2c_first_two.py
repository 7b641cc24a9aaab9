import random


class MyPowerOfTwo:
    """Compares the first two of the list, never the others: replica 2 never gets traffic
    (which here hides the slow replica, so the p99 looks fine; the unit tests catch it)."""

    def __init__(self, rng=None):
        self.rng = rng or random.Random()

    def pick(self, candidates):
        if not candidates:
            raise ValueError("no replica to choose from")
        if len(candidates) == 1:
            return candidates[0]
        first, second = candidates[0], candidates[1]
        if first.in_flight == second.in_flight:
            return self.rng.choice([first, second])
        return first if first.in_flight < second.in_flight else second
