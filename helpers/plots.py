"""The course's standard charts. The only module in ``helpers`` that imports matplotlib.

Every function draws on ``ax`` if given (so lessons can compose figures) and
returns the axes. Latencies come in **seconds**, as ``LatencyRecorder`` takes
them, and are drawn in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["latency_histogram", "latency_over_time", "throughput_vs_batch_size"]

_PCT_COLOURS = {50: "tab:green", 90: "tab:olive", 95: "tab:orange", 99: "tab:red", 99.9: "darkred"}


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    return ax


def _as_ms(latencies_s) -> np.ndarray:
    values = np.asarray(latencies_s, dtype=np.float64).ravel() * 1000.0
    if values.size == 0:
        raise ValueError("nothing to plot: no latencies given")
    return values


def latency_histogram(latencies_s, *, percentiles: Sequence[float] = (50, 95, 99),
                      slo_ms: float | None = None, title: str = "Latency distribution",
                      log_x: bool | None = None, ax=None):
    """Histogram of latencies with a vertical line at each percentile (and the SLO).

    The x axis turns logarithmic by itself when the tail is 20x the median,
    because a linear axis would squeeze the body of the distribution into one bar.
    """
    ms = _as_ms(latencies_s)
    ax = _axes(ax)
    if log_x is None:
        log_x = np.percentile(ms, 99.9) > 20 * max(np.median(ms), 1e-9)
    bins = (np.geomspace(max(ms.min(), 1e-3), ms.max() * 1.01, 60) if log_x else 60)
    ax.hist(ms, bins=bins, color="tab:blue", alpha=0.7)
    for q in percentiles:
        value = np.percentile(ms, q)
        ax.axvline(value, color=_PCT_COLOURS.get(q, "black"), linestyle="--",
                   label=f"p{q:g} = {value:.2f} ms")
    if slo_ms is not None:
        ax.axvline(slo_ms, color="black", linewidth=2, label=f"SLO {slo_ms:g} ms")
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel="latency (ms)", ylabel="requests", title=title)
    ax.legend(loc="upper right")
    return ax


def latency_over_time(latencies_s, times_s=None, *, window: int = 50, slo_ms: float | None = None,
                      title: str = "Latency over time", ax=None):
    """Each request as a dot, with a rolling p99 over ``window`` requests.

    ``times_s`` are the send times (seconds from the start); without them the
    x axis is the request number.
    """
    ms = _as_ms(latencies_s)
    x = np.arange(ms.size) if times_s is None else np.asarray(times_s, dtype=np.float64)
    if x.shape != ms.shape:
        raise ValueError(f"{x.size} times for {ms.size} latencies")
    ax = _axes(ax)
    ax.scatter(x, ms, s=4, alpha=0.4, color="tab:blue", label="request")
    if ms.size >= window:
        rolling = np.array([np.percentile(ms[max(0, i - window + 1): i + 1], 99)
                            for i in range(ms.size)])
        ax.plot(x, rolling, color="tab:red", label=f"rolling p99 ({window} requests)")
    if slo_ms is not None:
        ax.axhline(slo_ms, color="black", linewidth=2, label=f"SLO {slo_ms:g} ms")
    ax.set(xlabel="request" if times_s is None else "time (s)", ylabel="latency (ms)", title=title)
    ax.legend(loc="upper right")
    return ax


def throughput_vs_batch_size(batch_sizes, throughputs, latencies_s=None, *,
                             title: str = "Throughput vs batch size", ax=None):
    """Throughput (items/s) against batch size; with ``latencies_s``, latency on a twin axis."""
    sizes = np.asarray(batch_sizes)
    rates = np.asarray(throughputs, dtype=np.float64)
    if sizes.shape != rates.shape or sizes.size == 0:
        raise ValueError("batch_sizes and throughputs must be non-empty and the same length")
    ax = _axes(ax)
    ax.plot(sizes, rates, marker="o", color="tab:blue", label="throughput")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size", ylabel="items / s", title=title)
    if latencies_s is not None:
        twin = ax.twinx()
        twin.plot(sizes, _as_ms(latencies_s), marker="s", color="tab:red", label="latency")
        twin.set_ylabel("latency per batch (ms)", color="tab:red")
    return ax
