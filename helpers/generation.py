"""The generation engine: iteration-level batching over a paged KV cache.

Each ``step()`` asks ``helpers.scheduling.schedule`` who runs, then applies the decision:

- **preempted** sequences give back every block and return to the front of the queue,
  keeping the tokens they generated; when they are admitted again, their prompt and those
  tokens are prefilled anew (recompute), so their output does not change;
- **running** sequences decode one token each, in **one batched model call**
  (``helpers.kv_cache.PagedBatch``: each row at its own position, over its own blocks);
- **admitted** sequences are prefilled one by one and produce their first token.

A sequence that has its ``max_new_tokens`` leaves at once and frees its blocks — the
point of continuous batching: its place goes to the next in the queue in the very next
step. ``static=True`` runs the same engine the way continuous batching replaced, for
comparison: a batch is admitted only into an empty engine and runs as one padded batch —
a row that has finished keeps being computed (its tokens thrown away), as in a padded
``generate`` call, until the batch's longest row is done — and every row's answer is
delivered when the whole batch ends.

Greedy decoding, so the engine's output for a request equals ``helpers.gpt.generate`` for
that request alone, whatever else shares its steps. The engine is synchronous and
single-threaded: a server runs its steps off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .gpt import ToolLogGPT
from .kv_cache import BLOCK_SIZE, BlockManager, PagedBatch, PagedKVPool
from .scheduling import Decision, SeqState, schedule

__all__ = ["GenerationRequest", "GenerationEngine", "EngineRun", "drive"]


@dataclass
class GenerationRequest:
    request_id: object
    prompt: list[int]
    max_new_tokens: int
    arrival: int
    generated: list[int] = field(default_factory=list)
    preemptions: int = 0

    @property
    def done(self) -> bool:
        return len(self.generated) >= self.max_new_tokens


class GenerationEngine:
    """Requests in, one token per running request per ``step()`` out."""

    def __init__(self, model: ToolLogGPT, *, n_blocks: int, max_running: int = 8,
                 block_size: int = BLOCK_SIZE, watermark_blocks: int = 1,
                 static: bool = False, manager: BlockManager | None = None,
                 scheduler: Callable[..., Decision] = schedule) -> None:
        """``manager`` and ``scheduler`` are plug-in points (lesson 05 plugs in yours): a
        block manager with ``BlockManager``'s methods over ``n_blocks`` blocks, and a
        function with ``schedule``'s arguments."""
        c = model.config
        self.model, self.max_running, self.static = model, max_running, static
        self.scheduler = scheduler
        weight = model.tokens.weight
        self.pool = PagedKVPool(c.n_layer, n_blocks, c.n_head, c.head_dim, block_size,
                                dtype=weight.dtype, device=weight.device,
                                watermark_blocks=watermark_blocks, manager=manager)
        self.waiting: list[GenerationRequest] = []
        self.running: dict[object, GenerationRequest] = {}
        self._arrivals = 0

    @property
    def manager(self):
        return self.pool.manager

    def check(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise ``ValueError`` for a request that could never fit the context or the pool.

        Reads only what never changes (the context, the pool's size), so a server may call it
        from any thread before it queues the request.
        """
        total = prompt_tokens + max_new_tokens
        if prompt_tokens < 1 or max_new_tokens < 1:
            raise ValueError("a request needs a prompt and at least one new token")
        if total > self.model.config.context:
            raise ValueError(f"{prompt_tokens} prompt + {max_new_tokens} new tokens is over the "
                             f"context of {self.model.config.context}")
        room = self.manager.allocator.n_blocks - self.manager.watermark_blocks
        if self.manager.blocks_for(total) > room:
            raise ValueError(f"{total} tokens need {self.manager.blocks_for(total)} blocks; "
                             f"the pool can give one sequence {room}")

    def add(self, request_id: object, prompt: Sequence[int], max_new_tokens: int) -> None:
        """Queue a request; refuse one that could never fit the context or the pool."""
        self.check(len(prompt), max_new_tokens)
        if request_id in self.running or any(r.request_id == request_id for r in self.waiting):
            raise ValueError(f"request {request_id!r} is already queued or running")
        self.waiting.append(GenerationRequest(request_id, list(prompt), max_new_tokens,
                                              self._arrivals))
        self._arrivals += 1

    def cancel(self, request_id: object) -> None:
        """The client left: drop the request, and free its blocks if it holds any."""
        self.running.pop(request_id, None)
        if request_id in self.manager.tables:  # a step that failed may have left it none
            self.manager.free(request_id)
        self.waiting = [r for r in self.waiting if r.request_id != request_id]

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @torch.inference_mode()
    def step(self) -> list[tuple[object, int | None, bool]]:
        """One iteration: ``(request_id, new token, finished)`` for each token made; in static
        mode a batch's end adds ``(request_id, None, True)`` for each of its rows."""
        decision = self.scheduler(
            [SeqState(r.request_id, r.arrival, len(r.prompt) + len(r.generated))
             for r in self.waiting],
            [SeqState(r.request_id, r.arrival, self.manager.lengths[r.request_id])
             for r in self.running.values()],
            free_blocks=self.manager.allocator.n_free, block_size=self.manager.block_size,
            max_running=self.max_running, watermark_blocks=self.manager.watermark_blocks,
            **({"static": True} if self.static else {}))
        if decision.idle and not decision.preempt:
            # Nothing runs, nothing joins, nothing was freed: the next step would see the
            # same state and decide the same, for ever. A policy or a block manager is wrong.
            raise RuntimeError(
                f"the engine is stuck: {len(self.waiting)} waiting, {len(self.running)} "
                f"running, {self.manager.allocator.n_free} free blocks, and the scheduler "
                "ran, admitted and preempted nobody")
        for request_id in decision.preempt:  # recompute later; keep what was generated
            request = self.running.pop(request_id)
            self.manager.free(request_id)
            request.preemptions += 1
            self.waiting.append(request)
        self.waiting.sort(key=lambda r: r.arrival)

        made: list[tuple[object, int]] = []
        # a finished static row that reached the context stops: there is no position left
        run = [i for i in decision.run if not (self.running[i].done and self.manager.lengths[i]
                                               >= self.model.config.context)]
        if run:  # every running sequence, one token, one batched call
            last = torch.tensor([[self.running[i].generated[-1]] for i in run],
                                device=self.model.tokens.weight.device)
            logits = self.model(last, PagedBatch(self.pool, run))[:, -1]
            made += zip(run, logits.argmax(-1).tolist(), strict=True)
        for request_id in decision.admit:  # prefill: the prompt (and any recomputed tokens)
            request = next(r for r in self.waiting if r.request_id == request_id)
            self.waiting.remove(request)
            self.running[request_id] = request
            tokens = torch.tensor([request.prompt + request.generated],
                                  device=self.model.tokens.weight.device)
            logits = self.model(tokens, self.pool.sequence(request_id))[:, -1]
            made.append((request_id, int(logits.argmax(-1))))

        events = []
        for request_id, token in made:
            request = self.running[request_id]
            if request.done:  # static: a finished row is padding; its token is thrown away
                continue
            request.generated.append(token)
            if request.done and not self.static:  # leaves now: its blocks go to the next
                del self.running[request_id]
                self.manager.free(request_id)
            events.append((request_id, token, request.done and not self.static))
        if self.static and self.running and all(r.done for r in self.running.values()):
            for request_id in list(self.running):  # the batch ends: every answer at once
                del self.running[request_id]
                self.manager.free(request_id)
                events.append((request_id, None, True))
        return events

    def run_until_done(self) -> dict[object, list[int]]:
        """Step until every request has finished; each request's generated tokens."""
        finished: dict[object, list[int]] = {}
        requests = {r.request_id: r for r in self.waiting} | dict(self.running)
        while self.has_work:
            for request_id, _, done in self.step():
                if done:
                    finished[request_id] = requests[request_id].generated
        return finished


# -- measuring a workload ---------------------------------------------------------------------
@dataclass
class EngineRun:
    """What one run of an engine over a workload measured (every request arrived at 0).

    Times in seconds from the start; steps count engine iterations, which do not depend on
    the machine. KV waste is over every step: the share of token slots held that hold no
    token, for paged blocks and for a reservation of the whole context per sequence.
    """

    outputs: dict[object, list[int]]
    first_token_s: dict[object, float]
    finished_s: dict[object, float]
    finished_step: dict[object, int]
    steps: int
    seconds: float
    paged_waste: float
    reserved_waste: float
    preemptions: int
    leaked_blocks: int

    @property
    def tokens(self) -> int:
        return sum(map(len, self.outputs.values()))

    def summary(self) -> dict[str, float]:
        latency = np.array(list(self.finished_s.values()))
        first = np.array(list(self.first_token_s.values()))
        return {"tokens/s": self.tokens / self.seconds, "tokens/step": self.tokens / self.steps,
                "mean latency s": float(latency.mean()),
                "p99 latency s": float(np.percentile(latency, 99)),
                "mean first token s": float(first.mean()),
                "mean latency steps": float(np.mean(list(self.finished_step.values()))),
                "steps": self.steps, "paged waste": self.paged_waste,
                "reserved waste": self.reserved_waste, "preemptions": self.preemptions}


def drive(engine: GenerationEngine,
          requests: Sequence[tuple[object, Sequence[int], int]]) -> EngineRun:
    """Add every ``(id, prompt, max_new_tokens)`` at once, step until all are done, measure."""
    for request_id, prompt, max_new_tokens in requests:
        engine.add(request_id, prompt, max_new_tokens)
    queued = {r.request_id: r for r in engine.waiting}
    first, finished, finished_step = {}, {}, {}
    held = paged = reserved = steps = 0  # token slots, summed over steps
    manager, context = engine.manager, engine.model.config.context
    start = time.perf_counter()
    while engine.has_work:
        events = engine.step()
        steps += 1
        now = time.perf_counter() - start
        for request_id, token, done in events:
            if token is not None:
                first.setdefault(request_id, now)
            if done:
                finished[request_id], finished_step[request_id] = now, steps
        held += sum(manager.lengths.values())
        paged += manager.used_blocks * manager.block_size
        reserved += len(engine.running) * context
    seconds = time.perf_counter() - start
    return EngineRun(
        outputs={i: r.generated for i, r in queued.items()}, first_token_s=first,
        finished_s=finished, finished_step=finished_step, steps=steps, seconds=seconds,
        paged_waste=1 - held / paged if paged else 0.0,
        reserved_waste=1 - held / reserved if reserved else 0.0,
        preemptions=sum(r.preemptions for r in queued.values()),
        leaked_blocks=manager.used_blocks)
