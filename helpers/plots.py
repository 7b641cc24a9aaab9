"""The course's standard charts. The only module in ``helpers`` that imports matplotlib.

Every function draws on ``ax`` if given (so lessons can compose figures) and
returns the axes. Latencies come in **seconds**, as ``LatencyRecorder`` takes
them, and are drawn in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["latency_histogram", "compare_latency_histograms", "latency_over_time",
           "throughput_vs_batch_size"]

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


def compare_latency_histograms(named_latencies_s: dict, *, title: str = "Latency",
                               clip_percentile: float = 99.5, ax=None):
    """Several latency distributions on **the same bins**, as outlined histograms.

    Bins are shared and logarithmic, so the series compare bar for bar, and the axis ends
    at the ``clip_percentile`` of all the data, so one outlier cannot squeeze the rest into
    a corner; how many requests lie beyond is said in the legend.
    """
    series = {name: _as_ms(values) for name, values in named_latencies_s.items()}
    if not series:
        raise ValueError("nothing to plot: no series given")
    everything = np.concatenate(list(series.values()))
    high = np.percentile(everything, clip_percentile) * 1.01
    bins = np.geomspace(max(everything.min(), 1e-3), max(high, everything.min() * 1.1), 50)
    ax = _axes(ax)
    for name, ms in series.items():
        beyond = int((ms > bins[-1]).sum())
        label = f"{name} ({beyond} beyond the axis)" if beyond else name
        ax.hist(np.clip(ms, bins[0], bins[-1]), bins=bins, histtype="step", linewidth=1.5,
                label=label)
    ax.set_xscale("log")
    ax.set(xlabel="latency (ms, log scale)", ylabel="requests", title=title)
    ax.legend(loc="upper right")
    return ax


def latency_over_time(latencies_s, times_s=None, *, window: int = 200, slo_ms: float | None = None,
                      title: str = "Latency over time", ax=None):
    """Each request as a dot, with a rolling p99 over the last ``window`` requests.

    ``times_s`` are the send times (seconds from the start); without them the
    x axis is the request number. A p99 needs at least 100 samples to be anything
    but their maximum, so with a shorter window the line is labelled for what it
    is: a rolling maximum.
    """
    ms = _as_ms(latencies_s)
    x = np.arange(ms.size) if times_s is None else np.asarray(times_s, dtype=np.float64)
    if x.shape != ms.shape:
        raise ValueError(f"{x.size} times for {ms.size} latencies")
    ax = _axes(ax)
    ax.scatter(x, ms, s=4, alpha=0.4, color="tab:blue", label="request")
    if ms.size >= window:
        rolling = np.array([np.percentile(ms[max(0, i - window + 1): i + 1], 99)
                            for i in range(window - 1, ms.size)])
        label = (f"rolling p99 (last {window} requests)" if window >= 100
                 else f"rolling max (last {window} requests: too few for a p99)")
        ax.plot(x[window - 1:], rolling, color="tab:red", label=label)
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
    lines = ax.plot(sizes, rates, marker="o", color="tab:blue", label="throughput (items/s)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(int(size)) for size in sizes])
    ax.set(xlabel="batch size", ylabel="items / s", title=title)
    if latencies_s is not None:
        twin = ax.twinx()
        lines += twin.plot(sizes, _as_ms(latencies_s), marker="s", color="tab:red",
                           label="latency per call (ms)")
        twin.set_ylabel("latency per call (ms)", color="tab:red")
    ax.legend(lines, [line.get_label() for line in lines], loc="upper left")
    return ax
