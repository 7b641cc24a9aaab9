"""Run a server from a notebook or a test, and always stop it.

- ``serve_in_thread(app)`` serves an app object in a background thread of *this*
  process. Objects you pass to ``create_app`` — your cache, your router — run
  inside the real server, and you can inspect them while it serves.
- ``serve_subprocess(...)`` starts ``python -m helpers.server`` as its own process
  on a free loopback port: what production runs, signals included.

Both wait until ``/v2/health/ready`` answers 200 before yielding, and stop what
they started on the way out — also when the block raises — so nbval and pytest
never leave a server behind. ``redis_server()`` does the same for a Redis (the
shared prediction cache of lesson 06).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["free_port", "wait_until_ready", "serve_in_thread", "ServerProcess", "serve_subprocess",
           "start_server_process", "wait_for_server", "stop_server_process", "RedisEndpoint",
           "redis_server"]

READY_PATH = "/v2/health/ready"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, timeout_s: float = 120.0, alive=lambda: True,
                     require_all: bool = True, pid: int | None = None) -> None:
    """Poll ``url + /v2/health/ready`` until it answers 200.

    Raises at once if ``alive()`` turns false, or (``require_all``) if a model failed
    to load — the repository index says why — rather than waiting out the timeout.
    A server stays ready with one broken model (its other models serve); a notebook
    or a test that started it wants to hear about the broken one at once. With ``pid``,
    only that process's answer counts: another server that got the same port first is
    not ours.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=2.0) as client:
        while True:
            if not alive():
                raise RuntimeError(f"the server at {url} stopped before it was ready")
            try:
                response = client.get(url + READY_PATH)
                answered_by = response.headers.get("x-server-pid")
                if pid is not None and answered_by is not None and answered_by != str(pid):
                    raise RuntimeError(f"another server (pid {answered_by}) answers on {url}: "
                                       "the port was taken")
                failed = _failed_loads(client, url) if require_all else []
                if failed:
                    raise RuntimeError(f"the server at {url} cannot serve every model: {failed}")
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} was not ready within {timeout_s} s ({last})")
            time.sleep(0.05)


def _failed_loads(client: httpx.Client, url: str) -> list[str]:
    """The versions the repository index reports as failed to load (none if no index)."""
    response = client.post(url + "/v2/repository/index")
    rows = response.json() if response.status_code == 200 else []
    return [f"{row['name']} v{row['version']}: {row['reason']}" for row in rows
            if isinstance(row, dict) and str(row.get("reason", "")).startswith("load failed")]


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int | None = None,
                    timeout_s: float = 120.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a daemon thread; yields the base URL."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://{host}:{port}"
    try:
        wait_until_ready(url, timeout_s, alive=thread.is_alive)
        yield url
    finally:
        server.should_exit = True  # stop accepting, finish in-flight, run lifespan shutdown
        thread.join(timeout=60)


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    def terminate(self) -> None:
        """SIGTERM: the server stops taking new work and finishes what it admitted."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the kernel sends SIGTERM to the server if the process that started it dies
    (a crashed notebook kernel must not leave a server behind)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the atexit hook below still covers a normal exit


_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="server-spawner")


def start_server_process(*args: str, env: dict[str, str] | None = None,
                         host: str = "127.0.0.1", port: int | None = None) -> ServerProcess:
    """Spawn ``python -m helpers.server ARGS`` on ``port`` (default: a free one) and return at
    once; ``wait_until_ready`` and ``stop_server_process`` are the caller's to call."""
    port = port or free_port(host)
    log = Path(tempfile.mkstemp(prefix="helpers-server-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "helpers.server", "--host", host, "--port", str(port), *args]
    with open(log, "w") as out:
        # Spawned from one long-lived thread: Linux's parent-death signal fires when the
        # *thread* that forked the child exits, so a server started from a short-lived worker
        # thread (an autoscaler's) would be sent SIGTERM as soon as that thread ended.
        process = _SPAWNER.submit(
            subprocess.Popen, cmd, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None).result()
    server = ServerProcess(f"http://{host}:{port}", process, log)
    atexit.register(server.terminate)  # also when a notebook never reaches its clean-up cell
    return server


def wait_for_server(server: ServerProcess, timeout_s: float = 120.0) -> None:
    """Wait until ``server`` is ready; if it dies or times out first, raise with its log."""
    try:
        wait_until_ready(server.url, timeout_s, alive=lambda: server.process.poll() is None,
                         pid=server.process.pid)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}\n--- server log ---\n{server.log()[-4000:]}") from None


def stop_server_process(server: ServerProcess, timeout_s: float = 60.0,
                        keep_log: bool = False) -> None:
    """SIGTERM, wait for the exit (SIGKILL past ``timeout_s``), forget it."""
    server.terminate()
    try:
        server.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    atexit.unregister(server.terminate)
    if not keep_log:
        server.log_path.unlink(missing_ok=True)


@contextmanager
def serve_subprocess(*args: str, env: dict[str, str] | None = None, host: str = "127.0.0.1",
                     timeout_s: float = 120.0, port: int | None = None) -> Iterator[ServerProcess]:
    """Run ``python -m helpers.server ARGS`` on ``port`` (default: a free one); yields a
    ``ServerProcess`` once it is ready. A restart is a second call with the same port."""
    server = start_server_process(*args, env=env, host=host, port=port)
    try:
        wait_for_server(server, timeout_s)
        yield server
    finally:
        stop_server_process(server)


@dataclass
class RedisEndpoint:
    url: str   # redis://127.0.0.1:<port>/0
    kind: str  # what serves it: "redis-server 7.0.15" or "fakeredis TCP server (fallback)"


@contextmanager
def redis_server(prefer_fake: bool = False, timeout_s: float = 10.0) -> Iterator[RedisEndpoint]:
    """A Redis on a free loopback port for the block's duration; stopped on the way out.

    Debian's ``redis-server`` if it is installed (``make setup`` installs it where it can),
    otherwise fakeredis's TCP server: a real server speaking the Redis protocol, in a thread
    of this process. ``kind`` says which one runs; lessons print it.
    """
    import redis

    port = free_port()
    binary = None if prefer_fake else shutil.which("redis-server")
    if binary:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = process.terminate
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        kind = "redis-server " + next((w.removeprefix("v=") for w in version.split()
                                       if w.startswith("v=")), "")
    else:
        from fakeredis import TcpFakeServer

        server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        thread = threading.Thread(target=server.serve_forever, daemon=True, name="fakeredis")
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()
        kind = "fakeredis TCP server (fallback: no redis-server installed)"
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client, deadline = redis.Redis.from_url(url, socket_timeout=1), time.monotonic() + timeout_s
        while True:  # ready when it answers PING
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not answer on {url} within "
                                       f"{timeout_s} s") from None
                time.sleep(0.02)
        client.close()
        yield RedisEndpoint(url, kind)
    finally:
        stop()
        if binary:
            process.wait(timeout=10)
