"""Knative and KServe manifests for the course server: the autoscaler's knobs land in the
right annotations and fields, as valid YAML, and mistakes are found before a cluster sees
them."""

import yaml

from helpers.autoscaler import AutoscalingConfig
from helpers.manifests import check, knative_service, kserve_inference_service, to_yaml

CONFIG = AutoscalingConfig(target_in_flight=3, min_replicas=1, max_replicas=6,
                           stable_window_s=60, panic_window_s=6, panic_threshold=2,
                           downscale_delay_s=30)


def test_the_knative_service_carries_the_autoscaler_settings_and_the_probes():
    manifest = knative_service("wafer-inspection", "registry.example/fab/serving:1", CONFIG,
                               args=["--models", "wafer-mlp"])
    assert check(manifest) == []
    back = yaml.safe_load(to_yaml(manifest))  # valid YAML, the same document
    assert back == manifest
    annotations = back["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/target"] == "3"
    assert annotations["autoscaling.knative.dev/min-scale"] == "1"
    assert annotations["autoscaling.knative.dev/max-scale"] == "6"
    assert annotations["autoscaling.knative.dev/window"] == "60s"
    assert annotations["autoscaling.knative.dev/panic-window-percentage"] == "10"
    assert annotations["autoscaling.knative.dev/panic-threshold-percentage"] == "200"
    assert annotations["autoscaling.knative.dev/scale-down-delay"] == "30s"
    assert annotations["autoscaling.knative.dev/target-utilization-percentage"] == "100"
    container = back["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert container["command"] == ["python", "-m", "helpers.server"]
    assert container["args"][-2:] == ["--models", "wafer-mlp"] and "0.0.0.0" in container["args"]


def test_the_kserve_service_uses_a_custom_predictor_with_the_same_bounds():
    manifest = kserve_inference_service("wafer-inspection", "registry.example/fab/serving:1",
                                        CONFIG)
    assert check(manifest) == []
    predictor = yaml.safe_load(to_yaml(manifest))["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 6)
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] == 3
    assert predictor["containers"][0]["name"] == "kserve-container"
    # a fractional target cannot be KServe's whole scaleTarget: the annotation alone carries it
    half = kserve_inference_service("w", "img", AutoscalingConfig(target_in_flight=0.5))
    assert "scaleTarget" not in half["spec"]["predictor"]
    assert half["metadata"]["annotations"]["autoscaling.knative.dev/target"] == "0.5"


def test_check_names_what_a_cluster_would_refuse_or_misread():
    manifest = knative_service("x", "img", CONFIG)
    template = manifest["spec"]["template"]
    template["metadata"]["annotations"]["autoscaling.knative.dev/target"] = 3
    template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] = "9"
    template["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/"
    del manifest["metadata"]["name"]
    problems = check(manifest)
    assert "no metadata.name" in problems
    assert any("target is int, not a string" in p for p in problems)
    assert any("min-scale 9 is above max-scale 6" in p for p in problems)
    assert any("readiness probe on '/'" in p for p in problems)
    assert check({"spec": {}}) [:3] == ["no apiVersion", "no kind", "no metadata.name"]


def test_check_knows_knatives_bounds_and_a_policy_without_panic_still_fits_them():
    import math

    short = knative_service("x", "img", AutoscalingConfig(stable_window_s=3, panic_window_s=0.5,
                                                          panic_threshold=1.05))
    problems = check(short)
    assert any("window 3s is outside" in p for p in problems)
    assert any("panic-threshold-percentage 105 is outside" in p for p in problems)
    calm = knative_service("x", "img", AutoscalingConfig(stable_window_s=60,
                                                         panic_threshold=math.inf))
    assert check(calm) == []  # "never panic" is Knative's highest threshold, 1000 %
