"""Training the course models into the model repository (``make data``).

    python -m helpers.training            # train what is missing
    python -m helpers.training --force    # retrain and replace
    python -m helpers.training --list     # what the repository holds

Every model is trained on the course's synthetic data, on this machine, with a
fixed seed: ``wafer-forest`` v1, ``wafer-mlp`` v1 and v2 (for A/B experiments),
``wafer-cnn`` v1, and ``tool-log-lm`` v1 (the small GPT of lesson 05, about two minutes on two
cores); ``note-embedder`` v1 is recorded from its installed package. The CNN and the
embedder are then exported to ONNX into ``data/onnx/`` (lesson 08 compresses them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data as wafer_data
from .models import WaferMLP, write_embedder_entry
from .repository import (
    CONFIG_FILE,
    RETIRED_PLATFORMS,
    list_models,
    list_versions,
    repository_root,
    save_sklearn_model,
    save_torch_model,
)

__all__ = ["train_forest", "train_mlp", "train_wafer_models", "ensure_wafer_models",
           "ensure_tool_log_lm", "ensure_onnx_exports", "main"]

WAFER_MODELS = ("note-embedder", "wafer-forest", "wafer-mlp", "wafer-cnn")


def _evaluate(predict, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    p = predict(x_val)
    return {"val_accuracy": round(float(((p > 0.5) == y_val).mean()), 4),
            "val_roc_auc": round(float(roc_auc_score(y_val, p)), 4)}


def train_forest(x: np.ndarray, y: np.ndarray, seed: int = 0):
    from sklearn.ensemble import RandomForestClassifier

    # Shallow-ish trees and a leaf floor: the label is noisy, deep trees only memorise it.
    forest = RandomForestClassifier(n_estimators=60, max_depth=10, min_samples_leaf=20,
                                    n_jobs=1, random_state=seed)
    return forest.fit(x, y)


def train_mlp(x: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 8,
              hidden: int = 64, batch_size: int = 256) -> WaferMLP:
    torch.manual_seed(seed)
    model = WaferMLP(x.shape[1], hidden)
    model.mean.copy_(torch.from_numpy(x.mean(axis=0)))
    model.std.copy_(torch.from_numpy(x.std(axis=0) + 1e-6))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=generator).split(batch_size):
            optimiser.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            optimiser.step()
    return model.eval()


def train_wafer_models(repository: str | Path | None = None, n_rows: int | None = None,
                       seed: int = 0, force: bool = False,
                       names: tuple[str, ...] | None = None,
                       progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Train ``wafer-forest`` v1, ``wafer-mlp`` v1 and v2, ``wafer-cnn`` v1 and
    ``tool-log-lm`` v1.

    Existing versions are kept unless ``force``; ``names`` limits which models are
    trained (default: all). Returns ``{"name/version": folder}``.
    """
    root = repository_root(repository)
    # Same size in every profile: CI and students grade against the same models.
    n_rows = n_rows or 60_000
    records = wafer_data.make_wafer_records(n_rows, seed=seed)
    x, y = wafer_data.feature_matrix(records), records[wafer_data.LABEL].to_numpy()
    split = int(0.8 * len(x))
    x_train, y_train, x_val, y_val = x[:split], y[:split], x[split:], y[split:]
    info = {"rows": n_rows, "seed": seed, "data": "helpers.data.make_wafer_records"}

    # Two MLP versions for A/B experiments: v2 is wider and trained longer.
    trainers = {
        ("wafer-forest", 1): lambda: _save_forest(root, x_train, y_train, x_val, y_val, seed, info),
        ("wafer-mlp", 1): lambda: _save_mlp(root, 1, x_train, y_train, x_val, y_val, seed, info,
                                            hidden=64, epochs=8),
        ("wafer-mlp", 2): lambda: _save_mlp(root, 2, x_train, y_train, x_val, y_val, seed, info,
                                            hidden=128, epochs=12),
        ("wafer-cnn", 1): lambda: _save_cnn(root, seed),
        ("tool-log-lm", 1): lambda: _save_tool_log_lm(root, seed, progress),
    }
    written = {}
    if names is None or "note-embedder" in names:
        written["note-embedder/1"] = write_embedder_entry(root)
    for (name, version), train in trainers.items():
        if names is not None and name not in names:
            continue
        label = f"{name}/{version}"
        if version in list_versions(name, root):
            if not force and not _retired(root / name / str(version)):
                written[label] = root / name / str(version)
                continue
            shutil.rmtree(root / name / str(version))
        if progress:
            progress(f"training {label} ...")
        start = time.perf_counter()
        written[label] = train()
        if progress:
            progress(f"trained {label} in {time.perf_counter() - start:.0f} s")
    return written


def _retired(folder: Path) -> bool:
    """A version saved in a format the repository no longer loads (a pickle): retrain it."""
    try:
        return json.loads((folder / CONFIG_FILE).read_text())["platform"] in RETIRED_PLATFORMS
    except (OSError, ValueError, KeyError):
        return False


def _save_forest(root, x_train, y_train, x_val, y_val, seed, info) -> Path:
    start = time.perf_counter()
    forest = train_forest(x_train, y_train, seed)
    metrics = _evaluate(lambda v: forest.predict_proba(v)[:, 1], x_val, y_val)
    return save_sklearn_model(forest, "wafer-forest", 1, root, {
        **info, **metrics, "train_seconds": round(time.perf_counter() - start, 2)})


def _save_mlp(root, version, x_train, y_train, x_val, y_val, seed, info, hidden, epochs) -> Path:
    start = time.perf_counter()
    mlp = train_mlp(x_train, y_train, seed, epochs=epochs, hidden=hidden)
    with torch.inference_mode():
        metrics = _evaluate(lambda v: torch.sigmoid(mlp(torch.from_numpy(v))).numpy(), x_val, y_val)
    return save_torch_model(mlp, "wafer-mlp", version, root, {
        **info, **metrics, "train_seconds": round(time.perf_counter() - start, 2)})


def _save_cnn(root, seed) -> Path:
    from .wafermaps import train_wafer_cnn

    start = time.perf_counter()
    cnn, info = train_wafer_cnn(seed=seed)
    return save_torch_model(cnn, "wafer-cnn", 1, root,
                            {**info, "train_seconds": round(time.perf_counter() - start, 2)})


def _save_tool_log_lm(root, seed, progress) -> Path:
    from .gpt import parse_rate, sample_lines, train_tool_log_lm

    def report(step: int, loss: float) -> None:
        if progress:
            progress(f"  tool-log-lm step {step}: loss {loss:.3f}")

    model, info = train_tool_log_lm(seed=seed, progress=report)
    info["parse_rate_t1"] = round(parse_rate(sample_lines(model, 16, seed=seed)), 3)
    return save_torch_model(model, "tool-log-lm", 1, root, info)


def ensure_wafer_models(repository: str | Path | None = None) -> dict[str, Path]:
    """Train the wafer models only if they are missing (what lessons 01-04 call first)."""
    return train_wafer_models(repository, names=WAFER_MODELS)


def ensure_tool_log_lm(repository: str | Path | None = None) -> dict[str, Path]:
    """Train the tool-log language model only if it is missing (lesson 05)."""
    return train_wafer_models(repository, names=("tool-log-lm",))


def ensure_onnx_exports(repository: str | Path | None = None) -> dict[str, Path]:
    """The ONNX exports of lesson 08, made only if missing (the wafer models first)."""
    from .onnx_models import export_course_models

    ensure_wafer_models(repository)
    return export_course_models(repository)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helpers.training",
                                     description="Train the course models into the repository.")
    parser.add_argument("--force", action="store_true", help="retrain and replace the versions")
    parser.add_argument("--repository", default=None, help="default: data/models")
    parser.add_argument("--list", action="store_true", help="only list models and versions")
    args = parser.parse_args(argv)
    if args.list:
        for name in list_models(args.repository):
            print(name, list_versions(name, args.repository))
        return
    start = time.perf_counter()
    trained = train_wafer_models(args.repository, force=args.force,
                                 progress=lambda line: print(line, flush=True))
    for label, folder in trained.items():
        config = json.loads((folder / CONFIG_FILE).read_text())
        print(f"{label}: {folder}  {config['training']}")
    from .onnx_models import export_course_models

    for name, path in export_course_models(args.repository, force=args.force,
                                           progress=lambda line: print(line, flush=True)).items():
        print(f"{name} as ONNX: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"the model repository is ready ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
