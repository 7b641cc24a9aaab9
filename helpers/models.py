"""The course's models, and the model repository they live in.

This module is the one place that knows every kind of model the course serves;
importing it registers each kind with ``helpers.repository``:

- the wafer-process classifiers: ``WaferMLP`` (torch, here) and the scikit-learn
  forest (the repository's skops platform);
- the wafer-map defect CNN (``helpers.wafermaps``);
- the engineer-note embedder (``helpers.embedder``);
- the tool-log language model (``helpers.gpt``), a small GPT that lesson 05 serves;
- any ONNX graph, run by ONNX Runtime (``helpers.onnx_models``): lesson 08's compressed
  CNN.

The repository's API is re-exported, so ``models.load_model("wafer-cnn")`` loads any
of them. How models are stored, and what loading trusts: ``helpers.repository``.
``python -m helpers.training`` (run by ``make data``) trains what is missing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import data as wafer_data
from . import embedder, gpt, onnx_models, wafermaps  # noqa: F401  (importing registers kinds)
from .embedder import write_embedder_entry
from .repository import (
    SKLEARN_PLATFORM,
    TORCH_PLATFORM,
    LoadedModel,
    ModelConfig,
    ModelFormatError,
    ModelNotFoundError,
    TensorSpec,
    default_repository,
    list_models,
    list_versions,
    load_model,
    register_architecture,
    save_sklearn_model,
    save_torch_model,
    sha256_of,
)

__all__ = [
    "ModelNotFoundError",
    "ModelFormatError",
    "TensorSpec",
    "ModelConfig",
    "WaferMLP",
    "LoadedModel",
    "TORCH_PLATFORM",
    "SKLEARN_PLATFORM",
    "default_repository",
    "list_models",
    "list_versions",
    "sha256_of",
    "save_torch_model",
    "save_sklearn_model",
    "load_model",
    "write_embedder_entry",
]


def process_io_specs(n_features: int) -> dict[str, Any]:
    """Inputs and outputs of every wafer-process classifier, torch or scikit-learn."""
    return {
        "inputs": [TensorSpec("process_features", "FP32", [-1, n_features])],
        "outputs": [TensorSpec("defect_probability", "FP32", [-1])],
        "feature_names": list(wafer_data.FEATURES),
    }


@register_architecture
class WaferMLP(nn.Module):
    """A small MLP over the raw process features; standardisation is built in.

    The feature means and standard deviations are buffers, saved with the weights,
    so callers send raw readings (350 °C, 2.0 Torr) and nothing outside the model
    has to remember how it was trained.
    """

    def __init__(self, n_features: int = len(wafer_data.FEATURES), hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, F) raw features -> (B,) defect logits
        return self.net((x - self.mean) / self.std).squeeze(-1)

    # What the repository needs to save and rebuild this module (every torch model
    # of the course has these three):
    def architecture(self) -> dict[str, Any]:
        return {"class": "WaferMLP", "n_features": self.mean.numel(),
                "hidden": self.net[0].out_features}

    def io_specs(self) -> dict[str, Any]:
        return process_io_specs(self.mean.numel())

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))  # (B,)
