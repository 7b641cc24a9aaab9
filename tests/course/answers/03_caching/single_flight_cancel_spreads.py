# Wrong: awaits the shared task without shield, so one caller that leaves cancels it for all,
# and a failed key is never computed again (its task is never forgotten).
import asyncio


class SingleFlightCache:
    def __init__(self, cache):
        self.cache = cache
        self.tasks = {}

    @property
    def stats(self):
        return self.cache.stats

    async def get_or_compute(self, key, compute):
        found, value = self.cache.lookup(key)
        if found:
            return value
        if key not in self.tasks:
            self.tasks[key] = asyncio.ensure_future(compute())
        value = await self.tasks[key]
        self.cache.put(key, value)
        return value
