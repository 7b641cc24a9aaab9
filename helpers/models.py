"""The wafer-process classifiers and the model repository they live in.

Repository layout (the one Triton and KServe use)::

    data/models/<name>/<version>/config.json   what the model is: inputs, outputs, dtype, shape
    data/models/<name>/<version>/model.pt      torch weights (a state dict), or
    data/models/<name>/<version>/model.joblib  a scikit-learn estimator

``config.json`` records the SHA-256 of the weights file. Loading checks that
hash and that the file really lies inside the repository *before* reading it:
joblib files are pickles, and unpickling runs code, so only a file this
repository wrote is ever unpickled. Torch weights load with ``weights_only=True``
(tensors only, no code).

``python -m helpers.training`` (run by ``make data``) trains what is missing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import data as wafer_data
from .device import pick_device
from .settings import data_dir

__all__ = [
    "ModelNotFoundError",
    "ModelFormatError",
    "TensorSpec",
    "ModelConfig",
    "WaferMLP",
    "LoadedModel",
    "default_repository",
    "list_models",
    "list_versions",
    "save_torch_model",
    "save_sklearn_model",
    "load_model",
    "write_embedder_entry",
]

CONFIG_FILE = "config.json"
TORCH_PLATFORM = "pytorch_state_dict"
SKLEARN_PLATFORM = "sklearn_joblib"
# Weights that live in an installed package (the MiniLM embedder): safetensors,
# which hold tensors only, so loading them cannot run code.
PACKAGE_PLATFORM = "transformers_package"
_WEIGHTS_FILE = {TORCH_PLATFORM: "model.pt", SKLEARN_PLATFORM: "model.joblib"}


class ModelNotFoundError(LookupError):
    """No such model, or no such version of it, in the repository."""


class ModelFormatError(ValueError):
    """A model's files are not what its config says they are."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output tensor, in Open Inference Protocol terms."""

    name: str
    datatype: str  # "FP32", "INT64", "BYTES", ...
    shape: list[int]  # -1 marks a variable dimension (the batch)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    version: int
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    weights_file: str
    weights_sha256: str
    feature_names: list[str] = field(default_factory=list)
    architecture: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        raw = dict(raw)
        raw["inputs"] = [TensorSpec(**t) for t in raw["inputs"]]
        raw["outputs"] = [TensorSpec(**t) for t in raw["outputs"]]
        return cls(**raw)


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
        return _process_io_specs(self.mean.numel())

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))  # (B,)


# -- the repository ------------------------------------------------------------------
def default_repository() -> Path:
    return data_dir() / "models"


def _repo(repository: str | Path | None) -> Path:
    return Path(repository).resolve() if repository is not None else default_repository()


def list_models(repository: str | Path | None = None) -> list[str]:
    root = _repo(repository)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list_versions(p.name, root))


def list_versions(name: str, repository: str | Path | None = None) -> list[int]:
    folder = _repo(repository) / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.name.isdigit() and (p / CONFIG_FILE).is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_version(
    root: Path, name: str, version: int, platform: str, write_weights, **config_fields: Any
) -> Path:
    """Write weights + config into a temporary folder, then rename it into place.

    The rename is atomic, so a server or a second notebook never sees a version
    folder with weights but no config.
    """
    if version < 1:
        raise ValueError(f"versions start at 1, got {version}")
    final = root / name / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; versions are immutable, save a new one")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
    try:
        weights = tmp / _WEIGHTS_FILE[platform]
        write_weights(weights)
        config = ModelConfig(name=name, version=version, platform=platform,
                             weights_file=weights.name, weights_sha256=_sha256(weights),
                             **config_fields)
        (tmp / CONFIG_FILE).write_text(config.to_json())
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _process_io_specs(n_features: int) -> dict[str, Any]:
    """Inputs and outputs of every wafer-process classifier, torch or scikit-learn."""
    return {
        "inputs": [TensorSpec("process_features", "FP32", [-1, n_features])],
        "outputs": [TensorSpec("defect_probability", "FP32", [-1])],
        "feature_names": list(wafer_data.FEATURES),
    }


def save_torch_model(model: nn.Module, name: str, version: int,
                     repository: str | Path | None = None, training: dict | None = None) -> Path:
    """Save a course torch module (one with ``architecture``, ``io_specs``, ``probabilities``)."""
    return _write_version(
        _repo(repository), name, version, TORCH_PLATFORM,
        lambda path: torch.save(model.state_dict(), path),
        architecture=model.architecture(), training=training or {}, **model.io_specs(),
    )


def _torch_class(name: str) -> type[nn.Module]:
    """The module class a config names (imported lazily: nothing happens on import)."""
    if name == "WaferMLP":
        return WaferMLP
    if name == "WaferMapCNN":
        from .wafermaps import WaferMapCNN
        return WaferMapCNN
    raise ModelFormatError(f"unknown torch architecture {name!r}")


def save_sklearn_model(estimator: Any, name: str, version: int,
                       repository: str | Path | None = None, training: dict | None = None) -> Path:
    import joblib

    n_features = int(estimator.n_features_in_)
    return _write_version(
        _repo(repository), name, version, SKLEARN_PLATFORM,
        lambda path: joblib.dump(estimator, path),
        architecture={"class": type(estimator).__name__, "params": estimator.get_params()},
        training=training or {}, **_process_io_specs(n_features),
    )


# -- loading -------------------------------------------------------------------------
class LoadedModel:
    """A model ready to serve: ``predict((B, ...) float32) -> (B, ...) float32``."""

    def __init__(self, config: ModelConfig, predict, device: torch.device) -> None:
        self.config = config
        self.device = device
        self._predict = predict

    @property
    def n_features(self) -> int:
        return self.config.inputs[0].shape[1]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(B, ...)`` float32 input as the config's first input says -> ``(B, ...)``."""
        x = np.asarray(x, dtype=np.float32)
        want = self.config.inputs[0].shape
        if x.ndim != len(want) or any(w not in (-1, g) for w, g in zip(want, x.shape, strict=True)):
            shape = ", ".join("batch" if w == -1 else str(w) for w in want)
            raise ValueError(f"{self.config.name} expects input of shape ({shape}), "
                             f"got {x.shape}")
        if x.shape[0] == 0:
            out = self.config.outputs[0].shape[1:]
            return np.empty((0, *out), dtype=np.float32)
        return self._predict(x)

    # The course's classifiers output probabilities; scikit-learn users expect this name.
    predict_proba = predict

    def __repr__(self) -> str:
        return (f"LoadedModel({self.config.name!r}, version={self.config.version}, "
                f"platform={self.config.platform!r}, device={self.device})")


def _resolve_version(root: Path, name: str, version: int | str | None) -> Path:
    versions = list_versions(name, root)
    if not versions:
        raise ModelNotFoundError(
            f"no model named {name!r} in {root}; available: {list_models(root) or 'none'} "
            "(run `make data` to train the course models)"
        )
    if version is None:
        version = versions[-1]
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise ModelNotFoundError(f"version must be a whole number, got {version!r}") from None
    if version not in versions:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version}; available versions: {versions}"
        )
    return root / name / str(version)


def _checked_weights(root: Path, folder: Path, config: ModelConfig) -> Path:
    weights = (folder / config.weights_file).resolve()
    if not weights.is_relative_to(root.resolve()):
        raise ModelFormatError(f"{config.weights_file} points outside the repository {root}")
    if not weights.is_file():
        raise ModelFormatError(f"{folder} lacks its weights file {config.weights_file}")
    if _sha256(weights) != config.weights_sha256:
        raise ModelFormatError(
            f"{weights} does not match the SHA-256 in its config.json: it was changed or "
            "replaced after saving, so it is not loaded"
        )
    return weights


def _load_torch(config: ModelConfig, weights: Path, device: torch.device):
    arch = dict(config.architecture)
    cls = _torch_class(arch.pop("class", ""))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        module = cls(**arch)
        module.load_state_dict(state)
    except Exception as exc:  # a pickle of something else, a truncated file, wrong keys
        raise ModelFormatError(
            f"{weights} is not a {cls.__name__} state dict as its config says ({exc})"
        ) from exc
    module = module.to(device).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        # Assemble on the host; pinned memory lets the copy to the GPU overlap.
        batch = torch.from_numpy(x)
        if device.type == "cuda":
            batch = batch.pin_memory()
        with torch.inference_mode():
            probs = module.probabilities(batch.to(device, non_blocking=True))
        return probs.float().cpu().numpy()

    return predict


def _load_sklearn(config: ModelConfig, weights: Path):
    import joblib

    try:
        estimator = joblib.load(weights)
    except Exception as exc:
        raise ModelFormatError(
            f"{weights} is not a joblib file as its config says ({exc})"
        ) from exc
    if not hasattr(estimator, "predict_proba"):
        raise ModelFormatError(f"{weights} holds a {type(estimator).__name__}, not a classifier")

    def predict(x: np.ndarray) -> np.ndarray:
        return estimator.predict_proba(x)[:, 1].astype(np.float32)

    return predict


def load_model(name: str, version: int | str | None = None,
               repository: str | Path | None = None,
               device: torch.device | str | None = None) -> LoadedModel:
    """Load ``name`` (its latest version unless ``version`` is given) for inference.

    Torch models go to ``device`` (default: ``helpers.device.pick_device()``);
    scikit-learn models always run on the CPU.
    """
    root = _repo(repository)
    folder = _resolve_version(root, name, version)
    try:
        config = ModelConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelFormatError(
            f"{folder / CONFIG_FILE} is not a valid model config ({exc})"
        ) from exc
    if config.platform == PACKAGE_PLATFORM:
        return _load_package_model(config, device)
    weights = _checked_weights(root, folder, config)
    if config.platform == TORCH_PLATFORM:
        device = torch.device(device) if device is not None else pick_device()
        return LoadedModel(config, _load_torch(config, weights, device), device)
    if config.platform == SKLEARN_PLATFORM:
        return LoadedModel(config, _load_sklearn(config, weights), torch.device("cpu"))
    raise ModelFormatError(f"{folder} has unknown platform {config.platform!r}")


def _load_package_model(config: ModelConfig, device) -> Any:
    from .embedder import NoteEmbedder, model_folder

    weights = model_folder() / config.weights_file
    if not weights.is_file() or _sha256(weights) != config.weights_sha256:
        raise ModelFormatError(f"{weights} is missing or differs from the SHA-256 recorded in "
                               f"{config.name}'s config.json; reinstall with make setup")
    return NoteEmbedder(device or pick_device(), version=config.version)


def write_embedder_entry(repository: str | Path | None = None) -> Path:
    """Record the installed MiniLM package as ``note-embedder`` version 1 (no copy)."""
    from .embedder import EMBEDDING_DIM, PACKAGE, model_folder

    root = _repo(repository)
    final = root / "note-embedder" / "1"
    if (final / CONFIG_FILE).is_file():
        return final
    weights = model_folder() / "model.safetensors"
    config = ModelConfig(
        name="note-embedder", version=1, platform=PACKAGE_PLATFORM,
        inputs=[TensorSpec("text", "BYTES", [-1])],
        outputs=[TensorSpec("embedding", "FP32", [-1, EMBEDDING_DIM])],
        weights_file=weights.name, weights_sha256=_sha256(weights),
        architecture={"package": PACKAGE, "model": "all-MiniLM-L6-v2", "pooling": "mean"})
    final.mkdir(parents=True, exist_ok=True)
    tmp = final / (CONFIG_FILE + ".partial")
    tmp.write_text(config.to_json())
    tmp.replace(final / CONFIG_FILE)
    return final
