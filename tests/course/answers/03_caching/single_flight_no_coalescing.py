# Wrong: every miss computes (lookup, compute, put): a burst computes N times.
class SingleFlightCache:
    def __init__(self, cache):
        self.cache = cache

    @property
    def stats(self):
        return self.cache.stats

    async def get_or_compute(self, key, compute):
        found, value = self.cache.lookup(key)
        if found:
            return value
        value = await compute()
        self.cache.put(key, value)
        return value
