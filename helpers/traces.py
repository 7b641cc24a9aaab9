"""Traffic traces and a simulator that replays one against an autoscaling policy.

A ``Trace`` is an arrival rate over time, constant within each step. The builders follow
the course's story: ``step_trace`` and ``spike_trace`` for experiments, and
``day_of_shifts`` for a fab's day — three shifts, a dip at each shift change, the night
quieter, and test-cell bursts when lots finish at random moments.

``simulate`` is a discrete-event simulation of the same system lesson 07 runs for real:
Poisson arrivals from the trace, a balancer that sends each request to the ready replica that
will be free first, each replica serving one request at a time at its measured rate, and an
``Autoscaler`` ticking every ``tick_s`` on the requests in flight — with the measured
start-up time before a new replica takes traffic, warm spares that skip it, and replicas
removed only after they drain. It returns every request's latency, a timeline and the cost
in replica-seconds, so policies can be compared on a day of traffic in seconds, and checked
against a real run on a short trace.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .autoscaler import Autoscaler, AutoscalingConfig, Decision, hold_changes, scale_rule

__all__ = ["Trace", "step_trace", "spike_trace", "day_of_shifts", "ReplicaModel",
           "SimResult", "simulate"]


@dataclass(frozen=True)
class Trace:
    """``rates[i]`` requests per second from ``i * step_s`` to ``(i + 1) * step_s``."""

    name: str
    rates: np.ndarray
    step_s: float = 1.0

    def __post_init__(self) -> None:
        rates = np.asarray(self.rates, dtype=float)
        if rates.ndim != 1 or len(rates) == 0 or not np.isfinite(rates).all() or (rates < 0).any():
            raise ValueError("a trace needs one or more finite rates >= 0")
        if not self.step_s > 0:
            raise ValueError(f"step_s must be positive, got {self.step_s}")
        object.__setattr__(self, "rates", rates)

    @property
    def duration_s(self) -> float:
        return len(self.rates) * self.step_s

    def rate_at(self, t: float) -> float:
        return float(self.rates[min(int(t // self.step_s), len(self.rates) - 1)])

    def arrivals(self, seed: int = 0) -> np.ndarray:
        """Poisson arrival times in seconds, sorted: each step draws its own count."""
        rng = np.random.default_rng(seed)
        counts = rng.poisson(self.rates * self.step_s)
        starts = np.repeat(np.arange(len(self.rates)) * self.step_s, counts)
        return np.sort(starts + rng.random(counts.sum()) * self.step_s)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"t_s": np.arange(len(self.rates)) * self.step_s,
                             "rate_per_s": self.rates})


def step_trace(before: float, after: float, at_s: float, duration_s: float,
               step_s: float = 1.0) -> Trace:
    """``before`` requests/s, then ``after`` from ``at_s`` on."""
    t = np.arange(int(round(duration_s / step_s))) * step_s
    return Trace(f"step {before:g} -> {after:g}/s at {at_s:g} s",
                 np.where(t < at_s, before, after), step_s)


def spike_trace(base: float, peak: float, at_s: float, length_s: float, duration_s: float,
                step_s: float = 1.0) -> Trace:
    """``base`` requests/s with ``peak`` for ``length_s`` from ``at_s``."""
    t = np.arange(int(round(duration_s / step_s))) * step_s
    return Trace(f"spike to {peak:g}/s for {length_s:g} s",
                 np.where((t >= at_s) & (t < at_s + length_s), peak, base), step_s)


def day_of_shifts(peak_rate: float, day_s: float = 1440.0, bursts: int = 12,
                  burst_factor: float = 1.8, burst_s: float | None = None, seed: int = 0,
                  step_s: float = 1.0) -> Trace:
    """A fab's day compressed into ``day_s`` seconds (1440: a minute a second).

    Day shift (06-14) at ``peak_rate``, late shift (14-22) at 80 %, night (22-06) at 35 %,
    a dip to 30 % of that level in the quarter hour around each shift change, and ``bursts``
    test-cell bursts — a lot finishing — at random times, each ``burst_factor`` × the rate around it
    for ``burst_s`` (20 minutes of the day by default). Deterministic in ``seed``.
    """
    if not (peak_rate > 0 and day_s > 0 and burst_factor >= 1):
        raise ValueError("need peak_rate > 0, day_s > 0 and burst_factor >= 1")
    rng = np.random.default_rng(seed)
    n = int(round(day_s / step_s))
    hour = (np.arange(n) * step_s / day_s * 24.0 + 0.0) % 24.0  # the trace starts at midnight
    level = np.where((hour >= 6) & (hour < 14), 1.0, np.where((hour >= 14) & (hour < 22),
                                                               0.8, 0.35))
    for change in (6.0, 14.0, 22.0):
        level = np.where(np.abs(hour - change) < 0.125, level * 0.3, level)
    burst_s = day_s / 72 if burst_s is None else burst_s  # 20 minutes of a day
    bursting = np.zeros(n, dtype=bool)
    for start in rng.uniform(0, day_s - burst_s, size=bursts):
        bursting |= (np.arange(n) * step_s >= start) & (np.arange(n) * step_s < start + burst_s)
    level = np.where(bursting, level * burst_factor, level)  # overlapping bursts do not stack
    return Trace(f"a day of shifts, peak {peak_rate:g}/s, {bursts} bursts (seed {seed})",
                 peak_rate * level, step_s)


@dataclass(frozen=True)
class ReplicaModel:
    """What the simulation knows of a replica — measured on the real ones."""

    capacity_per_s: float   # requests/s one replica serves (one at a time, 1/capacity each)
    startup_s: float        # spawn to ready: no traffic before
    base_latency_s: float = 0.0  # what a request costs beyond the service time (HTTP, client)

    def __post_init__(self) -> None:
        if not (self.capacity_per_s > 0 and self.startup_s >= 0 and self.base_latency_s >= 0):
            raise ValueError("need capacity_per_s > 0, startup_s >= 0, base_latency_s >= 0")


@dataclass
class _SimReplica:
    started_s: float
    ready_s: float
    free_s: float = 0.0                      # when it finishes what it has been given
    finishes: deque = field(default_factory=deque)  # finish times of requests in flight
    stopping_s: float | None = None          # asked to stop: takes no new requests
    spare: bool = False

    def in_flight(self, now: float) -> int:
        while self.finishes and self.finishes[0] <= now:
            self.finishes.popleft()
        return len(self.finishes)

    def stopped_s(self) -> float:
        """When it stopped costing: once stopped and drained."""
        return max(self.stopping_s, self.free_s)


@dataclass
class SimResult:
    """Every request's latency (s), a row per tick, the decisions, and the cost."""

    latencies_s: np.ndarray
    timeline: pd.DataFrame
    decisions: list[Decision]
    replica_seconds: float
    slo_s: float

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 99) * 1000) if len(self.latencies_s) else 0.0

    @property
    def slo_misses(self) -> float:
        """The share of requests slower than the SLO."""
        return float((self.latencies_s > self.slo_s).mean()) if len(self.latencies_s) else 0.0

    def summary(self) -> dict:
        return {"requests": len(self.latencies_s), "p99 ms": self.p99_ms,
                "slo misses": self.slo_misses, "replica-seconds": float(self.replica_seconds),
                "scale changes": sum(d.changed for d in self.decisions),
                "max replicas": int(self.timeline["replicas"].max())}


def simulate(trace: Trace, config: AutoscalingConfig, replica: ReplicaModel, *,
             slo_ms: float, tick_s: float = 1.0, seed: int = 0,
             initial_replicas: int | None = None, autoscale: bool = True,
             scale=scale_rule, hold=hold_changes) -> SimResult:
    """Replay ``trace`` against ``config``; ``autoscale=False`` keeps the initial replicas;
    ``scale`` and ``hold`` are the autoscaler's rules (``helpers.autoscaler``)."""
    if config.min_replicas < 1:
        raise ValueError("the simulation needs min_replicas >= 1 (it does not scale from zero)")
    service_s = 1.0 / replica.capacity_per_s
    scaler = Autoscaler(config, initial_replicas, scale=scale, hold=hold)
    fleet = [_SimReplica(0.0, 0.0) for _ in range(scaler.replicas)]  # warm at the start
    fleet += [_SimReplica(0.0, 0.0, spare=True) for _ in range(config.warm_spares)]
    arrivals = trace.arrivals(seed)
    latencies = np.empty(len(arrivals))
    rows, next_arrival = [], 0
    for tick in range(1, int(math.ceil(trace.duration_s / tick_s)) + 1):
        now = tick * tick_s
        serving = [r for r in fleet if not r.spare and r.stopping_s is None]
        while next_arrival < len(arrivals) and arrivals[next_arrival] < now:
            at = arrivals[next_arrival]
            ready = [r for r in serving if r.ready_s <= at] or serving  # none ready: wait
            chosen = min(ready, key=lambda r: max(r.free_s, r.ready_s, at))
            start = max(chosen.free_s, chosen.ready_s, at)
            chosen.free_s = start + service_s
            chosen.finishes.append(chosen.free_s)
            latencies[next_arrival] = chosen.free_s - at + replica.base_latency_s
            next_arrival += 1
        in_flight = sum(r.in_flight(now) for r in fleet if not r.spare)
        if autoscale:
            scaler.observe(now, in_flight)
            decision = scaler.decide(now)
            _apply(fleet, decision.replicas, config.warm_spares, now, replica.startup_s)
        serving = [r for r in fleet if not r.spare and r.stopping_s is None]
        rows.append({"t_s": now, "rate_per_s": trace.rate_at(now - tick_s / 2),
                     "in_flight": in_flight, "replicas": len(serving),
                     "ready": sum(r.ready_s <= now for r in serving),
                     "spares": sum(r.spare and r.stopping_s is None for r in fleet),
                     "desired": scaler.decisions[-1].desired if autoscale else len(serving)})
    end = trace.duration_s
    cost = sum(min(r.stopped_s() if r.stopping_s is not None else end, end) - r.started_s
               for r in fleet)
    return SimResult(latencies, pd.DataFrame(rows), scaler.decisions, cost, slo_ms / 1000)


def _apply(fleet: list[_SimReplica], target: int, spares: int, now: float,
           startup_s: float) -> None:
    """Make ``target`` replicas serve (spares first, they are warm), keep ``spares`` spares."""
    serving = [r for r in fleet if not r.spare and r.stopping_s is None]
    idle = [r for r in fleet if r.spare and r.stopping_s is None]
    while len(serving) < target:
        if idle:
            promoted = idle.pop(0)
            promoted.spare = False
            serving.append(promoted)
        else:
            fresh = _SimReplica(now, now + startup_s, free_s=now)
            fleet.append(fresh)
            serving.append(fresh)
    # Scale down the youngest first: a replica still starting serves nobody yet.
    for extra in sorted(serving, key=lambda r: r.started_s, reverse=True)[:len(serving) - target]:
        extra.stopping_s = now
    while len(idle) < spares:
        spare = _SimReplica(now, now + startup_s, free_s=now, spare=True)
        fleet.append(spare)
        idle.append(spare)
