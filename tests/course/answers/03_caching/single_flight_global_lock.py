# Wrong: one lock for every key, so a miss on one wafer waits for another wafer's model call.
import asyncio


class SingleFlightCache:
    def __init__(self, cache):
        self.cache = cache
        self.lock = asyncio.Lock()

    @property
    def stats(self):
        return self.cache.stats

    async def get_or_compute(self, key, compute):
        async with self.lock:
            found, value = self.cache.lookup(key)
            if found:
                return value
            value = await compute()
            self.cache.put(key, value)
            return value
