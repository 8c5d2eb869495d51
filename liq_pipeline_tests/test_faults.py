"""The network and the processes under faults: a server that asks for a day's wait, bodies cut off mid-download,
missing liquidationSnapshot days, writes killed half-way, runs killed with kill -9, and what `liq backfill` says
when a partition fails. Every HTTP test talks to a real server on 127.0.0.1."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from liq_pipeline.formats import AGG_TRADES, FORMATS, KLINES
from liq_pipeline.lake import TMP_GLOB, Lake, exclusive_folder
from liq_pipeline.sources.archive import ArchiveError, BinanceArchive, LocalMirror, NotPublished, ingest

from .conftest import FIXTURE_DAYS

DAY = FIXTURE_DAYS[-1]
REPO = Path(__file__).resolve().parents[1]
LIQUIDATIONS = FORMATS["forced_liquidations"]


def archive(server, tmp_path, **kw) -> BinanceArchive:
    return BinanceArchive(server.url, tmp_path / "cache", **{"backoff": 0, **kw})


# --- Retry-After beyond the cap ----------------------------------------------------------------------------------


def test_a_retry_after_beyond_the_cap_fails_at_once_and_says_when_to_come_back(archive_server, tmp_path):
    path = "/" + KLINES.relpath("BTCUSDT", DAY)
    archive_server.failures[path] = [(429, {"Retry-After": "100000"})]
    started = time.perf_counter()
    with pytest.raises(ArchiveError) as info:
        ingest(archive(archive_server, tmp_path, max_wait=5), KLINES, "BTCUSDT", DAY)
    assert time.perf_counter() - started < 3  # not 28 hours, not even the cap
    message = str(info.value)
    assert f"{archive_server.url}{path}" in message
    assert "HTTP 429, Retry-After: 100000" in message and "100,000 s (27.8 h)" in message
    assert "max_wait=5 s" in message and "run again after" in message
    assert archive_server.requests.count(path) == 1


def test_a_retry_after_within_the_cap_is_waited_for(archive_server, tmp_path):
    path = "/" + KLINES.relpath("BTCUSDT", DAY)
    archive_server.failures[path] = [(418, {"Retry-After": "1"})]
    started = time.perf_counter()
    got = ingest(archive(archive_server, tmp_path, max_wait=1), KLINES, "BTCUSDT", DAY)
    assert time.perf_counter() - started >= 1.0
    assert archive_server.requests.count(path) == 2 and got.table.num_rows == 1440


# --- bodies cut off mid-download -----------------------------------------------------------------------------------


def test_a_body_cut_off_mid_download_is_fetched_again(archive_server, mirror, tmp_path):
    path = "/" + AGG_TRADES.relpath("ETHUSDT", DAY)
    archive_server.truncated[path] = 2
    got = ingest(archive(archive_server, tmp_path, retries=2), AGG_TRADES, "ETHUSDT", DAY)
    assert archive_server.requests.count(path) == 3
    assert archive_server.truncated[path] == 0  # both cut-off answers were really served
    assert got.table.equals(ingest(LocalMirror(mirror), AGG_TRADES, "ETHUSDT", DAY).table)


def test_a_body_that_keeps_breaking_off_fails_naming_the_url_and_leaves_nothing(archive_server, tmp_path):
    path = "/" + AGG_TRADES.relpath("ETHUSDT", DAY)
    archive_server.truncated[path] = 10
    cache = tmp_path / "cache"
    with pytest.raises(
        ArchiveError, match=rf"{archive_server.url}{path}: the download broke off 3 times"
    ) as info:
        ingest(archive(archive_server, tmp_path, retries=2), AGG_TRADES, "ETHUSDT", DAY)
    assert "IncompleteRead" in str(info.value) or "Connection broken" in str(info.value)
    assert archive_server.requests.count(path) == 3
    folder = (cache / AGG_TRADES.relpath("ETHUSDT", DAY)).parent
    assert sorted(p.name for p in folder.iterdir()) == [f"ETHUSDT-aggTrades-{DAY}.zip.CHECKSUM"]


# --- liquidationSnapshot: only days after the archive's end are "no ground truth" ----------------------------------


@pytest.mark.parametrize("day", [date(2023, 6, 1), date(2024, 3, 31)])
def test_a_liquidation_snapshot_404_inside_the_archive_is_an_error(archive_server, tmp_path, day):
    with pytest.raises(
        NotPublished, match=rf"BTCUSDT liquidationSnapshot for {day} is not published at .*404"
    ):
        ingest(archive(archive_server, tmp_path), LIQUIDATIONS, "BTCUSDT", day)


@pytest.mark.parametrize("day", [date(2024, 4, 1), date(2024, 11, 5)])
def test_a_liquidation_snapshot_404_after_the_archive_end_is_an_empty_partition(
    archive_server, tmp_path, day
):
    got = ingest(archive(archive_server, tmp_path), LIQUIDATIONS, "BTCUSDT", day)
    assert got.table.num_rows == 0 and got.fetched is None
    assert "the archive publishes USDT-M forced liquidations up to 2024-03-31 only" in got.note
    assert {"ts", "side", "price", "notional_usd"} <= set(got.table.column_names)


# --- temporary files of killed writes ------------------------------------------------------------------------------


def _table(n: int) -> pa.Table:
    return pa.table({"x": list(range(n))})


def test_a_killed_lake_write_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    lake = Lake.at(tmp_path)
    target = lake.write("t", "BTCUSDT", DAY, _table(3))
    orphan = target.with_name(f".{target.name}.0123456789abcdef0123456789abcdef.tmp")
    orphan.write_bytes(b"half a parquet file")
    neighbour = lake.partition_file("t", "BTCUSDT", FIXTURE_DAYS[0])
    neighbour.parent.mkdir(parents=True)
    other_orphan = neighbour.with_name(orphan.name)
    other_orphan.write_bytes(b"another partition's")
    assert orphan.match(TMP_GLOB)

    lake.write("t", "BTCUSDT", DAY, _table(5))
    assert not orphan.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    assert lake.read("t", "BTCUSDT", [DAY]).num_rows == 5
    assert other_orphan.exists()  # only the partition written is cleaned


def test_a_temp_file_of_a_live_writer_is_left_alone_until_it_is_done(tmp_path):
    lake = Lake.at(tmp_path)
    folder = lake.partition_file("t", "BTCUSDT", DAY).parent
    inside, release = threading.Event(), threading.Event()

    def live_writer():
        with exclusive_folder(folder, TMP_GLOB):
            (folder / f".{lake.partition_file('t', 'BTCUSDT', DAY).name}.live.tmp").write_bytes(
                b"in progress"
            )
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=live_writer)
    holder.start()
    assert inside.wait(10)
    second = threading.Thread(target=lake.write, args=("t", "BTCUSDT", DAY, _table(2)))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waits for the live writer instead of deleting its file
    assert (folder / ".part-0.parquet.live.tmp").exists()
    release.set()
    holder.join(10)
    second.join(10)
    assert not second.is_alive() and not (folder / ".part-0.parquet.live.tmp").exists()
    assert lake.read("t", "BTCUSDT", [DAY]).num_rows == 2


def test_a_killed_download_leaves_a_part_file_that_the_next_fetch_removes(archive_server, tmp_path):
    source = archive(archive_server, tmp_path)
    first = source.fetch(KLINES, "BTCUSDT", DAY)
    orphan = first.path.with_name(first.path.name + ".part")
    orphan.write_bytes(b"the first megabytes of a zip")
    checksum_orphan = first.path.with_name(first.path.name + ".CHECKSUM.part")
    checksum_orphan.write_bytes(b"")
    again = source.fetch(KLINES, "BTCUSDT", DAY)  # cached: no download, the orphans go anyway
    assert again.sha256 == first.sha256
    assert not orphan.exists() and not checksum_orphan.exists()


# --- run monitoring ------------------------------------------------------------------------------------------------


def _instance(home: Path, config_dir: Path):
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home), config_dir=str(config_dir)))


def test_the_instance_of_dagster_yaml_monitors_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # dagster.yaml's storage paths are relative: keep them out of the repository
    with _instance(tmp_path / ".dagster_home", REPO) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_monitoring_cancel_timeout_seconds == 180
        assert instance.run_monitoring_max_runtime_seconds == 7200
        assert instance.run_monitoring_poll_interval_seconds == 60
        # The local run launcher cannot resume a run; Dagster refuses to start with resume attempts > 0 then.
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert not instance.run_launcher.supports_resume_run


_SLOW_RUN = """
import sys, time
from pathlib import Path
from dagster import DagsterInstance, job, op
from dagster._core.instance.ref import InstanceRef

@op
def stuck():
    Path(sys.argv[2]).write_text("started")
    time.sleep(600)

@job
def slow():
    stuck()

with DagsterInstance.from_ref(InstanceRef.from_dir(sys.argv[1], config_dir=sys.argv[3])) as instance:
    slow.execute_in_process(instance=instance)
"""


def test_a_run_killed_with_kill_9_is_failed_by_run_monitoring(tmp_path, monkeypatch):
    """A real run worker killed with SIGKILL: STARTED forever without monitoring; one pass of Dagster's run
    monitoring with this dagster.yaml's settings (max runtime shortened to 1 s) fails it."""
    from dagster import DagsterRunStatus, RunsFilter
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    settings = yaml.safe_load((REPO / "dagster.yaml").read_text())
    settings["run_monitoring"]["max_runtime_seconds"] = 1
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "dagster.yaml").write_text(yaml.safe_dump(settings))
    (tmp_path / "slow.py").write_text(textwrap.dedent(_SLOW_RUN))
    home, marker = tmp_path / ".dagster_home", tmp_path / "started"
    monkeypatch.chdir(tmp_path)
    worker = subprocess.Popen(
        [sys.executable, "slow.py", str(home), str(marker), str(config_dir)], cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the run never started"
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    time.sleep(1.1)
    with _instance(home, config_dir) as instance:
        [record] = instance.get_run_records(RunsFilter(job_name="slow"))
        assert record.dagster_run.status == DagsterRunStatus.STARTED  # what kill -9 leaves
        monitor_started_run(instance, None, record, logging.getLogger("test"))
        assert instance.get_run_by_id(record.dagster_run.run_id).status == DagsterRunStatus.FAILURE


# --- what `liq backfill` says when a partition fails ---------------------------------------------------------------


def test_backfill_prints_the_real_error_not_dagsters_wrapper(mirror, tmp_path, monkeypatch, capsys):
    from liq_pipeline.cli import main

    checksum = mirror / (AGG_TRADES.relpath("BTCUSDT", DAY) + ".CHECKSUM")
    checksum.write_text("0" * 64 + f"  BTCUSDT-aggTrades-{DAY}.zip\n")
    monkeypatch.setenv("LIQ_SOURCE", "local")
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    monkeypatch.setenv("LIQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["backfill", "BTCUSDT", "--start", str(DAY), "--end", str(DAY)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("agg_trades:"))
    assert f"ArchiveError: {checksum.with_suffix('')}: checksum mismatch" in line
    assert "Dagster" not in line and "Error occurred while executing" not in out
