"""Pick the compute device and time work on it honestly.

CUDA kernels run asynchronously: ``model(x)`` returns as soon as the work is
*queued*, so a timer stopped right after it measures the launch, not the compute.
``DeviceTimer`` synchronises the device before starting and before stopping, the
same thing ``torch.cuda.Event`` based benchmarks do, so a GPU timing means what a
CPU timing means.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

__all__ = ["DEVICE_ENV", "pick_device", "synchronize", "DeviceTimer", "describe",
           "usable_cores", "default_workers", "threads_per_worker", "quiet_torchao_logs"]

DEVICE_ENV = "COURSE_DEVICE"
_ORDER = ("cuda", "mps", "cpu")


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return kind == "cpu"


def pick_device(prefer: str | None = None) -> torch.device:
    """The device to run on: ``prefer``, else ``$COURSE_DEVICE``, else cuda → mps → cpu.

    Asking for a device that is not present is an error rather than a silent CPU
    fallback: a benchmark that meant to measure the GPU must not quietly measure
    the CPU.
    """
    wanted = prefer or os.environ.get(DEVICE_ENV) or None
    if wanted is None:
        return torch.device(next(kind for kind in _ORDER if _available(kind)))
    device = torch.device(wanted)  # raises on nonsense such as "gpu"
    if not _available(device.type):
        raise RuntimeError(
            f"device {wanted!r} was asked for (argument or ${DEVICE_ENV}) but is not available here"
        )
    return device


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(device: torch.device | str | None = None, cores: int | None = None) -> int:
    """Model workers per version when none is asked for: the faster layout measured here.

    On a CPU with two or more cores, two workers of one share of the cores each beat one
    worker with all of them (one worker's Python between layers overlaps the other's
    compute). On a GPU, one worker keeps the device busy; more only contend for it.
    """
    device = torch.device(device) if device is not None else pick_device()
    if device.type != "cpu":
        return 1
    return 2 if (cores or usable_cores()) >= 2 else 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch intra-op threads for each of ``workers`` model threads: the cores, shared.

    Every worker's op runs on its own team of ``torch.get_num_threads()`` threads,
    so ``workers`` x threads must not exceed the cores, or the teams fight over them
    (oversubscription). On a CPU, several workers with fewer threads each usually
    beat one worker with all of them: one worker's Python overhead (dispatching
    each layer) overlaps the others' compute.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return max(1, (cores or usable_cores()) // workers)


def synchronize(device: torch.device | str) -> None:
    """Wait until every queued kernel on ``device`` has finished (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class DeviceTimer:
    """Wall-clock timer that synchronises ``device`` at both ends.

    >>> with DeviceTimer("cpu") as t:
    ...     _ = sum(range(1000))
    >>> t.elapsed_s >= 0
    True
    """

    device: torch.device | str = "cpu"
    elapsed_s: float = field(default=float("nan"), init=False)
    _start: float = field(default=0.0, init=False, repr=False)

    def __enter__(self) -> DeviceTimer:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.elapsed_s = time.perf_counter() - self._start

    @property
    def elapsed_ms(self) -> float:
        return self.elapsed_s * 1000.0


def describe(device: torch.device | str | None = None) -> str:
    """One line naming the device, for the top of every lesson's output."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"
    return device.type


def quiet_torchao_logs() -> None:
    """Silence what importing torchao logs on a CPU build: each CUDA-only kernel library it
    cannot load, and a torch deprecation inside torchao. No reader of ours can act on
    either; transformers imports torchao whenever it is installed (lesson 08 installs it).
    """
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
