from collections import Counter

import numpy as np
import pytest

from helpers.models import TensorSpec
from helpers.protocol import (
    InferenceRequest,
    ProtocolError,
    RequestInput,
    decode_inputs,
    decode_tensor,
    encode_tensor,
)
from helpers.routing import TrafficSplit, key_point

SPEC = TensorSpec("process_features", "FP32", [-1, 3])


def tensor(**overrides):
    body = {"name": "process_features", "shape": [2, 3], "datatype": "FP32",
            "data": [1, 2, 3, 4, 5, 6]}
    body.update(overrides)
    return RequestInput(**body)


def test_flat_and_nested_data_decode_to_the_same_array():
    flat = decode_tensor(tensor(), SPEC)
    nested = decode_tensor(tensor(data=[[1, 2, 3], [4, 5, 6]]), SPEC)
    assert flat.dtype == np.float32 and flat.shape == (2, 3)
    np.testing.assert_array_equal(flat, nested)


@pytest.mark.parametrize("overrides, message", [
    ({"datatype": "FP64"}, "FP64 does not match the model's FP32"),
    ({"datatype": "FLOAT"}, "unknown datatype 'FLOAT'"),
    ({"shape": [2, 4], "data": list(range(8))}, r"shape \[2, 4\] does not fit"),
    ({"shape": [6]}, r"shape \[6\] does not fit"),
    ({"shape": [-2, 3]}, "negative dimension"),
    ({"data": [1, 2, 3, 4, 5]}, "needs 6 values, data has 5"),
    ({"data": [1, 2, 3, 4, 5, "x"]}, "'x' is not a number"),
    ({"data": [1, 2, 3, 4, 5, None]}, "None is not a number"),
    ({"data": [1, 2, 3, 4, 5, float("nan")]}, "not finite"),
    ({"data": [1, 2, 3, 4, 5, float("inf")]}, "flat index 5"),
    ({"data": [[1, 2, 3], [4, 5]]}, "needs 6 values, data has 5"),
    ({"data": [True, 2, 3, 4, 5, 6]}, "True is not a number"),
    ({"datatype": "FP16", "data": [1, 2, 3, 4, 5, 1e6]}, "FP16 does not match"),
])
def test_bad_tensors_are_refused_naming_the_problem(overrides, message):
    with pytest.raises(ProtocolError, match=message) as info:
        decode_tensor(tensor(**overrides), SPEC)
    assert info.value.status == 400


def test_integers_out_of_range_are_refused():
    spec = TensorSpec("ids", "INT8", [-1])
    with pytest.raises(ProtocolError, match="cannot read data as INT8"):
        decode_tensor(RequestInput(name="ids", shape=[1], datatype="INT8", data=[1000]), spec)


def test_half_precision_overflow_is_refused():
    spec = TensorSpec("x", "FP16", [-1])
    with pytest.raises(ProtocolError, match="out of range"):
        decode_tensor(RequestInput(name="x", shape=[1], datatype="FP16", data=[1e6]), spec)


def test_bytes_tensors_carry_strings():
    spec = TensorSpec("text", "BYTES", [-1])
    array = decode_tensor(RequestInput(name="text", shape=[2], datatype="BYTES",
                                       data=["chamber 3 vented", "ok"]), spec)
    assert array.tolist() == ["chamber 3 vented", "ok"]
    with pytest.raises(ProtocolError, match="strings"):
        decode_tensor(RequestInput(name="text", shape=[1], datatype="BYTES", data=[3]), spec)


def test_request_level_checks():
    good = {"name": "process_features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
    decoded = decode_inputs(InferenceRequest(inputs=[good]), [SPEC])
    assert decoded["process_features"].shape == (1, 3)
    with pytest.raises(ProtocolError, match="more than once"):
        decode_inputs(InferenceRequest(inputs=[good, good]), [SPEC])
    with pytest.raises(ProtocolError, match=r"unknown input\(s\) \['x'\]"):
        decode_inputs(InferenceRequest(inputs=[{**good, "name": "x"}]), [SPEC])
    other = TensorSpec("tool", "BYTES", [-1])
    with pytest.raises(ProtocolError, match=r"missing input\(s\) \['tool'\]"):
        decode_inputs(InferenceRequest(inputs=[good]), [SPEC, other])


def test_encode_round_trip():
    out = encode_tensor("defect_probability", np.array([0.25, 0.5], dtype=np.float32))
    assert out.datatype == "FP32" and out.shape == [2] and out.data == [0.25, 0.5]
    assert encode_tensor("ids", np.array([[1, 2]], dtype=np.int64)).datatype == "INT64"


def test_split_is_sticky_per_key_and_follows_the_weights():
    split = TrafficSplit({"1": 0.8, "2": 0.2})
    assert all(split.choose("tool-7") == split.choose("tool-7") for _ in range(20))
    counts = Counter(split.choose(f"lot-{i}") for i in range(20_000))
    assert counts["2"] / 20_000 == pytest.approx(0.2, abs=0.015)
    random_counts = Counter(split.choose() for _ in range(20_000))
    assert random_counts["1"] / 20_000 == pytest.approx(0.8, abs=0.015)


def test_growing_a_version_only_moves_keys_towards_it():
    before = TrafficSplit({"1": 0.9, "2": 0.1})
    after = TrafficSplit({"1": 0.7, "2": 0.3})
    moved = [k for k in (f"k{i}" for i in range(5000)) if before.choose(k) != after.choose(k)]
    assert moved and all(before.choose(k) == "1" and after.choose(k) == "2" for k in moved)


def test_zero_weight_versions_get_nothing_and_parse_reads_flags():
    split = TrafficSplit.parse("1:1, 2:0")
    assert {split.choose(f"k{i}") for i in range(500)} == {"1"}
    assert 0 <= key_point("anything") < 1


@pytest.mark.parametrize("text, message", [
    ("", "at least one version"), ("1:0,2:0", "positive"), ("1:-1", ">= 0"),
    ("1", "VERSION:WEIGHT"), ("1:lots", "not a number"),
])
def test_bad_splits_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        TrafficSplit.parse(text)
