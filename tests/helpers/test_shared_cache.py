"""The shared prediction cache: a real Redis (or the fakeredis fallback), arrays in and out
without pickles, misses when Redis is away, and one cache for two replicas."""

import asyncio
import pickle
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from helpers.server import ServerSettings, create_app
from helpers.serving import free_port, redis_server, serve_in_thread
from helpers.shared_cache import RedisCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving_fixtures import SlowModel  # noqa: E402

KINDS = ["fake"] + (["redis-server"] if shutil.which("redis-server") else [])


@pytest.mark.parametrize("kind", KINDS)
def test_a_redis_runs_for_the_block_and_says_what_it_is(kind):
    with redis_server(prefer_fake=kind == "fake") as endpoint:
        client = redis.Redis.from_url(endpoint.url)
        assert client.ping() and client.set("k", b"v") and client.get("k") == b"v"
        assert ("fakeredis" in endpoint.kind) == (kind == "fake")
        client.close()
    with pytest.raises(redis.ConnectionError):  # stopped on the way out
        redis.Redis.from_url(endpoint.url, socket_connect_timeout=0.5).ping()


@pytest.mark.parametrize("kind", KINDS)
def test_arrays_go_in_and_come_out_and_expire(kind):
    async def scenario(url):
        cache = RedisCache(url, ttl_s=0.1)
        value = np.arange(6, dtype=np.float32).reshape(2, 3)
        missed = await cache.alookup("a")
        await cache.aput("a", value)
        found, got = await cache.alookup("a")
        await asyncio.sleep(0.3)  # past the TTL: Redis dropped it
        expired = await cache.alookup("a")
        await cache.aclose()
        return missed, found, got, value, expired, cache.stats

    with redis_server(prefer_fake=kind == "fake") as endpoint:
        missed, found, got, value, expired, stats = asyncio.run(scenario(endpoint.url))
    assert missed == (False, None) and found and expired == (False, None)
    assert got.dtype == np.float32 and np.array_equal(got, value)
    assert (stats.hits, stats.misses, stats.errors) == (1, 2, 0)


def test_a_poisoned_entry_is_a_miss_not_code_and_a_missing_redis_is_a_miss_not_an_error():
    class Boom:
        def __reduce__(self):
            return (print, ("pickle ran",))

    async def scenario(url):
        cache = RedisCache(url)
        await cache.client.set(cache.prefix + "k", pickle.dumps(Boom()))
        result = await cache.alookup("k")
        await cache.aclose()
        return result, cache.stats

    with redis_server(prefer_fake=True) as endpoint:
        result, stats = asyncio.run(scenario(endpoint.url))
    assert result == (False, None) and stats.errors == 1

    async def nobody_there():
        cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
        miss = await cache.alookup("k")
        await cache.aput("k", np.zeros(2))
        await cache.aclose()
        return miss, cache.stats

    miss, stats = asyncio.run(nobody_there())
    assert miss == (False, None) and stats.errors == 2 and stats.misses == 1


def test_two_replicas_share_one_cache():
    body = {"inputs": [{"name": "process_features", "shape": [1, 8], "datatype": "FP32",
                        "data": [float(i) for i in range(8)]}]}
    with redis_server() as endpoint:
        models = [SlowModel("shared", delay_s=0), SlowModel("shared", delay_s=0)]
        apps = [create_app(ServerSettings(repository=Path("/nonexistent"),
                                          cache_url=endpoint.url), models=[m]) for m in models]
        with serve_in_thread(apps[0]) as first, serve_in_thread(apps[1]) as second:
            answers = [httpx.post(url + "/v2/models/shared/infer", json=body, timeout=10)
                       for url in (first, second, second)]
            scraped = httpx.get(second + "/metrics").text
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json()["outputs"] == answers[1].json()["outputs"]
    assert models[0].calls == [1] and models[1].calls == []  # the second replica never computed
    assert "inference_cache_hits_total 2.0" in scraped


def test_the_server_takes_its_shared_cache_from_a_flag():
    settings = ServerSettings.from_flags(["--cache-url", "redis://127.0.0.1:1/0"])
    assert settings.cache_url == "redis://127.0.0.1:1/0"
    app = create_app(settings)
    assert isinstance(app.state.engine.cache, RedisCache)  # it connects at its first lookup
