"""Past one machine: the wafer classifier as a Ray Serve deployment that autoscales.

Ray is an optional extra — large, and not needed by ``make test``: ``make scale`` (or
``pip install -e ".[scale]"``) installs it. Without it ``available()`` is False and lesson
07 says so and moves on.

The deployment answers the same Open Inference Protocol request as the course server, on
``/v2/models/<model>/infer``, with the model loaded by ``helpers.repository``. Its
``autoscaling_config`` comes from the lesson's ``AutoscalingConfig``:

==========================  ================================
``AutoscalingConfig``       Ray Serve ``autoscaling_config``
==========================  ================================
``target_in_flight``        ``target_ongoing_requests``
``min_replicas``            ``min_replicas``
``max_replicas``            ``max_replicas``
``upscale_delay_s``         ``upscale_delay_s``
``downscale_delay_s``       ``downscale_delay_s``
``stable_window_s``         ``look_back_period_s``
==========================  ================================

Ray Serve has no panic window; its router sends each request to the less loaded of two
replicas (lesson 06's power of two choices).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .autoscaler import AutoscalingConfig

__all__ = ["available", "autoscaling_config", "deployment", "serve_with_ray"]


def available() -> bool:
    """Is Ray (with Serve) installed here?"""
    return importlib.util.find_spec("ray") is not None


def autoscaling_config(config: AutoscalingConfig) -> dict:
    """The lesson's policy in Ray Serve's terms."""
    return {"min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
            "initial_replicas": config.min_replicas,
            "target_ongoing_requests": config.target_in_flight,
            "upscale_delay_s": config.upscale_delay_s,
            "downscale_delay_s": config.downscale_delay_s,
            "look_back_period_s": config.stable_window_s}


def deployment(model: str, config: AutoscalingConfig, repository: str | Path | None = None,
               cpus_per_replica: float = 0.5):
    """A bound Ray Serve application serving ``model`` with ``config``'s autoscaling."""
    from ray import serve

    @serve.deployment(name=model, autoscaling_config=autoscaling_config(config),
                      ray_actor_options={"num_cpus": cpus_per_replica})
    class OpenInferenceModel:
        def __init__(self) -> None:
            from .models import load_model  # registers the course architectures too

            self.model = load_model(model, repository=repository, device="cpu")
            self.output = self.model.config.outputs[0].name

        async def __call__(self, request) -> dict:
            tensor = (await request.json())["inputs"][0]
            rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            out = self.model.predict(rows)
            return {"model_name": model, "outputs": [{
                "name": self.output, "shape": list(out.shape), "datatype": "FP32",
                "data": out.ravel().tolist()}]}

    return OpenInferenceModel.bind()


@contextmanager
def serve_with_ray(model: str, config: AutoscalingConfig, port: int,
                   repository: str | Path | None = None, num_cpus: int = 2) -> Iterator[str]:
    """Start a local Ray, serve ``model`` on ``127.0.0.1:port`` for the block, shut it all
    down after; yields the base URL (POST ``/v2/models/<model>/infer``)."""
    import ray
    from ray import serve

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(model, config, repository), name=model,
                  route_prefix=f"/v2/models/{model}/infer")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
