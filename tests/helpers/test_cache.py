import asyncio

import numpy as np
import pytest

from helpers.cache import CoalescingCache, TTLCache, cache_key


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_keys_depend_on_content_model_and_version():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert cache_key("m", 1, x) == cache_key("m", 1, x.copy())
    assert cache_key("m", 1, x) == cache_key("m", 1, np.asfortranarray(x))  # same values
    assert cache_key("m", 1, x) != cache_key("m", 2, x)           # a new version never hits
    assert cache_key("m", 1, x) != cache_key("n", 1, x)
    assert cache_key("m", 1, x) != cache_key("m", 1, x.astype(np.float64))
    assert cache_key("m", 1, x) != cache_key("m", 1, x.reshape(4, 2))
    assert cache_key("m", 1, {"a": 1, "b": [1, 2]}) == cache_key("m", 1, {"b": [1, 2], "a": 1})
    assert cache_key("m", 1, "text") != cache_key("m", 1, b"text")
    with pytest.raises(TypeError, match="set"):
        cache_key("m", 1, {1, 2})
    with pytest.raises(TypeError):
        cache_key("m", 1, {"x": float("nan")})


def test_hit_miss_and_expiry_exactly_at_the_ttl_boundary():
    clock = FakeClock()
    cache = TTLCache(max_entries=10, ttl_s=5.0, clock=clock)
    assert cache.lookup("k") == (False, None)
    cache.put("k", "v")
    clock.now += 4.999
    assert cache.lookup("k") == (True, "v")
    clock.now += 0.001                          # exactly ttl_s after the put: expired
    assert "k" not in cache
    assert cache.lookup("k") == (False, None)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.expirations) == (1, 2, 1)
    assert len(cache) == 0


def test_put_refreshes_the_ttl_and_none_is_a_real_value():
    clock = FakeClock()
    cache = TTLCache(ttl_s=5.0, clock=clock)
    cache.put("k", None)
    clock.now += 4
    cache.put("k", None)
    clock.now += 4
    assert cache.lookup("k") == (True, None)


def test_lru_evicts_the_least_recently_used_not_the_oldest():
    cache = TTLCache(max_entries=3, ttl_s=60, clock=FakeClock())
    for key in "abc":
        cache.put(key, key.upper())
    cache.lookup("a")                            # a is now the most recently used
    cache.put("d", "D")                          # evicts b
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.put("e", "E")                          # evicts c
    assert "c" not in cache and cache.stats.evictions == 2 and len(cache) == 3


def test_contains_touches_neither_stats_nor_recency():
    cache = TTLCache(max_entries=2, ttl_s=60, clock=FakeClock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert "a" in cache
    cache.put("c", 3)                            # a was not refreshed by `in`: evicted
    assert "a" not in cache and cache.stats.lookups == 0


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"ttl_s": 0}, {"ttl_s": float("inf")},
                                    {"max_entries": 2.5}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        TTLCache(**kwargs)


def test_hit_rate_and_invalidate():
    cache = TTLCache(clock=FakeClock())
    assert cache.stats.hit_rate == 0.0
    cache.put("a", 1)
    cache.lookup("a")
    cache.lookup("b")
    assert cache.stats.hit_rate == 0.5
    assert cache.invalidate("a") and not cache.invalidate("a")


def test_concurrent_identical_misses_compute_once():
    async def scenario():
        coalescing = CoalescingCache(TTLCache(clock=FakeClock()))
        calls = 0
        release = asyncio.Event()

        async def compute():
            nonlocal calls
            calls += 1
            await release.wait()
            return "answer"

        waiters = [asyncio.create_task(coalescing.get_or_compute("k", compute)) for _ in range(10)]
        await asyncio.sleep(0.01)
        release.set()
        results = await asyncio.gather(*waiters)
        again = await coalescing.get_or_compute("k", compute)   # now a plain hit
        return calls, results, again, coalescing.stats

    calls, results, again, stats = asyncio.run(scenario())
    assert calls == 1 and results == ["answer"] * 10 and again == "answer"
    assert stats.coalesced == 9 and stats.misses == 10 and stats.hits == 1


def test_a_failure_is_shared_but_not_cached():
    async def scenario():
        coalescing = CoalescingCache(TTLCache(clock=FakeClock()))
        attempts = 0

        async def flaky():
            nonlocal attempts
            attempts += 1
            await asyncio.sleep(0.01)
            if attempts == 1:
                raise RuntimeError("model down")
            return 42

        first = await asyncio.gather(*(coalescing.get_or_compute("k", flaky) for _ in range(3)),
                                     return_exceptions=True)
        second = await coalescing.get_or_compute("k", flaky)
        return first, second, attempts

    first, second, attempts = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in first)
    assert second == 42 and attempts == 2


def test_the_starting_caller_leaving_does_not_cancel_the_others():
    async def scenario():
        coalescing = CoalescingCache(TTLCache(clock=FakeClock()))

        async def compute():
            await asyncio.sleep(0.05)
            return "done"

        leader = asyncio.create_task(coalescing.get_or_compute("k", compute))
        await asyncio.sleep(0)
        follower = asyncio.create_task(coalescing.get_or_compute("k", compute))
        await asyncio.sleep(0.01)
        leader.cancel()
        return await follower, leader

    result, leader = asyncio.run(scenario())
    assert result == "done" and leader.cancelled()


def test_a_caller_arriving_as_the_last_one_leaves_gets_a_fresh_computation():
    async def scenario():
        cache = CoalescingCache()
        gate, calls = asyncio.Event(), []

        async def compute():
            calls.append(1)
            await gate.wait()
            return 42

        first = asyncio.ensure_future(cache.get_or_compute("k", compute))
        await asyncio.sleep(0)
        first.cancel()  # the only caller leaves: the computation is dropped ...
        await asyncio.sleep(0)
        second = asyncio.ensure_future(cache.get_or_compute("k", compute))  # ... mid-cancel
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.wait_for(second, 5), len(calls)

    answer, computations = asyncio.run(scenario())
    assert answer == 42 and computations == 2
