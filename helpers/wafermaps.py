"""Wafer maps and the defect-pattern CNN.

A wafer map is the grid of dies on one wafer after electrical test: 0 where there
is no die (outside the round wafer), 1 for a good die, 2 for a failing one. The
*spatial pattern* of failing dies tells an engineer what went wrong, so fabs
classify maps into the pattern classes of the public WM-811K data set:

- ``none``: only scattered random failures (the healthy case);
- ``center``: a cluster in the middle (a chuck or gas-flow problem);
- ``donut``: a ring between centre and edge;
- ``edge-ring``: a full ring at the edge (etch non-uniformity);
- ``edge-loc``: part of the edge (a clamp, a handling mark);
- ``loc``: a blob somewhere inside (a particle event);
- ``random``: failures everywhere at a high rate;
- ``scratch``: a thin line (mechanical damage);
- ``near-full``: almost every die fails.

``make_wafer_maps`` synthesises maps of those classes deterministically (WM-811K
itself cannot be downloaded here). ``WaferMapCNN`` classifies them: small, but
convolutional, so it is compute-bound enough that batching pays on a CPU too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .repository import TensorSpec, register_architecture

__all__ = ["PATTERNS", "MAP_SIZE", "make_wafer_maps", "WaferMapCNN", "train_wafer_cnn"]

PATTERNS = ["none", "center", "donut", "edge-ring", "edge-loc", "loc", "random", "scratch",
            "near-full"]
MAP_SIZE = 32  # dies across; WM-811K maps range from ~25 to over 200


def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radius (0 at the centre, 1 at the edge), angle, and the round wafer mask."""
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - c, y - c) / (size / 2)
    return r, np.arctan2(y - c, x - c), r <= 1.0


def _pattern_probability(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Per-die failure probability for one map of pattern ``kind``, ``(size, size)``."""
    r, theta, _ = _grid(size)
    p = np.full((size, size), rng.uniform(0.01, 0.04))  # background random failures
    if kind == "center":
        p[r < rng.uniform(0.2, 0.4)] = rng.uniform(0.6, 0.9)
    elif kind == "donut":
        inner = rng.uniform(0.3, 0.45)
        p[(r > inner) & (r < inner + rng.uniform(0.15, 0.3))] = rng.uniform(0.6, 0.9)
    elif kind == "edge-ring":
        p[r > rng.uniform(0.8, 0.88)] = rng.uniform(0.6, 0.9)
    elif kind == "edge-loc":
        centre, width = rng.uniform(-np.pi, np.pi), rng.uniform(0.4, 1.0)
        arc = np.abs(np.angle(np.exp(1j * (theta - centre)))) < width / 2
        p[arc & (r > rng.uniform(0.7, 0.8))] = rng.uniform(0.6, 0.9)
    elif kind == "loc":
        angle, dist = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 0.6)
        cx, cy = dist * np.cos(angle), dist * np.sin(angle)
        x, y = r * np.cos(theta), r * np.sin(theta)
        p[np.hypot(x - cx, y - cy) < rng.uniform(0.12, 0.22)] = rng.uniform(0.6, 0.9)
    elif kind == "random":
        p[:] = rng.uniform(0.15, 0.35)
    elif kind == "scratch":
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.4, 0.4)
        x, y = r * np.cos(theta), r * np.sin(theta)
        distance = np.abs(x * np.sin(angle) - y * np.cos(angle) - offset)
        along = x * np.cos(angle) + y * np.sin(angle)
        start = rng.uniform(-0.8, 0.0)
        line = (distance < 1.2 / size) & (along > start) & (along < start + rng.uniform(0.6, 1.2))
        p[line] = rng.uniform(0.8, 0.95)
    elif kind == "near-full":
        p[:] = rng.uniform(0.8, 0.95)
    elif kind != "none":
        raise ValueError(f"unknown pattern {kind!r}; patterns: {PATTERNS}")
    return p


def make_wafer_maps(n: int, size: int = MAP_SIZE, seed: int = 0,
                    patterns: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` maps with classes drawn evenly from ``patterns``: ``(maps, labels)``.

    ``maps`` is ``(n, 1, size, size)`` float32 with 0 (no die), 0.5 (good), 1 (failing):
    the 0/1/2 die codes scaled to [0, 1]. ``labels`` are indices into ``PATTERNS``.
    """
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    patterns = patterns or PATTERNS
    rng = np.random.default_rng(seed)
    _, _, mask = _grid(size)
    labels = np.array([PATTERNS.index(patterns[i % len(patterns)]) for i in range(n)])
    rng.shuffle(labels)
    maps = np.zeros((n, 1, size, size), dtype=np.float32)
    for i, label in enumerate(labels):
        failing = rng.random((size, size)) < _pattern_probability(PATTERNS[label], rng, size)
        maps[i, 0] = np.where(mask, np.where(failing, 1.0, 0.5), 0.0)
    return maps, labels


@register_architecture
class WaferMapCNN(nn.Module):
    """Three conv blocks and a linear head: ``(B, 1, S, S)`` map -> ``(B, 9)`` class logits."""

    def __init__(self, size: int = MAP_SIZE, channels: int = 32, n_classes: int = len(PATTERNS)):
        super().__init__()
        self.size, self.channels, self.n_classes = size, channels, n_classes

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(block(1, channels), block(channels, 2 * channels),
                                      block(2 * channels, 2 * channels))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(2 * channels, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, 1, S, S) -> (B, n_classes)

    def architecture(self) -> dict:
        return {"class": "WaferMapCNN", "size": self.size, "channels": self.channels,
                "n_classes": self.n_classes}

    def io_specs(self) -> dict:
        return {"inputs": [TensorSpec("wafer_map", "FP32", [-1, 1, self.size, self.size])],
                "outputs": [TensorSpec("class_probabilities", "FP32", [-1, self.n_classes])],
                "feature_names": list(PATTERNS)}

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x), dim=-1)  # (B, n_classes)


def train_wafer_cnn(n_maps: int = 3_600, epochs: int = 5, seed: int = 0,
                    batch_size: int = 64) -> tuple[WaferMapCNN, dict]:
    """Train on synthesised maps; returns the model and its validation accuracy."""
    torch.manual_seed(seed)
    maps, labels = make_wafer_maps(n_maps, seed=seed)
    split = int(0.85 * n_maps)
    x, y = torch.from_numpy(maps), torch.from_numpy(labels)
    model = WaferMapCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(split, generator=generator).split(batch_size):
            optimiser.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimiser.step()
    model.eval()
    with torch.inference_mode():
        predicted = model(x[split:]).argmax(dim=-1)
    accuracy = float((predicted == y[split:]).float().mean())
    return model, {"maps": n_maps, "epochs": epochs, "seed": seed,
                   "val_accuracy": round(accuracy, 4), "data": "helpers.wafermaps.make_wafer_maps"}
