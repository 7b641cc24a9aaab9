# A correct single-flight cache in another style: futures set by a helper coroutine.
import asyncio


class SingleFlightCache:
    def __init__(self, cache):
        self.cache = cache
        self.waiting = {}
        self.running = set()  # strong references: the loop keeps only weak ones to tasks

    @property
    def stats(self):
        return self.cache.stats

    async def get_or_compute(self, key, compute):
        hit, value = self.cache.lookup(key)
        if hit:
            return value
        if key not in self.waiting:
            future = asyncio.get_running_loop().create_future()
            self.waiting[key] = future

            async def run():
                try:
                    result = await compute()
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    self.cache.put(key, result)
                    future.set_result(result)
                finally:
                    del self.waiting[key]

            task = asyncio.ensure_future(run())
            self.running.add(task)
            task.add_done_callback(self.running.discard)
        return await asyncio.shield(self.waiting[key])
