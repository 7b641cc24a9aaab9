"""A load generator that does not lie about latency.

**Open loop** (``open_loop``): requests are *scheduled* at a target rate — evenly
spaced or as a Poisson process — and sent on schedule whether or not earlier ones
have returned, as real users do. Latency is measured from each request's
*intended* send time (wrk2's method). If the server stalls for a second, every
request scheduled during that second counts the stall; a closed-loop tester
would instead wait politely and record one slow request — *coordinated omission*,
which hides exactly the tail an SLO is about.

**Closed loop** (``closed_loop``): N users, each sending its next request when the
previous one returns. It measures capacity (throughput at a concurrency), not
user-facing latency, and its results say so (``mode="closed"``).

Requests during ``warmup_s`` run but are excluded. Results are a DataFrame, one
row per request; ``summary()`` gives the achieved rate, percentiles and errors.

    python -m helpers.loadgen --url http://127.0.0.1:8000 --rate 200 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pandas as pd

from .metrics import LatencyRecorder

__all__ = ["Request", "Sender", "HTTPSender", "arrival_times", "open_loop", "replay",
           "capacity_at_slo", "closed_loop", "LoadResult", "v2_request"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    json: Any = None
    headers: dict[str, str] | None = None
    content: bytes | None = None  # a pre-encoded body (JSON, or binary tensors with headers)


def arrival_times(rate_per_s: float, duration_s: float, arrivals: str = "poisson",
                  seed: int = 0) -> np.ndarray:
    """Intended send times in seconds from the start, all below ``duration_s``."""
    if not (rate_per_s > 0 and duration_s > 0):
        raise ValueError(f"rate and duration must be positive, got {rate_per_s}, {duration_s}")
    if arrivals == "constant":
        return np.arange(int(np.ceil(rate_per_s * duration_s - 1e-9))) / rate_per_s
    if arrivals == "poisson":
        rng = np.random.default_rng(seed)
        n_draw = int(rate_per_s * duration_s * 1.5) + 50  # enough gaps, with margin
        times = np.cumsum(rng.exponential(1.0 / rate_per_s, n_draw))
        while times[-1] < duration_s:  # astronomically rare: draw more
            times = np.concatenate([times, times[-1] + np.cumsum(
                rng.exponential(1.0 / rate_per_s, n_draw))])
        return times[times < duration_s]
    raise ValueError(f"arrivals must be 'poisson' or 'constant', got {arrivals!r}")


@dataclass
class LoadResult:
    """One row per request: times in seconds from the start of the run."""

    frame: pd.DataFrame
    mode: str
    duration_s: float
    warmup_s: float
    target_rate: float | None = None
    users: int | None = None
    timeout_s: float | None = None  # the client's timeout: a request that hit it counts at it

    @property
    def measured(self) -> pd.DataFrame:
        return self.frame[~self.frame["warmup"]]

    def summary(self) -> dict[str, Any]:
        """Achieved rate (answers/s until the last one came back), percentiles, errors.

        Percentiles include every request: errors at their measured latency, and
        requests that hit the client's timeout (status 0) at no less than it.

        ``p99_send_lag_ms`` is how late the generator itself sent requests. If it is
        a sizeable share of the latencies, the *client* was the bottleneck (on a
        small machine the generator competes with the server for the CPU), and the
        latencies describe the pair, not the server alone.
        """
        m = self.measured
        window = max(float(m["done_s"].max()) - self.warmup_s, 1e-9) if len(m) else 1e-9
        out: dict[str, Any] = {
            "mode": self.mode, "target_rate": self.target_rate, "users": self.users,
            "requests": len(m), "ok": int((m["status"] == 200).sum()),
            "achieved_rate": float((m["status"] == 200).sum() / window),
            "errors": {str(k): int(v) for k, v in
                       m.loc[m["status"] != 200, "status"].value_counts().sort_index().items()},
            "p99_send_lag_ms": float(np.percentile(m["sent_s"] - m["intended_s"], 99) * 1000)
            if len(m) else 0.0,
        }
        if len(m):
            # Every request counts, the unanswered too: one that timed out counts at
            # least at its timeout, so client timeouts cannot fall out of the tail.
            latency = m["latency_s"].to_numpy(dtype=float)
            timed_out = (m["status"] == 0) & m["error"].str.startswith("TimeoutError")
            if self.timeout_s is not None:
                latency = np.where(timed_out, np.maximum(latency, self.timeout_s), latency)
            out["timeouts"] = int(timed_out.sum())
            recorder = LatencyRecorder()
            recorder.record_many(latency)
            out.update(recorder.summary().as_dict())
        return out

    def summary_frame(self) -> pd.DataFrame:
        s = self.summary()
        errors = s.pop("errors")
        return pd.DataFrame([{**s, "errors": ", ".join(f"{k}: {v}" for k, v in errors.items())
                              or "none"}])


Sender = Callable[[Request], Awaitable[tuple[int, str, str]]]
"""Sends one request and returns ``(status, error, served version)``; status 0 = no answer."""


class HTTPSender:
    """The real sender: one aiohttp session with a connection per concurrent request.

    Why aiohttp and not httpx (which the lessons use to *call* the server): the
    generator runs on the same machine as the server and every CPU-millisecond it
    spends is taken from the server. Measured on a 2-core machine against the
    wafer-map CNN, httpx spent about 4 ms of CPU per request and aiohttp 0.4 ms, so
    with httpx the *client* capped throughput at half of what the server could do.
    """

    def __init__(self, url: str, connections: int, timeout_s: float) -> None:
        self.url, self.connections, self.timeout_s = url.rstrip("/"), connections, timeout_s
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HTTPSender:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def __call__(self, request: Request) -> tuple[int, str, str]:
        headers = request.headers
        if request.content is not None:  # pre-encoded: JSON unless its headers say otherwise
            headers = {"content-type": "application/json", **(headers or {})}
        try:
            async with self.session.request(request.method, self.url + request.path,
                                            json=request.json, data=request.content,
                                            headers=headers) as response:
                body = await response.read()
                error = "" if response.status == 200 else body[:200].decode(errors="replace")
                return response.status, error, response.headers.get("x-model-version", "")
        except (aiohttp.ClientError, TimeoutError) as exc:  # no answer: status 0, and why
            # aiohttp's timeouts have several names; summaries look for this one.
            kind = "TimeoutError" if isinstance(exc, TimeoutError) else type(exc).__name__
            return 0, f"{kind}: {exc}", ""


@asynccontextmanager
async def _sender(url: str | None, send: Sender | None, connections: int, timeout_s: float):
    if send is not None:  # a test's fake server
        yield send
        return
    if url is None:
        raise ValueError("give the server's url (or a send function)")
    async with HTTPSender(url, connections, timeout_s) as http:
        yield http


async def open_loop(url: str | None, make_request: Callable[[int], Request], *,
                    rate_per_s: float, duration_s: float, arrivals: str = "poisson",
                    warmup_s: float = 0.0, seed: int = 0, max_connections: int = 1000,
                    timeout_s: float = 30.0, send: Sender | None = None,
                    progress: bool = True) -> LoadResult:
    """Send ``make_request(i)`` at the scheduled times; latency from the intended time.

    ``send`` replaces the HTTP client (tests pass a fake server); ``url`` is then unused.
    """
    schedule = arrival_times(rate_per_s, duration_s, arrivals, seed)
    return await replay(url, make_request, schedule, duration_s=duration_s, warmup_s=warmup_s,
                        max_connections=max_connections, timeout_s=timeout_s, send=send,
                        progress=progress, label=f"open loop {rate_per_s:g}/s")


async def replay(url: str | None, make_request: Callable[[int], Request],
                 schedule: np.ndarray, *, duration_s: float | None = None,
                 warmup_s: float = 0.0, max_connections: int = 1000, timeout_s: float = 30.0,
                 send: Sender | None = None, progress: bool = True,
                 label: str = "replay") -> LoadResult:
    """Open loop on a given schedule: request ``i`` is sent ``schedule[i]`` seconds after the
    start, whatever came back — e.g. ``helpers.traces.Trace.arrivals()``, a recorded day."""
    from tqdm.auto import tqdm

    schedule = np.asarray(schedule, dtype=float)
    if schedule.ndim != 1 or (np.diff(schedule) < 0).any() or (schedule < 0).any():
        raise ValueError("a schedule is a sorted 1-D array of times >= 0")
    duration_s = float(schedule[-1]) if duration_s is None and len(schedule) else duration_s or 0.0
    rows: list[tuple] = [None] * len(schedule)
    async with _sender(url, send, max_connections, timeout_s) as send:
        loop = asyncio.get_running_loop()
        start = loop.time()
        bar = tqdm(total=len(schedule), desc=label, disable=not progress)

        async def one(i: int, intended: float) -> None:
            sent = loop.time() - start
            status, error, version = await send(make_request(i))
            done = loop.time() - start
            rows[i] = (intended, sent, done, done - intended, done - sent, status, error, version)
            bar.update()

        tasks = []
        for i, intended in enumerate(schedule):
            delay = start + intended - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i, float(intended))))
        await asyncio.gather(*tasks)
        bar.close()
    rate = len(schedule) / duration_s if duration_s else 0.0
    return LoadResult(_frame(rows, warmup_s), "open", duration_s, warmup_s, target_rate=rate,
                      timeout_s=timeout_s)


async def capacity_at_slo(url: str | None, make_request: Callable[[int], Request], *,
                          rates: list[float], seconds: float, slo_ms: float,
                          percentile: float = 99.0, warmup_s: float = 0.5, seed: int = 0,
                          send: Sender | None = None) -> tuple[float, pd.DataFrame]:
    """Open-loop runs at each rate, lowest first; the capacity is the highest rate whose
    ``percentile`` latency stays within ``slo_ms`` with no errors, every lower one too (0 if
    none does). Stops after the first rate that misses: the rest would only miss more.
    Returns ``(capacity per second, one row per rate run)``; ``achieved_per_s`` of the last
    row, where the replica was past its limit, is close to its maximum throughput."""
    rows, capacity = [], 0.0
    for rate in sorted(rates):
        result = await open_loop(url, make_request, rate_per_s=rate, duration_s=warmup_s + seconds,
                                 warmup_s=warmup_s, seed=seed, send=send, progress=False)
        measured = result.measured
        latency_ms = measured["latency_s"].to_numpy(float) * 1000
        tail = float(np.percentile(latency_ms, percentile)) if len(latency_ms) else float("inf")
        errors = int((measured["status"] != 200).sum())
        meets = tail <= slo_ms and errors == 0
        rows.append({"rate_per_s": rate, "achieved_per_s": result.summary()["achieved_rate"],
                     f"p{percentile:g} ms": tail,
                     "p50 ms": float(np.median(latency_ms)) if len(latency_ms) else float("nan"),
                     "errors": errors, "meets SLO": meets})
        if not meets:
            break
        capacity = rate
    return capacity, pd.DataFrame(rows)


async def closed_loop(url: str | None, make_request: Callable[[int], Request], *, users: int,
                      duration_s: float, warmup_s: float = 0.0, timeout_s: float = 30.0,
                      send: Sender | None = None, progress: bool = True) -> LoadResult:
    """``users`` concurrent users, each sending again as soon as it has its answer."""
    from tqdm.auto import tqdm

    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    rows: list[tuple] = []
    counter = iter(range(10**12))
    async with _sender(url, send, users, timeout_s) as send:  # a connection per user
        loop = asyncio.get_running_loop()
        start = loop.time()
        bar = tqdm(desc=f"closed loop, {users} users", unit="req", disable=not progress)

        async def user() -> None:
            while (sent := loop.time() - start) < duration_s:
                status, error, version = await send(make_request(next(counter)))
                done = loop.time() - start
                # closed loop: the next request waits for this one, so intended == sent
                rows.append((sent, sent, done, done - sent, done - sent, status, error, version))
                bar.update()

        await asyncio.gather(*(user() for _ in range(users)))
        bar.close()
    return LoadResult(_frame(rows, warmup_s), "closed", duration_s, warmup_s, users=users,
                      timeout_s=timeout_s)


def _frame(rows: list[tuple], warmup_s: float) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["intended_s", "sent_s", "done_s", "latency_s",
                                        "service_s", "status", "error", "version"])
    frame["warmup"] = frame["intended_s"] < warmup_s
    return frame.sort_values("intended_s", ignore_index=True)


def v2_request(model: str, rows: np.ndarray, version: str | None = None,
               routing_key: Callable[[int], str] | None = None) -> Callable[[int], Request]:
    """Request ``i`` sends row ``i % len(rows)`` to ``model``'s v2 infer endpoint."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    bodies = [json.dumps({"inputs": [{"name": "process_features", "shape": [1, rows.shape[1]],
                                      "datatype": "FP32", "data": row.tolist()}]}).encode()
              for row in rows]  # encoded once, not per request

    def make(i: int) -> Request:
        headers = {"x-routing-key": routing_key(i)} if routing_key else None
        return Request("POST", path, headers=headers, content=bodies[i % len(bodies)])

    return make


def main(argv: list[str] | None = None) -> None:
    from . import data

    parser = argparse.ArgumentParser(prog="python -m helpers.loadgen", description=(
        "Load-test a helpers.server (v2 infer with synthetic wafer records)."))
    parser.add_argument("--url", default="http://127.0.0.1:8000",
                        help="the server's base URL (default %(default)s)")
    parser.add_argument("--model", default="wafer-mlp",
                        help="a wafer-process model: requests carry 8 synthetic features "
                             "(default %(default)s)")
    parser.add_argument("--version", default=None,
                        help="pin a version (default: let the server choose)")
    parser.add_argument("--mode", choices=["open", "closed"], default="open",
                        help="open: requests on a schedule, latency from the intended send "
                             "time (user-facing latency); closed: N users each waiting for "
                             "its answer (capacity). Default %(default)s")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="open loop: requests per second (default %(default)s)")
    parser.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson",
                        help="open loop: random (Poisson) or evenly spaced arrivals "
                             "(default %(default)s)")
    parser.add_argument("--users", type=int, default=8,
                        help="closed loop: concurrent users (default %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of load (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="first seconds left out of the summary (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="client timeout in seconds; a request that hits it counts at it "
                             "in the percentiles (default %(default)s)")
    parser.add_argument("--csv", default=None, help="write every request to this CSV")
    args = parser.parse_args(argv)
    rows = data.feature_matrix(data.make_wafer_records(1000, seed=123))
    make = v2_request(args.model, rows, args.version)
    if args.mode == "open":
        result = asyncio.run(open_loop(args.url, make, rate_per_s=args.rate,
                                       duration_s=args.duration, arrivals=args.arrivals,
                                       warmup_s=args.warmup, timeout_s=args.timeout))
    else:
        result = asyncio.run(closed_loop(args.url, make, users=args.users,
                                         duration_s=args.duration, warmup_s=args.warmup,
                                         timeout_s=args.timeout))
    print(result.summary_frame().T.to_string(header=False))
    if args.csv:
        result.frame.to_csv(args.csv, index=False)
        print(f"wrote {len(result.frame)} requests to {args.csv}")


if __name__ == "__main__":
    main()
