"""The warehouse through dagster-duckdb, and `liq sql`: the README's SQL line answers from the lake."""

import subprocess
import sys

import duckdb
import pytest
from dagster import materialize
from dagster_duckdb import DuckDBResource

from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.assets.warehouse import warehouse_views
from liq_pipeline.cli import main
from liq_pipeline.definitions import defs
from liq_pipeline.partitions import partition_key
from liq_pipeline.resources import LakeResource

from .conftest import FIXTURE_DAYS, local_resources

SEED_QUERY = "SELECT COUNT(*) FROM aggtrades_history WHERE symbol = 'ETHUSDT'"
ASSETS = {a.key.path[-1]: a for a in RAW_ASSETS}


@pytest.fixture
def filled(mirror, lake, monkeypatch):
    """ETHUSDT's aggTrades and klines for the fixture days, in the test's lake."""
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    for day in FIXTURE_DAYS:
        result = materialize(
            [ASSETS["agg_trades"], ASSETS["klines"]],
            partition_key=partition_key("ETHUSDT", day),
            resources=local_resources(),
        )
        assert result.success
    return lake


def _count(path) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(SEED_QUERY).fetchone()[0]


def test_warehouse_job_writes_the_views_through_the_duckdb_resource_on_liq_data_dir(filled):
    assert isinstance(defs.resources["warehouse"], DuckDBResource)
    assert not filled.warehouse_path.exists()
    result = defs.resolve_job_def("warehouse_job").execute_in_process()
    assert result.success
    assert _count(filled.warehouse_path) == filled.row_count("agg_trades", "ETHUSDT") > 0
    meta = result.asset_materializations_for_node("warehouse_views")[0].metadata
    assert meta["path"].value == str(filled.warehouse_path)
    assert "open_interest_history" not in meta["views"].value  # no partition of it: no view


def test_the_asset_writes_where_the_resource_points_not_where_the_lake_is(filled, tmp_path):
    """Swapping the resource moves the writes: the asset opens DuckDB only through it."""
    elsewhere = tmp_path / "other.duckdb"
    result = materialize(
        [warehouse_views],
        resources={"lake": LakeResource(), "warehouse": DuckDBResource(database=str(elsewhere))},
    )
    assert result.success
    assert not filled.warehouse_path.exists()
    assert _count(elsewhere) == filled.row_count("agg_trades", "ETHUSDT")


def test_liq_sql_prints_the_seed_query_as_a_table(filled, capsys):
    assert main(["sql", SEED_QUERY]) == 0
    out = capsys.readouterr().out
    assert "count_star()" in out
    assert f"{filled.row_count('agg_trades', 'ETHUSDT'):,}" in out

    assert main(["sql", "SELECT agg_trade_id FROM aggtrades_history ORDER BY 1", "--max-rows", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("| ") for line in lines) == 3  # the header and two rows
    assert "first 2 rows shown" in lines[-1]


def test_liq_sql_reads_while_another_process_holds_the_warehouse_for_writing(filled, tmp_path):
    filled.refresh_warehouse()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb,sys; c=duckdb.connect({str(filled.warehouse_path)!r}); "
         "print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(duckdb.IOException):
            duckdb.connect(str(filled.warehouse_path), read_only=True)  # the lock is real
        done = subprocess.run(
            [sys.executable, "-m", "liq_pipeline.cli", "sql", SEED_QUERY],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert f"{filled.row_count('agg_trades', 'ETHUSDT'):,}" in done.stdout
    finally:
        holder.communicate("")


def test_liq_sql_on_an_empty_lake_says_to_run_the_demo(lake, capsys):
    assert main(["sql", SEED_QUERY]) == 1
    err = capsys.readouterr().err
    assert "aggtrades_history" in err and "uv run liq demo" in err
