"""Generation behind the server: the engine steps in its own thread, and each request is an
async stream of tokens.

``GenerationService`` serves one version of a generative model:

- **Off the event loop.** A decode step is model work — milliseconds of CPU or a GPU
  launch — and the event loop also answers every health check and small request. So the
  engine (``helpers.generation``) lives in one thread of its own, and only that thread
  touches it. The loop hands it commands (add, cancel) through an inbox under a
  condition; the thread hands tokens back with ``loop.call_soon_threadsafe``.
- **Admission** before anything is queued: the prompt and the token budget must fit the
  context and the pool (400), and the line of requests not yet started is bounded
  (503 with ``Retry-After`` past it), like the batcher's queue.
- **Deadlines** bound the wait for the **first token** (the queue and the prefill): a
  request not started by then gets a 504 and gives back its blocks. Once it streams, the
  answer runs to its ``max_new_tokens``, which bounds it; a client that wants less leaves.
- **Cancellation**: a client that leaves closes its token stream; the request is dropped
  from the engine and its blocks return to the pool at once, not when it would have ended.
- **Failure**: a model call that raises fails the sequences of that step (500) and frees
  their blocks; requests still waiting are untouched, and the engine goes on.
- **Shutdown**: no new requests (503); what was admitted finishes within the grace period;
  whatever is left then gets a 503.

``GenerationServices`` makes one service per served generative version: at the server's
start-up for the versions it loads then, on first use for one loaded later.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .batching import (
    BatcherClosedError,
    BatcherFailedError,
    DeadlineExceededError,
    QueueFullError,
)
from .generation import GenerationEngine
from .gpt import ToolLogGPT, ToolLogTokenizer
from .inference import ModelFailedError
from .kv_cache import BLOCK_SIZE, blocks_for, blocks_for_memory, bytes_per_token
from .metrics import ServingMetrics
from .protocol import ProtocolError

log = logging.getLogger("helpers.server")

__all__ = ["GenerationStats", "GenerationService", "GenerationServices", "pool_blocks"]


def pool_blocks(model: ToolLogGPT, max_running: int, *, watermark_blocks: int = 1,
                memory_fraction: float = 0.5) -> int:
    """Blocks for a server's KV pool: on a GPU, as many as ``memory_fraction`` of its free
    memory holds (as vLLM does); on a CPU, where memory is not the limit, enough for
    ``max_running`` sequences at full context. Never more than those can use."""
    import torch

    c = model.config
    weight = model.tokens.weight
    most_useful = max_running * blocks_for(c.context) + watermark_blocks
    if weight.device.type != "cuda":
        return most_useful
    free_bytes, _ = torch.cuda.mem_get_info(weight.device)
    per_block = BLOCK_SIZE * bytes_per_token(c.n_layer, c.n_head, c.head_dim, weight.dtype)
    return blocks_for_memory(free_bytes, per_block, memory_fraction, most_useful)


@dataclass(frozen=True)
class GenerationStats:
    """What the engine looked like after its last step (read by ``/metrics``)."""

    running: int = 0
    waiting: int = 0
    used_blocks: int = 0
    total_blocks: int = 0


class GenerationService:
    """One generative model version: requests in as ``stream()`` calls, tokens out."""

    def __init__(self, name: str, version: str, model: ToolLogGPT, *, n_blocks: int,
                 max_running: int = 8, max_waiting: int = 64, max_new_tokens: int = 128,
                 metrics: ServingMetrics | None = None) -> None:
        self.name, self.version = name, version
        self.engine = GenerationEngine(model, n_blocks=n_blocks, max_running=max_running)
        self.tokenizer = ToolLogTokenizer()
        self.max_waiting, self.max_new_tokens = max_waiting, max_new_tokens
        # this version's metric series, resolved once (not per token)
        labels = {"model": name, "version": version}
        self._first_token = metrics.time_to_first_token.labels(**labels) if metrics else None
        self._between_tokens = metrics.inter_token_latency.labels(**labels) if metrics else None
        self._tokens = metrics.generated_tokens.labels(**labels) if metrics else None
        self.stats = GenerationStats(total_blocks=n_blocks)
        self.closing = False
        # shared with the engine thread, under the condition
        self._condition = threading.Condition()
        self._inbox: list[tuple] = []
        self._stop = False
        # the event loop's own
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[int, asyncio.Queue] = {}
        self._not_started = 0
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"generate-{name}-v{version}")
        self._thread.start()

    # -- the event loop's side -------------------------------------------------------------
    def prompt_ids(self, text: str) -> list[int]:
        """A request's text as the model's prompt: BOS, then the text's tokens (400 if the
        text holds something the tokenizer cannot read)."""
        try:
            return [self.tokenizer.bos_id, *self.tokenizer.encode(text)]
        except ValueError as exc:
            raise ProtocolError(f"text_input: {exc}; a tool log holds digits, ':/. ', "
                                "newlines and the log's words (RUN, LOT-, T=, ...)") from None

    def admit(self, prompt: list[int], max_new_tokens: int) -> None:
        """Refuse now what must not be queued: 400 for what can never fit, 503 when busy."""
        if not 1 <= max_new_tokens <= self.max_new_tokens:
            raise ProtocolError(f"max_tokens must be between 1 and {self.max_new_tokens}, "
                                f"got {max_new_tokens}")
        try:
            self.engine.check(len(prompt), max_new_tokens)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        if self.closing:
            raise BatcherClosedError(f"{self.name} is shutting down: no new generations")
        if self._not_started >= self.max_waiting:
            raise QueueFullError(self.max_waiting, retry_after_s=1.0)

    async def stream(self, prompt: list[int], max_new_tokens: int,
                     timeout_s: float) -> AsyncIterator[int]:
        """The request's tokens as they are made; ``timeout_s`` bounds the wait for the first.
        Closing the iterator early (the client left) cancels the request and frees its
        blocks; use ``contextlib.aclosing``."""
        self.admit(prompt, max_new_tokens)
        loop = self._loop = asyncio.get_running_loop()
        request_id, queue = next(self._ids), asyncio.Queue()
        self._streams[request_id] = queue
        self._not_started += 1
        self._send(("add", request_id, prompt, max_new_tokens))
        deadline = loop.time() + timeout_s
        submitted = last = time.perf_counter()
        made, finished = 0, False
        try:
            while not finished:
                if made:  # streaming: max_new_tokens bounds the rest
                    kind, value = await queue.get()
                else:
                    try:
                        kind, value = await asyncio.wait_for(queue.get(),
                                                             deadline - loop.time())
                    except asyncio.TimeoutError:  # TimeoutError's alias from Python 3.11
                        raise DeadlineExceededError(
                            f"deadline of {timeout_s:.3f} s passed before the first token "
                            "(queued behind other generations)") from None
                if kind == "error":
                    raise value
                token, finished = value
                now = time.perf_counter()
                if made == 0:
                    self._not_started -= 1
                if self._tokens is not None:
                    if made == 0:
                        self._first_token.observe(now - submitted)
                    else:
                        self._between_tokens.observe(now - last)
                    self._tokens.inc()
                made, last = made + 1, now
                yield token
        finally:
            if made == 0:
                self._not_started -= 1
            del self._streams[request_id]
            if not finished:  # left early, timed out or failed: its blocks go back now
                self._send(("cancel", request_id))

    def _deliver(self, request_id: int, kind: str, value: Any) -> None:
        queue = self._streams.get(request_id)
        if queue is not None:  # a stream that has gone needs nothing more
            queue.put_nowait((kind, value))

    def _send(self, command: tuple) -> None:
        with self._condition:
            self._inbox.append(command)
            self._condition.notify()

    def begin_shutdown(self) -> None:
        self.closing = True

    async def close(self, grace_s: float) -> None:
        """Finish admitted requests for up to ``grace_s``; then fail the rest (503) and stop."""
        self.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._streams and loop.time() < deadline:
            await asyncio.sleep(0.02)
        with self._condition:
            self._stop = True
            self._condition.notify()
        await asyncio.to_thread(self._thread.join, 10.0)

    # -- the engine thread's side ----------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # a bug in the service itself: fail loudly, leave no one waiting
            log.exception("the generation thread of %s v%s died", self.name, self.version)
            self.closing = True
            self._fail_all(BatcherFailedError(f"the generation engine of {self.name} stopped: "
                                              f"{type(exc).__name__}: {exc}"))

    def _serve(self) -> None:
        while True:
            with self._condition:
                while not (self._inbox or self.engine.has_work or self._stop):
                    self._condition.wait()
                commands, self._inbox = self._inbox, []
                stop = self._stop
            for command in commands:
                self._apply(command)
            self._record_stats()  # a cancel frees blocks without a step
            if stop:
                self._fail_all(BatcherClosedError(
                    "the server shut down: its grace period ran out before this generation "
                    "finished"))
                return
            if self.engine.has_work:
                self._step()

    def _apply(self, command: tuple) -> None:
        if command[0] == "add":
            _, request_id, prompt, max_new_tokens = command
            try:
                self.engine.add(request_id, prompt, max_new_tokens)
            except ValueError as exc:  # admission checked; this is a second line of defence
                self._to_loop(request_id, "error", ProtocolError(str(exc)))
        else:  # cancel: a no-op for a request that already finished
            self.engine.cancel(command[1])

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception as exc:  # the model failed this step: only its sequences fail
            failure = ModelFailedError(f"{self.name} v{self.version} failed while generating: "
                                       f"{type(exc).__name__}: {exc}")
            # the sequences of the step; if none ran, the waiting ones (the engine is stuck)
            failed = list(self.engine.running) or [r.request_id for r in self.engine.waiting]
            for request_id in failed:
                self.engine.cancel(request_id)
                self._to_loop(request_id, "error", failure)
            events = []
        for request_id, token, finished in events:
            self._to_loop(request_id, "token", (token, finished))
        self._record_stats()

    def _record_stats(self) -> None:
        manager = self.engine.manager
        self.stats = GenerationStats(len(self.engine.running), len(self.engine.waiting),
                                     manager.used_blocks, manager.allocator.n_blocks)

    def _fail_all(self, error: Exception) -> None:
        """Every request the thread knows of, in the engine or still in the inbox, gets
        ``error``; the engine gives back every block."""
        with self._condition:
            commands, self._inbox = self._inbox, []
        queued = [command[1] for command in commands if command[0] == "add"]
        for request_id in [*self.engine.running, *(r.request_id for r in self.engine.waiting)]:
            self.engine.cancel(request_id)
            self._to_loop(request_id, "error", error)
        for request_id in queued:
            self._to_loop(request_id, "error", error)
        self._record_stats()

    @property
    def alive(self) -> bool:
        """The engine thread runs (a service whose thread died is replaced on next use)."""
        return self._thread.is_alive()

    def _to_loop(self, request_id: int, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, request_id, kind, value)
        except (AttributeError, RuntimeError):  # no loop yet, or it closed: nobody waits
            pass


def _generative(served: Any) -> ToolLogGPT | None:
    """The language model a served version holds, or None if it does not generate."""
    module = getattr(served.model, "module", None)
    return module if isinstance(module, ToolLogGPT) else None


class GenerationServices:
    """The server's generation services: one per served version of a generative model,
    made at start-up for the versions loaded then, on first use for those loaded later."""

    def __init__(self, *, max_running: int = 8, max_waiting: int = 64,
                 max_new_tokens: int = 128, kv_blocks: int = 0,
                 metrics: ServingMetrics | None = None, grace_s: float = 25.0) -> None:
        self.max_running, self.max_waiting, self.grace_s = max_running, max_waiting, grace_s
        self.max_new_tokens, self.kv_blocks, self.metrics = max_new_tokens, kv_blocks, metrics
        self._services: dict[tuple[str, str], tuple[Any, GenerationService]] = {}
        self._retired: list[GenerationService] = []  # of versions since reloaded
        self.closing = False

    def for_version(self, served: Any) -> GenerationService:
        """The service of a served version (``ProtocolError`` 400 if it does not generate)."""
        module = _generative(served)
        if module is None:
            raise ProtocolError(f"{served.name} is not a generative model: /generate serves a "
                                "language model such as tool-log-lm; use /infer")
        key = (served.name, served.version)
        held = self._services.get(key)
        if held is not None and held[0] is served and (held[1].alive or self.closing):
            return held[1]  # (shutting down, a stopped service answers 503 by itself)
        service = GenerationService(
            served.name, served.version, module,
            n_blocks=self.kv_blocks or pool_blocks(module, self.max_running),
            max_running=self.max_running, max_waiting=self.max_waiting,
            max_new_tokens=self.max_new_tokens, metrics=self.metrics)
        if self.closing:
            service.begin_shutdown()
        if held is not None:  # reloaded, or its thread died: the old one finishes and stops
            self._retire(held[1])
        self._services[key] = (served, service)
        return service

    def start(self, served_versions) -> list[GenerationService]:
        """Make the services of the generative versions among ``served_versions`` now (the
        server does at start-up): the pool is sized from the memory free before traffic,
        and the first request does not pay for the pool and the thread."""
        return [self.for_version(served) for served in served_versions
                if _generative(served) is not None]

    def _retire(self, service: GenerationService) -> None:
        self._retired.append(service)
        closing = asyncio.get_running_loop().create_task(service.close(self.grace_s))
        closing.add_done_callback(lambda _: self._retired.remove(service))

    def current(self) -> list[GenerationService]:
        """The services of the versions being served (one per version: ``/metrics``)."""
        return [service for _, service in self._services.values()]

    def all(self) -> list[GenerationService]:
        return self.current() + self._retired

    def begin_shutdown(self) -> None:
        self.closing = True
        for service in self.all():
            service.begin_shutdown()

    async def close(self, grace_s: float) -> None:
        self.begin_shutdown()
        await asyncio.gather(*(service.close(grace_s) for service in self.all()))
