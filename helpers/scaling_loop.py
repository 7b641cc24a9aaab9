"""The autoscaler's thin loop over real replicas: read the load, decide, act, write it down.

Every ``tick_s`` a ``ScalingLoop`` reads each serving replica's ``http_requests_in_flight``
from its ``/metrics``, feeds the sum (the service's requests in flight) to an
``Autoscaler`` and carries out its decision on a ``ReplicaSet`` behind a ``Balancer``:

- **up**: a warm spare joins the balancer at once; otherwise a new replica starts — its
  start-up (torch, the model) is the **cold start** — and joins when ready. Starting runs in
  a thread, so the loop goes on deciding meanwhile; it counts what is starting, so a second
  decision does not start the same replica twice.
- **down**: the youngest serving replica leaves the balancer, drains what it has in flight,
  and is stopped (SIGTERM: it finishes what it admitted). Never below one serving.
- spares are topped up to ``config.warm_spares`` after every decision.

Every tick is a row of ``frame()``: time, load, the decision, replicas serving, starting and
spare — what the lesson plots against latency.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pandas as pd

from .autoscaler import Autoscaler, AutoscalingConfig
from .balancer import Balancer
from .replicas import ReplicaSet

__all__ = ["ScalingLoop", "in_flight_of"]

_IN_FLIGHT = re.compile(r"^http_requests_in_flight\s+([0-9.eE+-]+)$", re.MULTILINE)


def in_flight_of(metrics_text: str) -> float:
    """The ``http_requests_in_flight`` gauge from a ``/metrics`` page (0 if absent)."""
    found = _IN_FLIGHT.search(metrics_text)
    return float(found.group(1)) if found else 0.0


class ScalingLoop:
    """Scale ``replicas`` (the ones in ``serving`` take traffic through ``balancer``; those in
    ``spares`` are started and idle) with an ``Autoscaler(config)``."""

    def __init__(self, replicas: ReplicaSet, balancer: Balancer, config: AutoscalingConfig, *,
                 tick_s: float = 1.0, serving: list[int] | None = None,
                 spares: list[int] | None = None) -> None:
        self.replicas, self.balancer, self.config, self.tick_s = replicas, balancer, config, tick_s
        self.serving = list(range(len(replicas)) if serving is None else serving)
        self.spares = list(spares or [])
        self.scaler = Autoscaler(config, replicas=len(self.serving))
        self.starting = self.spares_starting = 0
        self.rows: list[dict] = []
        self._last_read: dict[int, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._start = time.monotonic()

    async def read_load(self) -> float:
        """Requests in flight across the serving replicas, from their ``/metrics``. A replica
        that does not answer in time keeps its last reading: an overloaded replica is slow to
        answer its scrape too, and reading it as idle would scale down exactly then."""
        async with httpx.AsyncClient(timeout=1.0) as client:
            async def one(i: int) -> float:
                try:
                    page = await client.get(self.replicas[i].url + "/metrics")
                    self._last_read[i] = in_flight_of(page.text)
                except httpx.HTTPError:
                    pass
                return self._last_read.get(i, 0.0)
            return sum(await asyncio.gather(*(one(i) for i in self.serving)))

    async def run(self, seconds: float) -> pd.DataFrame:
        """Tick for ``seconds``, then wait for starts and stops still under way."""
        self._start = loop_start = time.monotonic()
        tick = 0
        while (now := time.monotonic()) - loop_start < seconds:
            await self.tick(now - self._start)
            tick += 1
            await asyncio.sleep(max(0.0, loop_start + tick * self.tick_s - time.monotonic()))
        await asyncio.gather(*self._tasks)
        return self.frame()

    async def tick(self, at_s: float) -> None:
        load = await self.read_load()
        self.scaler.observe(at_s, load)
        decision = self.scaler.decide(at_s)
        self._apply(decision.replicas)
        self.rows.append({"t_s": at_s, "in_flight": load, "desired": decision.desired,
                          "target": decision.replicas, "serving": len(self.serving),
                          "starting": self.starting, "spares": len(self.spares),
                          "panic": decision.panic, "reason": decision.reason})

    def _apply(self, target: int) -> None:
        while len(self.serving) + self.starting < target:
            if self.spares:  # warm: it joins now
                i = self.spares.pop(0)
                self.serving.append(i)
                self._spawn(self.balancer.add(self.replicas[i].url))
            else:  # cold: it joins once started
                self.starting += 1
                self._spawn(self._start_and_join())
        # Down: only serving replicas beyond the target (one still starting joins, and goes on
        # a later tick if it is still not wanted), never the last one.
        excess = min(len(self.serving) - target, len(self.serving) - 1)
        for i in sorted(self.serving, reverse=True)[:max(0, excess)]:
            self.serving.remove(i)  # the youngest first
            self._spawn(self._retire(i))
        while len(self.spares) + self.spares_starting < self.config.warm_spares:
            self.spares_starting += 1
            self._spawn(self._start_spare())

    def _spawn(self, work) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_and_join(self) -> None:
        try:
            i = await asyncio.get_running_loop().run_in_executor(None, self.replicas.add)
        finally:
            self.starting -= 1
        self.serving.append(i)
        await self.balancer.add(self.replicas[i].url)

    async def _start_spare(self) -> None:
        try:
            i = await asyncio.get_running_loop().run_in_executor(None, self.replicas.add)
        finally:
            self.spares_starting -= 1
        self.spares.append(i)

    async def _retire(self, i: int) -> None:
        await self.balancer.remove(self.replicas[i].url)
        await asyncio.get_running_loop().run_in_executor(None, self.replicas.stop, i)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)
