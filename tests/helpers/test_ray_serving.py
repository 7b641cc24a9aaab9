"""The Ray Serve deployment (optional: skipped unless Ray is installed, `make scale`)."""

import numpy as np
import pytest

from helpers.autoscaler import AutoscalingConfig
from helpers.ray_serving import autoscaling_config


def test_the_policy_maps_onto_ray_serves_autoscaling_config():
    config = AutoscalingConfig(target_in_flight=1.5, min_replicas=1, max_replicas=4,
                               stable_window_s=30, upscale_delay_s=2, downscale_delay_s=60)
    assert autoscaling_config(config) == {
        "min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
        "target_ongoing_requests": 1.5, "upscale_delay_s": 2, "downscale_delay_s": 60,
        "look_back_period_s": 30}


def test_ray_serve_answers_the_open_inference_protocol(tmp_path):
    pytest.importorskip("ray.serve", reason="Ray is an optional extra: make scale")
    import httpx

    from helpers import models
    from helpers.ray_serving import serve_with_ray
    from helpers.serving import free_port

    models.save_torch_model(models.WaferMLP(hidden=8), "mlp", 1, tmp_path)
    body = {"inputs": [{"name": "process_features", "shape": [2, 8], "datatype": "FP32",
                        "data": np.zeros(16).tolist()}]}
    config = AutoscalingConfig(target_in_flight=2, min_replicas=1, max_replicas=2)
    with serve_with_ray("mlp", config, port=free_port(), repository=tmp_path) as url:
        answer = httpx.post(url + "/v2/models/mlp/infer", json=body, timeout=60)
    assert answer.status_code == 200
    output = answer.json()["outputs"][0]
    assert output["shape"][0] == 2 and len(output["data"]) == int(np.prod(output["shape"]))
