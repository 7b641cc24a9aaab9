import json
from collections import Counter

import numpy as np
import pytest

from helpers.models import TensorSpec
from helpers.protocol import (
    BINARY_HEADER,
    InferenceRequest,
    ProtocolError,
    RequestInput,
    decode_inputs,
    decode_response,
    decode_tensor,
    encode_binary_request,
    encode_response,
    encode_tensor,
    parse_infer_request,
    wants_binary_output,
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


# -- the binary tensor data extension -------------------------------------------------
def test_binary_requests_decode_to_the_same_arrays_as_json():
    rows = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    notes = np.array(["chamber 3 vented", "", "température ok"], dtype=object)
    body, headers = encode_binary_request({"process_features": rows, "text": notes})
    request, binary = parse_infer_request(body, headers[BINARY_HEADER])
    assert set(binary) == {"process_features", "text"} and request.inputs[0].data is None
    decoded = decode_inputs(request, [SPEC, TensorSpec("text", "BYTES", [-1])], binary)
    np.testing.assert_array_equal(decoded["process_features"], rows)
    assert decoded["process_features"].flags.writeable  # a copy the model may own
    assert decoded["text"].tolist() == notes.tolist()


def test_binary_data_is_little_endian_whatever_the_host():
    spec = TensorSpec("x", "INT32", [-1])
    raw = (258).to_bytes(4, "little")
    array = decode_tensor(RequestInput(name="x", shape=[1], datatype="INT32"), spec, raw)
    assert array.tolist() == [258]


def binary_request(json_part: dict, tail: bytes) -> tuple[bytes, str]:
    header = json.dumps(json_part).encode()
    return header + tail, str(len(header))


def one_binary_input(size, **overrides):
    return {"inputs": [{"name": "process_features", "shape": [1, 3], "datatype": "FP32",
                        "parameters": {"binary_data_size": size}, **overrides}]}


@pytest.mark.parametrize("json_part, tail, length, message", [
    (one_binary_input(12), b"\0" * 12, "9999", "not a length within"),
    (one_binary_input(12), b"\0" * 12, "-3", "not a length within"),
    (one_binary_input(16), b"\0" * 12, None, "does not fit the 12 bytes"),
    (one_binary_input("12"), b"\0" * 12, None, "binary_data_size '12'"),
    (one_binary_input(8), b"\0" * 12, None, "4 bytes after the JSON belong to no input"),
    (one_binary_input(12, data=[1, 2, 3]), b"\0" * 12, None, "both 'data' and"),
])
def test_inconsistent_binary_framing_is_refused_by_name(json_part, tail, length, message):
    body, real_length = binary_request(json_part, tail)
    with pytest.raises(ProtocolError, match=message) as error:
        parse_infer_request(body, real_length if length is None else length)
    assert error.value.status == 400


@pytest.mark.parametrize("datatype, raw, message", [
    ("FP32", b"\0" * 8, "needs 12 bytes of FP32, binary data has 8"),
    ("FP32", np.array([1, np.nan, 3], "<f4").tobytes(), "not finite"),
])
def test_bad_binary_tensors_are_refused_by_name(datatype, raw, message):
    with pytest.raises(ProtocolError, match=message):
        decode_tensor(RequestInput(name="process_features", shape=[1, 3], datatype=datatype),
                      SPEC, raw)


@pytest.mark.parametrize("raw, message", [
    (b"\x05\0\0\0abc", "element 0 says 5 bytes, 3 remain"),
    (b"\x01\0\0\0a\x02\0", "ends inside the length of element 1"),
    (b"\x02\0\0\0\xff\xfe", "element 0 is not UTF-8"),
    (b"\x01\0\0\0a", r"shape \[2\] needs 2 values, data has 1"),
])
def test_bad_binary_strings_are_refused_by_name(raw, message):
    spec = TensorSpec("text", "BYTES", [-1])
    with pytest.raises(ProtocolError, match=message):
        decode_tensor(RequestInput(name="text", shape=[2], datatype="BYTES"), spec, raw)


def test_a_tensor_without_data_is_refused():
    with pytest.raises(ProtocolError, match="has no data"):
        decode_tensor(RequestInput(name="process_features", shape=[1, 3], datatype="FP32"),
                      SPEC)


def test_invalid_json_headers_are_422_naming_the_field():
    with pytest.raises(ProtocolError, match=r"inputs\.0\.shape: Field required") as error:
        parse_infer_request(b'{"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}')
    assert error.value.status == 422
    with pytest.raises(ProtocolError, match="Invalid JSON"):
        parse_infer_request(b"{not json")


def test_responses_round_trip_as_json_and_as_binary():
    probs = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32)
    for binary in (False, True):
        body, headers = encode_response("wafer-cnn", "1", "r-7", {"p": probs}, binary)
        assert (BINARY_HEADER in headers) == binary
        np.testing.assert_array_equal(decode_response(body, headers)["p"], probs)
        header = json.loads(body[:int(headers.get(BINARY_HEADER, len(body)))])
        assert header["id"] == "r-7" and header["outputs"][0]["shape"] == [2, 2]
    one_input = [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]
    asked = InferenceRequest(inputs=one_input,
                             outputs=[{"name": "p", "parameters": {"binary_data": True}}])
    assert wants_binary_output(asked)
    assert not wants_binary_output(InferenceRequest(**{**asked.model_dump(), "outputs": None}))
