"""Triton's generate extension: text in, generated text out, whole or token by token.

``POST /v2/models/{m}[/versions/{v}]/generate`` answers once the generation is done;
``.../generate_stream`` answers with Server-Sent Events, one ``data: {json}`` event per
token, as the engine makes them. Both run through the model's ``GenerationService``
(``helpers.generation_service``): continuous batching over a paged KV cache, in a thread
of its own.

Errors keep their status while they can: the stream's 200 is sent only once the first
token exists, so a request refused, shed or timed out before then gets its 4xx/5xx like
any other. An error after that arrives as a last event, ``data: {"error": ...}``, as
Triton sends it. A client that disconnects — while queued, while its whole answer is made,
or mid-stream — cancels its generation and frees its blocks; ``/metrics`` counts it as 499.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..generation_service import GenerationService
from ..protocol import ProtocolError
from .common import VERSION_HEADER, deadline_s, resolve
from .plain import STREAM_ERRORS

router = APIRouter(tags=["generate"])


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(32, description="tokens to generate (at most the server's "
                            "--max-new-tokens); decoding is greedy")
    stream: bool | None = Field(None, description="optional, as Triton clients send it; "
                                "must match the endpoint")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text_input": "06:00:59 ETCH-06 RUN LOT-01000/09 T=348.1 P=2.11 PC=31 RF=1464 PASS\n",
         "parameters": {"max_tokens": 48}}]})
    id: str | None = None
    text_input: str = Field(description="the start of a tool log, continued by the model")
    parameters: GenerateParameters = GenerateParameters()


def _service(request: Request, name: str, version: str | None) -> GenerationService:
    return request.app.state.generation.for_version(resolve(request, name, version))


def _event(service: GenerationService, body: GenerateRequest, **fields) -> dict:
    """An answer or an event: the model, the version, the request's id if it sent one."""
    named = {"id": body.id} if body.id is not None else {}
    return {**named, "model_name": service.name, "model_version": service.version, **fields}


def _check_stream_flag(body: GenerateRequest, streaming: bool) -> None:
    if body.parameters.stream is not None and body.parameters.stream != streaming:
        raise ProtocolError("parameters.stream does not match this endpoint: use "
                            + ("generate" if not body.parameters.stream else "generate_stream"))


async def _until_disconnected(request: Request) -> None:
    """Returns when the client goes away (the body is read; only a disconnect is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# nginx's "client closed request": what a request whose client left counts as in /metrics
CLIENT_LEFT = 499


class ClientLeftError(Exception):
    """The client disconnected before the answer was ready."""


async def _while_connected(request: Request, awaitable):
    """``await awaitable``, unless the client disconnects first: then cancel it (which
    cancels the generation and frees its blocks) and raise ``ClientLeftError``."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)  # let it clean up
    if work.cancelled():
        raise ClientLeftError
    return work.result()  # or its error, answered with its status


@router.post("/v2/models/{name}/generate")
@router.post("/v2/models/{name}/versions/{version}/generate")
async def generate(name: str, body: GenerateRequest, request: Request,
                   version: str | None = None):
    """The whole generated text, once it is done."""
    _check_stream_flag(body, streaming=False)
    service = _service(request, name, version)
    prompt = service.prompt_ids(body.text_input)

    async def collect() -> list[int]:
        async with aclosing(service.stream(prompt, body.parameters.max_tokens,
                                           deadline_s(request))) as stream:
            return [token async for token in stream]

    try:
        tokens = await _while_connected(request, collect())
    except ClientLeftError:
        return Response(status_code=CLIENT_LEFT)  # nobody reads it; /metrics counts it
    return JSONResponse(_event(service, body, text_output=service.tokenizer.decode(tokens),
                               output_tokens=len(tokens)),
                        headers={VERSION_HEADER: service.version})


@router.post("/v2/models/{name}/generate_stream")
@router.post("/v2/models/{name}/versions/{version}/generate_stream")
async def generate_stream(name: str, body: GenerateRequest, request: Request,
                          version: str | None = None):
    """Server-Sent Events: ``data: {"text_output": <one token's text>, ...}`` per token."""
    _check_stream_flag(body, streaming=True)
    service = _service(request, name, version)
    prompt = service.prompt_ids(body.text_input)
    stream = service.stream(prompt, body.parameters.max_tokens, deadline_s(request))
    try:  # errors before the first token keep their status; so does a client that left
        first = await _while_connected(request, anext(stream))
    except ClientLeftError:
        await stream.aclose()
        return Response(status_code=CLIENT_LEFT)
    except BaseException:
        await stream.aclose()
        raise

    def event(index: int, token: int) -> str:
        return "data: " + json.dumps(_event(
            service, body, text_output=service.tokenizer.decode([token]), index=index)) + "\n\n"

    async def events():
        async with aclosing(stream):  # the client left: closing cancels the generation
            yield event(0, first)
            index = 1
            try:
                async for token in stream:
                    yield event(index, token)
                    index += 1
            except STREAM_ERRORS as exc:  # the 200 is sent: say what broke, then stop
                yield "data: " + json.dumps({"error": str(exc)}) + "\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={VERSION_HEADER: service.version,
                                      "Cache-Control": "no-cache"})

