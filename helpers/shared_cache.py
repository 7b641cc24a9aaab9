"""A prediction cache every replica shares: Redis, with ``helpers.cache``'s versioned keys.

Each replica's own ``TTLCache`` only knows the answers *it* computed: with three replicas
behind a balancer, a repeated request finds its answer a third of the time. A shared cache
is one store for all of them, at the price of a network round trip per lookup.

- ``RedisCache``: the server's cache, asynchronous (``alookup``, ``aput``), so a lookup
  waits for Redis without blocking the event loop. Values are NumPy arrays stored as
  ``.npy`` bytes, loaded with ``allow_pickle=False``: a cache entry is data, never code.
  Entries expire after ``ttl_s`` (Redis's own ``EX``). A cache is an optimisation: when
  Redis does not answer, a lookup is a miss and a store is skipped (counted in
  ``stats.errors``); the request is still served.

A Redis to point it at, for a lesson or a test: ``helpers.serving.redis_server()``.

    python -m helpers.server --cache-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio

from .cache import CacheStats

__all__ = ["RedisCache", "SharedCacheStats"]


def _encode(value: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


def _decode(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw), allow_pickle=False)


@dataclass
class SharedCacheStats(CacheStats):
    errors: int = 0  # lookups or stores Redis did not answer (served without the cache)


class RedisCache:
    """This replica's view of the shared cache; ``stats`` counts this replica's lookups."""

    def __init__(self, url: str, ttl_s: float = 60.0, prefix: str = "prediction:",
                 timeout_s: float = 0.5) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.url, self.ttl_ms, self.prefix = url, max(1, int(ttl_s * 1000)), prefix
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=timeout_s,
                                                   socket_connect_timeout=timeout_s)
        self.stats = SharedCacheStats()

    async def alookup(self, key: str) -> tuple[bool, Any]:
        try:
            raw = await self.client.get(self.prefix + key)
        except (redis.RedisError, OSError):
            self.stats.errors += 1
            raw = None
        value = None
        if raw is not None:
            try:
                value = _decode(raw)
            except (ValueError, OSError, EOFError):  # not a .npy array (a pickle is refused)
                self.stats.errors += 1
                raw = None
        if raw is None:
            self.stats.misses += 1
            return False, None
        self.stats.hits += 1
        return True, value

    async def aput(self, key: str, value: Any) -> None:
        try:
            await self.client.set(self.prefix + key, _encode(value), px=self.ttl_ms)
        except (redis.RedisError, OSError):
            self.stats.errors += 1

    async def aclose(self) -> None:
        await self.client.aclose()
