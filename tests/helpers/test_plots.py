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


def test_a_rolling_line_says_whether_it_is_a_p99_or_a_maximum():
    lat = np.random.default_rng(1).lognormal(-5, 0.5, 400)
    labels = [line.get_label() for line in plots.latency_over_time(lat).get_lines()]
    assert "rolling p99 (last 200 requests)" in labels
    labels = [line.get_label() for line in plots.latency_over_time(lat, window=50).get_lines()]
    assert any(label.startswith("rolling max") for label in labels)


def test_the_throughput_plot_has_a_legend_for_both_axes_and_integer_ticks():
    ax = plots.throughput_vs_batch_size([1, 2, 4, 32], [100, 180, 300, 400],
                                        [0.001, 0.0015, 0.002, 0.01])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "throughput (items/s)", "latency per call (ms)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "32"]


def test_compared_histograms_share_their_bins_and_an_outlier_does_not_stretch_the_axis():
    rng = np.random.default_rng(2)
    fast, slow = rng.lognormal(-6, 0.3, 500), rng.lognormal(-4, 0.3, 500)
    slow[0] = 30.0  # one 30 s outlier
    ax = plots.compare_latency_histograms({"hits": fast, "misses": slow})
    edges = [patch.get_path().vertices[:, 0] for patch in ax.patches]
    assert np.allclose(edges[0].min(), edges[1].min()) and np.allclose(edges[0].max(),
                                                                         edges[1].max())
    assert ax.get_xlim()[1] < 1_000  # ms: the 30,000 ms outlier is beyond the axis, counted
    assert any(t.get_text().startswith("misses (") and "beyond the axis" in t.get_text()
               for t in ax.get_legend().get_texts())
