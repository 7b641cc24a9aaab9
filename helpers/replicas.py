"""Several replicas of the model server on this machine, for balancing experiments.

``ReplicaSet(3, "--models", "wafer-cnn")`` starts three ``python -m helpers.server``
processes on free loopback ports **in parallel** (start-up is mostly loading torch and the
model: paying it three times in a row would triple the wait), waits until each is ready,
and stops every one of them on the way out — also when the block raises; and each dies
with the kernel that started it (``helpers.serving``).

It can break them on purpose: ``kill(i)`` (SIGKILL: a crash, in-flight requests get no
answer), ``pause(i, s)`` (SIGSTOP for ``s`` seconds: a stalled host that recovers),
``stop(i)`` (SIGTERM: a graceful drain) and ``restart(i, *extra)`` on the same port,
e.g. with ``--fault-delay-ms 2`` to make one replica slow, as a noisy neighbour would.
``table()`` records each replica's start-up time (spawn to ready) and memory (RSS).
``add()`` starts one more (scaling up); ``stop(i)`` drains one (scaling down).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pandas as pd
import psutil

from .serving import (
    ServerProcess,
    free_port,
    start_server_process,
    stop_server_process,
    wait_for_server,
)

__all__ = ["Replica", "ReplicaSet"]


@dataclass
class Replica:
    name: str
    port: int
    args: tuple[str, ...]            # what every replica of the set runs with
    extra: tuple[str, ...] = ()      # this one's own, since its last restart
    server: ServerProcess | None = None
    spawned_at: float = 0.0
    startup_s: float = float("nan")  # spawn to ready, the last time it started
    seconds_before: float = 0.0      # run time of its earlier lives (before restarts)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.server is not None and self.server.process.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server process now (0 when it is not running)."""
        if not self.alive:
            return 0
        try:
            return psutil.Process(self.server.process.pid).memory_info().rss
        except psutil.Error:
            return 0


class ReplicaSet:
    """``n`` server processes with the same ``args``; a context manager."""

    def __init__(self, n: int, *args: str, extra: dict[int, Sequence[str]] | None = None,
                 env: dict[str, str] | None = None, timeout_s: float = 120.0) -> None:
        """``extra`` gives some replicas arguments of their own from the start, e.g.
        ``{2: ["--fault-delay-ms", "50"]}``: cheaper than a restart after the start."""
        if n < 1:
            raise ValueError(f"a replica set needs at least one replica, got {n}")
        extra = extra or {}
        if not set(extra) <= set(range(n)):
            raise ValueError(f"extra names replicas {sorted(set(extra) - set(range(n)))}, "
                             f"but the set has replicas 0..{n - 1}")
        self.env, self.timeout_s, self.args = env, timeout_s, tuple(args)
        self._adding = threading.Lock()
        self.replicas = [Replica(f"replica-{i}", free_port(), tuple(args),
                                 tuple(extra.get(i, ()))) for i in range(n)]

    # -- lifetime ---------------------------------------------------------------------------
    def __enter__(self) -> ReplicaSet:
        try:
            self._start_all()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every replica still running (SIGTERM, then SIGKILL if it lingers)."""
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(self._stop, self.replicas))

    def _start_all(self) -> None:
        for replica in self.replicas:  # spawn all first, then wait: they load side by side
            self._spawn(replica)
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(self._wait, self.replicas))

    def _spawn(self, replica: Replica) -> None:
        replica.server = start_server_process(*replica.args, *replica.extra, env=self.env,
                                              port=replica.port)
        replica.spawned_at = time.perf_counter()

    def _wait(self, replica: Replica, may_move: bool = True) -> None:
        """Wait until ready. A new replica whose port another process took in the meantime
        (a free port is only free until someone binds it) moves to another free port."""
        for attempt in range(3):
            try:
                wait_for_server(replica.server, self.timeout_s)
                break
            except RuntimeError as exc:
                if not may_move or "the port was taken" not in str(exc) or attempt == 2:
                    raise
                stop_server_process(replica.server, timeout_s=30)
                replica.port = free_port()
                self._spawn(replica)
        replica.startup_s = time.perf_counter() - replica.spawned_at

    @staticmethod
    def _stop(replica: Replica) -> None:
        if replica.server is not None:
            if replica.alive:  # a paused process would not see the SIGTERM until resumed
                replica.server.process.send_signal(signal.SIGCONT)
            stop_server_process(replica.server, timeout_s=30)
            replica.server = None
            replica.seconds_before += time.perf_counter() - replica.spawned_at

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.replicas)

    def __getitem__(self, i: int) -> Replica:
        return self.replicas[i]

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def health(self) -> dict[str, bool]:
        """Each replica's readiness, asked now (a dead one is simply not ready)."""
        ready = {}
        with httpx.Client(timeout=1.0) as client:
            for replica in self.replicas:
                try:
                    ready[replica.name] = client.get(replica.url + "/v2/health/ready"
                                                     ).status_code == 200
                except httpx.TransportError:
                    ready[replica.name] = False
        return ready

    def replica_seconds(self) -> float:
        """What the set has cost so far: every replica's running time, start-up included
        (a replica costs from the moment it is spawned, as a cloud bills a node)."""
        now = time.perf_counter()
        return sum(r.seconds_before + (now - r.spawned_at if r.server is not None else 0.0)
                   for r in self.replicas)

    def table(self) -> pd.DataFrame:
        """Per replica: url, pid, alive, start-up time and resident memory."""
        return pd.DataFrame([{
            "replica": r.name, "url": r.url,
            "pid": r.server.process.pid if r.server else None, "alive": r.alive,
            "start-up s": round(r.startup_s, 2), "RSS MB": round(r.rss_bytes() / 2**20, 1),
            "extra args": " ".join(r.extra)}
            for r in self.replicas]).set_index("replica")

    # -- breaking things on purpose ---------------------------------------------------------
    def kill(self, i: int) -> None:
        """SIGKILL replica ``i``: a crash. Its in-flight requests get no answer."""
        replica = self.replicas[i]
        if replica.alive:
            replica.server.process.kill()
            replica.server.process.wait()

    def pause(self, i: int, seconds: float) -> threading.Timer:
        """Freeze replica ``i`` for ``seconds`` (SIGSTOP, then SIGCONT): a host that stalls —
        a noisy neighbour, a swap storm, a long GC pause — and then recovers. Requests sent
        to it meanwhile wait; it answers them when it resumes. Returns the timer."""
        process = self.replicas[i].server.process
        process.send_signal(signal.SIGSTOP)
        watched = psutil.Process(process.pid)
        for _ in range(200):  # the signal lands when the process is next scheduled
            if watched.status() == psutil.STATUS_STOPPED:
                break
            time.sleep(0.005)
        resume = threading.Timer(seconds, lambda: process.poll() is None
                                 and process.send_signal(signal.SIGCONT))
        resume.daemon = True
        resume.start()
        return resume

    def stop(self, i: int) -> None:
        """SIGTERM replica ``i`` and wait: it drains what it admitted, then exits."""
        self._stop(self.replicas[i])

    def add(self, *extra: str) -> int:
        """Start one more replica with the set's arguments (plus ``extra``) on a free port;
        waits until it is ready and returns its index — what scaling up does, start-up
        included."""
        with self._adding:  # two adds at once (an autoscaler's threads) get their own index
            i = len(self.replicas)
            replica = Replica(f"replica-{i}", free_port(), self.args, tuple(extra))
            self.replicas.append(replica)
        self._spawn(replica)
        self._wait(replica)
        return i

    def restart(self, i: int, *extra: str) -> None:
        """Stop replica ``i`` (if running) and start it again on its port, with its
        arguments plus ``extra`` (e.g. ``"--fault-delay-ms", "2"``); waits until ready."""
        replica = self.replicas[i]
        self._stop(replica)
        replica.extra = tuple(extra)
        self._spawn(replica)
        self._wait(replica, may_move=False)  # a restart keeps its address
