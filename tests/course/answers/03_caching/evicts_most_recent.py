# Wrong: evicts the most recently used entry.
import time
from collections import OrderedDict
from types import SimpleNamespace


class TTLLRUCache:
    def __init__(self, max_entries, ttl_s, clock=time.monotonic):
        if max_entries < 1 or not ttl_s > 0:
            raise ValueError("bad settings")
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self.stats = SimpleNamespace(hits=0, misses=0)
        self._entries = OrderedDict()

    def __len__(self):
        return len(self._entries)

    def lookup(self, key):
        if key in self._entries:
            value, expires_at = self._entries[key]
            if self.clock() < expires_at:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return True, value
            del self._entries[key]
        self.stats.misses += 1
        return False, None

    def put(self, key, value):
        self._entries[key] = (value, self.clock() + self.ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.pop(list(self._entries)[-2])
