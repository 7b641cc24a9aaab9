"""The server's HTTP layer: one FastAPI router per concern, each thin over the engine.

| router             | endpoints                                                        |
|--------------------|------------------------------------------------------------------|
| ``v2``             | ``POST /v2/models/{m}[/versions/{v}]/infer``, model metadata, ready |
| ``generate``       | ``POST /v2/models/{m}[/versions/{v}]/generate[_stream]`` (SSE)   |
| ``health``         | ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``           |
| ``model_repository`` | ``POST /v2/repository/index``, ``.../models/{m}/load|unload``  |
| ``plain``          | ``POST /predict``, ``/predict/batch``, ``/predict/stream``       |
| ``jobs``           | ``POST /jobs``, ``GET /jobs/{id}[/result]``, ``DELETE /jobs/{id}`` |
| ``metrics``        | ``GET /metrics``                                                 |

Routes parse and answer; the engine (``helpers.inference``) decides. The v2 router is
included first: routes are tried in order, and inference is the hot path.
"""

from . import generate, health, jobs, metrics, model_repository, plain, v2

ROUTERS = [v2.router, generate.router, health.router, model_repository.router, plain.router,
           jobs.router, metrics.router]

__all__ = ["ROUTERS", "v2", "generate", "health", "model_repository", "plain", "jobs", "metrics"]
