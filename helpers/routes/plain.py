"""Plain JSON routes for the first lessons: wafer records in, defect probabilities out.

``POST /predict`` scores one record, ``/predict/batch`` many (answered at once),
``/predict/stream`` many as NDJSON lines sent as chunks complete. Big requests are
split into batch-sized chunks, each admitted like a request of its own. The records
are checked by ``app.state.validate`` (default ``features_to_rows``; lessons plug in
their own), and a ``ValueError`` it raises is a 422 naming the problem.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..batching import BatcherClosedError, BatcherFailedError, DeadlineExceededError, QueueFullError
from ..data import FEATURES
from ..inference import InferenceEngine, ModelFailedError
from ..protocol import ProtocolError
from ..registry import ServedVersion
from .common import VERSION_HEADER, deadline_s, json_body, json_body_doc, resolve

__all__ = ["router", "features_to_rows", "records_of", "checked_rows"]

router = APIRouter(tags=["plain"])

RECORD_EXAMPLE = {"temperature_c": 349.4, "pressure_torr": 2.12, "gas_flow_sccm": 115.0,
                  "particle_count": 25, "humidity_pct": 44.5, "rf_power_w": 1539.9,
                  "chamber_hours": 7.25, "vibration_mm_s": 0.62}
RECORD_SCHEMA = {"type": "object", "required": list(FEATURES),
                 "properties": {name: {"type": "number"} for name in FEATURES}}
FEATURES_BODY = json_body_doc({"type": "object", "required": ["features"],
                               "properties": {"features": RECORD_SCHEMA}},
                              {"features": RECORD_EXAMPLE})
RECORDS_BODY = json_body_doc({"type": "object", "required": ["records"],
                              "properties": {"records": {"type": "array",
                                                         "items": RECORD_SCHEMA}}},
                             {"records": [RECORD_EXAMPLE, RECORD_EXAMPLE]})
STREAM_ERRORS = (ProtocolError, QueueFullError, DeadlineExceededError, BatcherClosedError,
                 BatcherFailedError, ModelFailedError)


def features_to_rows(records: list[dict[str, Any]]) -> np.ndarray:
    """Plain-JSON wafer records -> a ``(n, 8)`` float32 array, or a 422 naming the problem."""
    if not isinstance(records, list) or not records:
        raise ProtocolError("send at least one record", 422)
    rows = np.empty((len(records), len(FEATURES)), dtype=np.float32)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ProtocolError(f"record {i} is not an object of feature values", 422)
        missing = [f for f in FEATURES if f not in record]
        unknown = sorted(set(record) - set(FEATURES))
        if missing or unknown:
            raise ProtocolError(f"record {i}: missing {missing}, unknown {unknown}", 422)
        for j, name in enumerate(FEATURES):
            value = record[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ProtocolError(f"record {i}: {name}={value!r} is not a number", 422)
            if not math.isfinite(value):
                raise ProtocolError(f"record {i}: {name}={value!r} is not finite", 422)
            rows[i, j] = value
    return rows


# More records than this are validated in a worker thread (a per-value check of a
# 250,000-record job takes seconds: not on the event loop).
OFFLOAD_RECORDS = 256


async def checked_rows(request: Request, records: list) -> np.ndarray:
    """The app's validator over ``records``; its ``ValueError`` is a 422 with its message."""
    validate = request.app.state.validate
    try:
        if len(records) > OFFLOAD_RECORDS:
            return await asyncio.to_thread(validate, records)
        return validate(records)
    except ProtocolError:
        raise
    except ValueError as exc:  # a plugged-in validator names the problem this way
        raise ProtocolError(str(exc), 422) from None


def records_of(body: Any, limit: int | None) -> list:
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list):
        raise ProtocolError('send {"records": [{feature: value, ...}, ...]}', 422)
    if limit is not None and len(records) > limit:
        raise ProtocolError(f"{len(records)} records is over the {limit} limit per request; "
                            "use /jobs for more", 413)
    return records


def _plain(served: ServedVersion, **body: Any) -> JSONResponse:
    return JSONResponse({"model": served.name, "version": served.version, **body},
                        headers={VERSION_HEADER: served.version})


def _model(request: Request, model: str | None) -> str:
    return model or request.app.state.settings.default_model


def served_classifier(request: Request, model: str | None) -> ServedVersion:
    """The version to serve, if it takes wafer records: one probability per record."""
    served = resolve(request, _model(request, model), None)
    config = served.model.config
    if config.inputs[0].shape != [-1, len(FEATURES)] or config.outputs[0].shape != [-1]:
        raise ProtocolError(f"{served.name} does not score wafer records; send it tensors at "
                            f"/v2/models/{served.name}/infer")
    return served


@router.post("/predict", openapi_extra=FEATURES_BODY)
async def predict_one(request: Request, model: str | None = None):
    body = await json_body(request)
    features = body.get("features") if isinstance(body, dict) else None
    if not isinstance(features, dict):
        raise ProtocolError('send {"features": {feature: value, ...}}', 422)
    served = served_classifier(request, model)
    rows = await checked_rows(request, [features])
    engine: InferenceEngine = request.app.state.engine
    probs = await engine.infer(served, rows, deadline_s(request))
    return _plain(served, defect_probability=float(probs[0]))


@router.post("/predict/batch", openapi_extra=RECORDS_BODY)
async def predict_batch(request: Request, model: str | None = None):
    records = records_of(await json_body(request), request.app.state.settings.max_records)
    served = served_classifier(request, model)
    rows = await checked_rows(request, records)
    engine: InferenceEngine = request.app.state.engine
    predictions: list[float] = []
    async for _, probs in engine.infer_chunks(served, rows, deadline_s(request)):
        predictions.extend(float(p) for p in probs)
    return _plain(served, predictions=predictions)


@router.post("/predict/stream", openapi_extra=RECORDS_BODY)
async def predict_stream(request: Request, model: str | None = None, chunk: int = 64):
    """NDJSON: one line per record, in order, sent as each chunk completes."""
    settings = request.app.state.settings
    records = records_of(await json_body(request), settings.max_records)
    if not 1 <= chunk <= settings.max_records:
        raise ProtocolError(f"chunk must be within 1..{settings.max_records}, got {chunk}")
    served = served_classifier(request, model)
    rows, timeout_s = await checked_rows(request, records), deadline_s(request)
    engine: InferenceEngine = request.app.state.engine

    async def lines():
        try:
            async for start, probs in engine.infer_chunks(served, rows, timeout_s, chunk):
                yield "".join(json.dumps({"index": start + k, "defect_probability": float(p)})
                              + "\n" for k, p in enumerate(probs))
        except STREAM_ERRORS as exc:
            # The 200 and earlier lines are already sent: say what broke, then stop.
            yield json.dumps({"error": str(exc)}) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={VERSION_HEADER: served.version})
