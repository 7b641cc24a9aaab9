import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers import data


def test_records_have_the_documented_columns_and_types():
    df = data.make_wafer_records(500)
    assert len(df) == 500
    for column in ["timestamp", "lot_id", "wafer_slot", "tool_id", *data.FEATURES, data.LABEL]:
        assert column in df.columns
    assert all(df[f].dtype == np.float32 for f in data.FEATURES)
    assert set(df[data.LABEL].unique()) <= {0, 1}
    assert df["timestamp"].is_monotonic_increasing
    assert df["wafer_slot"].between(1, 25).all()


def test_same_seed_same_data_and_other_seed_other_data():
    a, b = data.make_wafer_records(300, seed=1), data.make_wafer_records(300, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a[data.FEATURES].equals(data.make_wafer_records(300, seed=2)[data.FEATURES])


def test_small_data_is_the_head_of_large_data_across_blocks():
    n_big = data.BLOCK_ROWS + 1000
    big = data.make_wafer_records(n_big)
    small = data.make_wafer_records(data.BLOCK_ROWS + 10)
    pd.testing.assert_frame_equal(small, big.iloc[: len(small)])


def test_label_follows_the_documented_rule():
    df = data.make_wafer_records(40_000)
    p = data.defect_probability(df)
    # Defect rate is about the mean true probability (plus the 1 % flip noise).
    assert abs(df[data.LABEL].mean() - (0.99 * p.mean() + 0.01 * (1 - p.mean()))) < 0.01
    # The hot tool is visibly worse.
    by_tool = df.groupby("tool_id")[data.LABEL].mean()
    assert by_tool[data.HOT_TOOL] > 1.5 * by_tool.drop(data.HOT_TOOL).mean()
    # Temperature excursions raise the risk in both directions.
    hot = df.assign(temperature_c=df.temperature_c + 15)
    cold = df.assign(temperature_c=df.temperature_c - 15)
    assert data.defect_probability(hot).mean() > p.mean()
    assert data.defect_probability(cold).mean() > p.mean()


def test_zero_rows_and_bad_sizes():
    assert len(data.make_wafer_records(0)) == 0
    assert list(data.make_wafer_records(0).columns) == list(data.make_wafer_records(1).columns)
    with pytest.raises(ValueError, match="-3"):
        data.make_wafer_records(-3)
    with pytest.raises(TypeError):
        data.make_wafer_records(2.5)


def test_parquet_round_trip_in_row_groups(tmp_path):
    n = data.BLOCK_ROWS + 123
    path = data.write_wafer_parquet(tmp_path / "w.parquet", n, progress=False)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == n and meta.num_row_groups == 2
    pd.testing.assert_frame_equal(pd.read_parquet(path), data.make_wafer_records(n),
                                  check_dtype=False)
    assert not list(tmp_path.glob("*.partial"))


def test_empty_parquet_has_the_schema(tmp_path):
    path = data.write_wafer_parquet(tmp_path / "empty.parquet", 0, progress=False)
    table = pq.read_table(path)
    assert table.num_rows == 0 and set(data.FEATURES) <= set(table.column_names)


def test_feature_matrix_shape_and_missing_column():
    df = data.make_wafer_records(10)
    x = data.feature_matrix(df)
    assert x.shape == (10, len(data.FEATURES)) and x.dtype == np.float32 and x.flags.c_contiguous
    with pytest.raises(KeyError, match="humidity_pct"):
        data.feature_matrix(df.drop(columns="humidity_pct"))
