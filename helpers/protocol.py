"""The Open Inference Protocol (KServe v2) on the wire: request and response bodies,
and the checks that turn a JSON tensor into a NumPy array a model can trust.

Everything here is pure: no server, no model. A bad request becomes a
``ProtocolError`` whose message names the input and the problem, and whose
``status`` is the HTTP code the server answers with.

A v2 tensor is ``{"name", "shape", "datatype", "data"}``; ``data`` is the
row-major contents, flat or nested. BYTES tensors carry strings.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .models import TensorSpec

__all__ = [
    "DATATYPES",
    "ProtocolError",
    "RequestInput",
    "RequestOutput",
    "InferenceRequest",
    "ResponseOutput",
    "InferenceResponse",
    "decode_tensor",
    "decode_inputs",
    "encode_tensor",
    "datatype_of",
]

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
    data: list[Any]
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
    data: list[Any]


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


def decode_tensor(tensor: RequestInput, spec: TensorSpec) -> np.ndarray:
    """Check ``tensor`` against the model's ``spec`` and return it as an array."""
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
    if tensor.datatype == "BYTES":
        flat = _flatten(tensor.data, name)
        if len(flat) != expected:
            raise _count_error(name, shape, expected, len(flat))
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"input '{name}': BYTES data must be strings")
        return np.array(flat, dtype=object).reshape(shape)
    try:
        array = _numeric_array(tensor.data, tensor.datatype)
    except ValueError as exc:
        raise ProtocolError(f"input '{name}': cannot read data as {tensor.datatype} ({exc})") \
            from None
    if array is None:  # the fast path refused: walk the values to say which one is wrong
        flat = _flatten(tensor.data, name)
        bad = [v for v in flat if isinstance(v, (str, dict, bool)) or v is None]
        if bad:
            raise ProtocolError(f"input '{name}': {bad[0]!r} is not a number")
        if len(flat) != expected:  # ragged nesting
            raise _count_error(name, shape, expected, len(flat))
        raise ProtocolError(f"input '{name}': cannot read data as {tensor.datatype}")
    if array.size != expected:
        raise _count_error(name, shape, expected, array.size)
    flat = array.ravel()
    if tensor.datatype in _FLOATS and array.size and not np.isfinite(array).all():
        index = int(np.flatnonzero(~np.isfinite(flat))[0])
        raise ProtocolError(f"input '{name}': value {flat[index]!r} at flat index {index} is "
                            "not finite (NaN or infinity)")
    return array.reshape(shape)


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
    if datatype != "BOOL" and any(isinstance(v, bool) for v in data):
        return None  # NumPy would quietly read true as 1; refuse it by name instead
    try:
        with np.errstate(over="raise", invalid="ignore"):
            array = raw.astype(DATATYPES[datatype])
    except (FloatingPointError, OverflowError):
        raise ValueError("values out of range") from None
    if raw.dtype.kind in "iu" and array.dtype.kind in "iu" and not np.array_equal(array, raw):
        raise ValueError("values out of range")
    return array.ravel()


def decode_inputs(request: InferenceRequest, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """All inputs of ``request``, checked: none missing, none unknown, none twice."""
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
    return {t.name: decode_tensor(t, by_name[t.name]) for t in request.inputs}


def datatype_of(array: np.ndarray) -> str:
    for name, dtype in DATATYPES.items():
        if dtype is not object and array.dtype == np.dtype(dtype):
            return name
    if array.dtype == object or array.dtype.kind in "US":
        return "BYTES"
    raise TypeError(f"no v2 datatype for NumPy dtype {array.dtype}")


def encode_tensor(name: str, array: np.ndarray) -> ResponseOutput:
    array = np.asarray(array)
    return ResponseOutput(name=name, shape=list(array.shape), datatype=datatype_of(array),
                          data=array.ravel().tolist())
