"""Measuring compressed models alike: size, latency and quality, against a device budget.

A compression technique trades three numbers, and on a given device only measuring
tells the trade:

- **size** on disk, and zipped (what an over-the-air update ships: pruned zeros compress,
  a dense file does not);
- **latency** at batch 1 (one wafer at the tool) and batch 32 (a lot), timed in
  interleaved rounds — every candidate a little, then every candidate again — so a
  machine that slows down halfway (another process, a hot CPU) slows all of them alike,
  and the median of the rounds is reported;
- **quality**: the classifier's accuracy on maps it never saw; the embedder's cosine to
  the float32 embeddings *and* its retrieval agreement, because a cosine of 0.95 sounds
  close while the top-5 search results change (``embedding_quality``).

``EdgeBudget`` states what a device accepts and says which limits a candidate breaks.
"""

from __future__ import annotations

import io
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Candidate", "file_size", "module_size", "interleaved_latency_ms", "accuracy",
           "retrieval_agreement", "embedding_quality", "measure", "EdgeBudget"]


@dataclass
class Candidate:
    """One way to run the model: its name, how it predicts a batch, and what it ships.

    ``size`` is ``(bytes, zipped bytes or None)``: from ``file_size(path)`` for an ONNX
    file, ``module_size(module)`` for a torch module.
    """

    name: str
    predict: Callable[[Any], Any]
    size: tuple[int, int | None]
    note: str = ""
    extra: dict = field(default_factory=dict)


def _zipped(data: bytes) -> int:
    return len(zlib.compress(data, 9))


def file_size(path: str | Path, zipped: bool = True) -> tuple[int, int | None]:
    """``(bytes, zipped bytes)``; ``zipped=False`` skips the zipping (seconds for 90 MB)."""
    data = Path(path).read_bytes()
    return len(data), _zipped(data) if zipped else None


def module_size(module) -> tuple[int, int]:
    """The bytes of a torch module's saved state (``torch.save``, what a checkpoint ships)."""
    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell(), _zipped(buffer.getvalue())


def interleaved_latency_ms(calls: dict[str, Callable[[], Any]], rounds: int = 5,
                           seconds_per_round: float = 0.05) -> dict[str, float]:
    """The median, over ``rounds``, of each call's mean time in ms within a round.

    Every call runs once untimed first (a warm-up: lazy initialisation, caches). Each
    round visits every call, starting one further along each time, so none always runs
    first or last.
    """
    names = list(calls)
    for name in names:
        calls[name]()
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            call, n = calls[name], 0
            start = time.perf_counter()
            while True:
                call()
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds_per_round:
                    break
            per_round[name].append(1000 * elapsed / n)
    return {name: float(np.median(v)) for name, v in per_round.items()}


def accuracy(predict: Callable[[np.ndarray], np.ndarray], maps: np.ndarray,
             labels: np.ndarray, batch_size: int = 256) -> float:
    """Share of maps whose highest-scoring class is the label."""
    scores = np.concatenate([np.asarray(predict(maps[i:i + batch_size]))
                             for i in range(0, len(maps), batch_size)])
    return float((scores.argmax(axis=1) == labels).mean())


def retrieval_agreement(embeddings: np.ndarray, reference: np.ndarray, k: int = 5,
                        n_queries: int = 100) -> float:
    """Mean overlap of the top-``k`` search results, compressed vs reference (1.0: same).

    The first ``n_queries`` notes search all the notes (themselves excluded) by cosine;
    for each query, the share of the reference's top ``k`` that the compressed
    embeddings also put in their top ``k``.
    """
    if len(embeddings) != len(reference) or len(reference) <= k:
        raise ValueError(f"need as many embeddings as reference rows, more than k={k}; got "
                         f"{len(embeddings)} and {len(reference)}")
    n = min(n_queries, len(reference))

    def top_k(e: np.ndarray) -> np.ndarray:
        scores = e[:n] @ e.T                              # (n, N) cosines of unit vectors
        scores[np.arange(n), np.arange(n)] = -np.inf     # a note does not find itself
        return np.argpartition(-scores, k, axis=1)[:, :k]

    ours, theirs = top_k(embeddings), top_k(reference)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs, strict=True)]))


def embedding_quality(embeddings: np.ndarray, reference: np.ndarray, k: int = 5,
                      n_queries: int = 100) -> dict[str, float]:
    """Cosine to the reference (mean and worst note) and top-``k`` retrieval agreement."""
    cosine = np.sum(embeddings * reference, axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1))
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "agreement": retrieval_agreement(embeddings, reference, k, n_queries)}


def measure(candidates: list[Candidate], batch_1: Any, batch_32: Any,
            quality: Callable[[Candidate], dict[str, float]], rounds: int = 5,
            seconds_per_round: float = 0.05) -> pd.DataFrame:
    """One row per candidate: size, zipped size, latency at batch 1 and 32, quality.

    The first candidate is the baseline: ``size_ratio`` and the ``speedup`` columns are
    relative to it. Latency is timed in interleaved rounds (``interleaved_latency_ms``).
    """
    if not candidates:
        raise ValueError("nothing to measure")
    calls = {}
    for c in candidates:
        calls[(c.name, 1)] = lambda c=c: c.predict(batch_1)
        calls[(c.name, 32)] = lambda c=c: c.predict(batch_32)
    ms = interleaved_latency_ms(calls, rounds, seconds_per_round)
    rows = []
    for c in candidates:
        zipped = c.size[1] / 1000 if c.size[1] is not None else float("nan")
        rows.append({"technique": c.name, "size_kb": c.size[0] / 1000, "zipped_kb": zipped,
                     "ms_b1": ms[c.name, 1], "ms_b32": ms[c.name, 32], **quality(c),
                     "note": c.note})
    table = pd.DataFrame(rows).set_index("technique")
    base = table.iloc[0]
    table.insert(2, "size_ratio", table.size_kb / base.size_kb)
    table["speedup_b1"] = base.ms_b1 / table.ms_b1
    table["speedup_b32"] = base.ms_b32 / table.ms_b32
    return table


@dataclass(frozen=True)
class EdgeBudget:
    """What a device accepts, relative to the float32 baseline where it says so.

    ``max_kb``: the file (the zipped file when ``zipped``); ``max_latency_ratio``: batch-1
    latency over the baseline's; ``max_quality_drop``: the baseline's ``quality`` column
    minus the candidate's; ``min_quality``: an absolute floor on that column.
    """

    name: str
    quality: str = "accuracy"
    max_kb: float | None = None
    max_size_ratio: float | None = None
    max_latency_ratio: float | None = None
    max_quality_drop: float | None = None
    min_quality: float | None = None
    zipped: bool = False

    def failures(self, row: pd.Series, baseline: pd.Series) -> list[str]:
        """Each limit ``row`` breaks, in words; empty when it fits the device."""
        out = []
        kb = row.zipped_kb if self.zipped else row.size_kb
        if self.max_kb is not None and kb > self.max_kb:
            out.append(f"{kb:.0f} KB > {self.max_kb:.0f} KB")
        if self.max_size_ratio is not None and row.size_kb > self.max_size_ratio * baseline.size_kb:
            out.append(f"size {row.size_kb / baseline.size_kb:.0%} of fp32 > "
                       f"{self.max_size_ratio:.0%}")
        ratio = row.ms_b1 / baseline.ms_b1
        if self.max_latency_ratio is not None and ratio > self.max_latency_ratio:
            out.append(f"batch-1 latency {ratio:.2f}x fp32 > {self.max_latency_ratio:.2f}x")
        drop = baseline[self.quality] - row[self.quality]
        if self.max_quality_drop is not None and drop > self.max_quality_drop:
            out.append(f"{self.quality} {drop:.3f} below fp32 (limit {self.max_quality_drop})")
        if self.min_quality is not None and row[self.quality] < self.min_quality:
            out.append(f"{self.quality} {row[self.quality]:.3f} < {self.min_quality}")
        return out

    def check(self, table: pd.DataFrame) -> pd.Series:
        """For every row of a ``measure`` table: "fits" or the limits it breaks."""
        base = table.iloc[0]
        return pd.Series({name: "; ".join(self.failures(row, base)) or "fits"
                          for name, row in table.iterrows()}, name=self.name)
