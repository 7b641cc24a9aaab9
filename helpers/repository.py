"""The model repository: its layout on disk, what a model's config says, and safe loading.

Layout (the one Triton and KServe use)::

    data/models/<name>/<version>/config.json         inputs, outputs, dtype, shape, platform
    data/models/<name>/<version>/model.safetensors   torch weights (tensors only), or
    data/models/<name>/<version>/model.skops         a scikit-learn estimator (skops format)

**What the repository trusts.** A model folder is *data*, never code: anyone who can
drop a folder into the repository, or ask the server to load one, must not be able
to run code on the server. So weights are stored only in formats whose loading
cannot execute code:

- torch weights as safetensors: a header and raw tensor bytes, nothing else;
- scikit-learn estimators with skops, which rebuilds only types on a trusted list
  (scikit-learn's own, plus ``TRUSTED_TYPES`` and whatever the operator names) and
  refuses anything else *before* building it;
- pickles (joblib, ``torch.save``) are never loaded; a folder in one of those retired
  formats gets an error that says how to retrain it.

The SHA-256 in ``config.json`` guards against corruption and half-copied folders,
not against an attacker (who can rewrite the config too); the formats are the
security boundary. Weights must lie inside the repository, and error messages name
files relative to it, so an HTTP error never shows a host path.

Model kinds register how to load them (``register_platform``) and their torch
module classes (``register_architecture``); this module imports none of them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .settings import data_dir

__all__ = [
    "ModelNotFoundError",
    "ModelFormatError",
    "TensorSpec",
    "ModelConfig",
    "LoadedModel",
    "LoadContext",
    "CONFIG_FILE",
    "TORCH_PLATFORM",
    "SKLEARN_PLATFORM",
    "TRUSTED_TYPES",
    "default_repository",
    "repository_root",
    "list_models",
    "list_versions",
    "sha256_of",
    "write_version",
    "register_platform",
    "register_architecture",
    "save_torch_model",
    "save_sklearn_model",
    "load_model",
]

CONFIG_FILE = "config.json"
TORCH_PLATFORM = "pytorch_safetensors"
SKLEARN_PLATFORM = "sklearn_skops"
# Formats earlier versions of the course wrote: pickles, which loading would execute.
RETIRED_PLATFORMS = {"pytorch_state_dict": "a torch pickle (model.pt)",
                     "sklearn_joblib": "a joblib pickle (model.joblib)"}
# Types skops does not trust by default but the course's forests need: plain data
# holders with no behaviour on load. Operators add their own with --trusted-types.
TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)


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


class LoadedModel:
    """A model ready to serve: ``predict((B, ...) float32) -> (B, ...) float32``.

    ``module`` is the torch module of a torch model (None otherwise): generation steps it
    token by token, which one ``predict`` call does not cover.
    """

    module: Any = None

    def __init__(self, config: ModelConfig, predict: Callable[[np.ndarray], np.ndarray],
                 device: Any) -> None:
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


# -- the layout ----------------------------------------------------------------------
def default_repository() -> Path:
    return data_dir() / "models"


def repository_root(repository: str | Path | None = None) -> Path:
    """The repository folder, absolute: ``repository``, or ``data/models``."""
    return Path(repository).resolve() if repository is not None else default_repository()




def list_models(repository: str | Path | None = None) -> list[str]:
    root = repository_root(repository)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list_versions(p.name, root))


def list_versions(name: str, repository: str | Path | None = None) -> list[int]:
    folder = repository_root(repository) / name
    if not _is_plain_name(name) or not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.name.isascii() and p.name.isdigit() and (p / CONFIG_FILE).is_file())


def _is_plain_name(name: str) -> bool:
    """A model name is one folder: no separators, no '..' (it comes from URLs)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name \
        and "\x00" not in name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_version(root: str | Path | None, name: str, version: int, platform: str,
                  weights_file: str, write_weights: Callable[[Path], None],
                  **config_fields: Any) -> Path:
    """Write weights + config into a temporary folder, then rename it into place.

    The rename is atomic, so a server or a second notebook never sees a version
    folder with weights but no config.
    """
    if version < 1:
        raise ValueError(f"versions start at 1, got {version}")
    if not _is_plain_name(name):
        raise ValueError(f"model names are one folder name, got {name!r}")
    final = repository_root(root) / name / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; versions are immutable, save a new one")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
    try:
        weights = tmp / weights_file
        write_weights(weights)
        config = ModelConfig(name=name, version=version, platform=platform,
                             weights_file=weights_file, weights_sha256=sha256_of(weights),
                             **config_fields)
        (tmp / CONFIG_FILE).write_text(config.to_json())
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# -- what model kinds register ---------------------------------------------------------
@dataclass(frozen=True)
class LoadContext:
    """Everything a platform loader gets: the config, where its files are, the device."""

    config: ModelConfig
    root: Path
    folder: Path
    device: Any = None  # None: the loader picks (helpers.device.pick_device())
    trusted_types: tuple[str, ...] = ()

    def label(self, path: Path) -> str:
        """``path`` relative to the repository: what error messages show, never host paths."""
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return path.name

    def weights(self) -> Path:
        """The config's weights file, checked: inside the repository, and its hash matches."""
        config = self.config
        weights = (self.folder / config.weights_file).resolve()
        if not weights.is_relative_to(self.root):
            raise ModelFormatError(f"{config.name} v{config.version}: weights file "
                                   f"{config.weights_file!r} points outside the repository")
        if not weights.is_file():
            raise ModelFormatError(f"{self.label(self.folder)} lacks its weights file "
                                   f"{config.weights_file}")
        if sha256_of(weights) != config.weights_sha256:
            raise ModelFormatError(
                f"{self.label(weights)} does not match the SHA-256 in its config.json: it was "
                "changed or replaced after saving (or is half-copied), so it is not loaded")
        return weights


Loader = Callable[[LoadContext], Any]
_PLATFORMS: dict[str, Loader] = {}
_ARCHITECTURES: dict[str, type] = {}


def register_platform(platform: str, loader: Loader) -> None:
    """``loader(context) -> model`` for every config whose ``platform`` is this one."""
    _PLATFORMS[platform] = loader


def register_architecture(cls: type) -> type:
    """Class decorator: a torch module the repository may rebuild by its class name.

    Such a module has ``architecture()`` (its constructor's arguments plus ``class``),
    ``io_specs()`` (inputs, outputs, feature names) and ``probabilities(x)``.
    """
    _ARCHITECTURES[cls.__name__] = cls
    return cls


# -- torch: safetensors -----------------------------------------------------------------
def save_torch_model(model: Any, name: str, version: int,
                     repository: str | Path | None = None, training: dict | None = None) -> Path:
    """Save a registered torch module's weights as safetensors, with its config."""
    from safetensors.torch import save_file

    if type(model).__name__ not in _ARCHITECTURES:
        raise ValueError(f"{type(model).__name__} is not a registered architecture "
                         "(decorate it with @register_architecture)")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_version(repository, name, version, TORCH_PLATFORM, "model.safetensors",
                         lambda path: save_file(state, str(path)),
                         architecture=model.architecture(), training=training or {},
                         **model.io_specs())


def _load_torch(context: LoadContext) -> LoadedModel:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .device import pick_device

    arch = dict(context.config.architecture)
    name = arch.pop("class", "")
    cls = _ARCHITECTURES.get(name)
    if cls is None:
        raise ModelFormatError(f"unknown torch architecture {name!r}; known: "
                               f"{sorted(_ARCHITECTURES)} (import helpers.models to register "
                               "the course's)")
    weights = context.weights()
    try:
        # Build the module on the "meta" device first (shapes, no memory) and compare it
        # with the file's header: a config asking for a huge architecture is refused
        # before anything is allocated, and a file of another model before it is read.
        with torch.device("meta"):
            expected = {k: list(v.shape) for k, v in cls(**arch).state_dict().items()}
        with safe_open(str(weights), "pt") as f:  # the header only: nothing can run
            found = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        if found != expected:
            wrong = sorted(set(found) ^ set(expected)) or \
                [k for k in expected if found[k] != expected[k]]
            raise ModelFormatError(f"tensors {wrong[:3]} do not match the architecture")
        module = cls(**arch)
        module.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # not safetensors, wrong keys or shapes, bad arguments
        raise ModelFormatError(f"{context.label(weights)} is not a {cls.__name__} state dict as "
                               f"its config says ({type(exc).__name__}: {exc})") from None
    device = torch.device(context.device) if context.device is not None else pick_device()
    module = module.to(device).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        # Assemble on the host; pinned memory lets the copy to the GPU overlap.
        batch = torch.from_numpy(x)
        if device.type == "cuda":
            batch = batch.pin_memory()
        with torch.inference_mode():
            probs = module.probabilities(batch.to(device, non_blocking=True))
        return probs.float().cpu().numpy()

    loaded = LoadedModel(context.config, predict, device)
    loaded.module = module  # the torch module itself, for what predict does not cover
    return loaded


# -- scikit-learn: skops ------------------------------------------------------------------
def save_sklearn_model(estimator: Any, name: str, version: int,
                       repository: str | Path | None = None, training: dict | None = None,
                       io_specs: dict | None = None) -> Path:
    """Save a scikit-learn classifier in skops format (``io_specs``: default wafer-process)."""
    import skops.io

    if io_specs is None:
        from .data import FEATURES
        n = int(estimator.n_features_in_)
        io_specs = {"inputs": [TensorSpec("process_features", "FP32", [-1, n])],
                    "outputs": [TensorSpec("defect_probability", "FP32", [-1])],
                    "feature_names": list(FEATURES)[:n]}
    return write_version(repository, name, version, SKLEARN_PLATFORM, "model.skops",
                         lambda path: skops.io.dump(estimator, path),
                         architecture={"class": type(estimator).__name__,
                                       "params": _jsonable(estimator.get_params())},
                         training=training or {}, **io_specs)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
            for k, v in params.items()}


def _load_sklearn(context: LoadContext) -> LoadedModel:
    import skops.io

    weights = context.weights()
    trusted = [*TRUSTED_TYPES, *context.trusted_types]
    try:
        untrusted = [t for t in skops.io.get_untrusted_types(file=weights) if t not in trusted]
    except Exception as exc:
        raise ModelFormatError(f"{context.label(weights)} is not a skops file as its config "
                               f"says ({type(exc).__name__})") from None
    if untrusted:  # refused before anything is built
        raise ModelFormatError(f"{context.label(weights)} holds types this server does not "
                               f"trust: {untrusted} (an operator can trust them with "
                               "--trusted-types)")
    estimator = skops.io.load(weights, trusted=trusted)
    if not hasattr(estimator, "predict_proba"):
        raise ModelFormatError(f"{context.label(weights)} holds a {type(estimator).__name__}, "
                               "not a classifier")

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(estimator.predict_proba(x))[:, 1].astype(np.float32)

    import torch
    return LoadedModel(context.config, predict, torch.device("cpu"))


register_platform(TORCH_PLATFORM, _load_torch)
register_platform(SKLEARN_PLATFORM, _load_sklearn)


# -- loading --------------------------------------------------------------------------
def _resolve_version(root: Path, name: str, version: int | str | None) -> Path:
    versions = list_versions(name, root)
    if not versions:
        raise ModelNotFoundError(
            f"no model named {name!r} in the repository; available: "
            f"{list_models(root) or 'none'} (run `make data` to train the course models)")
    if version is None:
        version = versions[-1]
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise ModelNotFoundError(f"version must be a whole number, got {version!r}") from None
    if version not in versions:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version}; available versions: {versions}")
    return root / name / str(version)


def load_model(name: str, version: int | str | None = None,
               repository: str | Path | None = None, device: Any = None,
               trusted_types: Iterable[str] = ()) -> Any:
    """Load ``name`` (its latest version unless ``version`` is given) for inference.

    Torch models go to ``device`` (default: ``helpers.device.pick_device()``);
    scikit-learn models always run on the CPU. ``trusted_types`` names extra Python
    types a skops file may contain (the operator's decision, never the folder's).
    """
    root = repository_root(repository)
    folder = _resolve_version(root, name, version)
    try:
        config = ModelConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelFormatError(f"{name}/{folder.name}/{CONFIG_FILE} is not a valid model config "
                               f"({type(exc).__name__}: {exc})") from None
    if config.name != name or str(config.version) != folder.name:
        raise ModelFormatError(f"{name}/{folder.name}/{CONFIG_FILE} says it is {config.name!r} "
                               f"version {config.version}: a folder copied without its config?")
    if config.platform in RETIRED_PLATFORMS:
        raise ModelFormatError(
            f"{name} v{config.version} is stored as {RETIRED_PLATFORMS[config.platform]}, which "
            "could run code when loaded; retrain it (python -m helpers.training retrains "
            "retired formats)")
    loader = _PLATFORMS.get(config.platform)
    if loader is None:
        raise ModelFormatError(f"{name} v{config.version} has unknown platform "
                               f"{config.platform!r}; known: {sorted(_PLATFORMS)}")
    return loader(LoadContext(config, root, folder, device, tuple(trusted_types)))
