"""Heatmap tiles against the 5-minute path, on the pipeline's own output: the raw and model tables of a sample lake
(`api.sample_lake`: archive files -> ingest -> model) and BTCUSDT's tiles materialized by the `heatmap_tiles` asset
through Dagster (ETHUSDT's by `tiles.write_tiles`, which sample lakes use; one test shows both write the same).
The model runs with a 3-day lookback, so the lake's first two days have less than their full lookback."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, materialize
from fastapi.testclient import TestClient

from liq_pipeline import tiles
from liq_pipeline.api import grid
from liq_pipeline.api.app import create_app
from liq_pipeline.api.grid import block as real_block
from liq_pipeline.api.grid import candle_decimals, price_decimals
from liq_pipeline.api.queries import as_of_ranges, epoch_us, read_heat_states
from liq_pipeline.api.sample_lake import model_day, write_sample_lake
from liq_pipeline.assets.model import MODEL_ASSETS
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.assets.tiles import TILE_ASSETS
from liq_pipeline.automation import RECOMPUTE_WHEN_INPUTS_UPDATE
from liq_pipeline.lake import Lake, as_numpy
from liq_pipeline.model import ModelConfig
from liq_pipeline.partitions import partition_key
from liq_pipeline.resources import ArchiveSource, LakeIOManager, LakeResource
from liq_pipeline.symbols import PACKAGED_FILE, load_registry

DAYS = tuple(date(2024, 12, 20) + timedelta(days=i) for i in range(8))  # 2024-12-20 .. 2024-12-27
SYMBOLS = ("BTCUSDT", "ETHUSDT")
LOOKBACK = 3
REGISTRY = load_registry(PACKAGED_FILE)
PATH = "/liquidations/heatmap-timeseries"
# end_time: the data's end (default), on the hour, off the hour, a 24:00 state, and windows reaching past the
# first day (so a 7d window starts before the lake does).
ENDS = (None, "2024-12-25T13:00:00", "2024-12-25T13:35:00", "2024-12-24T00:00:00", "2024-12-22T07:10:00")
WINDOWS = ("7d", "14d", "30d", "90d", "1y")


def _resources(data: Path) -> dict:
    return {
        "lake_io_manager": LakeIOManager(data_dir=str(data)),
        "lake": LakeResource(data_dir=str(data)),
        "archive": ArchiveSource(source="sample"),
    }


def materialize_tiles(data: Path, symbol: str, day: date):
    """The tile asset of one partition through Dagster, reading the model's and raw tables from the lake."""
    return materialize(
        [*RAW_ASSETS, *MODEL_ASSETS, *TILE_ASSETS],
        selection=TILE_ASSETS,
        partition_key=partition_key(symbol, day),
        resources=_resources(data),
    )


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("tiles-lake") / "data"
    write_sample_lake(data, SYMBOLS, DAYS, registry=REGISTRY, lookback_days=LOOKBACK)
    lake = Lake.at(data)
    for table in tiles.TILE_TABLES:  # BTCUSDT's tiles as the pipeline writes them: the asset, through Dagster
        shutil.rmtree(lake.root / table / "symbol=BTCUSDT")
    for day in DAYS:
        assert materialize_tiles(data, "BTCUSDT", day).success
    return data


def clients(data: Path, **kw) -> tuple[TestClient, TestClient]:
    """The API with tiles and without (every answer from the 5-minute heatmap), answer cache off."""
    make = lambda use: TestClient(create_app(data, registry_file=PACKAGED_FILE, cache=False, tiles=use, **kw))  # noqa: E731
    return make(True), make(False)


def ask(client: TestClient, symbol: str, window: str, end: str | None = None, **params) -> dict:
    params = {"symbol": symbol, "time_window": window, **params}
    if end:
        params["end_time"] = end
    r = client.get(PATH, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def without_source(answer: dict) -> dict:
    return {**answer, "coverage": {k: v for k, v in answer["coverage"].items() if k != "source"}}


# --- the tiles are the 5-minute path's numbers -------------------------------------------------------------------


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_tile_answers_equal_the_5_minute_answers_cell_by_cell(lake_dir, symbol):
    with_tiles, five_minute = clients(lake_dir)
    bins = {"BTCUSDT": 300.0, "ETHUSDT": 15.0}[
        symbol
    ]  # 3 registry bins: sums of three cells, order-sensitive
    for window in WINDOWS:
        for end in ENDS:
            for extra in ({}, {"price_bin_size": bins}):
                tiled = ask(with_tiles, symbol, window, end, **extra)
                plain = ask(five_minute, symbol, window, end, **extra)
                where = f"{symbol} {window} end={end} {extra}"
                expected = tiles.TILE_12H if window in ("90d", "1y") else tiles.TILE_1H
                assert tiled["coverage"]["source"] == expected, where
                assert plain["coverage"]["source"] == "heatmap_5m", where
                for key in ("times", "as_of", "prices", "long", "short", "candles", "missing_dates"):
                    assert tiled[key] == plain[key], f"{where}: {key}"
                assert without_source(tiled) == without_source(plain), where
                assert np.asarray(tiled["long"]).sum() + np.asarray(tiled["short"]).sum() > 0, where
    api = with_tiles.app.state.api
    assert api.stats["tile_states"] > 10 * api.stats["heatmap_5m_states"] > 0


def test_the_tile_path_reads_fewer_bytes_and_files(lake_dir):
    with_tiles, five_minute = clients(lake_dir)
    tiled, plain = with_tiles.app.state.api.stats, five_minute.app.state.api.stats
    for client in (with_tiles, five_minute):
        ask(client, "BTCUSDT", "7d", "2024-12-27T00:00:00")
    assert tiled["files_read"] <= plain["files_read"]
    assert tiled["bytes_read"] * 5 < plain["bytes_read"]
    # Another user, another end on the hour: the tiles are in memory, no file is read again.
    before = dict(tiled)
    for client in (with_tiles, five_minute):
        ask(client, "BTCUSDT", "7d", "2024-12-26T18:00:00")
    assert tiled["files_read"] == before["files_read"] and tiled["tile_states"] > before["tile_states"]
    assert plain["files_read"] > 2 * 7


def test_tiles_are_what_the_asset_writes_and_it_runs_with_the_model(lake_dir, tmp_path):
    """`tiles.write_tiles` (sample lakes) writes what the Dagster asset writes; the asset belongs to the jobs and
    the automation that rebuild the model."""
    from liq_pipeline.definitions import defs

    lake = Lake.at(lake_dir)
    day = DAYS[3]
    by_dagster = {t: pq.read_table(lake.partition_file(t, "BTCUSDT", day)) for t in tiles.TILE_TABLES}
    direct = tiles.build_tiles(
        lake.partition_file("liquidation_heatmap", "BTCUSDT", day),
        lake.partition_file("klines", "BTCUSDT", day),
    )
    for table in tiles.TILE_TABLES:
        assert by_dagster[table].equals(direct[table]) and by_dagster[table].num_rows > 0
        assert tiles.tile_info(by_dagster[table].schema.metadata) == tiles.tile_info(
            direct[table].schema.metadata
        )
    hourly = pc.unique(pc.cast(by_dagster[tiles.TILE_1H]["as_of"], "int64")).to_numpy()
    assert len(hourly) == 24 and (hourly % tiles.HOUR_US == 0).all()
    assert len(pc.unique(by_dagster[tiles.TILE_12H]["as_of"])) == 2
    assert by_dagster[tiles.CANDLES_1H].num_rows == 24
    for job in ("model_job", "daily_job"):
        keys = defs.resolve_job_def(job).asset_layer.executable_asset_keys
        assert {AssetKey(t) for t in tiles.TILE_TABLES} <= keys and AssetKey("liquidation_heatmap") in keys
    for spec in TILE_ASSETS[0].specs:
        assert spec.automation_condition == RECOMPUTE_WHEN_INPUTS_UPDATE and spec.group_name == "model"


# --- falling back, and never serving a stale tile ---------------------------------------------------------------


def test_a_missing_tile_partition_falls_back_to_the_5_minute_heatmap(lake_dir, tmp_path):
    data = Path(shutil.copytree(lake_dir, tmp_path / "data"))
    lake = Lake.at(data)
    lake.partition_file(tiles.TILE_1H, "BTCUSDT", DAYS[4]).unlink()
    lake.partition_file(tiles.CANDLES_1H, "BTCUSDT", DAYS[5]).unlink()
    with_tiles, five_minute = clients(data)
    tiled = ask(with_tiles, "BTCUSDT", "7d", "2024-12-27T00:00:00")
    assert without_source(tiled) == without_source(ask(five_minute, "BTCUSDT", "7d", "2024-12-27T00:00:00"))
    assert tiled["coverage"]["source"] == tiles.TILE_1H  # the other days still came from their tiles
    assert with_tiles.app.state.api.stats["heatmap_5m_states"] == 24  # the missing day's 24 hourly states


def test_a_heatmap_rematerialized_after_its_tile_is_not_served_from_the_stale_tile(lake_dir, tmp_path):
    data = Path(shutil.copytree(lake_dir, tmp_path / "data"))
    lake = Lake.at(data)
    day, params = DAYS[5], {"symbol": "BTCUSDT", "time_window": "30d", "end_time": "2024-12-27T00:00:00"}
    app = create_app(data, registry_file=PACKAGED_FILE)  # answer cache on
    client = TestClient(app)
    before = client.get(PATH, params=params).json()
    old_tile = pq.read_table(lake.partition_file(tiles.TILE_1H, "BTCUSDT", day))
    spec = REGISTRY.get("BTCUSDT")
    config = ModelConfig.for_symbol(spec, lookback_days=LOOKBACK, leverage_weights=[0.6, 0.1, 0.1, 0.1, 0.1])
    model_day(lake, spec, config, day)  # the model and its tiles, rewritten together
    lake.write(tiles.TILE_1H, "BTCUSDT", day, old_tile)  # the old tile back: cut from the old heatmap
    after = client.get(PATH, params=params)
    assert after.headers["x-cache"] == "miss"
    plain = ask(clients(data)[1], "BTCUSDT", "30d", "2024-12-27T00:00:00")
    assert without_source(after.json()) == without_source(plain) and after.json()["long"] != before["long"]
    assert app.state.api.stats["heatmap_5m_states"] == 6  # the stale day's 4-hour states, from the heatmap
    # Rewriting only a tile is a new answer too (the cache key holds the tiles' fingerprints).
    tiles.write_tiles(lake, "BTCUSDT", day)
    again = client.get(PATH, params=params)
    assert again.headers["x-cache"] == "miss" and without_source(again.json()) == without_source(plain)
    assert app.state.api.stats["heatmap_5m_states"] == 6  # the fresh tile served the day this time


def test_a_live_day_s_tiles_hold_the_states_its_heatmap_has(lake_dir, tmp_path):
    """Today's partition while `liq collect` writes it: the heatmap and klines end mid-day (13:37 here). The tile
    holds the hourly states up to 13:00; the last column (13:35) comes from the heatmap."""
    data = Path(shutil.copytree(lake_dir, tmp_path / "data"))
    lake, day = Lake.at(data), DAYS[-1]
    cut = datetime(2024, 12, 27, 13, 37)
    for table, column in (("liquidation_heatmap", "as_of"), ("klines", "open_time")):
        rows = lake.read(table, "BTCUSDT", [day])
        kept = rows.filter(pc.field(column) <= cut).replace_schema_metadata(rows.schema.metadata)
        lake.write(table, "BTCUSDT", day, kept)
    assert materialize_tiles(data, "BTCUSDT", day).success
    tile = pq.read_table(lake.partition_file(tiles.TILE_1H, "BTCUSDT", day))
    assert pc.max(tile["as_of"]).as_py() == datetime(2024, 12, 27, 13)
    info = tiles.tile_info(tile.schema.metadata)
    assert info["last_as_of"] == "2024-12-27T13:35:00Z" and info["lookback_days_used"] == LOOKBACK
    with_tiles, five_minute = clients(data)
    for window in ("7d", "30d"):
        tiled = ask(with_tiles, "BTCUSDT", window)
        assert tiled["as_of"][-1] == "2024-12-27T13:35:00Z" and tiled["coverage"]["source"] == tiles.TILE_1H
        assert without_source(tiled) == without_source(ask(five_minute, "BTCUSDT", window))


# --- compressed, compact answers ------------------------------------------------------------------------------


def test_gzip_when_accepted_plain_otherwise_and_no_float_noise(lake_dir):
    client = TestClient(create_app(lake_dir, registry_file=PACKAGED_FILE))
    params = {"symbol": "ETHUSDT", "time_window": "7d"}
    with client.stream("GET", PATH, params=params, headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == "gzip" and "accept-encoding" in r.headers["vary"].lower()
    with client.stream("GET", PATH, params=params, headers={"Accept-Encoding": "identity"}) as r:
        plain = b"".join(r.iter_raw())
        assert "content-encoding" not in r.headers
    assert raw[:2] == b"\x1f\x8b" and len(raw) * 2 < len(plain)
    assert json.loads(gzip.decompress(raw)) == json.loads(plain)
    with client.stream(
        "GET", PATH, params=params, headers={"Accept-Encoding": "gzip"}
    ) as r:  # from the cache
        assert r.headers["x-cache"] == "hit" and b"".join(r.iter_raw()) == raw
    symbols = client.get("/symbols", headers={"Accept-Encoding": "gzip"})  # the other answers too, above 1 KB
    assert symbols.headers.get("content-encoding") == "gzip" and symbols.json()["symbols"]
    assert (
        "content-encoding"
        not in client.get("/health", params={}, headers={"Accept-Encoding": "identity"}).headers
    )

    answer = json.loads(plain)
    grid = price_decimals(answer["price_bin_size"])
    places = candle_decimals(REGISTRY.get("ETHUSDT").price_bin)

    def decimals(x: float) -> int:
        text = repr(x)
        return len(text.split(".")[1]) if "." in text and "e" not in text else 0

    assert max(decimals(p) for p in answer["prices"]) <= grid
    candles = [v for c in ("open", "high", "low", "close") for v in answer["candles"][c] if v is not None]
    assert candles and max(decimals(v) for v in candles) <= places
    assert all(isinstance(v, int) for row in answer["long"] + answer["short"] for v in row)


# --- coverage, for the page -----------------------------------------------------------------------------------


@pytest.mark.parametrize("window", ["48h", "7d", "30d", "1y"])
def test_coverage_names_the_days_with_data_and_the_partial_lookbacks(lake_dir, window):
    with_tiles, five_minute = clients(lake_dir)
    cov = ask(with_tiles, "ETHUSDT", window)["coverage"]  # ends at the data's end, 2024-12-28 00:00
    days = {"48h": 2, "7d": 7, "30d": 30, "1y": 365}[window]
    assert cov["days_in_window"] == days
    assert cov["days_with_data"] == min(days, len(DAYS))
    assert cov["first_day"] == max(DAYS[0], DAYS[-1] - timedelta(days=days - 1)).isoformat()
    assert cov["last_day"] == DAYS[-1].isoformat()
    # The model had 1 and 2 of its 3 lookback days on the lake's first two days, all 3 after.
    expected = [
        {"date": DAYS[i].isoformat(), "lookback_days_used": i + 1, "lookback_days": LOOKBACK}
        for i in range(LOOKBACK - 1)
        if DAYS[i] >= DAYS[-1] - timedelta(days=days - 1)
    ]
    assert cov["partial_lookback"] == expected
    assert cov["source"] == {"48h": "heatmap_5m", "1y": tiles.TILE_12H}.get(window, tiles.TILE_1H)
    assert without_source(ask(five_minute, "ETHUSDT", window))["coverage"] == {
        k: v for k, v in cov.items() if k != "source"
    }


# --- what an answer reads and keeps ------------------------------------------------------------------------------


def test_another_end_time_reuses_every_day_s_kept_block(lake_dir, monkeypatch):
    """A day's [state, bucket] sums are kept under its tile's version: an answer ending an hour later (so the first
    and last days show other states) sums no day again; only its off-the-hour state is read and summed."""
    summed = []
    monkeypatch.setattr(
        grid, "block", lambda states, *a: summed.append(states.size) or real_block(states, *a)
    )
    with_tiles, five_minute = clients(lake_dir)
    api = with_tiles.app.state.api
    ask(with_tiles, "BTCUSDT", "7d", "2024-12-26T13:35:00")
    assert len(summed) == 8  # seven days' tiles (2024-12-20 .. 12-26) and the 13:35 state
    loads, summed[:] = api.day_files.stats["loads"], []
    later = ask(with_tiles, "BTCUSDT", "7d", "2024-12-26T14:35:00")
    assert summed == [1]  # the 14:35 state, read from the 5-minute heatmap
    assert api.day_files.stats["loads"] - loads == 1
    plain = ask(five_minute, "BTCUSDT", "7d", "2024-12-26T14:35:00")
    assert later["long"] == plain["long"] and later["short"] == plain["short"]


def test_the_heatmap_is_written_in_hour_row_groups_and_a_state_reads_one(lake_dir, monkeypatch):
    lake = Lake.at(lake_dir)
    path = lake.partition_file("liquidation_heatmap", "BTCUSDT", DAYS[4])
    ranges = as_of_ranges(path)
    hours = (ranges - 1) // tiles.HOUR_US  # (H, H + 1 h]: the state at a whole hour ends its group
    assert len(ranges) == 24 and (hours[:, 0] == hours[:, 1]).all() and np.unique(hours[:, 0]).size == 24
    assert pq.read_metadata(lake.partition_file("klines", "BTCUSDT", DAYS[4])).num_row_groups == 1

    read = []
    original = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_groups",
        lambda self, groups, **kw: read.append(groups) or original(self, groups, **kw),
    )
    state = epoch_us(datetime(2024, 12, 24, 13, 35))
    cells = read_heat_states(path, np.array([state]))
    assert read == [[13]]
    whole = pq.read_table(path).filter(pc.equal(pq.read_table(path)["as_of"], datetime(2024, 12, 24, 13, 35)))
    assert cells["t"].size == whole.num_rows > 0 and (cells["t"] == state).all()
    assert cells["price"].tolist() == whole["price"].to_pylist()
    assert cells["long_usd"].tolist() == whole["long_usd"].to_pylist()


def test_as_numpy_equals_pyarrow_s_own_conversion():
    stamps = [datetime(2024, 12, 24, 13, 35), datetime(2024, 12, 24, 13, 40, 0, 5)]
    us = [epoch_us(t) for t in stamps]
    for unit in ("s", "ms", "us", "ns"):
        column = pa.chunked_array(
            [pa.array(stamps[:1], pa.timestamp(unit)), pa.array(stamps[1:], pa.timestamp(unit))]
        )
        per = {"s": 10**6, "ms": 10**3, "us": 1, "ns": 1}[unit]  # what the unit keeps of each time
        expected = [u // per * per for u in us]
        assert as_numpy(column).tolist() == expected, unit
    for kind in (pa.float64(), pa.float32(), pa.int64(), pa.int32(), pa.uint16()):
        sliced = pa.array([1, 2, 3, 4, 250], kind).slice(1, 3)  # an offset into the buffer
        assert as_numpy(sliced).tolist() == sliced.to_pylist() and as_numpy(sliced).dtype.kind in "fiu"
    with_null = pa.chunked_array([pa.array([1.5, None, 2.5])])
    assert np.isnan(as_numpy(with_null)[1]) and as_numpy(with_null)[2] == 2.5


def test_an_answer_from_tiles_and_the_5_minute_heatmap_never_imports_pandas(lake_dir):
    """pyarrow's `to_numpy` imports pandas on first use: 50 MB more in every server process (`lake.as_numpy`)."""
    code = (
        "import sys; from fastapi.testclient import TestClient; from liq_pipeline.api.app import create_app;"
        f"c = TestClient(create_app({str(lake_dir)!r}, registry_file={str(PACKAGED_FILE)!r}));"
        f"assert c.get({PATH!r}, params={{'symbol': 'BTCUSDT', 'time_window': '7d', 'end_time': '2024-12-26T13:35:00'}}).status_code == 200;"
        "print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
