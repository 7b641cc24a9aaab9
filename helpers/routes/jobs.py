"""Async jobs over HTTP: submit (202), poll, fetch the result, cancel.

A job is batch work: it runs under no online deadline, backs off when the queue is
full, and keeps what it finished. ``POST /jobs`` takes a larger body than the online
routes (``--max-job-body-bytes``), since large batches are what it is for.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..inference import InferenceEngine
from ..jobs import JobState
from .common import json_body
from .plain import RECORDS_BODY, checked_rows, records_of, served_classifier

router = APIRouter(tags=["jobs"])


@router.post("/jobs", status_code=202, openapi_extra=RECORDS_BODY)
async def submit_job(request: Request, model: str | None = None):
    records = records_of(await json_body(request), limit=None)  # the body limit still applies
    served = served_classifier(request, model)
    rows = await checked_rows(request, records)
    engine: InferenceEngine = request.app.state.engine
    job = engine.submit_job(served, rows, lambda probs: [float(p) for p in probs])
    return {**job.status(), "status_url": f"/jobs/{job.id}",
            "result_url": f"/jobs/{job.id}/result"}


@router.get("/jobs/{job_id}")
async def job_status(job_id: str, request: Request):
    return request.app.state.engine.jobs.get(job_id).status()


@router.get("/jobs/{job_id}/result")
async def job_result(job_id: str, request: Request):
    """A finished job's predictions; a failed or cancelled one's finished prefix, marked
    ``"complete": false``. A job still running answers 409."""
    job = request.app.state.engine.jobs.get(job_id)
    if not job.state.finished:
        return JSONResponse({"error": f"job is {job.state.value}", **job.status()}, 409)
    return {**job.info, "state": job.state.value, "complete": job.state is JobState.SUCCEEDED,
            "error": job.error, "predictions": job.result or []}


@router.delete("/jobs/{job_id}")
async def cancel_job(job_id: str, request: Request):
    jobs = request.app.state.engine.jobs
    jobs.cancel(job_id)
    return (await jobs.wait(job_id)).status()  # a cancelled task ends at its next await
