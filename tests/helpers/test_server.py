"""The server over real HTTP on loopback (uvicorn in a thread of this process)."""

import asyncio
import json
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from helpers import data, models, training
from helpers.cache import TTLCache
from helpers.protocol import BINARY_HEADER, decode_response, encode_binary_request
from helpers.server import ServerSettings, create_app
from helpers.serving import free_port, serve_in_thread, wait_until_ready

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving_fixtures import POISON, FaultyModel, SlowModel  # noqa: E402

RECORDS = data.make_wafer_records(64, seed=11)
ROWS = data.feature_matrix(RECORDS)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("served-models")
    training.train_wafer_models(root, n_rows=4000, names=("wafer-forest", "wafer-mlp"))
    return root


@pytest.fixture(scope="module")
def server(repo):
    settings = ServerSettings(repository=repo, splits={"wafer-mlp": "1:0.5,2:0.5"},
                              max_wait_ms=1, max_batch_size=64, device="cpu")
    app = create_app(settings, models=[FaultyModel()])
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        client.app = app
        yield client


def v2_body(rows, **overrides):
    tensor = {"name": "process_features", "shape": list(rows.shape), "datatype": "FP32",
              "data": rows.ravel().tolist()}
    tensor.update(overrides)
    return {"id": "req-1", "inputs": [tensor]}


def records_json(df):
    return [{f: float(getattr(r, f)) for f in data.FEATURES} for r in df.itertuples()]


def test_health_and_server_metadata(server):
    assert server.get("/v2/health/live").json() == {"live": True}
    assert server.get("/v2/health/ready").status_code == 200
    meta = server.get("/v2").json()
    assert meta["name"] == "realtime-ml-serving" and "model_repository" in meta["extensions"]


def test_model_metadata_and_readiness(server):
    meta = server.get("/v2/models/wafer-mlp").json()
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "pytorch_safetensors"
    assert meta["inputs"] == [{"name": "process_features", "datatype": "FP32", "shape": [-1, 8]}]
    assert server.get("/v2/models/wafer-mlp/versions/1/ready").json()["ready"] is True
    missing = server.get("/v2/models/wafer-cnn")
    assert missing.status_code == 404 and "wafer-cnn" in missing.json()["error"]
    assert server.get("/v2/models/wafer-mlp/versions/9").status_code == 404
    assert server.get("/v2/models/wafer-mlp/versions/9/ready").status_code == 404


def test_v2_infer_matches_the_model(server, repo):
    response = server.post("/v2/models/wafer-forest/infer", json=v2_body(ROWS))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "wafer-forest" and body["model_version"] == "1"
    assert body["id"] == "req-1" and response.headers["x-model-version"] == "1"
    (out,) = body["outputs"]
    assert out["name"] == "defect_probability" and out["shape"] == [64]
    expected = models.load_model("wafer-forest", repository=repo).predict_proba(ROWS)
    np.testing.assert_allclose(out["data"], expected, atol=1e-6)


def test_a_versioned_path_pins_the_version(server):
    for version in ("1", "2"):
        response = server.post(f"/v2/models/wafer-mlp/versions/{version}/infer",
                               json=v2_body(ROWS[:2]))
        assert response.json()["model_version"] == version


@pytest.mark.parametrize("mutate, status, message", [
    (lambda b: b["inputs"][0].update(shape=[64, 7]), 400, "does not fit"),
    (lambda b: b["inputs"][0].update(datatype="FP64"), 400, "does not match the model's FP32"),
    (lambda b: b["inputs"][0].update(data=b["inputs"][0]["data"][:-1]), 400, "needs 512 values"),
    (lambda b: b["inputs"][0]["data"].__setitem__(3, float("nan")), 400, "not finite"),
    (lambda b: b["inputs"][0].update(name="features"), 400, "unknown input"),
    (lambda b: b["inputs"][0].pop("shape"), 422, "inputs.0.shape"),
    (lambda b: b.pop("inputs"), 422, "inputs"),
    (lambda b: b.update(extra=1), 422, "extra"),
])
def test_bad_v2_requests_get_a_4xx_naming_the_problem(server, mutate, status, message):
    body = v2_body(ROWS)
    mutate(body)
    response = server.post("/v2/models/wafer-forest/infer", content=json.dumps(body),
                           headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_binary_tensors_give_the_same_answer_as_json(server):
    """The binary data extension over HTTP: binary in, JSON or binary out."""
    as_json = server.post("/v2/models/wafer-forest/infer", json=v2_body(ROWS[:4])).json()
    expected = np.array(as_json["outputs"][0]["data"], np.float32)
    for binary_output in (False, True):
        body, headers = encode_binary_request({"process_features": ROWS[:4]},
                                              binary_output=binary_output)
        response = server.post("/v2/models/wafer-forest/infer", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert (BINARY_HEADER in response.headers) == binary_output
        (probs,) = decode_response(response.content, response.headers).values()
        np.testing.assert_array_equal(probs.ravel(), expected)
    short = server.post("/v2/models/wafer-forest/infer", content=body[:-4], headers=headers)
    assert short.status_code == 400 and "does not fit" in short.json()["error"]
    assert "binary_tensor_data" in server.get("/v2").json()["extensions"]


def test_unknown_model_not_json_and_oversized_bodies(server):
    assert server.post("/v2/models/nope/infer", json=v2_body(ROWS)).status_code == 404
    garbage = server.post("/v2/models/wafer-forest/infer", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert garbage.status_code == 422
    huge = server.post("/predict/batch", content=b"x" * (2 << 20))
    assert huge.status_code == 413 and "limit" in huge.json()["error"]
    assert server.get("/v2/health/live").status_code == 200  # still serving


def test_plain_predict_and_its_validation(server):
    record = records_json(RECORDS.head(1))[0]
    ok = server.post("/predict", json={"features": record})
    assert ok.status_code == 200 and 0 <= ok.json()["defect_probability"] <= 1
    assert ok.json()["model"] == "wafer-mlp"
    for bad, message in [({k: v for k, v in record.items() if k != "humidity_pct"},
                          "missing ['humidity_pct']"),
                         ({**record, "color": 1.0}, "unknown ['color']"),
                         ({**record, "pressure_torr": "high"}, "is not a number"),
                         ({**record, "pressure_torr": True}, "is not a number")]:
        response = server.post("/predict", json={"features": bad})
        assert response.status_code == 422 and message in response.json()["error"]
    assert server.post("/predict", json={"feature": record}).status_code == 422


def test_batch_and_stream_give_the_same_predictions_in_order(server):
    records = records_json(RECORDS)
    batch = server.post("/predict/batch?model=wafer-forest", json={"records": records})
    assert batch.status_code == 200
    with server.stream("POST", "/predict/stream?model=wafer-forest&chunk=10",
                       json={"records": records}) as stream:
        assert stream.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in stream.iter_lines() if line]
    assert [line["index"] for line in lines] == list(range(64))
    np.testing.assert_allclose([line["defect_probability"] for line in lines],
                               batch.json()["predictions"], atol=1e-7)


def test_docs_show_every_self_read_body_and_its_example_is_accepted(server):
    doc = server.get("/openapi.json").json()
    routes = {"/v2/models/{name}/infer": "/v2/models/wafer-mlp/infer",
              "/v2/models/{name}/versions/{version}/infer": "/v2/models/wafer-mlp/versions/1/infer",
              "/predict": "/predict", "/predict/batch": "/predict/batch",
              "/predict/stream": "/predict/stream", "/jobs": "/jobs"}
    for documented, concrete in routes.items():
        body = doc["paths"][documented]["post"]["requestBody"]["content"]["application/json"]
        assert "#/$defs" not in json.dumps(body["schema"])  # self-contained for /docs
        response = server.post(concrete, json=body["example"])  # what "Try it out" sends
        assert response.status_code in (200, 202), (documented, response.text)
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]
    tensor = infer["content"]["application/json"]["schema"]["properties"]["inputs"]["items"]
    assert {"name", "shape", "datatype", "data"} <= set(tensor["properties"])


def test_ab_split_is_sticky_and_readable_from_metrics(server):
    body = v2_body(ROWS[:1])
    for tool in ("ETCH-01", "ETCH-02", "ETCH-05"):
        versions = {server.post("/v2/models/wafer-mlp/infer", json=body,
                                headers={"x-routing-key": tool}).headers["x-model-version"]
                    for _ in range(5)}
        assert len(versions) == 1  # one tool, one version
    seen = {server.post("/v2/models/wafer-mlp/infer", json=body,
                        headers={"x-routing-key": f"lot-{i}"}).headers["x-model-version"]
            for i in range(40)}
    assert seen == {"1", "2"}
    metrics = server.get("/metrics").text
    for version in ("1", "2"):
        assert f'inference_requests_total{{code="200",model="wafer-mlp",version="{version}"}}' \
            in metrics
    assert "inference_batch_size_bucket" in metrics and "inference_queue_depth" in metrics


def test_a_failing_model_fails_only_its_own_batch(server):
    poisoned = ROWS[:1].copy()
    poisoned[0, 0] = POISON
    bad = server.post("/v2/models/faulty/infer", json=v2_body(poisoned))
    assert bad.status_code == 500 and "sensor frame corrupt" in bad.json()["error"]
    good = server.post("/v2/models/faulty/infer", json=v2_body(ROWS[:1]))
    assert good.status_code == 200
    assert 'inference_request_failures_total{model="faulty",reason="500",version="1"} 1.0' \
        in server.get("/metrics").text


def test_async_job_round_trip(server):
    records = records_json(data.make_wafer_records(700, seed=3))
    submitted = server.post("/jobs?model=wafer-forest", json={"records": records})
    assert submitted.status_code == 202
    job = submitted.json()
    for _ in range(200):
        status = server.get(job["status_url"]).json()
        if status["state"] == "SUCCEEDED":
            break
        asyncio.run(asyncio.sleep(0.05))
    assert status["done"] == status["total"] == 700 and status["progress"] == 1.0
    result = server.get(job["result_url"]).json()
    assert len(result["predictions"]) == 700 and result["version"] == "1"
    assert server.get("/jobs/not-a-job").status_code == 404
    assert server.delete(f"/jobs/{job['id']}").json()["state"] == "SUCCEEDED"


def test_repository_index_unload_and_load(server):
    index = server.post("/v2/repository/index").json()
    assert {"name": "wafer-forest", "version": "1", "state": "READY", "reason": ""} in index
    assert server.post("/v2/repository/models/wafer-forest/unload").status_code == 200
    assert server.post("/v2/models/wafer-forest/infer", json=v2_body(ROWS)).status_code == 404
    assert {"name": "wafer-forest", "version": "1", "state": "UNAVAILABLE",
            "reason": "not loaded"} in server.post("/v2/repository/index").json()
    assert server.post("/v2/repository/models/wafer-forest/load").status_code == 200
    assert server.get("/v2/models/wafer-forest/ready").json()["ready"] is True
    assert server.post("/v2/repository/models/nope/load").status_code == 404


# -- load behaviour, each with its own small server -------------------------------------
async def _fire(url, n, body, headers=None):
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*(client.post("/v2/models/slow/infer", json=body,
                                                  headers=headers) for _ in range(n)))


def test_overload_gets_503_with_retry_after_and_nothing_is_lost():
    slow = SlowModel(delay_s=0.02)
    settings = ServerSettings(repository=Path("/nonexistent"), max_queue=4, max_batch_size=2,
                              max_wait_ms=0, timeout_ms=30_000)
    with serve_in_thread(create_app(settings, models=[slow])) as url:
        responses = asyncio.run(_fire(url, 60, v2_body(ROWS[:1])))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 503)
    assert all("queue full" in r.json()["error"] for r in responses if r.status_code == 503)
    assert sum(slow.calls) == codes.count(200)  # every admitted request computed once


def test_a_request_past_its_deadline_gets_504_and_is_not_computed():
    slow = SlowModel(delay_s=0.0)
    slow.release.clear()  # the first batch blocks the only worker
    settings = ServerSettings(repository=Path("/nonexistent"), max_batch_size=1, max_wait_ms=0,
                              workers=1)
    with serve_in_thread(create_app(settings, models=[slow])) as url:
        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                blocker = asyncio.ensure_future(
                    client.post("/v2/models/slow/infer", json=v2_body(ROWS[:1])))
                await asyncio.sleep(0.2)
                late = await client.post("/v2/models/slow/infer", json=v2_body(ROWS[1:2]),
                                         headers={"x-timeout-ms": "100"})
                slow.release.set()
                return await blocker, late
        first, late = asyncio.run(scenario())
    assert first.status_code == 200
    assert late.status_code == 504 and "not computed" in late.json()["error"]
    assert slow.calls == [1]  # the 2-row request never reached the model


def test_bad_timeout_header_is_a_400():
    settings = ServerSettings(repository=Path("/nonexistent"))
    with serve_in_thread(create_app(settings, models=[SlowModel(delay_s=0)])) as url:
        response = httpx.post(url + "/v2/models/slow/infer", json=v2_body(ROWS[:1]),
                              headers={"x-timeout-ms": "soon"})
    assert response.status_code == 400 and "x-timeout-ms" in response.json()["error"]


def test_a_cache_serves_repeats_and_counts_them():
    slow = SlowModel(delay_s=0)
    cache = TTLCache(max_entries=100, ttl_s=60)
    settings = ServerSettings(repository=Path("/nonexistent"))
    with serve_in_thread(create_app(settings, models=[slow], cache=cache)) as url:
        with httpx.Client(base_url=url) as client:
            first = client.post("/v2/models/slow/infer", json=v2_body(ROWS[:3]))
            again = client.post("/v2/models/slow/infer", json=v2_body(ROWS[:3]))
            metrics = client.get("/metrics").text
    assert first.json()["outputs"] == again.json()["outputs"]
    assert slow.calls == [3] and cache.stats.hits == 1 and cache.stats.misses == 1
    assert "inference_cache_hits_total 1.0" in metrics


def test_the_cache_key_sees_the_version_that_served_and_decides_staleness():
    """The key function is pluggable; it is called with the resolved version, so a key that
    drops the version serves v1's answers after v2 goes live, and the default key does not."""
    from helpers.cache import cache_key as default_key

    class Doubled(SlowModel):  # v2 answers differently from v1
        def predict(self, x):
            return 2 * super().predict(x)

    def roll_out(key_fn):
        v1, v2 = SlowModel(delay_s=0), Doubled(delay_s=0, version=2)
        seen, cache = [], TTLCache(max_entries=100, ttl_s=60)

        def recording(model, version, rows):
            seen.append(version)
            return key_fn(model, version, rows)

        app = create_app(ServerSettings(repository=Path("/nonexistent")), models=[v1],
                         cache=cache, cache_key=recording)
        with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
            before = client.post("/v2/models/slow/infer", json=v2_body(ROWS[:2])).json()
            # roll out v2 on the server's own loop, as a repository load would
            engine = app.state.engine
            asyncio.run_coroutine_threadsafe(engine.registry.add(v2), engine._loop).result(10)
            after = client.post("/v2/models/slow/infer", json=v2_body(ROWS[:2])).json()
        return before["outputs"][0]["data"], after["outputs"][0]["data"], seen

    before, after, seen = roll_out(default_key)
    assert seen == ["1", "2"] and np.allclose(after, 2 * np.array(before))
    before, after, _ = roll_out(lambda model, version, rows: default_key(model, "", rows))
    assert after == before  # stale: v1's answer, served by v2's request


def test_requests_over_the_in_flight_limit_are_shed_at_the_door():
    slow = SlowModel(delay_s=0)
    slow.release.clear()  # admitted requests wait inside the server
    settings = ServerSettings(repository=Path("/nonexistent"), max_in_flight=3,
                              max_batch_size=1, max_wait_ms=0, timeout_ms=30_000)
    with serve_in_thread(create_app(settings, models=[slow])) as url:
        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=30,
                                         limits=httpx.Limits(max_connections=20)) as client:
                tasks = [asyncio.ensure_future(client.post("/v2/models/slow/infer",
                                                           json=v2_body(ROWS[:1])))
                         for _ in range(10)]
                await asyncio.sleep(0.5)
                # the door is full, but probes and scrapes still get through
                probes = [await client.get(path) for path in
                          ("/v2/health/live", "/v2/health/ready", "/metrics")]
                slow.release.set()
                return await asyncio.gather(*tasks), probes, (await client.get("/metrics")).text
        responses, probes, metrics = asyncio.run(scenario())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [503] * 7
    assert all("server busy" in r.json()["error"] and r.headers["retry-after"] == "1"
               for r in responses if r.status_code == 503)
    assert [p.status_code for p in probes] == [200, 200, 200]
    assert 'inference_requests_total{code="503",model="_unresolved",version=""} 7.0' in metrics
    # what an autoscaler reads: 3 held inside while the door was full, none once answered
    assert "http_requests_in_flight 3.0" in probes[2].text
    assert "http_requests_in_flight 0.0" in metrics


def test_a_model_that_fails_to_load_is_reported_at_once(tmp_path):
    from helpers.serving import serve_in_thread as serve

    folder = models.save_torch_model(models.WaferMLP(), "broken", 1, tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a checkpoint")  # breaks the hash
    app = create_app(ServerSettings(repository=tmp_path, device="cpu"))
    with pytest.raises(RuntimeError, match="broken v1: load failed.*SHA-256"):
        with serve(app, timeout_s=60):
            pass


def test_a_plugged_in_validator_and_router_run_inside_the_server(repo):
    def strict(records):
        if any(r.get("humidity_pct", 0) > 90 for r in records):
            raise ValueError("humidity_pct above 90 is a sensor fault")
        from helpers.server import features_to_rows
        return features_to_rows(records)

    app = create_app(ServerSettings(repository=repo, device="cpu"), validate=strict,
                     router=lambda model, key: "1" if key == "old" else "2")
    record = records_json(RECORDS.head(1))[0]
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        refused = client.post("/predict", json={"features": {**record, "humidity_pct": 95.0}})
        old = client.post("/predict", json={"features": record}, headers={"x-routing-key": "old"})
        new = client.post("/predict", json={"features": record}, headers={"x-routing-key": "x"})
    assert refused.status_code == 422 and "sensor fault" in refused.json()["error"]
    assert old.json()["version"] == "1" and new.json()["version"] == "2"


def test_a_coalescing_cache_computes_a_burst_of_identical_misses_once():
    from helpers.cache import CoalescingCache

    def burst(cache):
        slow = SlowModel(delay_s=0.2)
        settings = ServerSettings(repository=Path("/nonexistent"), max_wait_ms=0,
                                  max_batch_size=1, timeout_ms=60_000)
        with serve_in_thread(create_app(settings, models=[slow], cache=cache)) as url:
            responses = asyncio.run(_fire(url, 20, v2_body(ROWS[:1])))
        assert all(r.status_code == 200 for r in responses)
        return len(slow.calls)

    assert burst(CoalescingCache(TTLCache(100, 60))) == 1
    assert burst(TTLCache(100, 60)) > 1  # without coalescing the cold key is computed again


def test_a_plugged_in_batch_policy_decides_the_batches():
    class EveryTwo:
        """Sends exactly two at a time (and a lone request once it has waited 50 ms)."""
        max_batch_size = 2

        def decide(self, queued, oldest_wait_s):
            return 2 if queued >= 2 else (queued if oldest_wait_s >= 0.05 else 0)

        def wait_budget_s(self, oldest_wait_s):
            return max(0.0, 0.05 - oldest_wait_s)

    slow = SlowModel(delay_s=0.01)
    settings = ServerSettings(repository=Path("/nonexistent"), timeout_ms=30_000)
    with serve_in_thread(create_app(settings, models=[slow], policy=EveryTwo())) as url:
        responses = asyncio.run(_fire(url, 9, v2_body(ROWS[:1])))
    assert all(r.status_code == 200 for r in responses)
    # the default policy would put up to 32 of these queued requests into one call
    assert sum(slow.calls) == 9 and max(slow.calls) == 2


# -- hardening: what a review broke, over real HTTP ----------------------------------------
def test_unknown_model_names_do_not_grow_the_metrics(server):
    before = len(server.get("/metrics").text)
    names = [f"no-such-model-{i:04d}" for i in range(300)]
    for name in names:
        assert server.post(f"/v2/models/{name}/infer", json=v2_body(ROWS[:1])).status_code == 404
    assert server.post("/v2/models/wafer-mlp/versions/987/infer",
                       json=v2_body(ROWS[:1])).status_code == 404
    text = server.get("/metrics").text
    assert not any(name in text for name in names) and 'version="987"' not in text
    assert len(text) - before < 2_000  # one fixed label, not one per name
    assert 'inference_requests_total{code="404",model="_unresolved",version=""}' in text


def test_a_v2_batch_over_the_max_batch_size_is_a_400(server):
    rows = np.repeat(ROWS, 2, axis=0)[:65]  # the fixture's max batch size is 64
    response = server.post("/v2/models/wafer-mlp/infer", json=v2_body(rows))
    assert response.status_code == 400
    assert "batch of 65 is over wafer-mlp's max batch size of 64" in response.json()["error"]
    assert server.get("/v2/models/wafer-mlp").json()["max_batch_size"] == 64


def test_plain_batches_are_split_into_admitted_chunks(server):
    records = records_json(data.make_wafer_records(300, seed=4))  # over a batch, under the limit
    response = server.post("/predict/batch?model=wafer-forest", json={"records": records})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 300
    expected = server.post("/v2/models/wafer-forest/infer", json=v2_body(
        data.feature_matrix(data.make_wafer_records(300, seed=4))[:64])).json()
    np.testing.assert_allclose(response.json()["predictions"][:64],
                               expected["outputs"][0]["data"], atol=1e-6)


@pytest.mark.parametrize("length", ["²".encode("latin-1"), "¹²".encode("latin-1"),
                                    b"9" * 5000, b"-1", b"1e3"])
def test_a_malformed_binary_header_is_a_400(server, length):
    body, headers = encode_binary_request({"process_features": ROWS[:1]})
    response = server.post("/v2/models/wafer-forest/infer", content=body,
                           headers={"content-type": headers["content-type"],
                                    BINARY_HEADER: length})
    assert response.status_code == 400 and "inference-header-content-length" in \
        response.json()["error"]


def test_a_deeply_nested_body_is_a_400(server):
    nested = ("[" * 100_000 + "]" * 100_000).encode()
    for path in ("/predict", "/predict/batch", "/jobs"):
        response = server.post(path, content=nested, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "nested too deeply" in response.json()["error"]
    response = server.post("/v2/models/wafer-forest/infer", content=b'{"inputs": ' + nested + b"}",
                           headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 and "error" in response.json()


def test_unmatched_routes_and_methods_answer_with_the_v2_error_body(server):
    missing = server.get("/v2/nowhere")
    assert missing.status_code == 404 and missing.json() == {"error": "no route GET /v2/nowhere"}
    wrong = server.get("/v2/models/wafer-mlp/infer")
    assert wrong.status_code == 405 and set(wrong.json()) == {"error"}


def test_an_unknown_requested_output_is_a_400(server):
    body = {**v2_body(ROWS[:1]), "outputs": [{"name": "defect_probability"}, {"name": "logits"}]}
    response = server.post("/v2/models/wafer-mlp/infer", json=body)
    assert response.status_code == 400 and "['logits']" in response.json()["error"]
    body["outputs"] = [{"name": "defect_probability"}]
    assert server.post("/v2/models/wafer-mlp/infer", json=body).status_code == 200


def test_the_repository_index_can_list_only_ready_models(server):
    assert server.post("/v2/repository/models/wafer-forest/unload").status_code == 200
    try:
        everything = server.post("/v2/repository/index").json()
        ready = server.post("/v2/repository/index", json={"ready": True}).json()
    finally:
        assert server.post("/v2/repository/models/wafer-forest/load").status_code == 200
    assert ready and all(row["state"] == "READY" for row in ready)
    assert {row["name"] for row in everything} - {row["name"] for row in ready} \
        == {"wafer-forest"}


def test_a_job_body_may_be_larger_than_an_online_one(server):
    records = records_json(data.make_wafer_records(5_000, seed=6))
    body = json.dumps({"records": records}).encode()
    assert len(body) > 1 << 20  # over the online limit
    assert server.post("/predict/batch", content=body).status_code == 413
    submitted = server.post("/jobs?model=wafer-forest", content=body,
                            headers={"content-type": "application/json"})
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    for _ in range(600):
        status = server.get(job["status_url"]).json()
        if status["state"] != "RUNNING" and status["state"] != "QUEUED":
            break
        asyncio.run(asyncio.sleep(0.05))
    result = server.get(job["result_url"]).json()
    assert result["complete"] is True and len(result["predictions"]) == 5_000


def test_loading_a_pickled_model_runs_nothing_and_leaks_no_path(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for platform, weights in [("sklearn_joblib", "model.joblib"),
                              ("pytorch_state_dict", "model.pt")]:
        folder = tmp_path / f"evil-{weights.split('.')[1]}" / "1"
        folder.mkdir(parents=True)
        (folder / weights).write_bytes(pickle.dumps(Evil()))
        config = models.ModelConfig(folder.parent.name, 1, platform,
                                    [models.TensorSpec("process_features", "FP32", [-1, 8])],
                                    [models.TensorSpec("defect_probability", "FP32", [-1])],
                                    weights, models.sha256_of(folder / weights))
        (folder / "config.json").write_text(config.to_json())  # the attacker writes the hash too
    models.save_torch_model(models.WaferMLP(), "good", 1, tmp_path)
    app = create_app(ServerSettings(repository=tmp_path, models=("good",), device="cpu"))
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        for name in ("evil-joblib", "evil-pt"):
            response = client.post(f"/v2/repository/models/{name}/load")
            assert response.status_code == 500 and "could run code" in response.json()["error"]
            assert str(tmp_path) not in response.text
        assert client.get("/v2/health/ready").status_code == 200  # the others still serve
        ready = client.get("/v2/models/evil-pt/ready")
        assert ready.status_code == 503 and "retrain" in ready.json()["error"]
        index = client.post("/v2/repository/index").text
        assert str(tmp_path) not in index
    assert not marker.exists()


def test_identical_requests_share_a_computation_but_not_a_deadline():
    from helpers.cache import CoalescingCache

    slow = SlowModel(delay_s=0.0)
    slow.release.clear()  # the blocker's batch holds the only worker
    settings = ServerSettings(repository=Path("/nonexistent"), max_wait_ms=0, workers=1)
    app = create_app(settings, models=[slow], cache=CoalescingCache())
    with serve_in_thread(app) as url:
        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                blocker = asyncio.ensure_future(
                    client.post("/v2/models/slow/infer", json=v2_body(ROWS[:1])))
                await asyncio.sleep(0.2)
                same = v2_body(ROWS[1:2])
                short = asyncio.ensure_future(client.post(
                    "/v2/models/slow/infer", json=same, headers={"x-timeout-ms": "50"}))
                long = asyncio.ensure_future(client.post(
                    "/v2/models/slow/infer", json=same, headers={"x-timeout-ms": "5000"}))
                await asyncio.sleep(0.3)
                slow.release.set()
                return await asyncio.gather(blocker, short, long)

        blocker, short, long = asyncio.run(scenario())
    assert blocker.status_code == 200 and short.status_code == 504
    assert long.status_code == 200, long.text  # the short deadline did not fail it
    assert slow.calls == [1, 1]  # and the identical pair computed once


def test_a_broken_model_at_start_up_leaves_the_server_ready(tmp_path):
    models.save_torch_model(models.WaferMLP(), "good", 1, tmp_path)
    folder = models.save_torch_model(models.WaferMLP(), "broken", 1, tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a checkpoint")
    app = create_app(ServerSettings(repository=tmp_path, device="cpu"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 60, require_all=False)
        with httpx.Client(base_url=url) as client:
            assert client.get("/v2/health/ready").json() == {"ready": True}
            broken = client.get("/v2/models/broken/ready")
            assert broken.status_code == 503 and "SHA-256" in broken.json()["error"]
            good = client.post("/v2/models/good/infer", json=v2_body(ROWS[:2]))
            assert good.status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)


def test_plain_routes_refuse_a_model_that_does_not_score_records():
    from helpers.repository import ModelConfig, TensorSpec

    class MapModel(SlowModel):
        def __init__(self):
            super().__init__("maps", delay_s=0)
            self.config = ModelConfig("maps", 1, "test_double",
                                      [TensorSpec("wafer_map", "FP32", [-1, 1, 4, 4])],
                                      [TensorSpec("class_probabilities", "FP32", [-1, 9])], "", "")

        def predict(self, x):
            return np.full((len(x), 9), 1 / 9, np.float32)

    app = create_app(ServerSettings(repository=Path("/nonexistent")), models=[MapModel()])
    record = records_json(RECORDS[:1])[0]
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        for path, body in [("/predict", {"features": record}), ("/predict/batch",
                           {"records": [record]}), ("/jobs", {"records": [record]})]:
            response = client.post(f"{path}?model=maps", json=body)
            assert response.status_code == 400, (path, response.text)
            assert "does not score wafer records" in response.json()["error"]
