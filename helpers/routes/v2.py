"""Open Inference Protocol inference and model metadata.

``POST /v2/models/{m}[/versions/{v}]/infer`` takes a JSON body, or JSON followed by
binary tensors (the binary tensor data extension). Large bodies are decoded and
large answers encoded in a worker thread, so one big request cannot stall the
event loop (and with it every health check and small request).
"""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..inference import InferenceEngine
from ..protocol import (
    BINARY_HEADER,
    InferenceRequest,
    ProtocolError,
    decode_inputs,
    encode_response,
    inline_json_schema,
    parse_infer_request,
    wants_binary_output,
)
from ..registry import NotReadyError
from .common import (
    OFFLOAD_BODY_BYTES,
    VERSION_HEADER,
    Engine,
    deadline_s,
    json_body_doc,
    resolve,
)

router = APIRouter(tags=["inference"])

# Beyond these sizes, decoding or encoding costs more than a hop to a thread.
OFFLOAD_OUTPUT_VALUES = 16_384

_FEATURES_EXAMPLE = [349.4, 2.12, 115.0, 25, 44.5, 1539.9, 7.25, 0.62]
INFER_BODY = json_body_doc(inline_json_schema(InferenceRequest), {"inputs": [{
    "name": "process_features", "shape": [1, len(_FEATURES_EXAMPLE)], "datatype": "FP32",
    "data": _FEATURES_EXAMPLE}]})


def _decode(raw: bytes, json_length: str | None, specs):
    body, binary = parse_infer_request(raw, json_length)
    return body, decode_inputs(body, specs, binary)


@router.post("/v2/models/{name}/infer", openapi_extra=INFER_BODY)
@router.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY)
async def infer(name: str, request: Request, version: str | None = None):
    """v2 infer: a JSON body, or JSON + binary tensors (the binary data extension)."""
    engine: InferenceEngine = request.app.state.engine
    served = resolve(request, name, version)
    config = served.model.config
    raw, json_length = await request.body(), request.headers.get(BINARY_HEADER)
    if len(raw) > OFFLOAD_BODY_BYTES:
        body, inputs = await asyncio.to_thread(_decode, raw, json_length, config.inputs)
    else:
        body, inputs = _decode(raw, json_length, config.inputs)
    known = {spec.name for spec in config.outputs}
    unknown = sorted({o.name for o in body.outputs or []} - known)
    if unknown:
        raise ProtocolError(f"requested output(s) {unknown} are not outputs of {name}; it has "
                            f"{sorted(known)}")
    outputs = await engine.infer(served, inputs[config.inputs[0].name], deadline_s(request))
    result = {config.outputs[0].name: np.asarray(outputs, np.float32)}
    args = (name, served.version, body.id, result, wants_binary_output(body))
    if result[config.outputs[0].name].size > OFFLOAD_OUTPUT_VALUES:
        content, headers = await asyncio.to_thread(encode_response, *args)
    else:
        content, headers = encode_response(*args)
    return Response(content, headers={**headers, VERSION_HEADER: served.version})


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(name: str, engine: Engine, version: str | None = None):
    versions = engine.registry.versions(name)
    served = engine.registry.get(name, version)
    config = served.model.config
    return {"name": name, "versions": sorted(versions, key=int), "platform": config.platform,
            "inputs": [vars(t) for t in config.inputs],
            "outputs": [vars(t) for t in config.outputs],
            "max_batch_size": engine.max_rows}


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(name: str, engine: Engine, version: str | None = None):
    engine.registry.versions(name)  # 404 for an unknown model
    try:
        served = engine.registry.get(name, version)
    except NotReadyError as exc:
        return JSONResponse({"name": name, "ready": False, "error": str(exc)}, 503)
    return {"name": name, "version": served.version, "ready": True}
