"""A prediction cache: TTL + LRU, content-hashed keys, and request coalescing.

- ``cache_key(model, version, inputs)`` hashes the *canonical bytes* of the inputs
  (dtype, shape and C-order data for arrays; sorted JSON for everything else)
  together with the model name and version. Equal inputs hit whatever Python
  object carried them; a new model version never serves the old one's answers.
- ``TTLCache`` keeps at most ``max_entries`` answers, each for ``ttl_s`` seconds.
  An entry is expired from the instant ``now >= stored_at + ttl_s``. When full,
  the least recently *used* entry is evicted. The clock is injectable, so expiry
  is tested without sleeping.
- ``CoalescingCache`` adds single-flight: concurrent misses on the same key run
  the computation once and all share its result (or its exception, which is not
  cached). Without it, a burst of identical requests on a cold key — the moment
  a cache exists for — computes the same answer N times.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["cache_key", "CacheStats", "TTLCache", "CoalescingCache"]


def _canonical_bytes(inputs: Any) -> bytes:
    if isinstance(inputs, np.ndarray) and inputs.dtype == object:  # texts: hash the values
        return f"objects|{inputs.shape}|".encode() + _canonical_bytes(inputs.tolist())
    if isinstance(inputs, np.ndarray):
        array = np.ascontiguousarray(inputs)
        header = f"ndarray|{array.dtype.str}|{array.shape}|".encode()
        return header + array.tobytes()
    if isinstance(inputs, (bytes, bytearray)):
        return b"bytes|" + bytes(inputs)
    try:
        text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot build a cache key from {type(inputs).__name__}: {exc}") from exc
    return b"json|" + text.encode()


def cache_key(model: str, version: str | int, inputs: Any) -> str:
    """A hex SHA-256 over the model name, its version and the inputs' canonical bytes."""
    digest = hashlib.sha256()
    digest.update(f"{model}\x00{version}\x00".encode())
    digest.update(_canonical_bytes(inputs))
    return digest.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    expirations: int = 0  # entries found but too old (each also counts as a miss)
    evictions: int = 0    # entries pushed out by the size limit
    coalesced: int = 0    # misses that waited for an identical in-flight computation

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


_MISSING = object()


class TTLCache:
    """At most ``max_entries`` values, each valid for ``ttl_s`` seconds, LRU eviction."""

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        if not (ttl_s > 0 and ttl_s < float("inf")):
            raise ValueError(f"ttl_s must be a positive finite number of seconds, got {ttl_s!r}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.stats = CacheStats()
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Any, float]] = OrderedDict()  # key -> (value, expiry)

    def lookup(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` on a hit, ``(False, None)`` on a miss; counts either."""
        entry = self._entries.get(key, _MISSING)
        if entry is not _MISSING:
            value, expires_at = entry
            if self._clock() < expires_at:
                self._entries.move_to_end(key)  # most recently used
                self.stats.hits += 1
                return True, value
            del self._entries[key]
            self.stats.expirations += 1
        self.stats.misses += 1
        return False, None

    def put(self, key: str, value: Any) -> None:
        self._entries[key] = (value, self._clock() + self.ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)  # the least recently used
            self.stats.evictions += 1

    def invalidate(self, key: str) -> bool:
        return self._entries.pop(key, _MISSING) is not _MISSING

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` holds a live entry; touches neither stats nor recency."""
        entry = self._entries.get(key)
        return entry is not None and self._clock() < entry[1]


class CoalescingCache:
    """A ``TTLCache`` whose concurrent misses on one key compute once (single-flight).

    The shared computation belongs to no single caller: a caller that gives up
    (its deadline passed, its client left) stops waiting without stopping it for
    the others. Only when *every* caller has left is the computation cancelled, so
    nothing computes an answer nobody is waiting for.
    """

    def __init__(self, cache: TTLCache | None = None) -> None:
        self.cache = cache or TTLCache()
        self._in_flight: dict[str, asyncio.Task] = {}
        self._waiters: dict[str, int] = {}

    @property
    def stats(self) -> CacheStats:
        return self.cache.stats

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        found, value = self.cache.lookup(key)
        if found:
            return value
        task = self._in_flight.get(key)
        if task is not None:
            self.stats.coalesced += 1
        else:
            # The computation is its own task: if the caller that started it is
            # cancelled, the others waiting on it still get their answer.
            task = asyncio.ensure_future(compute())
            self._in_flight[key] = task
            task.add_done_callback(lambda t: self._finish(key, t))
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]
                if not task.done():  # the last caller left: nobody wants this answer
                    # Forget it now, not when it finishes cancelling: a caller arriving
                    # in between must start afresh, not join a computation being dropped.
                    if self._in_flight.get(key) is task:
                        del self._in_flight[key]
                    task.cancel()

    def _finish(self, key: str, task: asyncio.Task) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled() and task.exception() is None:
            self.cache.put(key, task.result())  # failures are not cached
