"""Guards against the lake: a file that parses but cannot be this symbol-day's data fails the run, names the file
and the problem, and leaves the partition already in the lake byte for byte."""

import re

import pytest
from dagster import materialize

from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.partitions import partition_key

from .conftest import FIXTURE_DAYS, failure_message
from .test_checks import read_rows, resources, write_rows

DAY = FIXTURE_DAYS[-1]
ASSETS = {a.key.path[-1]: a for a in RAW_ASSETS}


def run_raw(data_dir, tables, symbol="BTCUSDT"):
    return materialize(
        [ASSETS[t] for t in tables],
        partition_key=partition_key(symbol, DAY),
        resources=resources(data_dir),
        raise_on_error=False,
    )


def materialization(result, table):
    return next(m for m in result.asset_materializations_for_node(table))


@pytest.fixture
def local(mirror, monkeypatch):
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    return mirror


def snapshot(lake_root):
    """Every file under the lake, with its bytes."""
    return {p.relative_to(lake_root): p.read_bytes() for p in sorted(lake_root.rglob("*")) if p.is_file()}


def eth_under_btc(mirror, table):
    """ETHUSDT's file of the day saved as BTCUSDT's: right name, right inner CSV name, matching .CHECKSUM."""
    _, rows = read_rows(mirror, table, "ETHUSDT")
    if table == "open_interest":  # metrics name their symbol in a column: a careful rename edits it too
        rows = [[c.replace("ETHUSDT", "BTCUSDT") for c in r] for r in rows]
    write_rows(mirror, table, rows, "BTCUSDT")


@pytest.mark.parametrize(
    "table, in_lake, against",
    [
        ("agg_trades", ["klines"], "klines"),  # trade prices vs the klines' range
        ("klines", ["agg_trades"], "agg_trades"),  # and the other way round
        ("open_interest", ["klines"], "klines"),  # open-interest value / contracts (the mark price) vs klines
        ("forced_liquidations", ["klines"], "klines"),
    ],
)
def test_another_symbols_file_is_refused_and_the_partition_kept(local, tmp_path, table, in_lake, against):
    assert run_raw(tmp_path, [table, *in_lake]).success
    before = snapshot(tmp_path / "lake")
    eth_under_btc(local, table)

    result = run_raw(tmp_path, [table])
    assert not result.success
    message = failure_message(result)
    name = {
        "agg_trades": "aggTrades",
        "klines": "1m",
        "open_interest": "metrics",
        "forced_liquidations": "liquidationSnapshot",
    }[table]
    assert re.search(
        rf"BTCUSDT-{name}-{DAY}\.zip: 100% of its prices \(median [\d.]+\) lie far outside "
        rf"BTCUSDT's {against} for {DAY}",
        message,
    ), message
    assert "another symbol's data" in message
    assert snapshot(tmp_path / "lake") == before  # byte for byte, and nothing new beside it


def test_a_foreign_file_is_refused_even_where_its_own_partition_is_new(local, tmp_path):
    assert run_raw(tmp_path, ["klines"]).success
    eth_under_btc(local, "agg_trades")
    result = run_raw(tmp_path, ["agg_trades"])
    assert "lie far outside BTCUSDT's klines" in failure_message(result)
    assert not (tmp_path / "lake" / "agg_trades").exists()


def test_the_same_file_with_nothing_to_compare_is_written(local, tmp_path):
    # Alone in the lake, a file cannot be told foreign by its prices: that is the blocking checks' job later.
    eth_under_btc(local, "agg_trades")
    assert run_raw(tmp_path, ["agg_trades"]).success


@pytest.mark.parametrize("table", ["agg_trades", "klines", "open_interest", "forced_liquidations"])
def test_a_header_only_file_does_not_replace_a_full_partition(local, tmp_path, table):
    assert run_raw(tmp_path, [table]).success
    before = snapshot(tmp_path / "lake")
    member, rows = read_rows(local, table)
    write_rows(local, table, rows[:1])

    result = run_raw(tmp_path, [table])
    message = failure_message(result)
    assert re.search(
        rf"{re.escape(member[: -len('.csv')])}\.zip: the file has no rows \(a header only\?\) but "
        rf".*{table}/symbol=BTCUSDT/date={DAY}/part-0\.parquet holds \d+ rows",
        message,
    ), message
    assert snapshot(tmp_path / "lake") == before


@pytest.mark.parametrize("table", ["agg_trades", "forced_liquidations"])
def test_a_day_with_no_rows_and_no_partition_is_written_and_said(local, tmp_path, table):
    _, rows = read_rows(local, table)
    write_rows(local, table, rows[:1])
    result = run_raw(tmp_path, [table])
    assert result.success
    meta = materialization(result, table).metadata
    assert meta["dagster/row_count"].value == 0
    assert f"has no rows: BTCUSDT has no {table} rows on {DAY}" in meta["empty"].value
    assert (tmp_path / "lake" / table / "symbol=BTCUSDT" / f"date={DAY}" / "part-0.parquet").exists()
