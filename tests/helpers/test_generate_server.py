"""The generate endpoints over real HTTP: the same tokens as generating alone, SSE events,
bad input named, deadlines, disconnects and failures that give every block back, and a
shutdown that lets admitted generations finish."""

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from helpers.batching import BatcherClosedError, QueueFullError
from helpers.generation_service import GenerationService
from helpers.gpt import ToolLogGPT, ToolLogTokenizer, generate
from helpers.metrics import prometheus_frame
from helpers.repository import save_torch_model
from helpers.server import ServerSettings, create_app
from helpers.serving import free_port, serve_in_thread, wait_until_ready

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving_fixtures import SlowModel  # noqa: E402

TOKENIZER = ToolLogTokenizer()
PROMPT = "06:00:59 ETCH-06 RUN LOT-01000/09 T=348.1 P=2.11 PC=31 RF=1464 PASS\n"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ToolLogGPT(TOKENIZER.vocab_size).eval()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("lm-repo")
    save_torch_model(model, "tool-log-lm", 1, root)
    return root


@pytest.fixture(scope="module")
def server(repo):
    settings = ServerSettings(repository=repo, device="cpu", max_new_tokens=240, kv_blocks=64)
    app = create_app(settings, models=[SlowModel("not-a-lm", delay_s=0)])
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.app = app
        yield client


def alone(model, text, n):
    prompt = [TOKENIZER.bos_id, *TOKENIZER.encode(text)]
    return TOKENIZER.decode(generate(model, [prompt], n)[0, len(prompt):].tolist())


def sse_events(response):
    """The ``data:`` events of a Server-Sent Events response, parsed."""
    return [json.loads(line.removeprefix("data: ")) for line in response.iter_lines()
            if line.startswith("data: ")]


def gauge(client, name):
    frame = prometheus_frame(client.get("/metrics").text)
    return frame.loc[frame["name"] == name, "value"].sum()


def wait_for_gauge(client, name, value, tries=400):
    """Poll /metrics until the gauge reads ``value`` (the engine thread updates it)."""
    for _ in range(tries):
        if gauge(client, name) == value:
            return True
        threading.Event().wait(0.025)
    return False


def test_the_service_exists_before_the_first_request(server):
    (service,) = server.app.state.generation.current()  # made at start-up, pool and thread
    assert service.alive and (service.name, service.version) == ("tool-log-lm", "1")
    assert gauge(server, "generation_kv_blocks_total") == 64


def test_generate_answers_what_the_model_makes_alone(server, model):
    response = server.post("/v2/models/tool-log-lm/generate", json={
        "id": "g1", "text_input": PROMPT, "parameters": {"max_tokens": 40}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text_output"] == alone(model, PROMPT, 40)
    assert (body["id"], body["model_name"], body["model_version"], body["output_tokens"]) == \
        ("g1", "tool-log-lm", "1", 40)
    assert response.headers["x-model-version"] == "1"


def test_generate_stream_sends_one_event_per_token_and_the_same_text(server, model):
    with server.stream("POST", "/v2/models/tool-log-lm/generate_stream",
                       json={"text_input": PROMPT, "parameters": {"max_tokens": 30}}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert [e["index"] for e in events] == list(range(30))
    assert "".join(e["text_output"] for e in events) == alone(model, PROMPT, 30)
    assert all(e["model_name"] == "tool-log-lm" for e in events)


def test_concurrent_generations_share_steps_and_each_gets_its_own_answer(server, model):
    prompts = [PROMPT, "07:12:00 CVD-02 ", "08:", PROMPT + "08:00:01 CMP-03 PM ", "09:30:00"]
    lengths = [5, 60, 17, 33, 48]
    before = gauge(server, "generation_tokens_total")

    async def all_at_once():
        async with httpx.AsyncClient(base_url=str(server.base_url), timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/v2/models/tool-log-lm/generate",
                            json={"text_input": p, "parameters": {"max_tokens": n}})
                for p, n in zip(prompts, lengths, strict=True)))

    answers = asyncio.run(all_at_once())
    assert [a.json()["text_output"] for a in answers] == \
        [alone(model, p, n) for p, n in zip(prompts, lengths, strict=True)]
    assert gauge(server, "generation_tokens_total") - before == sum(lengths)
    assert wait_for_gauge(server, "generation_kv_blocks_used", 0)
    frame = prometheus_frame(server.get("/metrics").text)
    names = set(frame["name"])
    assert {"generation_time_to_first_token_seconds_count",
            "generation_inter_token_latency_seconds_count", "generation_kv_blocks_total",
            "generation_sequences_running", "generation_sequences_waiting"} <= names
    assert gauge(server, "generation_kv_blocks_total") == 64


@pytest.mark.parametrize("body, status, words", [
    ({"text_input": "hello", "parameters": {"max_tokens": 4}}, 400, "cannot tokenise 'h"),
    ({"text_input": PROMPT, "parameters": {"max_tokens": 241}}, 400, "between 1 and 240"),
    ({"text_input": PROMPT, "parameters": {"max_tokens": 0}}, 400, "between 1 and 240"),
    ({"text_input": PROMPT * 4, "parameters": {"max_tokens": 200}}, 400, "over the context"),
    ({"text_input": PROMPT, "parameters": {"temperature": 0.7}}, 422, "temperature"),
    ({"prompt": PROMPT}, 422, "text_input"),
    ({"text_input": PROMPT, "parameters": {"stream": True}}, 400, "use generate_stream"),
])
def test_bad_generate_requests_get_a_4xx_naming_the_problem(server, body, status, words):
    response = server.post("/v2/models/tool-log-lm/generate", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_generate_refuses_unknown_and_non_generative_models(server):
    assert server.post("/v2/models/nope/generate", json={"text_input": ""}).status_code == 404
    response = server.post("/v2/models/not-a-lm/generate", json={"text_input": ""})
    assert response.status_code == 400 and "not a generative model" in response.json()["error"]
    stream = server.post("/v2/models/tool-log-lm/generate_stream",
                         json={"text_input": "x", "parameters": {"max_tokens": 3}})
    assert stream.status_code == 400  # refused before any event: a real status, not a 200


@pytest.fixture
def one_at_a_time(repo):
    """A server that decodes one sequence at a time: a second request must queue."""
    settings = ServerSettings(repository=repo, device="cpu", max_new_tokens=240,
                              max_running_sequences=1)
    app = create_app(settings)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.app = app
        # Each model call 5 ms slower (a bigger model, a slower machine): a 240-token answer
        # then takes over a second on any machine, long enough to queue behind.
        module = app.state.engine.registry.get("tool-log-lm").model.module
        real_forward = module.forward
        module.forward = lambda *args, **kwargs: (time.sleep(0.005),
                                                  real_forward(*args, **kwargs))[1]
        yield client
        del module.forward


def occupy(client, tokens=240):
    """Start a long stream and read its first token: the engine's one slot is taken."""
    context = client.stream("POST", "/v2/models/tool-log-lm/generate_stream",
                            json={"text_input": "06:", "parameters": {"max_tokens": tokens}})
    response = context.__enter__()
    lines = response.iter_lines()
    next(line for line in lines if line.startswith("data: "))
    return context, lines


def test_the_deadline_bounds_the_wait_for_the_first_token(one_at_a_time):
    client = one_at_a_time
    context, lines = occupy(client)
    try:
        queued = client.post("/v2/models/tool-log-lm/generate", headers={"x-timeout-ms": "50"},
                             json={"text_input": PROMPT, "parameters": {"max_tokens": 5}})
        assert queued.status_code == 504 and "before the first token" in queued.json()["error"]
        assert gauge(client, "generation_sequences_waiting") <= 1
        rest = [line for line in lines if line.startswith("data: ")]
    finally:
        context.__exit__(None, None, None)
    assert len(rest) == 239 and "error" not in rest[-1]  # a started answer runs to its end
    assert wait_for_gauge(client, "generation_sequences_waiting", 0)
    assert wait_for_gauge(client, "generation_kv_blocks_used", 0)


def test_a_client_that_leaves_while_queued_gives_up_its_place(one_at_a_time):
    client = one_at_a_time
    context, lines = occupy(client)
    try:
        with pytest.raises(httpx.ReadTimeout):  # queued behind the long one; gives up
            client.post("/v2/models/tool-log-lm/generate_stream", timeout=0.3,
                        json={"text_input": PROMPT, "parameters": {"max_tokens": 5}})
        # gone from the line while the long one still runs
        assert wait_for_gauge(client, "generation_sequences_waiting", 0)
        assert gauge(client, "generation_sequences_running") == 1
    finally:
        context.__exit__(None, None, None)
    frame = prometheus_frame(client.get("/metrics").text)
    left = frame[(frame["name"] == "inference_requests_total") & (frame["code"] == "499")]
    assert left["value"].sum() == 1


def test_a_reloaded_model_gets_a_new_service_and_the_old_one_stops(one_at_a_time, model):
    client = one_at_a_time
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 6}}
    assert client.post("/v2/models/tool-log-lm/generate", json=body).status_code == 200
    services = client.app.state.generation
    (old,) = services.current()
    assert client.post("/v2/repository/models/tool-log-lm/unload").status_code == 200
    assert client.post("/v2/repository/models/tool-log-lm/load").status_code == 200
    again = client.post("/v2/models/tool-log-lm/generate", json=body)
    assert again.json()["text_output"] == alone(model, PROMPT, 6)
    (new,) = services.current()
    assert new is not old
    for _ in range(200):
        if not old.alive:
            break
        threading.Event().wait(0.025)
    assert not old.alive and services.all() == [new]
    assert gauge(client, "generation_kv_blocks_total") == new.stats.total_blocks  # one series


def test_a_failing_model_fails_its_own_generations_and_the_server_goes_on(server, model):
    service = server.app.state.generation.all()[0]
    real_forward = service.engine.model.forward
    service.engine.model.forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    try:
        failed = server.post("/v2/models/tool-log-lm/generate",
                             json={"text_input": PROMPT, "parameters": {"max_tokens": 5}})
    finally:
        del service.engine.model.forward
    assert service.engine.model.forward == real_forward
    assert failed.status_code == 500 and "boom" in failed.json()["error"]
    assert wait_for_gauge(server, "generation_kv_blocks_used", 0)
    again = server.post("/v2/models/tool-log-lm/generate",
                        json={"text_input": PROMPT, "parameters": {"max_tokens": 5}})
    assert again.json()["text_output"] == alone(model, PROMPT, 5)


def test_shutdown_lets_an_admitted_stream_finish(repo):
    app = create_app(ServerSettings(repository=repo, device="cpu", max_new_tokens=240))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 60)
        with httpx.Client(base_url=url, timeout=60) as client, client.stream(
                "POST", "/v2/models/tool-log-lm/generate_stream",
                json={"text_input": "06:", "parameters": {"max_tokens": 120}}) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            server.should_exit = True  # shutdown starts with the stream one token in
            rest = [line for line in lines if line.startswith("data: ")]
        assert first and len(rest) == 119 and "error" not in rest[-1]
    finally:
        server.should_exit = True
        thread.join(60)
    assert not thread.is_alive()


def test_a_client_that_leaves_mid_stream_frees_its_blocks_at_once(one_at_a_time):
    client = one_at_a_time
    before = gauge(client, "generation_tokens_total")
    with client.stream("POST", "/v2/models/tool-log-lm/generate_stream",
                       json={"text_input": "06:", "parameters": {"max_tokens": 240}}) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        # the client goes away after the first token
    assert wait_for_gauge(client, "generation_sequences_running", 0)
    assert wait_for_gauge(client, "generation_kv_blocks_used", 0)
    assert gauge(client, "generation_tokens_total") - before < 240  # it did not run to the end


def test_a_client_that_stops_waiting_for_a_whole_answer_frees_its_blocks(one_at_a_time):
    client = one_at_a_time
    before = gauge(client, "generation_tokens_total")
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v2/models/tool-log-lm/generate", timeout=0.1,
                    json={"text_input": "06:", "parameters": {"max_tokens": 240}})
    assert wait_for_gauge(client, "generation_sequences_running", 0)
    assert wait_for_gauge(client, "generation_kv_blocks_used", 0)
    assert gauge(client, "generation_tokens_total") - before < 240


def test_health_checks_are_answered_while_a_generation_runs(one_at_a_time):
    client = one_at_a_time
    with client.stream("POST", "/v2/models/tool-log-lm/generate_stream",
                       json={"text_input": "06:", "parameters": {"max_tokens": 240}}) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert client.get("/v2/health/live").status_code == 200
        after_health = sum(1 for line in lines if line.startswith("data: "))
    assert after_health > 0  # the health check came back before the generation ended


# -- the service alone: admission and the end of the grace period -----------------------------
def test_the_waiting_line_is_bounded_and_a_spent_grace_fails_what_is_left(model):
    async def scenario():
        service = GenerationService("lm", "1", model, n_blocks=64, max_running=1, max_waiting=2)
        prompt = [TOKENIZER.bos_id, 5, 6]
        streams = [service.stream(prompt, 100, 60.0) for _ in range(3)]
        first = await anext(streams[0])  # running
        waiting = [asyncio.ensure_future(anext(s)) for s in streams[1:]]
        await asyncio.sleep(0)  # both are queued, neither has a token: the line is full
        with pytest.raises(QueueFullError):
            await anext(service.stream(prompt, 3, 60.0))
        await service.close(grace_s=0)
        for task in waiting:
            with pytest.raises(BatcherClosedError):
                await task
        with pytest.raises(BatcherClosedError):
            async for _ in streams[0]:
                pass
        with pytest.raises(BatcherClosedError):
            service.admit(prompt, 3)
        return first, service

    first, service = asyncio.run(scenario())
    assert isinstance(first, int)
    assert service.engine.manager.used_blocks == 0 and not service.engine.has_work


def test_docs_show_the_generate_endpoints_and_their_example_is_accepted(server):
    doc = server.get("/openapi.json").json()
    for path in ("/v2/models/{name}/generate", "/v2/models/{name}/generate_stream",
                 "/v2/models/{name}/versions/{version}/generate"):
        assert "post" in doc["paths"][path], path
    schema = doc["components"]["schemas"]["GenerateRequest"]
    assert {"text_input", "parameters"} <= set(schema["properties"])
    example = schema["examples"][0]
    response = server.post("/v2/models/tool-log-lm/generate", json=example)
    assert response.status_code == 200 and response.json()["output_tokens"] == \
        example["parameters"]["max_tokens"]
