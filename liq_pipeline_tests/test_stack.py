"""`liq stack`'s services for real: two stacks at once, each answering on its own loopback ports, gone when stopped."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import psycopg2
import pytest
import redis
import s3fs

from liq_pipeline import stack as stack_mod

ENV_KEYS = {
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
    "LIQ_CELERY_BROKER",
    "LIQ_CELERY_BACKEND",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "LIQ_DATA_DIR",
}


def _ports(stack: stack_mod.Stack) -> set[int]:
    return {p for svc in stack.services.values() for p in svc.ports}


def _check_services(stack: stack_mod.Stack) -> None:
    env = stack.env
    assert set(env) == ENV_KEYS
    assert env["LIQ_DATA_DIR"] == "s3://liq/data"

    conn = psycopg2.connect(
        host=env["DAGSTER_PG_HOST"],
        port=int(env["DAGSTER_PG_PORT"]),
        user=env["DAGSTER_PG_USER"],
        password=env["DAGSTER_PG_PASSWORD"],
        dbname=env["DAGSTER_PG_DB"],
        connect_timeout=5,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("select 1, current_database()")
            assert cur.fetchone() == (1, "dagster")
    finally:
        conn.close()

    for url in (env["LIQ_CELERY_BROKER"], env["LIQ_CELERY_BACKEND"]):
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            assert client.ping()
        finally:
            client.close()

    fs = s3fs.S3FileSystem(
        endpoint_url=env["AWS_ENDPOINT_URL"],
        key=env["AWS_ACCESS_KEY_ID"],
        secret=env["AWS_SECRET_ACCESS_KEY"],
        client_kwargs={"region_name": env["AWS_DEFAULT_REGION"]},
        skip_instance_cache=True,
    )
    path = env["LIQ_DATA_DIR"].removeprefix("s3://") + "/probe/hello.bin"
    payload = bytes(range(256)) * 4096  # 1 MiB
    fs.pipe(path, payload)
    assert fs.cat(path) == payload
    assert fs.ls(path.rsplit("/", 1)[0]) == [path]

    # Every socket any of its processes listens on (TCP) or is bound to (UDP) is on loopback.
    for pid in stack.pids:
        leader = psutil.Process(pid)
        for proc in [leader, *leader.children(recursive=True)]:
            try:
                conns = proc.net_connections(kind="inet")
            except psutil.NoSuchProcess:  # a postgres backend that just ended
                continue
            for c in conns:
                if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM:
                    assert c.laddr.ip == "127.0.0.1", (proc.name(), c)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT does not count
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.timeout(120)
def test_two_stacks_answer_on_loopback_and_stop_clean(tmp_path: Path):
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(stack_mod.start, tmp_path / name) for name in ("a", "b")]
        stacks = [f.result() for f in futures]
    try:
        assert not _ports(stacks[0]) & _ports(stacks[1])
        for stack in stacks:
            _check_services(stack)
            for name, log in (("postgres", "postgres.log"), ("redis", "redis.log"), ("s3", "seaweedfs.log")):
                assert stack.services[name].log == stack.folder / log and (stack.folder / log).stat().st_size
        leaders = [psutil.Process(pid) for stack in stacks for pid in stack.pids]
        pids = {p.pid for leader in leaders for p in [leader, *leader.children(recursive=True)]}
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.stop(), stacks))

    assert not [pid for pid in pids if psutil.pid_exists(pid)]
    ports = _ports(stacks[0]) | _ports(stacks[1])
    assert not [p for p in ports if not _port_free(p)]
    # SeaweedFS's sockets in /tmp, the master's state, the cluster's temporary folder (pytest's tmp_path is 0700)
    assert not [p for stack in stacks for p in stack.cleanup if p.exists()]
    assert not [p for p in Path("/tmp").glob("seaweedfs-*.sock") if int(p.stem.rsplit("-", 1)[1]) in ports]
    stacks[0].stop()  # idempotent
