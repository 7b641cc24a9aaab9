"""Peak memory of a block of code, measured three ways.

- ``traced_peak_bytes``: the peak of Python and NumPy allocations made inside the
  block, from ``tracemalloc`` (NumPy reports its array buffers to it).
- ``arrow_peak_bytes``: the peak of Apache Arrow allocations inside the block
  (Parquet reads, Arrow tables, pandas string columns), counted by a fresh Arrow
  memory pool installed as the default for the block.
- ``rss_peak_bytes``: how far the whole process's resident memory rose above
  where it started, sampled every few milliseconds by a thread. It sees
  everything, torch tensors included, at the cost of being noisy.

The first two are deterministic: run the same code twice, get the same numbers.
Their sum, ``peak_bytes``, is what a test compares between two ways of doing a
job (it can only overstate the true peak, since the two peaks may not coincide).
"""

from __future__ import annotations

import threading
import tracemalloc
from dataclasses import dataclass

import psutil
import pyarrow as pa

__all__ = ["MemoryPeak", "measure_peak_memory"]

# Every Arrow buffer keeps a raw pointer to the pool it came from, and buffers
# can outlive the measured block (a DataFrame you keep). Freeing a pool with
# live buffers crashes the process, so the small pool objects are kept for good.
_ARROW_POOLS: list[pa.MemoryPool] = []


@dataclass
class MemoryPeak:
    traced_peak_bytes: int = 0
    arrow_peak_bytes: int = 0
    rss_peak_bytes: int = 0

    @property
    def peak_bytes(self) -> int:
        return self.traced_peak_bytes + self.arrow_peak_bytes

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def rss_peak_mb(self) -> float:
        return self.rss_peak_bytes / 2**20

    def __str__(self) -> str:
        return (f"peak {self.peak_mb:.1f} MiB (python/numpy {self.traced_peak_bytes / 2**20:.1f}"
                f" + arrow {self.arrow_peak_bytes / 2**20:.1f}); process RSS rose "
                f"{self.rss_peak_mb:.1f} MiB")


class measure_peak_memory:  # noqa: N801 - used as a context manager, reads like a function
    """``with measure_peak_memory() as peak: ...`` then read ``peak.peak_mb``."""

    def __init__(self, sample_interval_s: float = 0.002) -> None:
        self.peak = MemoryPeak()
        self._interval = sample_interval_s
        self._stop = threading.Event()
        self._process = psutil.Process()

    def _sample_rss(self, baseline: int) -> None:
        while not self._stop.wait(self._interval):
            rise = self._process.memory_info().rss - baseline
            self.peak.rss_peak_bytes = max(self.peak.rss_peak_bytes, rise)

    def __enter__(self) -> MemoryPeak:
        self._was_tracing = tracemalloc.is_tracing()
        if not self._was_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._traced_base = tracemalloc.get_traced_memory()[0]

        self._arrow_parent = pa.default_memory_pool()
        self._arrow_pool = pa.proxy_memory_pool(self._arrow_parent)
        _ARROW_POOLS.append(self._arrow_pool)
        pa.set_memory_pool(self._arrow_pool)

        self._thread = threading.Thread(
            target=self._sample_rss, args=(self._process.memory_info().rss,), daemon=True)
        self._thread.start()
        return self.peak

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        pa.set_memory_pool(self._arrow_parent)
        self.peak.arrow_peak_bytes = self._arrow_pool.max_memory()
        self.peak.traced_peak_bytes = max(0, tracemalloc.get_traced_memory()[1] - self._traced_base)
        if not self._was_tracing:
            tracemalloc.stop()
