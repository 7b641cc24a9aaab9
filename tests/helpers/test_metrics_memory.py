import math

import numpy as np
import pytest

from helpers.memory import measure_peak_memory
from helpers.metrics import SLO, LatencyRecorder, summary_table


def test_exact_percentiles_match_numpy_on_small_samples():
    rng = np.random.default_rng(0)
    values = rng.lognormal(-5, 1, 5000)
    rec = LatencyRecorder()
    rec.record_many(values)
    assert rec.is_exact
    for q in [0, 1, 50, 90, 99, 99.9, 100]:
        assert rec.percentile(q) == pytest.approx(np.percentile(values, q), rel=1e-12)
    assert rec.mean_s == pytest.approx(values.mean())
    assert rec.max_s == values.max() and rec.min_s == values.min() and rec.count == 5000


def test_single_sample_and_ties():
    rec = LatencyRecorder()
    rec.record(0.010)
    assert rec.percentile(0) == rec.percentile(50) == rec.percentile(100) == 0.010
    tied = LatencyRecorder()
    tied.record_many([0.002] * 10)
    assert tied.percentile(99) == 0.002


def test_histogram_mode_is_bounded_and_within_relative_error():
    rng = np.random.default_rng(1)
    values = rng.lognormal(-4, 1.2, 50_000)
    rec = LatencyRecorder(exact_limit=1000, keep_recent=100)
    for chunk in np.array_split(values, 10):
        rec.record_many(chunk)
    assert not rec.is_exact
    assert len(rec.recent()) == 100  # memory does not grow with the count
    for q in [50, 90, 95, 99, 99.9]:
        true = np.percentile(values, q, method="inverted_cdf")
        assert rec.percentile(q) == pytest.approx(true, rel=0.011)
    assert rec.percentile(100) == values.max() and rec.percentile(0) == values.min()
    assert rec.count == 50_000 and rec.mean_s == pytest.approx(values.mean())


def test_bad_latencies_are_refused_naming_the_value():
    rec = LatencyRecorder()
    with pytest.raises(ValueError, match="nan"):
        rec.record(float("nan"))
    with pytest.raises(ValueError, match="-0.5"):
        rec.record_many([0.1, -0.5])
    with pytest.raises(ValueError, match="inf"):
        rec.record(math.inf)
    assert rec.count == 0  # a refused batch records nothing


def test_empty_recorder_has_no_statistics():
    rec = LatencyRecorder()
    with pytest.raises(ValueError, match="no latencies"):
        rec.percentile(50)
    with pytest.raises(ValueError, match="no latencies"):
        rec.summary()
    assert "count=0" in repr(rec)


def test_percentile_out_of_range():
    rec = LatencyRecorder()
    rec.record(0.001)
    for q in [-1, 100.5, float("nan")]:
        with pytest.raises(ValueError, match="percentile"):
            rec.percentile(q)


def test_merge_combines_counts_and_extremes():
    a, b = LatencyRecorder(), LatencyRecorder()
    a.record_many([0.001, 0.002])
    b.record_many([0.003, 0.100])
    a.merge(b)
    assert a.count == 4 and a.max_s == 0.100 and a.percentile(50) == pytest.approx(0.0025)
    with pytest.raises(ValueError):
        a.merge(LatencyRecorder(relative_error=0.01))


def test_slo_check_and_summary_table():
    fast, slow = LatencyRecorder(), LatencyRecorder()
    fast.record_many([0.010] * 99 + [0.040])
    slow.record_many([0.010] * 98 + [0.080, 0.090])
    slo = SLO(threshold_ms=50, percentile=99, name="inline")
    assert slo.check(fast).met and not slo.check(slow).met
    assert slo.check([0.01, 0.02]).met  # raw seconds work too
    assert slo.check(fast).headroom_ms > 0 > slo.check(slow).headroom_ms
    assert "MISSED" in str(slo.check(slow))
    table = summary_table({"fast": fast, "slow": slow}, slo=slo)
    assert list(table.index) == ["fast", "slow"]
    assert table.loc["fast", "slo_met"] and not table.loc["slow", "slo_met"]
    assert table.loc["slow", "max_ms"] == pytest.approx(90.0)
    for bad in [0, -5, float("nan")]:
        with pytest.raises(ValueError, match="threshold_ms"):
            SLO(threshold_ms=bad)


def test_peak_memory_sees_a_large_numpy_allocation():
    with measure_peak_memory() as small:
        np.ones(1_000, dtype=np.float64).sum()
    with measure_peak_memory() as big:
        np.ones(4_000_000, dtype=np.float64).sum()  # 32 MB
    assert big.traced_peak_bytes >= 32_000_000 > small.traced_peak_bytes
    assert big.peak_mb == big.peak_bytes / 2**20


def test_peak_memory_counts_arrow_and_survives_buffers_outliving_the_block(tmp_path):
    import pyarrow as pa

    with measure_peak_memory() as peak:
        # the cast allocates 16 MB in Arrow (pa.array alone would wrap the NumPy buffer)
        kept = pa.array(np.arange(2_000_000, dtype=np.int32)).cast(pa.int64())
    assert peak.arrow_peak_bytes >= 16_000_000
    assert peak.peak_bytes == peak.traced_peak_bytes + peak.arrow_peak_bytes
    for _ in range(3):  # the pools are gone as defaults, the buffer still works
        with measure_peak_memory():
            pass
    del peak
    assert kept[-1].as_py() == 1_999_999
    del kept  # freeing after its pool stopped being the default must not crash
    assert "arrow" in str(measure_peak_memory().peak)


def test_serving_metrics_round_trip_through_the_text_format():
    from helpers.metrics import ServingMetrics, prometheus_frame

    m = ServingMetrics()
    m.requests.labels(model="wafer-mlp", version="2", code="200").inc(3)
    m.request_duration.labels(model="wafer-mlp", version="2").observe(0.004)
    frame = prometheus_frame(m.exposition().decode())
    total = frame[(frame["name"] == "inference_requests_total") & (frame["version"] == "2")]
    assert total["value"].tolist() == [3.0] and total["code"].tolist() == ["200"]
    count = frame[frame["name"] == "inference_request_duration_seconds_count"]
    assert count["value"].tolist() == [1.0]
