"""The same service on Kubernetes: Knative and KServe manifests, written out, never applied.

Past one machine, the autoscaler of lesson 07 is Knative's KPA — the stable and panic
windows and the concurrency target come from it — and KServe serves models on top of it.
These functions write the manifests for the course's server with the knobs the lesson
tuned, so the mapping is exact:

==========================  =================================================
``AutoscalingConfig``       Knative annotation / KServe field
==========================  =================================================
``target_in_flight``        ``autoscaling.knative.dev/target`` (``scaleTarget``)
``min_replicas``            ``autoscaling.knative.dev/min-scale`` (``minReplicas``)
``max_replicas``            ``autoscaling.knative.dev/max-scale`` (``maxReplicas``)
``stable_window_s``         ``autoscaling.knative.dev/window``
``panic_window_s``          ``autoscaling.knative.dev/panic-window-percentage``
``panic_threshold``         ``autoscaling.knative.dev/panic-threshold-percentage``
``downscale_delay_s``       ``autoscaling.knative.dev/scale-down-delay``
==========================  =================================================

Readiness is the server's ``/v2/health/ready`` (no traffic before the model is loaded: the
cold start), liveness ``/v2/health/live``. ``check`` finds what would make a cluster refuse
or misread a manifest; ``to_yaml`` writes it.
"""

from __future__ import annotations

from typing import Any

from .autoscaler import AutoscalingConfig

__all__ = ["knative_service", "kserve_inference_service", "to_yaml", "check"]

_KNATIVE = "autoscaling.knative.dev/"


def _annotations(config: AutoscalingConfig) -> dict[str, str]:
    """Knative's autoscaling annotations (all strings, as Kubernetes wants them).

    Knative aims at 70 % of the target unless told otherwise; 100 % makes it aim at the
    target itself, as the course's autoscaler does. Knative cannot switch panic off: a
    threshold of ``inf`` becomes its largest, 1000 %. It has no up delay (it scales up as
    soon as the windows ask); ``upscale_delay_s`` has no annotation.
    """
    return {
        _KNATIVE + "class": "kpa.autoscaling.knative.dev",
        _KNATIVE + "metric": "concurrency",
        _KNATIVE + "target": f"{config.target_in_flight:g}",
        _KNATIVE + "target-utilization-percentage": "100",
        _KNATIVE + "min-scale": str(config.min_replicas),
        _KNATIVE + "max-scale": str(config.max_replicas),
        _KNATIVE + "window": f"{config.stable_window_s:g}s",
        _KNATIVE + "panic-window-percentage":
            f"{100 * config.panic_window_s / config.stable_window_s:g}",
        _KNATIVE + "panic-threshold-percentage": f"{min(1000.0, 100 * config.panic_threshold):g}",
        _KNATIVE + "scale-down-delay": f"{config.downscale_delay_s:g}s",
    }


def _container(image: str, args: list[str], port: int, name: str | None = None) -> dict:
    probe = {"httpGet": {"path": "/v2/health/ready", "port": port}, "periodSeconds": 1}
    container = {
        "image": image,
        "command": ["python", "-m", "helpers.server"],
        "args": ["--host", "0.0.0.0", "--port", str(port), *args],
        "ports": [{"containerPort": port, "protocol": "TCP"}],
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": port},
                          "periodSeconds": 10},
    }
    return {"name": name, **container} if name else container


def knative_service(name: str, image: str, config: AutoscalingConfig, *,
                    args: list[str] | None = None, port: int = 8000,
                    container_concurrency: int = 0) -> dict[str, Any]:
    """A Knative ``Service`` running the course server. ``container_concurrency`` is the hard
    cap per replica (0: none; the server's own ``--max-in-flight`` sheds past it)."""
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"template": {
            "metadata": {"annotations": _annotations(config)},
            "spec": {"containerConcurrency": container_concurrency,
                     "containers": [_container(image, args or [], port)]},
        }},
    }


def kserve_inference_service(name: str, image: str, config: AutoscalingConfig, *,
                             args: list[str] | None = None, port: int = 8000
                             ) -> dict[str, Any]:
    """A KServe ``InferenceService`` with the course server as a custom predictor (it speaks
    the Open Inference Protocol KServe routes to); KServe's serverless mode runs it on
    Knative, so the same annotations tune its autoscaler. KServe's ``scaleTarget`` is a whole
    number and would overwrite the target annotation, so it is set only for a whole target;
    a fractional one (0.5 in flight per replica) stays in the annotation alone."""
    predictor: dict[str, Any] = {"minReplicas": config.min_replicas,
                                 "maxReplicas": config.max_replicas}
    if float(config.target_in_flight).is_integer():
        predictor |= {"scaleMetric": "concurrency", "scaleTarget": int(config.target_in_flight)}
    predictor["containers"] = [_container(image, args or [], port, name="kserve-container")]
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": _annotations(config)},
        "spec": {"predictor": predictor},
    }


def to_yaml(manifest: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(manifest, sort_keys=False)


# What Knative's webhook accepts (its documented bounds).
_RANGES = {"window": (6.0, 3600.0, "s"), "panic-window-percentage": (1.0, 100.0, ""),
           "panic-threshold-percentage": (110.0, 1000.0, "")}


def _out_of_range(annotations: dict[str, Any]) -> list[str]:
    problems = []
    for key, (low, high, unit) in _RANGES.items():
        value = annotations.get(_KNATIVE + key)
        if not isinstance(value, str):
            continue
        try:
            number = float(value.removesuffix(unit) if unit else value)
        except ValueError:
            problems.append(f"{key} {value!r} is not a number")
            continue
        if not low <= number <= high:
            problems.append(f"{key} {value} is outside Knative's {low:g}..{high:g}{unit}")
    return problems


def check(manifest: dict[str, Any]) -> list[str]:
    """What a cluster would refuse or misread: missing identity, annotations that are not
    strings, scale bounds that cross, a container without a readiness probe. [] when fine."""
    problems = []
    for key in ("apiVersion", "kind"):
        if not manifest.get(key):
            problems.append(f"no {key}")
    if not manifest.get("metadata", {}).get("name"):
        problems.append("no metadata.name")
    spec = manifest.get("spec", {})
    template = spec.get("template", {})
    annotations = {**manifest.get("metadata", {}).get("annotations", {}),
                   **template.get("metadata", {}).get("annotations", {})}
    problems += [f"annotation {key} is {type(value).__name__}, not a string"
                 for key, value in annotations.items() if not isinstance(value, str)]
    low, high = annotations.get(_KNATIVE + "min-scale"), annotations.get(_KNATIVE + "max-scale")
    if low is not None and high is not None and int(low) > int(high):
        problems.append(f"min-scale {low} is above max-scale {high}")
    problems += _out_of_range(annotations)
    containers = (template.get("spec", {}).get("containers")
                  or spec.get("predictor", {}).get("containers") or [])
    if not containers:
        problems.append("no container")
    for container in containers:
        path = container.get("readinessProbe", {}).get("httpGet", {}).get("path")
        if path != "/v2/health/ready":
            problems.append(f"container {container.get('image')}: readiness probe on {path!r}, "
                            "not /v2/health/ready (traffic would reach it before the model)")
    return problems
