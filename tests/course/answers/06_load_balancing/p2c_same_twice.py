import random


class MyPowerOfTwo:
    """Draws with replacement: the same replica can be drawn twice, and then wins unopposed."""

    def __init__(self, rng=None):
        self.rng = rng or random.Random()

    def pick(self, candidates):
        if not candidates:
            raise ValueError("no replica to choose from")
        first, second = self.rng.choice(candidates), self.rng.choice(candidates)
        return second if second.in_flight < first.in_flight else first
