"""Latency recording, percentiles and SLO checks.

``LatencyRecorder`` keeps memory bounded however long a load test runs, the way
HdrHistogram does for wrk2 and most serving stacks:

- Every latency goes into a log-bucketed histogram: buckets grow geometrically,
  so any percentile read from it is within ``relative_error`` (0.5 % by default)
  of the true value, from a microsecond to an hour, in a few thousand counters.
- While the count is at most ``exact_limit`` (100 000 by default) the raw values
  are kept too, and percentiles are *exact* (numpy's default, linear
  interpolation), so small experiments and exercises agree with ``np.percentile``.
- ``count``, ``mean``, ``min`` and ``max`` are always exact.

Latencies are recorded in **seconds** (what ``time.perf_counter`` differences
give) and reported in **milliseconds** (what SLOs are written in).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = [
    "SUMMARY_PERCENTILES",
    "LatencyRecorder",
    "LatencySummary",
    "SLO",
    "SLOResult",
    "summary_table",
    "ServingMetrics",
    "prometheus_frame",
]

SUMMARY_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def _check_percentile(q: float) -> float:
    q = float(q)
    if not 0.0 <= q <= 100.0:  # also rejects NaN
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    return q


@dataclass(frozen=True)
class LatencySummary:
    """The latency picture of one experiment, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p99_9_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class LatencyRecorder:
    """Records latencies in seconds with bounded memory; see the module docstring."""

    def __init__(
        self,
        *,
        lowest_s: float = 1e-6,
        highest_s: float = 3600.0,
        relative_error: float = 0.005,
        exact_limit: int = 100_000,
        keep_recent: int = 10_000,
    ) -> None:
        if not 0 < lowest_s < highest_s:
            raise ValueError(f"need 0 < lowest_s < highest_s, got {lowest_s}, {highest_s}")
        if not 0 < relative_error < 0.5:
            raise ValueError(f"relative_error must be in (0, 0.5), got {relative_error}")
        if exact_limit < 0 or keep_recent < 0:
            raise ValueError("exact_limit and keep_recent must be >= 0")
        self.lowest_s = lowest_s
        self.highest_s = highest_s
        self.relative_error = relative_error
        self.exact_limit = exact_limit
        # Bucket i holds [lowest * ratio**i, lowest * ratio**(i+1)); its geometric
        # middle is within relative_error of anything in it.
        self._log_ratio = math.log1p(2 * relative_error)
        n_buckets = int(math.ceil(math.log(highest_s / lowest_s) / self._log_ratio)) + 1
        self._counts = np.zeros(n_buckets, dtype=np.int64)
        self._exact: list[float] | None = []
        self._recent: deque[float] = deque(maxlen=keep_recent)
        self.count = 0
        self._sum = 0.0
        self.min_s = math.inf
        self.max_s = -math.inf

    # -- recording ---------------------------------------------------------------
    def record(self, latency_s: float) -> None:
        """Add one latency, in seconds. NaN, infinite or negative values are refused."""
        self.record_many([latency_s])

    def record_many(self, latencies_s: Iterable[float]) -> None:
        values = np.asarray(list(latencies_s) if not isinstance(latencies_s, np.ndarray)
                            else latencies_s, dtype=np.float64).ravel()
        if values.size == 0:
            return
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            raise ValueError(
                f"latencies must be finite and >= 0 seconds; got {values[bad][0]!r} "
                f"({int(bad.sum())} bad value(s) of {values.size})"
            )
        clipped = np.clip(values, self.lowest_s, self.highest_s)
        idx = np.floor(np.log(clipped / self.lowest_s) / self._log_ratio).astype(np.int64)
        np.add.at(self._counts, np.minimum(idx, len(self._counts) - 1), 1)
        self.count += int(values.size)
        self._sum += float(values.sum())
        self.min_s = min(self.min_s, float(values.min()))
        self.max_s = max(self.max_s, float(values.max()))
        self._recent.extend(values.tolist())
        if self._exact is not None:
            if self.count <= self.exact_limit:
                self._exact.extend(values.tolist())
            else:  # past the limit: from now on the histogram answers
                self._exact = None

    def merge(self, other: LatencyRecorder) -> None:
        """Fold another recorder (same bucket layout) into this one."""
        if (other.lowest_s, other.highest_s, other.relative_error) != (
            self.lowest_s, self.highest_s, self.relative_error
        ):
            raise ValueError("can only merge recorders with the same lowest/highest/error")
        self._counts += other._counts
        if self._exact is not None and other._exact is not None and (
            self.count + other.count <= self.exact_limit
        ):
            self._exact.extend(other._exact)
        else:
            self._exact = None
        self.count += other.count
        self._sum += other._sum
        self.min_s = min(self.min_s, other.min_s)
        self.max_s = max(self.max_s, other.max_s)
        self._recent.extend(other._recent)

    # -- reading -----------------------------------------------------------------
    @property
    def is_exact(self) -> bool:
        """True while percentiles are computed from every raw value."""
        return self._exact is not None

    @property
    def mean_s(self) -> float:
        self._require_data()
        return self._sum / self.count

    def recent(self) -> np.ndarray:
        """The most recent ``keep_recent`` latencies in recording order (for plots)."""
        return np.fromiter(self._recent, dtype=np.float64, count=len(self._recent))

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile in seconds (``q`` in [0, 100])."""
        q = _check_percentile(q)
        self._require_data()
        if self._exact is not None:
            return float(np.percentile(self._exact, q))
        if q == 0.0:
            return self.min_s
        if q == 100.0:
            return self.max_s
        rank = max(1, math.ceil(q / 100.0 * self.count))
        bucket = int(np.searchsorted(np.cumsum(self._counts), rank))
        middle = self.lowest_s * math.exp((bucket + 0.5) * self._log_ratio)
        return min(max(middle, self.min_s), self.max_s)

    def summary(self) -> LatencySummary:
        self._require_data()
        p = [self.percentile(q) * 1000.0 for q in SUMMARY_PERCENTILES]
        return LatencySummary(self.count, self.mean_s * 1000.0, *p, self.max_s * 1000.0)

    def _require_data(self) -> None:
        if self.count == 0:
            raise ValueError("no latencies recorded yet: record some before asking for statistics")

    def __repr__(self) -> str:
        if self.count == 0:
            return "LatencyRecorder(count=0)"
        s = self.summary()
        return (f"LatencyRecorder(count={s.count}, p50={s.p50_ms:.3f} ms, "
                f"p99={s.p99_ms:.3f} ms, max={s.max_ms:.3f} ms)")


@dataclass(frozen=True)
class SLOResult:
    slo: SLO
    observed_ms: float
    met: bool

    @property
    def headroom_ms(self) -> float:
        """How far under the threshold (negative: how far over)."""
        return self.slo.threshold_ms - self.observed_ms

    def __str__(self) -> str:
        verdict = "MET" if self.met else "MISSED"
        return (f"{self.slo.name or 'SLO'}: p{self.slo.percentile:g} = {self.observed_ms:.2f} ms "
                f"vs {self.slo.threshold_ms:g} ms -> {verdict}")


@dataclass(frozen=True)
class SLO:
    """A latency objective such as "p99 under 50 ms": ``SLO(threshold_ms=50, percentile=99)``."""

    threshold_ms: float
    percentile: float = 99.0
    name: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold_ms) and self.threshold_ms > 0):
            raise ValueError(f"threshold_ms must be a positive number, got {self.threshold_ms}")
        _check_percentile(self.percentile)

    def check(self, latencies: LatencyRecorder | Iterable[float]) -> SLOResult:
        """Check a recorder, or raw latencies in **seconds**, against the objective."""
        if not isinstance(latencies, LatencyRecorder):
            recorder = LatencyRecorder()
            recorder.record_many(latencies)
            latencies = recorder
        observed_ms = latencies.percentile(self.percentile) * 1000.0
        return SLOResult(self, observed_ms, observed_ms <= self.threshold_ms)


def summary_table(recorders: Mapping[str, LatencyRecorder], slo: SLO | None = None) -> pd.DataFrame:
    """One row per experiment: count, mean and percentiles in ms (and the SLO verdict)."""
    rows = {}
    for name, recorder in recorders.items():
        row = recorder.summary().as_dict()
        if slo is not None:
            row["slo_met"] = slo.check(recorder).met
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "experiment"
    return table


class ServingMetrics:
    """The server's Prometheus metrics, in its own registry (several apps may share a process).

    Names follow Triton's and TorchServe's: counts of requests by model, version
    and status code; histograms of request, queue and compute durations and of
    batch sizes. Values that live in other objects (queue depth, cache hits) are
    read when Prometheus scrapes, through ``add_collector``.
    """

    # Latency buckets from 0.5 ms to 10 s: the inline SLO (50 ms) sits in the middle.
    LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                       1.0, 2.5, 5.0, 10.0)
    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        # What an autoscaler reads (Knative's concurrency, Ray Serve's ongoing requests):
        # requests being handled now, health checks and scrapes not counted.
        self.in_flight = Gauge("http_requests_in_flight", "HTTP requests being handled now "
                               "(health checks and metrics scrapes excluded)",
                               registry=self.registry)
        self.requests = Counter("inference_requests", "Inference requests answered",
                                [*labels, "code"], registry=self.registry)
        self.failures = Counter("inference_request_failures", "Inference requests that failed",
                                [*labels, "reason"], registry=self.registry)
        self.request_duration = Histogram(
            "inference_request_duration_seconds", "Time from request arrival to response",
            labels, buckets=self.LATENCY_BUCKETS, registry=self.registry)
        self.queue_duration = Histogram(
            "inference_queue_duration_seconds", "Time a request waited for its batch",
            labels, buckets=self.LATENCY_BUCKETS, registry=self.registry)
        self.compute_duration = Histogram(
            "inference_compute_duration_seconds", "Time the model took for one batch",
            labels, buckets=self.LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("inference_batch_size", "Rows per model call", labels,
                                    buckets=self.BATCH_BUCKETS, registry=self.registry)
        # generation (the generate endpoints): tokens/s is rate(generation_tokens_total)
        self.time_to_first_token = Histogram(
            "generation_time_to_first_token_seconds", "Time from a generate request's arrival "
            "to its first token", labels, buckets=self.LATENCY_BUCKETS, registry=self.registry)
        self.inter_token_latency = Histogram(
            "generation_inter_token_latency_seconds", "Time between two tokens of one "
            "generation", labels, buckets=self.LATENCY_BUCKETS, registry=self.registry)
        self.generated_tokens = Counter("generation_tokens", "Tokens generated", labels,
                                        registry=self.registry)

    def add_collector(self, collect) -> None:
        """Register ``collect() -> iterable of metric families``, called at every scrape."""

        class _Collector:
            def collect(self):
                yield from collect()

        self.registry.register(_Collector())

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def prometheus_frame(text: str) -> pd.DataFrame:
    """Prometheus exposition text -> one row per sample: ``name``, its labels, ``value``.

    >>> frame = prometheus_frame(httpx.get(url + "/metrics").text)
    >>> frame[frame["name"] == "inference_requests_total"]
    """
    from prometheus_client.parser import text_string_to_metric_families

    rows = [{"name": sample.name, **sample.labels, "value": sample.value}
            for family in text_string_to_metric_families(text) for sample in family.samples]
    return pd.DataFrame(rows)
