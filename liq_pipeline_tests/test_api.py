"""The read-only HTTP API over a lake the pipeline's own code wrote (`api.sample_lake`: the sample market's archive
files -> ingest -> model -> the model tables' writers): BTCUSDT and ETHUSDT over two days. Every expected number is
read from that lake, so the API is checked against the pipeline's time convention, not one of its own."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pytest
from fastapi.testclient import TestClient

from liq_pipeline import model_io
from liq_pipeline.api import queries
from liq_pipeline.api.app import WINDOWS, create_app
from liq_pipeline.api.cache import AnswerCache
from liq_pipeline.api.sample_lake import model_day, write_sample_lake
from liq_pipeline.lake import Lake
from liq_pipeline.model import ModelConfig, ModelInputs, run_model
from liq_pipeline.symbols import PACKAGED_FILE, load_registry

DAYS = (date(2024, 12, 27), date(2024, 12, 28))
SYMBOLS = ("BTCUSDT", "ETHUSDT")
PRICE_RANGE = {"BTCUSDT": (80_000, 110_000), "ETHUSDT": (2_800, 4_000)}
LATEST = "2024-12-29T00:00:00Z"  # the state after the last 5-minute step of the last day
HEATMAP = "/liquidations/heatmap-timeseries"
STEP = timedelta(minutes=5)
REGISTRY = load_registry(PACKAGED_FILE)


def build_lake(data_dir: Path, days=DAYS, symbols=SYMBOLS, **config) -> Lake:
    """Raw and model partitions written by the pipeline's code, with the registry's model defaults."""
    write_sample_lake(data_dir, symbols, days, registry=REGISTRY, **config)
    return Lake.at(data_dir)


def iso(t: datetime) -> str:
    return t.isoformat() + "Z"


def parse(t: str) -> datetime:
    return datetime.fromisoformat(t.replace("Z", ""))


def rows(lake: Lake, table: str, symbol: str, sql: str, params: list | None = None) -> list[tuple]:
    """`sql` over one symbol's partitions of a lake table, named `t` in the query's first FROM."""
    files = [str(p) for p in sorted((lake.root / table / f"symbol={symbol}").glob("date=*/part-0.parquet"))]
    with duckdb.connect() as con:
        return con.execute(
            sql.replace("FROM t", "FROM read_parquet(?)", 1), [files, *(params or [])]
        ).fetchall()


def registry_without(tmp_path: Path, symbol: str) -> Path:
    """A copy of the packaged registry with one [symbols.X] section cut out."""
    text = PACKAGED_FILE.read_text()
    cut = re.sub(rf"\[symbols\.{symbol}\].*?(?=\n\[symbols\.|\Z)", "", text, flags=re.S)
    assert f"[symbols.{symbol}]" not in cut and "[symbols.BTCUSDT]" in cut
    path = tmp_path / f"symbols-without-{symbol}.toml"
    path.write_text(cut)
    return path


def metrics_start_late(lake: Lake, day: date, first: datetime) -> None:
    """Cut a day's open interest before `first` (a metrics file that starts late) and remodel the days that read it:
    the model opens nothing before the first reading, so those states are empty, as real backfills can have."""
    for symbol in SYMBOLS:
        oi = lake.read("open_interest", symbol, [day])
        lake.write("open_interest", symbol, day, oi.filter(pc.field("ts") >= first))
        for model in DAYS:
            model_day(lake, REGISTRY.get(symbol), ModelConfig.for_symbol(REGISTRY.get(symbol)), model)


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("api-lake") / "data"
    metrics_start_late(build_lake(data), DAYS[0], datetime(2024, 12, 27, 0, 40))
    return data


@pytest.fixture
def client(lake_dir) -> TestClient:
    return TestClient(create_app(lake_dir, registry_file=PACKAGED_FILE))


def get(client: TestClient, path: str = HEATMAP, **params):
    return client.get(path, params=params)


# --- the seed's contract -----------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_heatmap_contract(client, lake_dir, symbol):
    r = get(client, symbol=symbol)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["symbol"] == symbol
    assert body["time_window"] == "48h"
    assert body["step_seconds"] == 15 * 60
    assert body["units"] == "USD"
    assert "model estimate" in body["note"].lower() and "end of bucket i" in body["note"]
    written = Lake.at(lake_dir).read("liquidation_heatmap", symbol, [DAYS[-1]])
    assert body["params"] == json.loads(
        written.schema.metadata[model_io.CONFIG_KEY]
    )  # the model's own config
    assert body["params"]["step_minutes"] == 5
    assert body["data_source"] == "sample"  # the raw partitions say they came from the generated sample

    times, prices = body["times"], body["prices"]
    assert len(times) == 2 * 24 * 4  # 48 h of 15-minute buckets: every one has a column, empty or not
    assert times[0] == "2024-12-27T00:00:00Z" and times[-1] == "2024-12-28T23:45:00Z"
    assert body["end_time"] == LATEST and body["missing_dates"] == []
    starts = [parse(t) for t in times]
    assert all(b - a == timedelta(minutes=15) for a, b in zip(starts, starts[1:]))
    assert [parse(t) for t in body["as_of"]] == [
        s + timedelta(minutes=15) for s in starts
    ]  # the bucket's end

    lo, hi = PRICE_RANGE[symbol]
    assert len(prices) >= 10
    assert all(lo * 0.7 < p < hi * 1.3 for p in prices)  # liquidation prices reach 20 % past the price (5x)
    assert prices == sorted(prices) and len(prices) <= 400
    assert np.allclose(np.diff(prices), body["price_bin_size"])
    registry_bin = REGISTRY.get(symbol).price_bin
    assert body["price_bin_size"] % registry_bin == 0

    for side in ("long", "short"):
        grid = np.array(body[side], dtype=float)
        assert grid.shape == (len(times), len(prices))
        assert (grid >= 0).all() and grid.sum() > 0
    # longs sit below the price, shorts above it
    close = body["candles"]["close"][-1]
    long_last, short_last = np.array(body["long"][-1]), np.array(body["short"][-1])
    assert (long_last[np.array(prices) > close + body["price_bin_size"]] == 0).all()
    assert (short_last[np.array(prices) < close - body["price_bin_size"]] == 0).all()

    candles = body["candles"]
    assert candles["time"] == times
    for key in ("open", "high", "low", "close"):
        assert len(candles[key]) == len(times)
        assert all(v is not None and lo < v < hi for v in candles[key])
    assert all(
        h >= max(o, c) and lw <= min(o, c)
        for o, h, lw, c in zip(*(candles[k] for k in ("open", "high", "low", "close")))
    )


def test_a_bucket_is_its_candle_and_the_state_at_its_end(client, lake_dir):
    """A 1-hour bucket: OHLC from the 60 one-minute klines opening in it; cells equal the model's rows whose state
    time (as_of) is the bucket's end, i.e. the state after its last 5-minute step."""
    body = get(client, symbol="BTCUSDT", time_window="7d", price_bin_size=100).json()
    assert body["step_seconds"] == 3600
    lake = Lake.at(lake_dir)
    i = body["times"].index("2024-12-28T10:00:00Z")
    assert body["as_of"][i] == "2024-12-28T11:00:00Z"
    [(o, h, lw, c, n)] = rows(
        lake,
        "klines",
        "BTCUSDT",
        "SELECT arg_min(open, open_time), max(high), min(low), arg_max(close, open_time), count(*) FROM t "
        "WHERE open_time >= TIMESTAMP '2024-12-28 10:00' AND open_time < TIMESTAMP '2024-12-28 11:00'",
    )
    assert n == 60
    assert [body["candles"][k][i] for k in ("open", "high", "low", "close")] == pytest.approx([o, h, lw, c])
    cells = dict(
        rows(
            lake,
            "liquidation_heatmap",
            "BTCUSDT",
            "SELECT price, long_usd + short_usd FROM t WHERE as_of = TIMESTAMP '2024-12-28 11:00'",
        )
    )
    assert cells and rows(
        lake,
        "liquidation_heatmap",
        "BTCUSDT",
        "SELECT count(*) FROM t WHERE ts = TIMESTAMP '2024-12-28 10:55'",
    ) == [(len(cells),)]  # the same rows: the step starting at 10:55 ends at 11:00
    got = {p: body["long"][i][j] + body["short"][i][j] for j, p in enumerate(body["prices"])}
    assert set(cells) == {p for p, v in got.items() if v > 0}
    for p, v in cells.items():
        assert got[p] == pytest.approx(v, abs=1.0)


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_a_column_still_shows_what_the_next_candle_liquidates(client, lake_dir, symbol):
    """No look-ahead: for the model's predicted liquidations (a candle's wick ran through a level), the column of
    the bucket before that candle still holds the level's mass, and the candle's own column no longer does."""
    lake = Lake.at(lake_dir)
    price_bin = REGISTRY.get(symbol).price_bin
    heat_files = [str(lake.partition_file("liquidation_heatmap", symbol, d)) for d in DAYS]
    # Liquidated levels that existed before the step (not only opened inside it): their mass at the step's start.
    events = rows(
        lake,
        "predicted_liquidations",
        symbol,
        "SELECT e.ts, e.side, e.price, CASE e.side WHEN 'long' THEN h.long_usd ELSE h.short_usd END AS before "
        "FROM t e JOIN read_parquet(?) h ON h.as_of = e.ts AND h.price = e.price "
        "WHERE before > 1000 AND e.ts >= TIMESTAMP '2024-12-27 01:00' ORDER BY before DESC LIMIT 4",
        [heat_files],
    )
    assert len(events) >= 2, "the fixture lake has liquidated levels"
    for ts, side, price, before in events:
        body = get(
            client,
            symbol=symbol,
            start_time=iso(ts - timedelta(hours=1)),
            end_time=iso(ts + timedelta(hours=1)),
            price_bin_size=price_bin,
        ).json()
        assert body["step_seconds"] == 300
        t = body["times"].index(iso(ts - STEP))  # the bucket before the liquidating candle
        assert body["times"][t + 1] == iso(ts)  # the liquidating candle's bucket
        j = body["prices"].index(price)
        grid, candles = body[side], body["candles"]
        assert grid[t][j] == pytest.approx(before, abs=1), (ts, side, price)  # still there before the candle
        assert grid[t + 1][j] == 0, (ts, side, price)  # gone from the column of the candle that crossed it
        if side == "long":  # candle t+1's wick reaches the level, candle t's does not
            assert candles["low"][t + 1] <= price < candles["low"][t]
        else:
            assert candles["high"][t] < price <= candles["high"][t + 1]


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_no_holes_an_empty_state_has_a_zero_column_and_its_candle(client, lake_dir, symbol):
    """The model writes only non-empty cells; a state with no rows (nothing opened yet: the fixture's first metrics
    reading is at 00:40) is still a column, of zeros, beside its candle. At 5 minutes, and at 15 minutes where the
    bucket's LAST state decides, not an earlier one."""
    lake = Lake.at(lake_dir)
    present = {r[0] for r in rows(lake, "liquidation_heatmap", symbol, "SELECT DISTINCT as_of FROM t")}
    fine = []
    for day in DAYS:
        start = datetime.combine(day, datetime.min.time())
        body = get(
            client, symbol=symbol, start_time=iso(start), end_time=iso(start + timedelta(days=1))
        ).json()
        assert body["step_seconds"] == 300 and body["as_of"] == [
            iso(start + STEP * (i + 1)) for i in range(288)
        ]
        fine.append(body)
    empty = {parse(a) for body in fine for a in body["as_of"]} - present
    assert empty and len(present) > 400, "the fixture has states without rows, and many with"
    quarter = get(client, symbol=symbol, time_window="48h").json()
    for body in (*fine, quarter):
        totals = np.sum(body["long"], axis=1) + np.sum(body["short"], axis=1)
        for state, total, close in zip(body["as_of"], totals, body["candles"]["close"]):
            assert (total == 0) == (parse(state) in empty), state
            assert close is not None, state
    # a 15-minute bucket whose states disagree (some empty, some not) is decided by its last one
    ends = [parse(a) for a in quarter["as_of"]]
    assert any(
        ((a in empty) != (a - STEP in empty)) or ((a in empty) != (a - 2 * STEP in empty)) for a in ends
    ), "a bucket whose states disagree"


def test_a_day_without_a_heatmap_partition_is_zeros_and_named(tmp_path, lake_dir):
    data = tmp_path / "data"
    shutil.copytree(lake_dir, data)
    lake = build_lake(data, days=[date(2024, 12, 29)], symbols=["BTCUSDT"])
    lake.partition_file("liquidation_heatmap", "BTCUSDT", DAYS[1]).unlink()
    client = TestClient(create_app(data, registry_file=PACKAGED_FILE))
    body = get(client, symbol="BTCUSDT", time_window="3d").json()
    assert body["missing_dates"] == ["2024-12-28"]
    assert len(body["times"]) == 3 * 48 and body["times"][0] == "2024-12-27T00:00:00Z"
    totals = np.sum(body["long"], axis=1) + np.sum(body["short"], axis=1)
    missing = np.array([(parse(t) - STEP).date() == DAYS[1] for t in body["as_of"]])
    assert missing.sum() == 48 and (totals[missing] == 0).all()  # the day's 48 states: zeros, not left out
    assert (totals[~missing] > 0).sum() > 90
    assert all(c is not None for c in body["candles"]["close"])  # the klines are there: every candle is


@pytest.mark.parametrize("window", list(WINDOWS))
def test_each_window_has_its_step(client, window):
    expected = {
        "12h": 300,
        "24h": 300,
        "48h": 900,
        "3d": 1800,
        "7d": 3600,
        "14d": 7200,
        "30d": 14400,
        "90d": 43200,
        "180d": 86400,
        "1y": 86400,
    }[window]
    r = get(client, symbol="ETHUSDT", time_window=window)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["step_seconds"] == expected
    length = WINDOWS[window][0]
    assert body["end_time"] == LATEST and body["as_of"][-1] == LATEST
    assert len(body["times"]) == min(length, timedelta(days=2)) // timedelta(seconds=expected)
    assert len(body["long"]) == len(body["times"]) == len(body["candles"]["close"]) == len(body["as_of"])


def test_start_and_end_time_override(client, lake_dir):
    r = get(client, symbol="BTCUSDT", start_time="2024-12-27T06:00:00", end_time="2024-12-27T12:00:00Z")
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["step_seconds"] == 300  # a 6-hour range is drawn at the 12h window's step
    assert body["times"][0] == "2024-12-27T06:00:00Z" and body["times"][-1] == "2024-12-27T11:55:00Z"
    assert body["as_of"][0] == "2024-12-27T06:05:00Z" and body["as_of"][-1] == "2024-12-27T12:00:00Z"
    # an offset is converted to UTC
    r2 = get(
        client, symbol="BTCUSDT", start_time="2024-12-27T07:00:00+01:00", end_time="2024-12-27T13:00:00+01:00"
    )
    assert r2.json()["times"] == body["times"] and r2.json()["long"] == body["long"]
    # only end_time: the window before it
    r3 = get(client, symbol="BTCUSDT", time_window="12h", end_time="2024-12-28T00:00:00")
    assert r3.json()["times"][0] == "2024-12-27T12:00:00Z" and len(r3.json()["times"]) == 144

    # an end inside a bucket: its column is the state at the end time, its candle stops there too
    part = get(client, symbol="BTCUSDT", time_window="7d", end_time="2024-12-28T10:30:00").json()
    assert part["times"][-1] == "2024-12-28T10:00:00Z" and part["as_of"][-1] == "2024-12-28T10:30:00Z"
    [(high, n)] = rows(
        Lake.at(lake_dir),
        "klines",
        "BTCUSDT",
        "SELECT max(high), count(*) FROM t "
        "WHERE open_time >= TIMESTAMP '2024-12-28 10:00' AND open_time < TIMESTAMP '2024-12-28 10:30'",
    )
    assert n == 30 and part["candles"]["high"][-1] == pytest.approx(high)


def _engine_inputs(day: date, steps: int, price: float) -> ModelInputs:
    """Two hours of 5-minute steps: a gentle wave with rising open interest (positions keep opening)."""
    i = np.arange(steps)
    close = price * (1 + 0.004 * np.sin(i / 3.0))
    open_ = np.concatenate([[price], close[:-1]])
    start = np.datetime64(datetime.combine(day, datetime.min.time()), "ns")
    return ModelInputs(
        ts=start + i * np.timedelta64(5, "m"),
        open=open_,
        high=np.maximum(open_, close) * 1.0005,
        low=np.minimum(open_, close) * 0.9995,
        close=close,
        oi=1_000.0 + 40.0 * i,
    )


def test_a_bucket_is_its_last_state_not_a_sum_and_coarser_bins_sum(tmp_path):
    """A small engine run written by the model's writer: each 1-hour column equals the engine's state after the
    bucket's last 5-minute step (not a sum over steps); a coarser price bin sums neighbouring bins."""
    spec = REGISTRY.get("BNBUSDT")
    day = date(2024, 12, 28)
    result = run_model(spec, ModelConfig.for_symbol(spec), _engine_inputs(day, 24, 700.0))
    lake = Lake.at(tmp_path / "data")
    lake.write("liquidation_heatmap", "BNBUSDT", day, model_io.heatmap_table(result))
    client = TestClient(create_app(tmp_path / "data", registry_file=PACKAGED_FILE))

    body = get(client, symbol="BNBUSDT", time_window="7d", price_bin_size=spec.price_bin).json()
    assert body["step_seconds"] == 3600
    assert body["times"] == ["2024-12-28T00:00:00Z", "2024-12-28T01:00:00Z"]
    assert body["as_of"] == ["2024-12-28T01:00:00Z", "2024-12-28T02:00:00Z"]
    assert body["candles"]["close"] == [None, None]  # no klines for this symbol: aligned nulls
    for column, step in ((0, 11), (1, 23)):  # the 12th and the 24th step end the buckets
        for side, state in (("long", result.long_usd[step]), ("short", result.short_usd[step])):
            want = {float(p): v for p, v in zip(result.prices, state) if v >= 0.5}
            got = {p: v for p, v in zip(body["prices"], body[side][column]) if v > 0}
            assert want and set(got) == set(want)
            assert [got[p] for p in want] == pytest.approx(list(want.values()), abs=0.5)
    assert sum(body["long"][0]) < sum(body["long"][1]) < result.long_usd[:24].sum() / 10  # a state, not a sum

    coarse = get(client, symbol="BNBUSDT", time_window="7d", price_bin_size=2 * spec.price_bin).json()
    assert coarse["price_bin_size"] == 2 * spec.price_bin
    for side in ("long", "short"):
        fine = dict(zip(body["prices"], zip(*body[side])))
        for j, centre in enumerate(coarse["prices"]):
            parts = [fine.get(centre - spec.price_bin / 2), fine.get(centre + spec.price_bin / 2)]
            summed = np.sum([p for p in parts if p is not None], axis=0) if any(parts) else np.zeros(2)
            assert [row[j] for row in coarse[side]] == pytest.approx(summed, abs=1)


def test_price_buckets_coarsen_by_themselves_and_too_many_are_refused(tmp_path, lake_dir):
    """Under a registry whose BTC bin is 1 USDT the lake's 100-USDT cells span ~40,000 bins: the automatic bin grows
    to keep <= 400 rows, and an explicit 1-USDT bin is refused with the smallest bin that works."""
    fine = tmp_path / "fine.toml"
    fine.write_text(PACKAGED_FILE.read_text().replace("price_bin = 100.0", "price_bin = 1.0", 1))
    client = TestClient(create_app(lake_dir, registry_file=fine))
    body = get(client, symbol="BTCUSDT").json()
    assert len(body["prices"]) <= 400 and body["price_bin_size"] >= 100 and body["price_bin_size"] % 1 == 0
    reference = get(TestClient(create_app(lake_dir, registry_file=PACKAGED_FILE)), symbol="BTCUSDT").json()
    assert np.sum(body["long"]) == pytest.approx(np.sum(reference["long"]), rel=1e-6)
    r = get(client, symbol="BTCUSDT", price_bin_size=1)
    assert r.status_code == 400 and "5000" in r.json()["detail"] and "use at least" in r.json()["detail"]


# --- bad input ---------------------------------------------------------------------------------------------


def test_unknown_symbol_lists_the_supported_ones(client):
    for path in (HEATMAP, "/liquidations/levels"):
        r = get(client, path, symbol="FOOUSDT")
        assert r.status_code == 400
        detail = r.json()["detail"]
        assert "FOOUSDT" in detail
        for symbol in REGISTRY.symbols:
            assert symbol in detail
        assert r.json()["supported_symbols"] == REGISTRY.symbols


@pytest.mark.parametrize(
    "symbol",
    [
        "btcusdt",
        "BTC",
        "../../etc/passwd",
        "BTCUSDT'; DROP TABLE x; --",
        "A" * 21,
        "",
        "BTC USDT",
        "BTCUSDT/../X",
        "BTCUSDT*",
        "ＢＴＣＵＳＤＴ",
        "BTCUSDT\n",
    ],
)
def test_malformed_symbol_is_400(client, symbol):
    r = get(client, symbol=symbol)
    assert r.status_code == 400
    assert "malformed symbol" in r.json()["detail"]


def test_symbol_without_data_is_404_saying_which_dates_exist(client):
    r = get(client, symbol="BNBUSDT")
    assert r.status_code == 404
    assert "BNBUSDT" in r.json()["detail"] and "no dates exist" in r.json()["detail"]
    assert r.json()["available_dates"] is None
    r = get(client, "/liquidations/levels", symbol="SOLUSDT")
    assert r.status_code == 404 and "no dates exist" in r.json()["detail"]


def test_window_without_data_is_404_with_the_dates(client):
    for params in ({"end_time": "2023-01-01T00:00:00"}, {"start_time": "2024-12-29T00:00:00"}):
        r = get(client, symbol="BTCUSDT", **params)
        assert r.status_code == 404, params
        assert "2024-12-27 to 2024-12-28 (2 days)" in r.json()["detail"]
        assert r.json()["available_dates"] == {"start": "2024-12-27", "end": "2024-12-28", "days": 2}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"time_window": "5m"}, "time_window"),
        ({"time_window": "2d"}, "time_window"),
        ({"time_window": ""}, "time_window"),
        ({"start_time": "2024-12-28T00:00:00", "end_time": "2024-12-27T00:00:00"}, "must be after"),
        ({"start_time": "2024-12-28T00:00:00", "end_time": "2024-12-28T00:00:00"}, "must be after"),
        (
            {"start_time": "2022-01-01T00:00:00", "end_time": "2024-12-28T00:00:00"},
            "longest supported window",
        ),
        ({"start_time": "yesterday"}, "start_time"),
        ({"end_time": "0001-01-01T00:00:00"}, "out of range"),
        ({"end_time": "9999-12-31T23:59:59"}, "out of range"),
        # an offset that moves the time out of datetime's range (years 1 and 9999) was a 500
        ({"start_time": "0001-01-01T00:00:00+01:00"}, "out of range"),
        ({"end_time": "0001-01-01T00:00:00+01:00"}, "out of range"),
        ({"start_time": "9999-12-31T23:59:59-01:00"}, "out of range"),
        ({"end_time": "9999-12-31T23:30:00-14:00"}, "out of range"),
        ({"price_bin_size": "0"}, "price_bin_size"),
        ({"price_bin_size": "-100"}, "price_bin_size"),
        ({"price_bin_size": "abc"}, "price_bin_size"),
        ({"price_bin_size": "150"}, "multiple"),
        ({"price_bin_size": "0.1"}, "multiple"),
        ({"price_bin_size": "inf"}, "price_bin_size"),
        ({"price_bin_size": "nan"}, "price_bin_size"),
        ({"price_bin_size": "1e300"}, "too large"),
    ],
)
def test_bad_parameters_are_4xx_with_a_message(client, params, message):
    r = get(client, symbol="BTCUSDT", **params)
    assert r.status_code in (400, 422), r.text
    assert message in json.dumps(r.json())


def test_good_multiple_bin_size(client):
    body = get(client, symbol="BTCUSDT", price_bin_size=500).json()
    assert body["price_bin_size"] == 500.0
    assert np.allclose(np.diff(body["prices"]), 500.0)
    fine = get(client, symbol="BTCUSDT", price_bin_size=100).json()
    # re-binning keeps the total notional of each column
    assert np.allclose(np.sum(body["long"], axis=1), np.sum(fine["long"], axis=1), atol=len(fine["prices"]))


def test_a_partition_from_before_as_of_is_a_503_that_says_what_to_do(tmp_path, lake_dir):
    data = tmp_path / "data"
    shutil.copytree(lake_dir, data)
    lake = Lake.at(data)
    old = lake.read("liquidation_heatmap", "ETHUSDT", [DAYS[1]]).drop_columns(["as_of"])
    lake.write("liquidation_heatmap", "ETHUSDT", DAYS[1], old)
    r = get(TestClient(create_app(data, registry_file=PACKAGED_FILE)), symbol="ETHUSDT", time_window="12h")
    assert r.status_code == 503 and "Re-materialize liquidation_heatmap for ETHUSDT" in r.json()["detail"]


# --- the other endpoints -------------------------------------------------------------------------------------


def test_levels_are_the_newest_state_of_the_levels_table(client, lake_dir):
    body = get(client, "/liquidations/levels", symbol="ETHUSDT").json()
    assert body["as_of"] == LATEST and "as_of" in body["note"]
    assert body["side"] == "both" and body["top"] == 10
    table = Lake.at(lake_dir).read("liquidation_levels", "ETHUSDT", [DAYS[-1]])
    end = table.filter(pc.field("is_end")).to_pandas().sort_values(["side", "rank"])
    assert str(end["as_of"].max()) == "2024-12-29 00:00:00"
    assert [(lv["side"], lv["rank"], lv["price_low"], lv["notional_usd"]) for lv in body["levels"]] == [
        (r.side, r.rank, r.price_low, pytest.approx(r.notional_usd)) for r in end.itertuples()
    ]
    close = end["current_price"].iloc[0]
    longs = [lv for lv in body["levels"] if lv["side"] == "long"]
    shorts = [lv for lv in body["levels"] if lv["side"] == "short"]
    assert longs and shorts and [lv["rank"] for lv in longs] == list(range(1, len(longs) + 1))
    assert all(lv["price_low"] <= lv["price"] <= lv["price_high"] for lv in body["levels"])
    assert all(lv["price_high"] < close for lv in longs) and all(lv["price_low"] > close for lv in shorts)
    assert all(lv["distance_pct"] > 0 for lv in body["levels"])
    assert [lv["notional_usd"] for lv in longs] == sorted((lv["notional_usd"] for lv in longs), reverse=True)

    body = get(client, "/liquidations/levels", symbol="BTCUSDT", side="short", top=2).json()
    assert [lv["side"] for lv in body["levels"]] == ["short"] * 2 and [
        lv["rank"] for lv in body["levels"]
    ] == [1, 2]
    for bad in ({"top": 0}, {"top": 51}, {"side": "up"}, {"top": "x"}):
        assert get(client, "/liquidations/levels", symbol="BTCUSDT", **bad).status_code in (400, 422)


def test_symbols(client):
    body = client.get("/symbols").json()
    assert [s["symbol"] for s in body["symbols"]] == REGISTRY.symbols
    by = {s["symbol"]: s for s in body["symbols"]}
    assert by["BTCUSDT"]["price_bin"] == 100.0 and by["ETHUSDT"]["price_bin"] == 5.0
    assert by["BTCUSDT"]["heatmap_dates"] == {"start": "2024-12-27", "end": "2024-12-28", "days": 2}
    assert by["BNBUSDT"]["heatmap_dates"] is None


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    btc = body["symbols"]["BTCUSDT"]
    assert btc["latest_data_day"] == "2024-12-28"
    assert btc["latest_heatmap_as_of"] == LATEST
    expected_age = (parse(body["checked_at"]) - parse(LATEST)).total_seconds()
    assert abs(btc["heatmap_age_seconds"] - expected_age) <= 1
    assert body["symbols"]["BNBUSDT"]["latest_heatmap_as_of"] is None
    assert set(body["symbols"]) == set(REGISTRY.symbols)


def test_openapi_and_page(client):
    schema = client.get("/openapi.json").json()
    assert {"/liquidations/heatmap-timeseries", "/liquidations/levels", "/symbols", "/health"} <= set(
        schema["paths"]
    )
    operation = schema["paths"]["/liquidations/heatmap-timeseries"]["get"]
    for text in (operation["description"], operation["responses"]["200"]["description"]):
        assert "state at the end of bucket i" in text and "candles[i]" in text
    page = client.get("/")
    assert page.status_code == 200 and 'id="heatmap"' in page.text and "/static/plotly.min.js" in page.text
    assert "cdn" not in page.text.lower() and "end of its time bucket" in page.text
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/..%2Fapp.py").status_code == 404


# --- caching and the registry as the whitelist ----------------------------------------------------------------


def test_cache_hits_and_new_data_is_never_hidden(tmp_path, lake_dir):
    data = tmp_path / "data"
    shutil.copytree(lake_dir, data)
    app = create_app(data, registry_file=PACKAGED_FILE)
    client = TestClient(app)
    stats = app.state.api.stats

    first = get(client, symbol="BTCUSDT", time_window="24h")
    assert first.headers["x-cache"] == "miss" and stats["heatmap_queries"] == 1
    second = get(client, symbol="BTCUSDT", time_window="24h")
    assert second.headers["x-cache"] == "hit" and stats["heatmap_queries"] == 1 and stats["cache_hits"] == 1
    assert second.content == first.content
    other = get(client, symbol="BTCUSDT", time_window="48h")
    assert other.headers["x-cache"] == "miss" and stats["heatmap_queries"] == 2

    # a new day lands: the default window now ends a day later
    build_lake(data, days=[date(2024, 12, 29)], symbols=["BTCUSDT"])
    third = get(client, symbol="BTCUSDT", time_window="24h")
    assert third.headers["x-cache"] == "miss"
    assert third.json()["as_of"][-1] == "2024-12-30T00:00:00Z" != first.json()["as_of"][-1]

    # a past day re-materialized in place with another leverage mix (same file count): the new numbers show
    past = {"symbol": "BTCUSDT", "start_time": "2024-12-28T00:00:00", "end_time": "2024-12-29T00:00:00"}
    before = get(client, **past)
    assert get(client, **past).headers["x-cache"] == "hit"
    path = Lake.at(data).partition_file("liquidation_heatmap", "BTCUSDT", DAYS[1])
    mtime = path.stat().st_mtime_ns
    spec = REGISTRY.get("BTCUSDT")
    model_day(
        Lake.at(data), spec, ModelConfig.for_symbol(spec, leverage_weights=[0.6, 0.1, 0.1, 0.1, 0.1]), DAYS[1]
    )
    os.utime(path, ns=(mtime, mtime))  # even with the old mtime: the file is new (inode, size)
    after = get(client, **past)
    assert after.headers["x-cache"] == "miss"
    assert after.json()["params"]["leverage_weights"] == pytest.approx([0.6, 0.1, 0.1, 0.1, 0.1])
    assert after.json()["long"] != before.json()["long"]

    # the cache can be turned off
    c2 = TestClient(create_app(data, registry_file=PACKAGED_FILE, cache=False))
    assert get(c2, **past).headers["x-cache"] == get(c2, **past).headers["x-cache"] == "miss"


def test_a_day_added_or_removed_shows_though_the_listing_kept_its_folders(tmp_path, lake_dir):
    """The API keeps each symbol folder's day list while the folder's mtime stays (`queries._day_folders`): adding
    or removing a day changes it, so the next answer sees the day, and a folder changed within the last 2 s is
    always read again."""
    data = tmp_path / "data"
    shutil.copytree(lake_dir, data)
    lake = Lake.at(data)
    hour_ago = datetime.now().timestamp() - 3600
    for table in ("liquidation_heatmap", "klines"):
        os.utime(lake.root / table / "symbol=BTCUSDT", (hour_ago, hour_ago))  # settled: the day list is kept
    client = TestClient(create_app(data, registry_file=PACKAGED_FILE, cache=False))
    assert get(client, symbol="BTCUSDT", time_window="24h").json()["as_of"][-1] == LATEST
    assert queries._FOLDERS[str(lake.root / "liquidation_heatmap" / "symbol=BTCUSDT")][1][-1][0] == DAYS[-1]

    build_lake(data, days=[date(2024, 12, 29)], symbols=["BTCUSDT"])
    assert get(client, symbol="BTCUSDT", time_window="24h").json()["as_of"][-1] == "2024-12-30T00:00:00Z"

    for table in ("liquidation_heatmap", "klines"):
        os.utime(lake.root / table / "symbol=BTCUSDT", (hour_ago, hour_ago))
    assert get(client, symbol="BTCUSDT", time_window="24h").json()["as_of"][-1] == "2024-12-30T00:00:00Z"
    shutil.rmtree(lake.partition_file("liquidation_heatmap", "BTCUSDT", date(2024, 12, 29)).parent)
    assert get(client, symbol="BTCUSDT", time_window="24h").json()["as_of"][-1] == LATEST


def test_the_answer_cache_is_bounded_by_bytes_least_recently_used_first():
    cache = AnswerCache(max_bytes=100)
    cache.put("a", b"x" * 40)
    cache.put("b", b"y" * 40)
    assert cache.get("a") == b"x" * 40  # a is now the most recent
    cache.put("c", b"z" * 40)  # 120 bytes: b, the least recent, goes
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    cache.put("big", b"w" * 101)  # larger than the whole cache: not kept, nothing evicted for it
    assert cache.get("big") is None and len(cache) == 2
    cache.put("a", b"x" * 10)  # replacing an entry counts its new size only
    cache.put("d", b"d" * 50)
    assert cache.get("a") and cache.get("c") and cache.get("d")


def test_registry_is_the_whitelist(tmp_path, lake_dir, monkeypatch):
    without_eth = registry_without(tmp_path, "ETHUSDT")

    # an explicit registry file
    client = TestClient(create_app(lake_dir, registry_file=without_eth))
    r = get(client, symbol="ETHUSDT")
    assert r.status_code == 400 and "ETHUSDT" not in r.json()["supported_symbols"]
    assert get(client, symbol="BTCUSDT").status_code == 200
    assert "ETHUSDT" not in [s["symbol"] for s in client.get("/symbols").json()["symbols"]]
    assert "ETHUSDT" not in client.get("/health").json()["symbols"]
    assert get(client, "/liquidations/levels", symbol="ETHUSDT").status_code == 400

    # LIQ_SYMBOLS_FILE, read at request time
    live = tmp_path / "live.toml"
    live.write_text(PACKAGED_FILE.read_text())
    monkeypatch.setenv("LIQ_SYMBOLS_FILE", str(live))
    client = TestClient(create_app(lake_dir))
    assert get(client, symbol="ETHUSDT").status_code == 200
    # the file is edited while the API runs: ETHUSDT is gone without a restart
    stamp = live.stat().st_mtime_ns
    live.write_text(without_eth.read_text())
    os.utime(live, ns=(stamp + 1_000_000, stamp + 1_000_000))
    r = get(client, symbol="ETHUSDT")
    assert r.status_code == 400 and "unknown symbol" in r.json()["detail"]
    # a broken edit does not take the API down: the last good registry keeps serving
    live.write_text("this is not toml [")
    os.utime(live, ns=(stamp + 2_000_000, stamp + 2_000_000))
    assert get(client, symbol="BTCUSDT").status_code == 200
    health = client.get("/health").json()
    assert health["status"] == "ok" and "not valid TOML" in health["registry_error"]
    assert "ETHUSDT" not in health["symbols"]
