"""The distributed deployment on one machine: PostgreSQL run storage, two Celery workers, the daemon and the lake on
a real S3 server (`liq_pipeline.stack`), set up as the README's "Beyond one machine" section says. A backfill of
2 symbols x 2 days runs there; its steps must run on both workers, its lake objects must hold the rows a local
in-process run writes, and `liq serve` must answer the heatmap from the S3 lake as the local lake's app does."""

from __future__ import annotations

import os
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from liq_pipeline import bench, stack
from liq_pipeline import lake as lake_module
from liq_pipeline.api.app import create_app
from liq_pipeline.api.server import ServerProcess
from liq_pipeline.definitions import chosen_executor, defs
from liq_pipeline.lake import Lake, uri
from liq_pipeline.sources.sample import SAMPLE_DAYS, SAMPLE_SYMBOLS
from liq_pipeline_tests.test_readme_commands import README, commands, readme_block

DAYS = list(SAMPLE_DAYS[:2])
KEYS = [(s, d) for d in DAYS for s in SAMPLE_SYMBOLS]
HEATMAP = "/liquidations/heatmap-timeseries"


def test_an_s3_data_dir_puts_the_lake_on_s3_and_this_machines_files_in_liq_local_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LIQ_LOCAL_DIR", str(tmp_path / "here"))
    lake = Lake.at("s3://bucket/prefix/")
    assert lake.remote and uri(lake.root) == "s3://bucket/prefix/lake"
    assert uri(lake.partition_file("klines", "BTCUSDT", DAYS[0])) == (
        f"s3://bucket/prefix/lake/klines/symbol=BTCUSDT/date={DAYS[0]}/part-0.parquet"
    )
    assert uri(lake.cache().root) == "s3://bucket/prefix/cache"  # shared: any worker may compute it
    assert uri(lake.calibration_file("BTCUSDT")) == "s3://bucket/prefix/calibration/BTCUSDT.json"
    assert lake.warehouse_path == tmp_path / "here" / "warehouse.duckdb"  # DuckDB's file is one machine's
    local = Lake.at(tmp_path / "data")
    assert (
        not local.remote
        and local.local == tmp_path / "data"
        and local.warehouse_path.parent == tmp_path / "data"
    )


def test_the_executor_is_chosen_by_liq_executor(monkeypatch):
    monkeypatch.setenv("LIQ_EXECUTOR", "celery")
    assert chosen_executor().name == "celery"
    monkeypatch.setenv("LIQ_EXECUTOR", "in_process")
    assert chosen_executor().name == "in_process"
    monkeypatch.setenv("LIQ_EXECUTOR", "dask")
    with pytest.raises(ValueError, match="LIQ_EXECUTOR='dask'.*in_process or celery"):
        chosen_executor()


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """A stack (PostgreSQL, Redis, the S3 server) for the module; its variables set in this process too, which opens
    the Postgres instance and the S3 lake. Yields the stack's environment."""
    root = tmp_path_factory.mktemp("stack")
    with stack.start(root / "stack") as started, pytest.MonkeyPatch.context() as mp:
        for key, value in started.env.items():
            mp.setenv(key, value)
        yield started.env | {"LIQ_LOCAL_DIR": str(root / "local")}


@pytest.fixture(scope="module")
def distributed(services, tmp_path_factory):
    """The backfill on the stack: (stack env, DAGSTER_HOME folder, run records, step -> workers)."""
    root = tmp_path_factory.mktemp("distributed")
    folder = bench.deploy_folder(root / "home")
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | services
    env |= {"DAGSTER_HOME": str(folder), "LIQ_EXECUTOR": "celery", "LIQ_SOURCE": "sample"}
    processes = bench.start_deployment(folder, env, root)  # the daemon, workers w1 and w2
    try:
        records, _, _ = bench.launch_backfill(folder, env, KEYS)
    finally:
        for proc in processes:
            bench.stop_group(proc)
    errors = bench.run_errors(folder, records)
    assert all(r.dagster_run.is_success for r in records), "\n".join(errors)[-6000:]
    steps = bench.celery_workers_of(folder, [r.dagster_run.run_id for r in records])
    return services, folder, records, steps


def test_every_step_of_every_run_ran_on_a_celery_worker_and_both_workers_were_used(distributed):
    _, _, records, steps = distributed
    assert len(records) == len(KEYS)
    assert {r.dagster_run.tags["dagster/partition"] for r in records} == {f"{d}|{s}" for s, d in KEYS}
    job_steps = {node.name for node in defs.resolve_job_def("daily_job").graph.nodes}  # assets and checks
    assert set(steps) == job_steps  # every step key ran on a worker, none in the run's own process
    workers = {w.split("@")[0] for ran in steps.values() for w in ran}
    assert workers == {"w1", "w2"}


@pytest.fixture(scope="module")
def local_lake(tmp_path_factory):
    """The same partitions written by daily_job in this process into a local lake (what `liq backfill` does)."""
    folder = tmp_path_factory.mktemp("local-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIQ_SOURCE", "sample")
        mp.setenv("LIQ_DATA_DIR", str(folder))
        bench._in_process_seconds(KEYS, folder)
    return Lake.at(folder)


def test_the_s3_lake_holds_the_rows_of_a_local_in_process_run(distributed, local_lake):
    remote = Lake.at(distributed[0]["LIQ_DATA_DIR"])
    assert remote.remote and str(remote.root).startswith("s3://")
    tables = sorted(p.name for p in local_lake.root.iterdir())
    assert {"klines", "open_interest", "agg_trades", "liquidation_heatmap", "liquidation_levels"} <= set(
        tables
    )
    for table in tables:
        days_by_symbol = local_lake.symbol_dates(table)
        assert remote.symbol_dates(table) == days_by_symbol, table
        for symbol, days in days_by_symbol.items():
            for day in days:
                ours, theirs = remote.read(table, symbol, [day]), local_lake.read(table, symbol, [day])
                assert ours.schema == theirs.schema, (table, symbol, day)
                assert ours.equals(theirs), (table, symbol, day)


def test_the_warehouse_views_over_s3_count_what_the_local_views_count(distributed, local_lake):
    remote = Lake.at(distributed[0]["LIQ_DATA_DIR"])
    assert remote.view_sql().keys() == local_lake.view_sql().keys()
    with remote.connect_readonly() as ours, local_lake.connect_readonly() as theirs:
        for view in local_lake.view_sql():
            count = f"SELECT count(*), count(DISTINCT symbol) FROM {view}"
            assert ours.sql(count).fetchall() == theirs.sql(count).fetchall(), view


def test_a_failed_write_leaves_the_old_object_whole(services, local_lake, monkeypatch):
    """The partition is sent only once its Parquet is complete: a write that fails while serializing (after some
    row groups) leaves the object as it was. A writer streaming into the object would have committed half a file."""
    remote = Lake.at(services["LIQ_DATA_DIR"] + "-atomic")
    day = DAYS[0]
    heat = local_lake.read("liquidation_heatmap", "BTCUSDT", [day])
    target = remote.write("liquidation_heatmap", "BTCUSDT", day, heat.slice(0, 1000))
    before = target.read_bytes()
    real = lake_module.hour_runs

    def runs_then_fail(data, column):
        yield from real(data, column)[:3]
        raise OSError("disk full (simulated) after three row groups")

    monkeypatch.setattr(lake_module, "hour_runs", runs_then_fail)
    with pytest.raises(OSError, match="simulated"):
        remote.write("liquidation_heatmap", "BTCUSDT", day, heat)
    assert target.read_bytes() == before
    assert remote.read("liquidation_heatmap", "BTCUSDT", [day]).equals(heat.slice(0, 1000))


def test_liq_serve_answers_the_heatmap_from_the_s3_lake(distributed, local_lake):
    env = distributed[0]
    server = ServerProcess(env["LIQ_DATA_DIR"], env=env)  # `liq serve --data-dir s3://…` in its own process
    with server as url:
        answers = {
            s: httpx.get(url + HEATMAP, params={"symbol": s}, timeout=60).json() for s in SAMPLE_SYMBOLS
        }
        health = httpx.get(url + "/health", timeout=60).json()
    assert server.proc.returncode == 0
    client = TestClient(create_app(local_lake.root.parent))
    for symbol, ours in answers.items():
        assert ours["times"] and ours["end_time"] == f"{DAYS[-1] + timedelta(days=1)}T00:00:00Z", ours
        theirs = client.get(HEATMAP, params={"symbol": symbol})
        assert theirs.status_code == 200, theirs.text
        assert ours == theirs.json(), symbol
        assert health["symbols"][symbol]["latest_data_day"] == str(DAYS[-1])


def test_the_readme_deploy_section_names_what_this_test_ran(distributed):
    """The README's deploy blocks: every variable the stack gave the processes, the instance file, the executor, and
    the worker, daemon and backfill commands this test started (bench.CELERY_WORKER, start_daemon,
    launch_backfill)."""
    env = distributed[0]
    readme = README.read_text()
    variables = commands(
        readme_block(
            readme, "<!-- deploy: the variables, pinned by liq_pipeline_tests/test_distributed.py -->"
        )
    )
    exported = {
        pair.split("=")[0] for line in variables if line.startswith("export ") for pair in line.split()[1:]
    }
    assert set(env) | {"DAGSTER_HOME", "LIQ_EXECUTOR"} <= exported
    assert any(line.endswith('cp deploy/dagster.yaml "$DAGSTER_HOME/"') for line in variables)
    processes = commands(
        readme_block(
            readme, "<!-- deploy: the processes, pinned by liq_pipeline_tests/test_distributed.py -->"
        )
    )
    assert any(
        c.startswith(f"uv run {' '.join(bench.CELERY_WORKER)} -n w1 -- --pool solo") for c in processes
    )
    assert any(c.startswith("uv run dagster-daemon run -w workspace.yaml") for c in processes)
    assert any(
        c.startswith("uv run dagster job backfill -w workspace.yaml -j daily_job --partitions")
        for c in processes
    )
