# A correct TTL + LRU cache in another style: a dict and a use counter.
import itertools
import time


class TTLLRUCache:
    """Dict of key -> [value, expires_at, last_use]; the least recent use is evicted."""

    def __init__(self, max_entries, ttl_s, clock=time.monotonic):
        if not (isinstance(max_entries, int) and max_entries >= 1) or ttl_s <= 0:
            raise ValueError(f"bad max_entries={max_entries!r} or ttl_s={ttl_s!r}")
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self.stats = type("Stats", (), {"hits": 0, "misses": 0})()
        self.data, self.tick = {}, itertools.count()

    def __len__(self):
        return len(self.data)

    def lookup(self, key):
        entry = self.data.get(key)
        if entry is not None and self.clock() >= entry[1]:
            del self.data[key]
            entry = None
        if entry is None:
            self.stats.misses += 1
            return False, None
        entry[2] = next(self.tick)
        self.stats.hits += 1
        return True, entry[0]

    def put(self, key, value):
        self.data[key] = [value, self.clock() + self.ttl_s, next(self.tick)]
        if len(self.data) > self.max_entries:
            oldest = min(self.data, key=lambda k: self.data[k][2])
            del self.data[oldest]
