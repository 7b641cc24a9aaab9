"""A bare FastAPI app that echoes its JSON body: the HTTP stack's own limit on this machine.

    uvicorn benchmarks.echo_app:app
"""

from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()


@app.get("/v2/health/ready")
async def ready():
    return {"ready": True}


@app.post("/echo")
async def echo(request: Request):
    return Response(await request.body(), media_type="application/json")
