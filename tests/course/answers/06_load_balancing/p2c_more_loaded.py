import random


class MyPowerOfTwo:
    """The comparison the wrong way round: the busier of the two wins."""

    def __init__(self, rng=None):
        self.rng = rng or random.Random()

    def pick(self, candidates):
        if not candidates:
            raise ValueError("no replica to choose from")
        if len(candidates) == 1:
            return candidates[0]
        first, second = self.rng.sample(list(candidates), 2)
        return second if second.in_flight > first.in_flight else first
