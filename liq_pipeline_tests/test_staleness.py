"""Staleness: a raw partition rewritten with other content (or arriving late) makes the model partitions that read
it stale; the raw write says which, `fresh_against_inputs` fails on them, and the sensor asks once per change for
their recompute. An identical rewrite changes nothing."""

import json
import os
from datetime import timedelta

import pyarrow as pa
import pytest
from dagster import AssetSelection, build_sensor_context, materialize

from liq_pipeline import staleness
from liq_pipeline.assets.model import MODEL_ASSETS
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.checks import MODEL_CHECKS, RAW_CHECKS, fresh_against_inputs
from liq_pipeline.lake import Lake
from liq_pipeline.model_io import CONFIG_KEY
from liq_pipeline.partitions import partition_key
from liq_pipeline.sensors import stale_model_sensor

from .conftest import FIXTURE_DAYS
from .test_checks import edit_rows, evaluations, resources, run

D1, D2 = FIXTURE_DAYS
SYMBOL = "BTCUSDT"
ALL = [*RAW_ASSETS, *MODEL_ASSETS, *RAW_CHECKS, *MODEL_CHECKS]


@pytest.fixture
def built(mirror, tmp_path, monkeypatch):
    """Raw tables and the model of BTCUSDT for both fixture days, days in order (nothing stale)."""
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    monkeypatch.setenv("LIQ_DATA_DIR", str(tmp_path))
    for day in (D1, D2):
        assert run(tmp_path, day=day).success
    return mirror, tmp_path, Lake.at(tmp_path)


def rematerialize(data_dir, table, day):
    result = materialize(
        [a for a in RAW_ASSETS if a.key.path[-1] == table],
        partition_key=partition_key(SYMBOL, day),
        resources=resources(data_dir),
        raise_on_error=False,
    )
    assert result.success
    return result.asset_materializations_for_node(table)[0].metadata["model partitions made stale"].value


def check_alone(data_dir, day):
    """Execute `fresh_against_inputs` on its own, as the UI's "Execute checks" does: a run tagged with the
    partition (Dagster 1.13 cannot infer a partitions definition for a selection of checks only)."""
    result = materialize(
        ALL,
        selection=AssetSelection.checks(fresh_against_inputs),
        resources=resources(data_dir),
        tags={"dagster/partition": str(partition_key(SYMBOL, day))},
        raise_on_error=False,
    )
    started = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert started == ["liquidation_heatmap_fresh_against_inputs"]  # nothing materialized
    return evaluations(result)["fresh_against_inputs"]


def change_first_bar_volume(mirror, day):
    def change(rows):
        rows[0][5] = f"{float(rows[0][5]) * 2:.3f}"  # volume: no price moves, so no guard or check minds
        return rows

    edit_rows(mirror, "klines", change, SYMBOL, day)


def tick(cursor=None):
    result = stale_model_sensor(build_sensor_context(cursor=cursor))
    return result.run_requests or [], result.asset_events or [], result.cursor


def test_an_identical_rewrite_makes_nothing_stale(built):
    mirror, data, lake = built
    assert staleness.stale_partitions(lake) == []
    assert check_alone(data, D2).passed
    assert rematerialize(data, "klines", D1) == []  # same file, same content: same fingerprint
    assert staleness.stale_partitions(lake) == []


def test_a_rewritten_input_makes_the_days_that_read_it_stale(built):
    mirror, data, lake = built
    change_first_bar_volume(mirror, D1)
    assert rematerialize(data, "klines", D1) == [f"{D1}|{SYMBOL}", f"{D2}|{SYMBOL}"]  # both windows hold D1

    stale = staleness.stale_partitions(lake)
    assert [(s.symbol, s.day) for s in stale] == [(SYMBOL, D1), (SYMBOL, D2)]
    assert stale[1].reasons == (f"klines {D1} was rewritten with other content",)
    check = check_alone(data, D2)
    assert not check.passed and f"klines {D1} was rewritten with other content" in check.description
    # A write of a day after D2's window leaves D2 alone; one of funding rates never makes a model stale.
    assert staleness.made_stale(lake, "klines", SYMBOL, D2 + timedelta(days=1), "x") == []
    assert staleness.made_stale(lake, "funding_rate", SYMBOL, D1, "x") == []


def test_the_sensor_requests_each_change_once_and_the_recompute_clears_it(built):
    mirror, data, lake = built
    requests, events, cursor = tick()
    assert requests == [] and events == []

    change_first_bar_volume(mirror, D1)
    rematerialize(data, "klines", D1)
    requests, events, cursor = tick()
    assert [r.partition_key for r in requests] == [f"{D1}|{SYMBOL}", f"{D2}|{SYMBOL}"]
    keys = [r.run_key for r in requests]
    assert keys == [s.run_key for s in staleness.stale_partitions(lake)] and len(set(keys)) == 2
    assert requests[0].run_config["ops"]["liquidation_model"]["config"]["lookback_days"] == 14  # as built
    assert [(e.check_name, e.passed, e.partition) for e in events] == [
        ("fresh_against_inputs", False, f"{D1}|{SYMBOL}"),
        ("fresh_against_inputs", False, f"{D2}|{SYMBOL}"),
    ]
    assert tick(cursor)[:2] == ([], [])  # asked once, not again on every tick

    # The recompute of D2 (what the request runs) makes it fresh; D1 stays stale and is not asked for again.
    recompute = materialize(
        ALL,
        selection=AssetSelection.groups("model"),
        partition_key=partition_key(SYMBOL, D2),
        resources=resources(data),
        run_config=requests[1].run_config,
    )
    assert recompute.success and evaluations(recompute)["fresh_against_inputs"].passed
    assert [s.day for s in staleness.stale_partitions(lake)] == [D1]
    requests, _, cursor = tick(cursor)
    assert requests == []

    # Another change of the same input: new fingerprints, new run keys, asked again.
    change_first_bar_volume(mirror, D1)
    rematerialize(data, "klines", D1)
    requests, _, _ = tick(cursor)
    assert [r.partition_key for r in requests] == [f"{D1}|{SYMBOL}", f"{D2}|{SYMBOL}"]
    assert requests[0].run_key not in json.loads(cursor)


def test_a_recompute_that_fails_is_not_asked_for_again(built):
    mirror, data, lake = built
    (lake.partition_file("open_interest", SYMBOL, D2)).unlink()  # D2's own day gone: its model cannot run
    requests, _, cursor = tick()
    assert [r.partition_key for r in requests] == [f"{D2}|{SYMBOL}"]
    failed = materialize(
        ALL,
        selection=AssetSelection.groups("model"),
        partition_key=partition_key(SYMBOL, D2),
        resources=resources(data),
        raise_on_error=False,
    )
    assert not failed.success
    # Same state, same key.
    assert [s.run_key for s in staleness.stale_partitions(lake)] == [requests[0].run_key]
    assert tick(cursor)[0] == []


def test_a_late_lookback_day_makes_the_later_model_stale(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    assert run(tmp_path, day=D2).success  # D2 first: its model skipped the missing D1
    lake = Lake.at(tmp_path)
    assert staleness.stale_partitions(lake) == []
    assert rematerialize(tmp_path, "agg_trades", D1) == [f"{D2}|{SYMBOL}"]
    (stale,) = staleness.stale_partitions(lake)
    assert stale.reasons == (f"agg_trades {D1} arrived after the model was built",)


def test_model_tables_from_different_runs_are_stale(built):
    _, _, lake = built
    levels = lake.read("liquidation_levels", SYMBOL, [D2])
    other = staleness.stamp(levels, {"lookback_days": 14, "inputs": {}})
    lake.write("liquidation_levels", SYMBOL, D2, other)
    (stale,) = staleness.stale_partitions(lake)
    assert stale.day == D2 and stale.reasons == (
        "liquidation_levels was written by another run than the heatmap",
    )


def test_models_written_before_input_records_go_by_modification_time(built):
    _, _, lake = built
    heat = lake.read("liquidation_heatmap", SYMBOL, [D2])
    config = heat.schema.metadata[CONFIG_KEY]
    old = lake.write("liquidation_heatmap", SYMBOL, D2, heat.replace_schema_metadata({CONFIG_KEY: config}))
    assert [s.day for s in staleness.stale_partitions(lake)] == []  # nothing newer than it
    an_hour_ago = old.stat().st_mtime - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    for table in staleness.MODEL_INPUTS:  # the inputs as old as it, but for one rewritten since
        for day in (D1, D2):
            os.utime(lake.partition_file(table, SYMBOL, day), (an_hour_ago - 60, an_hour_ago - 60))
    lake.write("klines", SYMBOL, D1, lake.read("klines", SYMBOL, [D1]))
    (stale,) = staleness.stale_partitions(lake)
    assert stale.day == D2 and stale.reasons == (f"klines {D1} was written after the model",)
    assert D2 in staleness.made_stale(lake, "klines", SYMBOL, D1, "anything")


def test_a_fingerprint_follows_the_content_not_its_chunks():
    table = pa.table(
        {
            "symbol": ["BTCUSDT", "BTCUSDT"],
            "ts": pa.array([1_000, 2_000], pa.timestamp("us")),
            "price": [1.5, 2.5],
            "side": ["long", None],
        }
    )
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    assert chunked["price"].num_chunks == 2
    assert staleness.table_fingerprint(chunked) == staleness.table_fingerprint(table)
    renamed = table.set_column(0, "symbol", pa.array(["ETHUSDT"] * 2))  # the partition key is not content
    assert staleness.table_fingerprint(renamed) == staleness.table_fingerprint(table)
    moved = table.set_column(2, "price", pa.array([1.5, 2.6]))
    assert staleness.table_fingerprint(moved) != staleness.table_fingerprint(table)
    side = table.set_column(3, "side", pa.array(["long", "short"]))
    assert staleness.table_fingerprint(side) != staleness.table_fingerprint(table)
