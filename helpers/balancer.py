"""Load balancing over replicas: who gets the next request, and what to do when one fails.

The decisions are pure and small, each testable without a socket or a clock:

- **Pickers** choose a replica from ``Candidate`` snapshots (name, requests in flight, a
  latency estimate): ``RoundRobin``, ``RandomPick``, ``LeastOutstanding``, ``PowerOfTwo``
  (two distinct replicas at random, the less loaded wins — the "power of two choices" of
  Ray Serve's router and Envoy's ``LEAST_REQUEST``), and ``PeakEwmaP2C`` (the same two
  choices, judged by latency × load, as Linkerd and Finagle do).
- ``PeakEwma``: a latency estimate that **jumps up** at once on a slow sample and **decays**
  back over ``tau_s`` — pessimistic when a replica slows down, forgiving when it recovers.
- ``OutlierDetector``: eject a replica after N consecutive failures for a while, then let it
  back to be probed (Envoy's outlier detection); never eject the last one standing.
- ``RetryBudget``: retries may add at most a share of the requests plus a small floor, over a
  sliding window (Finagle's and Envoy's retry budgets), so retries cannot multiply an outage.

``Balancer`` is the thin async part: it sends through a picker over aiohttp, keeps each
replica's in-flight count and latency, feeds the detector and the budget, and is a
``helpers.loadgen`` sender.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from .loadgen import HTTPSender, LoadResult, Request, open_loop

__all__ = ["Candidate", "RoundRobin", "RandomPick", "LeastOutstanding", "PowerOfTwo",
           "PeakEwmaP2C", "PeakEwma", "OutlierDetector", "RetryBudget", "Balancer",
           "BalancedRun", "drive"]


@dataclass(frozen=True)
class Candidate:
    """What a picker knows of a replica at the moment of choosing."""

    name: str
    in_flight: int = 0
    latency_s: float = 0.0  # its latency estimate (PeakEwma, or its oldest unanswered
    #                         request's wait if longer), 0 when unknown

    @property
    def cost(self) -> float:
        """Latency × (load + 1): the expected wait of one more request (Finagle's cost)."""
        return self.latency_s * (self.in_flight + 1)


def _require(candidates: Sequence[Candidate]) -> None:
    if not candidates:
        raise ValueError("no replica to choose from")


class RoundRobin:
    """Each replica in turn, whatever it is doing."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[Candidate]) -> Candidate:
        _require(candidates)
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


class RandomPick:
    """A replica at random: no state, no information."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def pick(self, candidates: Sequence[Candidate]) -> Candidate:
        _require(candidates)
        return self.rng.choice(list(candidates))


class LeastOutstanding:
    """The replica with the fewest requests in flight; ties at random (not always the first,
    which would pile a burst onto one replica)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def pick(self, candidates: Sequence[Candidate]) -> Candidate:
        _require(candidates)
        fewest = min(c.in_flight for c in candidates)
        return self.rng.choice([c for c in candidates if c.in_flight == fewest])


class PowerOfTwo:
    """Two **distinct** replicas at random; the one with fewer requests in flight wins.

    Nearly as good as least outstanding with far less information, and it never sends a
    whole burst to the one replica that looked idle a moment ago.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def _two(self, candidates: Sequence[Candidate]) -> tuple[Candidate, Candidate]:
        _require(candidates)
        if len(candidates) == 1:
            return candidates[0], candidates[0]
        first, second = self.rng.sample(list(candidates), 2)
        return first, second

    def pick(self, candidates: Sequence[Candidate]) -> Candidate:
        first, second = self._two(candidates)
        return second if second.in_flight < first.in_flight else first


class PeakEwmaP2C(PowerOfTwo):
    """Power of two choices judged by ``cost`` = latency estimate × (in flight + 1).

    A replica with no latency estimate yet costs nothing and is tried first, so a new or
    recovered replica gets traffic and an estimate.
    """

    def pick(self, candidates: Sequence[Candidate]) -> Candidate:
        first, second = self._two(candidates)
        return second if second.cost < first.cost else first


class PeakEwma:
    """Peak-sensitive exponentially weighted moving average of latency.

    A sample above the estimate replaces it (the peak); a sample below moves the estimate
    towards it with weight ``1 - exp(-elapsed / tau_s)``, so the longer since the last
    sample, the more the new one counts. Between samples the estimate decays towards zero
    (Finagle reads it as if a zero sample arrived), so a replica that has been left alone
    gets tried again.
    """

    def __init__(self, tau_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not tau_s > 0:
            raise ValueError(f"tau_s must be positive, got {tau_s}")
        self.tau_s, self.clock = tau_s, clock
        self._estimate, self._stamp = 0.0, clock()

    def _decay(self, now: float) -> float:
        return math.exp(-max(now - self._stamp, 0.0) / self.tau_s)

    def observe(self, latency_s: float) -> None:
        if not (latency_s >= 0 and math.isfinite(latency_s)):
            raise ValueError(f"a latency must be finite and >= 0, got {latency_s}")
        now = self.clock()
        if latency_s > self._estimate:
            self._estimate = latency_s
        else:
            weight = self._decay(now)
            self._estimate = self._estimate * weight + latency_s * (1 - weight)
        self._stamp = now

    @property
    def value(self) -> float:
        """The estimate now, in seconds (0 before any sample)."""
        return self._estimate * self._decay(self.clock())


class OutlierDetector:
    """Envoy's consecutive-failure outlier detection: after ``consecutive_failures`` failures
    in a row a replica is ejected for ``eject_s`` × the number of times it has been ejected,
    then comes back and is tried again. Never ejects the last replica standing — with nothing
    to send to, every request fails, which is worse than a flaky replica."""

    def __init__(self, consecutive_failures: int = 3, eject_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if consecutive_failures < 1 or not eject_s > 0:
            raise ValueError("need consecutive_failures >= 1 and eject_s > 0")
        self.consecutive_failures, self.eject_s, self.clock = consecutive_failures, eject_s, clock
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}
        self._times: dict[str, int] = {}

    def available(self, names: Sequence[str]) -> list[str]:
        """The replicas that may get traffic now."""
        now = self.clock()
        return [n for n in names if self._until.get(n, -math.inf) <= now]

    def record(self, name: str, ok: bool, names: Sequence[str]) -> bool:
        """Note one request's outcome at ``name``; True if this failure ejected it."""
        if ok:
            self._failures[name] = 0
            return False
        self._failures[name] = self._failures.get(name, 0) + 1
        if self._failures[name] < self.consecutive_failures:
            return False
        available = self.available(names)
        if name not in available or len(available) <= 1:  # already out, or the last one
            return False
        self._times[name] = self._times.get(name, 0) + 1
        self._until[name] = self.clock() + self.eject_s * self._times[name]
        self._failures[name] = 0
        return True

    def ejected(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if n not in self.available(names)]


class RetryBudget:
    """Retries allowed over a sliding ``window_s``: at most ``ratio`` × the requests sent in
    the window, plus ``min_retries`` (so a quiet service can still retry a little)."""

    def __init__(self, ratio: float = 0.1, min_retries: int = 3, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= ratio <= 1 or min_retries < 0 or not window_s > 0:
            raise ValueError("need 0 <= ratio <= 1, min_retries >= 0, window_s > 0")
        self.ratio, self.min_retries = ratio, min_retries
        self.window_s, self.clock = window_s, clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self.granted = self.refused = 0

    def _trim(self, now: float) -> None:
        for times in (self._requests, self._retries):
            while times and times[0] <= now - self.window_s:
                times.popleft()

    def request(self) -> None:
        """A first attempt was sent: it earns the budget a share of a retry."""
        self._requests.append(self.clock())

    def try_retry(self) -> bool:
        """Spend a retry if the budget has one; False means: fail now, do not retry."""
        now = self.clock()
        self._trim(now)
        if len(self._retries) < self.min_retries + self.ratio * len(self._requests):
            self._retries.append(now)
            self.granted += 1
            return True
        self.refused += 1
        return False


# -- the async balancer ----------------------------------------------------------------------
def failed(status: int) -> bool:
    """No answer (refused, reset, timed out: status 0) or a server error: a replica's fault,
    worth another replica's try. 4xx are the request's fault and go back as they are."""
    return status == 0 or status >= 500


async def _close(sender) -> None:
    """Close a sender's connections (an ``HTTPSender``; a plain function has none)."""
    close = getattr(sender, "__aexit__", None)
    if close is not None:
        await close(None, None, None)


@dataclass
class _Replica:
    url: str
    latency: PeakEwma
    sender: HTTPSender | None = None
    sent_at: dict[int, float] = field(default_factory=dict)  # in flight: attempt -> sent
    serving: bool = True  # False once removed: no new requests
    attempts: int = 0
    failures: int = 0
    ejections: int = 0

    @property
    def in_flight(self) -> int:
        return len(self.sent_at)

    def latency_s(self, now: float) -> float:
        """The estimate, but never below the wait of its oldest unanswered request: that one
        is a sample still coming in. A replica that stalls stops answering, so its estimate
        gets no new sample — and would decay towards zero, drawing *more* traffic — while
        its unanswered requests grow older (Finagle gives an idle-looking replica with
        requests outstanding a penalty for the same reason)."""
        oldest = min(self.sent_at.values(), default=now)
        return max(self.latency.value, now - oldest)


class Balancer:
    """Send each request to a replica chosen by ``picker``; a ``helpers.loadgen`` sender.

    ``detector`` (an ``OutlierDetector``) takes failing replicas out of the choice for a
    while; ``budget`` (a ``RetryBudget``) lets a failed request try another replica while
    retries stay within the budget — the same request, so only for idempotent ones
    (inference is). Without them, a failure goes back to the caller as it came.
    """

    def __init__(self, urls: Sequence[str], picker, *, detector: OutlierDetector | None = None,
                 budget: RetryBudget | None = None, max_attempts: int = 3, tau_s: float = 10.0,
                 latency_tracker: Callable[..., PeakEwma] = PeakEwma,
                 timeout_s: float = 30.0, connections: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``max_attempts`` caps one request's tries (Envoy's ``num_retries`` + 1), whatever
        the budget allows: a request never loops over dead replicas for ever.
        ``latency_tracker(tau_s, clock)`` makes each replica's latency estimate: anything
        with ``observe(seconds)`` and ``value`` will do (lesson 06 plugs in yours)."""
        if not urls:
            raise ValueError("a balancer needs at least one replica")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.picker, self.detector, self.budget = picker, detector, budget
        self.max_attempts = max_attempts
        self.timeout_s, self.connections, self.clock = timeout_s, connections, clock
        self._new_tracker = lambda: latency_tracker(tau_s, clock)
        self.replicas = {url.rstrip("/"): _Replica(url.rstrip("/"), self._new_tracker())
                         for url in urls}
        self.requests = self.retries = 0
        self._log: list[tuple[float, str, int, float]] = []  # (sent, replica, status, latency)

    async def __aenter__(self) -> Balancer:
        for replica in self.replicas.values():
            replica.sender = await HTTPSender(replica.url, self.connections,
                                              self.timeout_s).__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for replica in self.replicas.values():
            if replica.sender is not None:
                await _close(replica.sender)

    @property
    def serving(self) -> list[str]:
        """The replicas that take new requests (added, not removed)."""
        return [name for name, replica in self.replicas.items() if replica.serving]

    async def add(self, url: str) -> None:
        """Send to ``url`` from now on (a replica the autoscaler started)."""
        url = url.rstrip("/")
        replica = self.replicas.setdefault(url, _Replica(url, self._new_tracker()))
        if replica.sender is None:
            replica.sender = await HTTPSender(url, self.connections, self.timeout_s).__aenter__()
        replica.serving = True

    async def remove(self, url: str, drain_timeout_s: float = 30.0) -> None:
        """Stop sending new requests to ``url``, wait for its requests in flight to come back
        (or ``drain_timeout_s``), then close its connections. Its stats stay."""
        replica = self.replicas[url.rstrip("/")]
        replica.serving = False
        deadline = self.clock() + drain_timeout_s
        while replica.in_flight and self.clock() < deadline:
            await asyncio.sleep(0.01)
        if replica.sender is not None and not replica.in_flight:
            await _close(replica.sender)
            replica.sender = None

    def candidates(self, exclude: set[str] = frozenset()) -> list[Candidate]:
        """Snapshots of the replicas a request may go to now."""
        names = self.serving
        allowed = self.detector.available(names) if self.detector else names
        allowed = [n for n in allowed if n not in exclude] or allowed  # retry elsewhere if any
        now = self.clock()
        return [Candidate(n, self.replicas[n].in_flight, self.replicas[n].latency_s(now))
                for n in allowed]

    async def __call__(self, request: Request) -> tuple[int, str, str]:
        self.requests += 1
        if self.budget is not None:
            self.budget.request()
        tried: set[str] = set()
        for attempt in range(1, self.max_attempts + 1):
            replica = self.replicas[self.picker.pick(self.candidates(tried)).name]
            status, error, version = await self._send(replica, request)
            if (not failed(status) or attempt == self.max_attempts or self.budget is None
                    or not self.budget.try_retry()):
                return status, error, version
            tried.add(replica.url)
            self.retries += 1

    async def _send(self, replica: _Replica, request: Request) -> tuple[int, str, str]:
        replica.attempts += 1
        attempt, start = replica.attempts, self.clock()
        replica.sent_at[attempt] = start
        try:
            status, error, version = await replica.sender(request)
        finally:
            del replica.sent_at[attempt]
        latency = self.clock() - start
        self._log.append((start, replica.url, status, latency))
        if status != 0:  # an answer, even an error, says how long this replica takes
            replica.latency.observe(latency)
        if failed(status):
            replica.failures += 1
        if self.detector is not None and self.detector.record(replica.url, not failed(status),
                                                              self.serving):
            replica.ejections += 1
        return status, error, version

    def attempt_log(self) -> pd.DataFrame:
        """Every attempt, in the order they ended: ``sent_s`` (seconds since the first was
        sent), ``replica``, ``status``, ``latency_ms`` — e.g. to plot who got traffic when."""
        frame = pd.DataFrame(self._log, columns=["sent_s", "replica", "status", "latency_s"])
        frame["sent_s"] -= frame["sent_s"].min() if len(frame) else 0.0
        frame["latency_ms"] = frame.pop("latency_s") * 1000
        return frame

    def stats(self) -> pd.DataFrame:
        """Per replica: attempts and their share, failures, ejections, latency estimate."""
        total = sum(r.attempts for r in self.replicas.values()) or 1
        ejected = set(self.detector.ejected(list(self.replicas))) if self.detector else set()
        return pd.DataFrame([{
            "replica": r.url, "attempts": r.attempts, "share": r.attempts / total,
            "failures": r.failures, "ejections": r.ejections, "ejected now": r.url in ejected,
            "serving": r.serving,
            "latency estimate ms": r.latency.value * 1000} for r in self.replicas.values()]
        ).set_index("replica")


# -- one measured run through a balancer -----------------------------------------------------
@dataclass
class BalancedRun:
    """What one open-loop run through a balancer measured: the load generator's result and
    the balancer that carried it (its per-replica stats and attempt log)."""

    result: LoadResult
    balancer: Balancer

    def summary(self) -> dict:
        """p50 and p99 (every request, errors too), errors and retries as shares of the
        requests, and each replica's share of the attempts."""
        measured, s = self.result.measured, self.result.summary()
        requests = max(len(measured), 1)
        errors = int((measured["status"] != 200).sum())
        row = {"p50 ms": s.get("p50_ms", math.nan), "p99 ms": s.get("p99_ms", math.nan),
               "requests": len(measured), "errors": errors, "error share": errors / requests,
               "retries": self.balancer.retries,
               "retry share": self.balancer.retries / max(self.balancer.requests, 1)}
        for i, share in enumerate(self.balancer.stats()["share"]):
            row[f"share {i}"] = share
        return row


async def drive(urls: Sequence[str], picker, make_request: Callable[[int], Request], *,
                rate_per_s: float, seconds: float, warmup_s: float = 0.5,
                faults: Sequence[tuple[float, Callable[[], object]]] = (),
                **balancer_args) -> BalancedRun:
    """Send open-loop traffic (``helpers.loadgen``) through a fresh ``Balancer(urls, picker,
    **balancer_args)`` for ``warmup_s + seconds``.

    ``faults`` are ``(at_s, action)`` pairs: each action (e.g. ``lambda: replicas.kill(2)``)
    runs ``at_s`` seconds into the run, in a thread, so a slow one cannot stall the sending.
    """
    async with Balancer(urls, picker, **balancer_args) as balancer:
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future] = []
        timers = [loop.call_later(at_s, lambda act=action: pending.append(
            loop.run_in_executor(None, act))) for at_s, action in faults]
        try:
            result = await open_loop(None, make_request, rate_per_s=rate_per_s,
                                     duration_s=warmup_s + seconds, warmup_s=warmup_s,
                                     send=balancer, timeout_s=balancer.timeout_s,
                                     progress=False)
        finally:
            for timer in timers:
                timer.cancel()
            await asyncio.gather(*pending)  # an action that raised raises here
    return BalancedRun(result, balancer)
