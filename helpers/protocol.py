"""The Open Inference Protocol (KServe v2) on the wire: request and response bodies,
and the checks that turn a JSON tensor into a NumPy array a model can trust.

Everything here is pure: no server, no model. A bad request becomes a
``ProtocolError`` whose message names the input and the problem, and whose
``status`` is the HTTP code the server answers with.

A v2 tensor is ``{"name", "shape", "datatype", "data"}``; ``data`` is the
row-major contents, flat or nested. BYTES tensors carry strings.

The **binary tensor data extension** (Triton's, also in KServe) sends a tensor as
raw little-endian bytes after the JSON instead: the header
``Inference-Header-Content-Length`` says where the JSON ends, and each such input
carries ``"parameters": {"binary_data_size": n}`` instead of ``data``. A 32x32
wafer map is 4 KiB of bytes instead of ~5 KiB of JSON text that the server must
parse number by number. BYTES elements are a 4-byte little-endian length followed
by the UTF-8 bytes. Outputs come back the same way when the request asks for it
(``"parameters": {"binary_data_output": true}``, or ``binary_data`` on an output).
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .repository import TensorSpec

__all__ = [
    "DATATYPES",
    "ProtocolError",
    "RequestInput",
    "RequestOutput",
    "InferenceRequest",
    "ResponseOutput",
    "InferenceResponse",
    "BINARY_HEADER",
    "describe_errors",
    "inline_json_schema",
    "parse_infer_request",
    "decode_tensor",
    "decode_inputs",
    "encode_tensor",
    "encode_response",
    "wants_binary_output",
    "encode_binary_request",
    "decode_response",
    "datatype_of",
]

BINARY_HEADER = "inference-header-content-length"  # bytes of JSON before the binary tensors

# v2 datatype -> NumPy dtype (BYTES travel as Python strings).
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": object,
}
_FLOATS = {"FP16", "FP32", "FP64"}


class ProtocolError(ValueError):
    """A request the server must refuse; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Body):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None  # None when the tensor travels as binary
    parameters: dict[str, Any] | None = None


class RequestOutput(_Body):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Body):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None  # None when the tensor travels as binary
    parameters: dict[str, Any] | None = None


def inline_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` substituted in place.

    The infer route reads its raw body itself (binary tensors may follow the JSON),
    so FastAPI cannot see the body's model; the server hands this schema to
    ``/docs`` instead, and a self-contained schema needs no shared components.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


def describe_errors(errors: list[dict]) -> str:
    """Pydantic's validation errors as one line: ``inputs.0.shape: Field required; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                     if err["loc"] else err["msg"] for err in errors)


def _split_body(body: bytes, json_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part of a body and the binary tensors after it."""
    if json_length is None:
        return body, b""
    # ASCII digits only (str.isdigit() also accepts '²', which int() refuses), and not
    # thousands of them (int() refuses those too).
    if not (json_length.isascii() and json_length.isdigit() and len(json_length) <= 15) \
            or int(json_length) > len(body):
        raise ProtocolError(f"{BINARY_HEADER}: {json_length[:20]!r} is not a length within the "
                            f"{len(body)}-byte body")
    return body[:int(json_length)], body[int(json_length):]


def parse_infer_request(body: bytes, json_length: str | None = None
                        ) -> tuple[InferenceRequest, dict[str, bytes]]:
    """A v2 infer body -> the request and each binary input's bytes, by input name.

    ``json_length`` is the ``Inference-Header-Content-Length`` header (None: all JSON).
    The JSON is parsed and validated in one pass by pydantic-core, which is several
    times faster than ``json.loads`` followed by validation.
    """
    json_part, tail = _split_body(body, json_length)
    try:
        request = InferenceRequest.model_validate_json(json_part)
    except ValidationError as exc:
        raise ProtocolError(describe_errors(exc.errors()), 422) from None
    binary, offset = {}, 0
    for tensor in request.inputs:  # binary tensors follow the JSON in input order
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if tensor.data is not None:
            raise ProtocolError(f"input '{tensor.name}' has both 'data' and 'binary_data_size'")
        if type(size) is not int or not 0 <= size <= len(tail) - offset:
            raise ProtocolError(f"input '{tensor.name}': binary_data_size {size!r} does not fit "
                                f"the {len(tail) - offset} bytes left after the JSON")
        binary[tensor.name] = tail[offset:offset + size]
        offset += size
    if offset != len(tail):
        raise ProtocolError(f"{len(tail) - offset} bytes after the JSON belong to no input "
                            "(check binary_data_size and Inference-Header-Content-Length)")
    return request, binary


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


def _flatten(data: list[Any], name: str) -> list[Any]:
    """Row-major flattening of nested lists (v2 allows flat or nested data)."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
        if len(stack) > 64:
            raise ProtocolError(f"input '{name}': data is nested more than 64 levels deep")
    return flat


def _count_error(name: str, shape: list[int], expected: int, got: int) -> ProtocolError:
    return ProtocolError(f"input '{name}': shape {shape} needs {expected} values, data has {got}")


def decode_tensor(tensor: RequestInput, spec: TensorSpec, raw: bytes | None = None
                  ) -> np.ndarray:
    """Check ``tensor`` against the model's ``spec`` and return it as an array.

    ``raw`` is the tensor's binary data when it came that way (``parse_infer_request``).
    """
    name = tensor.name
    if tensor.datatype not in DATATYPES:
        raise ProtocolError(f"input '{name}': unknown datatype {tensor.datatype!r}; "
                            f"use one of {sorted(DATATYPES)}")
    if tensor.datatype != spec.datatype:
        raise ProtocolError(f"input '{name}': datatype {tensor.datatype} does not match the "
                            f"model's {spec.datatype}")
    shape = tensor.shape
    if any(d < 0 for d in shape):
        raise ProtocolError(f"input '{name}': shape {shape} has a negative dimension")
    if len(shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)):
        raise ProtocolError(f"input '{name}': shape {shape} does not fit the model's "
                            f"{spec.shape} (-1 means any size)")
    expected = math.prod(shape)
    if raw is not None:
        array = _binary_array(raw, tensor.datatype, shape, expected, name)
    elif tensor.data is None:
        raise ProtocolError(f"input '{name}' has no data: send 'data', or binary data with a "
                            "'binary_data_size' parameter")
    else:
        array = _json_array(tensor.data, tensor.datatype, shape, expected, name)
    if tensor.datatype in _FLOATS and array.size and not np.isfinite(array).all():
        index = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ProtocolError(f"input '{name}': value {array[index]!r} at flat index {index} is "
                            "not finite (NaN or infinity)")
    return array.reshape(shape)


def _json_array(data: list[Any], datatype: str, shape: list[int], expected: int,
                name: str) -> np.ndarray:
    """The flat array of a tensor's JSON ``data``, or a ProtocolError naming the bad value."""
    if datatype == "BYTES":
        flat = _flatten(data, name)
        if len(flat) != expected:
            raise _count_error(name, shape, expected, len(flat))
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"input '{name}': BYTES data must be strings")
        return np.array(flat, dtype=object)
    try:
        array = _numeric_array(data, datatype)
    except ValueError as exc:
        raise ProtocolError(f"input '{name}': cannot read data as {datatype} ({exc})") from None
    if array is None:  # the fast path refused: walk the values to say which one is wrong
        flat = _flatten(data, name)
        bad = [v for v in flat if isinstance(v, (str, dict, bool)) or v is None]
        if bad:
            raise ProtocolError(f"input '{name}': {bad[0]!r} is not a number")
        if len(flat) != expected:  # ragged nesting
            raise _count_error(name, shape, expected, len(flat))
        raise ProtocolError(f"input '{name}': cannot read data as {datatype}")
    if array.size != expected:
        raise _count_error(name, shape, expected, array.size)
    return array


def _binary_array(raw: bytes, datatype: str, shape: list[int], expected: int,
                  name: str) -> np.ndarray:
    """The flat array of a tensor's binary data (little-endian, row-major, no padding)."""
    if datatype == "BYTES":  # each element: a 4-byte little-endian length, then the bytes
        values, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise ProtocolError(f"input '{name}': binary BYTES data ends inside the length "
                                    f"of element {len(values)}")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise ProtocolError(f"input '{name}': BYTES element {len(values)} says {length} "
                                    f"bytes, {len(raw) - offset} remain")
            try:
                values.append(raw[offset:offset + length].decode())
            except UnicodeDecodeError:
                raise ProtocolError(f"input '{name}': BYTES element {len(values)} is not "
                                    "UTF-8 text") from None
            offset += length
        if len(values) != expected:
            raise _count_error(name, shape, expected, len(values))
        return np.array(values, dtype=object)
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if len(raw) != expected * dtype.itemsize:
        raise ProtocolError(f"input '{name}': shape {shape} needs {expected * dtype.itemsize} "
                            f"bytes of {datatype}, binary data has {len(raw)}")
    if datatype == "BOOL" and raw and max(raw) > 1:
        raise ProtocolError(f"input '{name}': BOOL bytes must be 0 or 1")
    # A writable copy in native byte order: the bytes object itself is read-only.
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))


def _numeric_array(data: list[Any], datatype: str) -> np.ndarray | None:
    """One C-speed conversion of flat or regularly nested numbers; None if it cannot be.

    A 32x32 wafer map is 1,024 numbers: walking them in Python would cost more
    than the model. Strings, None and ragged nesting make NumPy refuse (or give
    an object array), and the caller then looks for the culprit value by value.
    """
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError):
        return None
    if raw.dtype.kind not in "biuf" or (raw.dtype.kind == "b") != (datatype == "BOOL"):
        return None
    if datatype != "BOOL" and bool in set(map(type, data)):  # C speed: 1,024 values in µs
        return None  # NumPy would quietly read true as 1; refuse it by name instead
    try:
        with np.errstate(over="raise", invalid="ignore"):
            array = raw.astype(DATATYPES[datatype])
    except (FloatingPointError, OverflowError):
        raise ValueError("values out of range") from None
    if raw.dtype.kind in "iu" and array.dtype.kind in "iu" and not np.array_equal(array, raw):
        raise ValueError("values out of range")
    return array.ravel()


def decode_inputs(request: InferenceRequest, specs: list[TensorSpec],
                  binary: dict[str, bytes] | None = None) -> dict[str, np.ndarray]:
    """All inputs of ``request``, checked: none missing, none unknown, none twice.

    ``binary`` maps input names to their binary data (from ``parse_infer_request``).
    """
    by_name = {spec.name: spec for spec in specs}
    names = [t.name for t in request.inputs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ProtocolError(f"inputs {twice} appear more than once")
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ProtocolError(f"unknown input(s) {unknown}; the model takes {sorted(by_name)}")
    missing = sorted(set(by_name) - set(names))
    if missing:
        raise ProtocolError(f"missing input(s) {missing}")
    binary = binary or {}
    return {t.name: decode_tensor(t, by_name[t.name], binary.get(t.name))
            for t in request.inputs}


def datatype_of(array: np.ndarray) -> str:
    for name, dtype in DATATYPES.items():
        if dtype is not object and array.dtype == np.dtype(dtype):
            return name
    if array.dtype == object or array.dtype.kind in "US":
        return "BYTES"
    raise TypeError(f"no v2 datatype for NumPy dtype {array.dtype}")


def _tensor_bytes(array: np.ndarray) -> bytes:
    """A tensor as binary data: little-endian and row-major; BYTES length-prefixed."""
    if array.dtype == object or array.dtype.kind in "US":
        encoded = [str(v).encode() for v in array.ravel()]
        return b"".join(struct.pack("<I", len(b)) + b for b in encoded)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _binary_tensor(name: str, array: np.ndarray) -> tuple[dict[str, Any], bytes]:
    """A tensor's JSON description (no ``data``) and its binary data."""
    raw = _tensor_bytes(array)
    return {"name": name, "shape": list(array.shape), "datatype": datatype_of(array),
            "parameters": {"binary_data_size": len(raw)}}, raw


def wants_binary_output(request: InferenceRequest) -> bool:
    return bool((request.parameters or {}).get("binary_data_output")) or any(
        (output.parameters or {}).get("binary_data") for output in request.outputs or [])


def encode_response(model_name: str, model_version: str, request_id: str | None,
                    outputs: dict[str, np.ndarray], binary: bool = False
                    ) -> tuple[bytes, dict[str, str]]:
    """A v2 infer response: ``(body, headers)``, all JSON or JSON + binary tensors."""
    tensors, tail = [], []
    for name, array in outputs.items():
        array = np.asarray(array)
        if binary:
            described, raw = _binary_tensor(name, array)
            tensors.append(ResponseOutput(**described))
            tail.append(raw)
        else:
            tensors.append(encode_tensor(name, array))
    header = InferenceResponse(model_name=model_name, model_version=model_version,
                               id=request_id, outputs=tensors
                               ).model_dump_json(exclude_none=True).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    return header + b"".join(tail), {"content-type": "application/octet-stream",
                                     BINARY_HEADER: str(len(header))}


def encode_binary_request(inputs: dict[str, np.ndarray], binary_output: bool = False,
                          request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """Client side: ``(body, headers)`` of an infer request with every input as binary."""
    tensors, tail = [], []
    for name, array in inputs.items():
        described, raw = _binary_tensor(name, np.asarray(array))
        tensors.append(described)
        tail.append(raw)
    request: dict[str, Any] = {"inputs": tensors}
    if request_id is not None:
        request["id"] = request_id
    if binary_output:
        request["parameters"] = {"binary_data_output": True}
    header = json.dumps(request).encode()
    return header + b"".join(tail), {"content-type": "application/octet-stream",
                                     BINARY_HEADER: str(len(header))}


def decode_response(body: bytes, headers: Any) -> dict[str, np.ndarray]:
    """Client side: the output tensors of an infer response, JSON or binary, by name."""
    json_part, tail = _split_body(body, headers.get(BINARY_HEADER))
    outputs, offset = {}, 0
    for output in json.loads(json_part)["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            dtype = DATATYPES[output["datatype"]]
            outputs[output["name"]] = np.array(output["data"], dtype=dtype).reshape(
                output["shape"])
            continue
        shape = output["shape"]
        outputs[output["name"]] = _binary_array(tail[offset:offset + size], output["datatype"],
                                                shape, math.prod(shape), output["name"]
                                                ).reshape(shape)
        offset += size
    return outputs


def encode_tensor(name: str, array: np.ndarray) -> ResponseOutput:
    array = np.asarray(array)
    return ResponseOutput(name=name, shape=list(array.shape), datatype=datatype_of(array),
                          data=array.ravel().tolist())
