"""Peak memory of a block of code, measured two ways.

- ``traced_peak_bytes``: the peak of Python and NumPy allocations made inside the
  block, from ``tracemalloc`` (NumPy reports its array buffers to it). It is
  deterministic, so a test can compare two ways of doing the same job.
- ``rss_peak_bytes``: how far the whole process's resident memory rose above
  where it started, sampled every few milliseconds by a thread. It also sees
  memory that tracemalloc cannot (Arrow buffers, torch tensors), at the cost of
  being noisy.
"""

from __future__ import annotations

import threading
import tracemalloc
from dataclasses import dataclass

import psutil

__all__ = ["MemoryPeak", "measure_peak_memory"]


@dataclass
class MemoryPeak:
    traced_peak_bytes: int = 0
    rss_peak_bytes: int = 0

    @property
    def traced_peak_mb(self) -> float:
        return self.traced_peak_bytes / 2**20

    @property
    def rss_peak_mb(self) -> float:
        return self.rss_peak_bytes / 2**20


class measure_peak_memory:  # noqa: N801 - used as a context manager, reads like a function
    """``with measure_peak_memory() as peak: ...`` then read ``peak.traced_peak_mb``."""

    def __init__(self, sample_interval_s: float = 0.005) -> None:
        self.peak = MemoryPeak()
        self._interval = sample_interval_s
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._was_tracing = False

    def _sample(self, baseline: int) -> None:
        while not self._stop.wait(self._interval):
            rise = self._process.memory_info().rss - baseline
            self.peak.rss_peak_bytes = max(self.peak.rss_peak_bytes, rise)

    def __enter__(self) -> MemoryPeak:
        self._was_tracing = tracemalloc.is_tracing()
        if not self._was_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._base_traced = tracemalloc.get_traced_memory()[0]
        baseline = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, args=(baseline,), daemon=True)
        self._thread.start()
        return self.peak

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak.traced_peak_bytes = max(0, tracemalloc.get_traced_memory()[1] - self._base_traced)
        if not self._was_tracing:
            tracemalloc.stop()
