import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import plots  # noqa: E402


def test_histogram_draws_percentile_and_slo_lines():
    lat = np.random.default_rng(0).lognormal(-5, 0.5, 1000)
    ax = plots.latency_histogram(lat, percentiles=(50, 99), slo_ms=50)
    labels = [line.get_label() for line in ax.get_lines()]
    assert any(label.startswith("p50") for label in labels)
    assert any(label.startswith("p99") for label in labels)
    assert "SLO 50 ms" in labels


def test_histogram_switches_to_log_axis_for_a_long_tail():
    lat = np.r_[np.full(990, 0.001), np.full(10, 0.5)]
    assert plots.latency_histogram(lat).get_xscale() == "log"
    narrow = np.full(100, 0.001) + np.arange(100) * 1e-6
    assert plots.latency_histogram(narrow).get_xscale() == "linear"


def test_over_time_and_throughput_plots():
    lat = np.random.default_rng(0).lognormal(-5, 0.5, 200)
    ax = plots.latency_over_time(lat, np.arange(200) / 100, window=20, slo_ms=10)
    assert ax.get_xlabel() == "time (s)"
    ax = plots.throughput_vs_batch_size([1, 2, 4], [100, 180, 300], [0.001, 0.0015, 0.002])
    assert ax.get_xscale() == "log"


def test_plots_refuse_empty_or_mismatched_input():
    with pytest.raises(ValueError, match="no latencies"):
        plots.latency_histogram([])
    with pytest.raises(ValueError, match="3 times for 2"):
        plots.latency_over_time([0.1, 0.2], [0, 1, 2])
    with pytest.raises(ValueError):
        plots.throughput_vs_batch_size([1, 2], [10])
