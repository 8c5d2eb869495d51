"""`liq serve` (`serve`: one process, or several listening on one port), the API served from a background thread
(tests), and `liq serve` in a process of its own (`ServerProcess`, for `liq bench api`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

APP = "liq_pipeline.api.app:create_app"  # an app factory: it reads $LIQ_DATA_DIR in each worker


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT: every worker binds its own on the same port, and the kernel spreads
    new connections evenly over them."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _worker(host: str, port: int, log_level: str) -> None:
    """One server process (`python -m liq_pipeline.api.server HOST PORT LOG_LEVEL`)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(APP, factory=True, log_level=log_level)).run(sockets=[_listen(host, port)])


# Each worker's environment. glibc's malloc by default raises its mmap threshold after the first large free and from
# then on keeps every answer's freed arrays in its heaps, one heap per thread: a fixed threshold and one heap return
# them (measured under 50 clients: about 40 MB less per worker, the same requests/s). Several workers are the
# parallelism, so each answers on one thread (`app.ANSWER_THREADS`), and they share the caches' budget.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "1"}
CACHE_MB_TOTAL = 64


def serve(host: str, port: int, workers: int = 1, log_level: str = "info") -> int:
    """uvicorn over the app factory, in `workers` processes of their own, each with its own socket on the port
    (`_listen`): uvicorn's `--workers` share one socket, and under load one of them takes most connections (50
    clients on 2 workers: p95 2-3 s, fewer requests/s than one worker). SIGTERM or Ctrl-C stops them all (uvicorn's
    graceful shutdown in each); a worker that dies stops the others and the exit status is 1, so a service manager
    restarts the server. This process imports nothing of the app and stays small."""
    with _listen(host, port) as probe:  # the port is free and allowed: fail here, not in every worker
        port = probe.getsockname()[1]  # port 0: the one the kernel chose, for every worker
    env = {**MALLOC_ENV, **os.environ}  # the caller's own settings win
    env.setdefault("LIQ_API_CACHE_MB", str(CACHE_MB_TOTAL / max(1, workers)))
    if workers > 1:
        env.setdefault("LIQ_API_THREADS", "1")
    args = [sys.executable, "-m", "liq_pipeline.api.server", host, str(port), log_level]
    procs = [subprocess.Popen(args, env=env) for _ in range(max(1, workers))]
    signalled = False

    def stop(*_) -> None:
        nonlocal signalled
        signalled = True
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not signalled and all(proc.poll() is None for proc in procs):
            time.sleep(0.2)
        for proc in procs:  # a worker ended on its own: stop the others
            if proc.poll() is None:
                proc.terminate()
        codes = [proc.wait() for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if signalled and all(code in (0, -signal.SIGTERM) for code in codes) else 1


class BackgroundServer:
    """uvicorn serving an app from a daemon thread on a socket bound here (port 0: a free one). For tests and
    benchmarks: `with BackgroundServer(app) as url: ...`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 20.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {self.url}")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process could take it before we bind it again; fine on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn's workers are children of its supervisor), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def peak_rss_mb(pid: int) -> dict[int, float]:
    """Peak resident memory (VmHWM, MB) of `pid` and each of its descendants. Summing them overstates the peak of
    the sum a little when the processes peak at different moments; it is the figure a box must have room for."""
    peaks = {}
    for proc in descendants(pid):
        try:
            lines = Path(f"/proc/{proc}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmHWM:"):
                peaks[proc] = int(line.split()[1]) / 1024
    return peaks


class ServerProcess:
    """`liq serve` in a process of its own, so a load generator in this process does not share its GIL:
    `with ServerProcess(data_dir, workers=2) as url: ...`; `peak_rss_mb()` reads its processes' peak memory."""

    def __init__(self, data_dir: Path | str, workers: int = 1, env: dict[str, str] | None = None):
        from liq_pipeline.lake import location  # not at import: `liq serve`'s supervisor stays small

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = location(data_dir)  # a folder made absolute, or s3://…
        self.args = [sys.executable, "-m", "liq_pipeline.cli", "serve", "--port", str(self.port)]
        self.args += ["--data-dir", str(self.data_dir), "--workers", str(workers)]
        self.args += ["--log-level", "warning"]  # no access log line per request: it would be timed too
        self.env = {**os.environ, **(env or {})}
        self.log = tempfile.TemporaryFile()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> str:
        """Start the server and wait until it answers /health (with several workers: until one of them does)."""
        import httpx

        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        self.log.seek(0)
        raise RuntimeError(f"`{' '.join(self.args)}` did not start:\n{self.log.read().decode()[-2000:]}")

    def peak_rss_mb(self) -> dict[int, float]:
        return peak_rss_mb(self.proc.pid) if self.proc else {}

    def stop(self) -> None:
        """SIGTERM to the server (uvicorn's supervisor stops its workers), SIGKILL to its session if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.close()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3])
