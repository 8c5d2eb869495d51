"""The read-only HTTP API over a small lake written in the tests: BTCUSDT (~95,000, bin 100) and ETHUSDT (~3,400,
bin 5) over two days, plus hand-made partitions where a test needs exact numbers."""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from liq_pipeline.api.app import WINDOWS, create_app
from liq_pipeline.api.synthetic import SYNTHETIC_CONFIG, write_synthetic_lake
from liq_pipeline.lake import Lake
from liq_pipeline.symbols import PACKAGED_FILE, load_registry

DAYS = (date(2024, 12, 27), date(2024, 12, 28))
SYMBOLS = {"BTCUSDT": (95_000.0, 100.0), "ETHUSDT": (3_400.0, 5.0)}
PRICE_RANGE = {"BTCUSDT": (80_000, 110_000), "ETHUSDT": (2_800, 4_000)}
LATEST_TS = "2024-12-29T00:00:00Z"  # the last 5-minute step of the last day ends at midnight
HEATMAP = "/liquidations/heatmap-timeseries"


def build_lake(data_dir: Path, days=DAYS, n_bins: int = 80) -> Lake:
    """Heatmap, levels and klines partitions for BTCUSDT and ETHUSDT: 288 steps a day on the registry price grid."""
    return write_synthetic_lake(data_dir, SYMBOLS, list(days), n_bins=n_bins)


def write_heatmap(
    lake: Lake, symbol: str, day: date, rows: list[tuple[datetime, float, float, float]]
) -> Path:
    """One heatmap partition with exactly these (ts, price, long_usd, short_usd) rows."""
    ts, price, long_usd, short_usd = zip(*rows)
    table = pa.table(
        {
            "symbol": pa.array([symbol] * len(rows)),
            "date": pa.array([day] * len(rows), pa.date32()),
            "ts": pa.array(ts, pa.timestamp("us")),
            "price": pa.array(price, pa.float64()),
            "long_usd": pa.array(long_usd, pa.float64()),
            "short_usd": pa.array(short_usd, pa.float64()),
        }
    )
    return lake.write("liquidation_heatmap", symbol, day, table)


def registry_without(tmp_path: Path, symbol: str) -> Path:
    """A copy of the packaged registry with one [symbols.X] section cut out."""
    text = PACKAGED_FILE.read_text()
    cut = re.sub(rf"\[symbols\.{symbol}\].*?(?=\n\[symbols\.|\Z)", "", text, flags=re.S)
    assert f"[symbols.{symbol}]" not in cut and "[symbols.BTCUSDT]" in cut
    path = tmp_path / f"symbols-without-{symbol}.toml"
    path.write_text(cut)
    return path


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("api-lake") / "data"
    build_lake(data)
    return data


@pytest.fixture
def client(lake_dir) -> TestClient:
    return TestClient(create_app(lake_dir, registry_file=PACKAGED_FILE))


def get(client: TestClient, path: str = HEATMAP, **params):
    return client.get(path, params=params)


# --- the seed's contract -----------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_heatmap_contract(client, symbol):
    r = get(client, symbol=symbol)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["symbol"] == symbol
    assert body["time_window"] == "48h"
    assert body["step_seconds"] == 15 * 60
    assert body["units"] == "USD"
    assert "model estimate" in body["note"].lower()
    assert body["params"] == SYNTHETIC_CONFIG

    times, prices = body["times"], body["prices"]
    assert len(times) == 2 * 24 * 4  # 48 h of 15-minute buckets, every one has data
    assert times[0] == "2024-12-27T00:00:00Z" and times[-1] == "2024-12-28T23:45:00Z"
    parsed = [datetime.fromisoformat(t.replace("Z", "")) for t in times]
    assert all(b - a == timedelta(minutes=15) for a, b in zip(parsed, parsed[1:]))

    lo, hi = PRICE_RANGE[symbol]
    assert len(prices) >= 10
    assert all(lo < p < hi for p in prices)
    assert prices == sorted(prices)
    spacing = np.diff(prices)
    assert np.allclose(spacing, body["price_bin_size"])
    # 80 bins a day: no automatic coarsening, the registry bin
    assert body["price_bin_size"] == load_registry(PACKAGED_FILE).get(symbol).price_bin

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


def test_candles_aggregate_klines_and_cells_take_last_step(client, lake_dir):
    """A 1-hour bucket: OHLC from its 60 one-minute klines, cells equal to its last 5-minute step."""
    r = get(client, symbol="BTCUSDT", time_window="7d")
    body = r.json()
    assert body["step_seconds"] == 3600
    lake = Lake.at(lake_dir)
    con = lake.connect_readonly()
    i = body["times"].index("2024-12-28T10:00:00Z")
    o, h, lw, c = con.execute(
        "SELECT arg_min(open, open_time), max(high), min(low), arg_max(close, open_time) FROM klines_1m_history "
        "WHERE symbol = 'BTCUSDT' AND open_time >= TIMESTAMP '2024-12-28 10:00' AND open_time < TIMESTAMP '2024-12-28 11:00'"
    ).fetchone()
    assert [body["candles"][k][i] for k in ("open", "high", "low", "close")] == pytest.approx([o, h, lw, c])
    cells = dict(
        con.execute(
            "SELECT price, long_usd + short_usd FROM liquidation_heatmap_history "
            "WHERE symbol = 'BTCUSDT' AND ts = TIMESTAMP '2024-12-28 11:00'"
        ).fetchall()
    )
    got = {p: body["long"][i][j] + body["short"][i][j] for j, p in enumerate(body["prices"])}
    assert set(cells) == {p for p, v in got.items() if v > 0}
    for p, v in cells.items():
        assert got[p] == pytest.approx(v, abs=1.0)


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
    assert body["end_time"] == LATEST_TS
    assert len(body["times"]) == min(length, timedelta(days=2)) // timedelta(seconds=expected)
    assert len(body["long"]) == len(body["times"]) == len(body["candles"]["close"])


def test_start_and_end_time_override(client):
    r = get(client, symbol="BTCUSDT", start_time="2024-12-27T06:00:00", end_time="2024-12-27T12:00:00Z")
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["step_seconds"] == 300  # a 6-hour range is drawn at the 12h window's step
    assert body["times"][0] == "2024-12-27T06:00:00Z" and body["times"][-1] == "2024-12-27T11:55:00Z"
    # an offset is converted to UTC
    r2 = get(
        client, symbol="BTCUSDT", start_time="2024-12-27T07:00:00+01:00", end_time="2024-12-27T13:00:00+01:00"
    )
    assert r2.json()["times"] == body["times"]
    # only end_time: the window before it
    r3 = get(client, symbol="BTCUSDT", time_window="12h", end_time="2024-12-28T00:00:00")
    assert r3.json()["times"][0] == "2024-12-27T12:00:00Z" and len(r3.json()["times"]) == 144


def test_rebinning_sums_and_last_step_of_bucket(tmp_path):
    """Hand-made cells: a bucket shows its last step (a state, not a sum over steps); coarser bins sum."""
    lake = Lake.at(tmp_path / "data")
    day = date(2024, 12, 28)
    t0 = datetime(2024, 12, 28)
    rows = []
    for k in range(1, 25):  # two hours of 5-minute steps
        ts = t0 + timedelta(minutes=5 * k)
        rows += [(ts, 700.0, 10.0 * k, 0.0), (ts, 700.5, 1.0, 0.0), (ts, 702.0, 0.0, 3.0 * k)]
    write_heatmap(lake, "BNBUSDT", day, rows)
    client = TestClient(create_app(tmp_path / "data", registry_file=PACKAGED_FILE))

    body = get(client, symbol="BNBUSDT", time_window="7d").json()
    assert body["step_seconds"] == 3600
    assert body["times"] == ["2024-12-28T00:00:00Z", "2024-12-28T01:00:00Z"]
    assert body["prices"] == [700.0, 700.5, 701.0, 701.5, 702.0]
    assert body["long"] == [[120, 1, 0, 0, 0], [240, 1, 0, 0, 0]]  # steps 12 and 24, not sums of steps
    assert body["short"] == [[0, 0, 0, 0, 36], [0, 0, 0, 0, 72]]
    assert body["candles"]["close"] == [None, None]  # no klines for this symbol: aligned nulls

    body = get(client, symbol="BNBUSDT", time_window="7d", price_bin_size=1.0).json()
    assert body["price_bin_size"] == 1.0
    assert body["prices"] == [700.25, 701.25, 702.25]  # centres of [699.75, 700.75) ...
    assert body["long"] == [[121, 0, 0], [241, 0, 0]]
    assert body["short"] == [[0, 0, 36], [0, 0, 72]]

    # the bin coarsens by itself when the range is wide, to at most ~400 price rows
    write_heatmap(lake, "BNBUSDT", day, rows + [(t0 + timedelta(hours=2), 5_000.0, 0.0, 1.0)])
    body = get(client, symbol="BNBUSDT", time_window="7d").json()
    assert len(body["prices"]) <= 400 and body["price_bin_size"] % 0.5 == 0
    assert sum(map(sum, body["long"])) == 120 + 1 + 240 + 1
    # an explicit bin that would give more than 5000 rows is refused
    r = get(client, symbol="BNBUSDT", time_window="7d", price_bin_size=0.5)
    assert r.status_code == 400 and "5000" in r.json()["detail"]


# --- bad input ---------------------------------------------------------------------------------------------


def test_unknown_symbol_lists_the_supported_ones(client):
    for path in (HEATMAP, "/liquidations/levels"):
        r = get(client, path, symbol="FOOUSDT")
        assert r.status_code == 400
        detail = r.json()["detail"]
        assert "FOOUSDT" in detail
        for symbol in load_registry(PACKAGED_FILE).symbols:
            assert symbol in detail
        assert r.json()["supported_symbols"] == load_registry(PACKAGED_FILE).symbols


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
    r = get(client, symbol="BTCUSDT", end_time="2023-01-01T00:00:00")
    assert r.status_code == 404
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
    fine = get(client, symbol="BTCUSDT").json()
    # re-binning keeps the total notional of each time step
    assert np.allclose(np.sum(body["long"], axis=1), np.sum(fine["long"], axis=1), atol=len(fine["prices"]))


# --- the other endpoints -------------------------------------------------------------------------------------


def test_levels(client):
    body = get(client, "/liquidations/levels", symbol="ETHUSDT").json()
    assert body["ts"] == LATEST_TS
    assert body["side"] == "both" and body["top"] == 10
    longs = [lv for lv in body["levels"] if lv["side"] == "long"]
    shorts = [lv for lv in body["levels"] if lv["side"] == "short"]
    assert len(longs) == len(shorts) == 10
    assert [lv["rank"] for lv in longs] == list(range(1, 11))
    assert all(lv["price_low"] < lv["price"] < lv["price_high"] for lv in body["levels"])
    assert all(2_800 < lv["price"] < 4_000 for lv in body["levels"])
    assert all(lv["distance_pct"] < 0 for lv in longs) and all(lv["distance_pct"] > 0 for lv in shorts)
    assert [lv["notional_usd"] for lv in longs] == sorted((lv["notional_usd"] for lv in longs), reverse=True)

    body = get(client, "/liquidations/levels", symbol="BTCUSDT", side="short", top=3).json()
    assert [lv["side"] for lv in body["levels"]] == ["short"] * 3
    assert all(lv["price"] > 90_000 for lv in body["levels"])
    for bad in ({"top": 0}, {"top": 51}, {"side": "up"}, {"top": "x"}):
        assert get(client, "/liquidations/levels", symbol="BTCUSDT", **bad).status_code in (400, 422)


def test_symbols(client):
    body = client.get("/symbols").json()
    registry = load_registry(PACKAGED_FILE)
    assert [s["symbol"] for s in body["symbols"]] == registry.symbols
    by = {s["symbol"]: s for s in body["symbols"]}
    assert by["BTCUSDT"]["price_bin"] == 100.0 and by["ETHUSDT"]["price_bin"] == 5.0
    assert by["BTCUSDT"]["heatmap_dates"] == {"start": "2024-12-27", "end": "2024-12-28", "days": 2}
    assert by["BNBUSDT"]["heatmap_dates"] is None


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    btc = body["symbols"]["BTCUSDT"]
    assert btc["latest_data_day"] == "2024-12-28"
    assert btc["latest_heatmap_ts"] == LATEST_TS
    expected_age = (datetime.fromisoformat(body["checked_at"][:-1]) - datetime(2024, 12, 29)).total_seconds()
    assert abs(btc["heatmap_age_seconds"] - expected_age) <= 1
    assert body["symbols"]["BNBUSDT"]["latest_heatmap_ts"] is None
    assert set(body["symbols"]) == set(load_registry(PACKAGED_FILE).symbols)


def test_openapi_and_page(client):
    schema = client.get("/openapi.json").json()
    assert {"/liquidations/heatmap-timeseries", "/liquidations/levels", "/symbols", "/health"} <= set(
        schema["paths"]
    )
    page = client.get("/")
    assert page.status_code == 200 and 'id="heatmap"' in page.text and "/static/plotly.min.js" in page.text
    assert "cdn" not in page.text.lower()
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/..%2Fapp.py").status_code == 404


# --- caching and the registry as the whitelist ----------------------------------------------------------------


def test_cache_hits_and_new_data_is_never_hidden(tmp_path):
    data = tmp_path / "data"
    lake = build_lake(data, n_bins=40)
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
    write_synthetic_lake(data, {"BTCUSDT": SYMBOLS["BTCUSDT"]}, [date(2024, 12, 29)], n_bins=40)
    third = get(client, symbol="BTCUSDT", time_window="24h")
    assert third.headers["x-cache"] == "miss"
    assert third.json()["times"][-1] == "2024-12-29T23:55:00Z" != first.json()["times"][-1]

    # a past window, re-materialized in place (same file count): the new numbers show
    past = {"symbol": "BTCUSDT", "start_time": "2024-12-27T00:00:00", "end_time": "2024-12-28T00:00:00"}
    before = get(client, **past)
    assert get(client, **past).headers["x-cache"] == "hit"
    path = lake.partition_file("liquidation_heatmap", "BTCUSDT", date(2024, 12, 27))
    table = Lake.read(lake, "liquidation_heatmap", "BTCUSDT", [date(2024, 12, 27)])
    doubled = table.set_column(4, "long_usd", pa.compute.multiply(table["long_usd"], 2.0))
    mtime = path.stat().st_mtime_ns
    lake.write("liquidation_heatmap", "BTCUSDT", date(2024, 12, 27), doubled)
    os.utime(path, ns=(mtime + 1_000_000, mtime + 1_000_000))  # coarse-mtime filesystems: a later stamp
    after = get(client, **past)
    assert after.headers["x-cache"] == "miss"
    assert np.allclose(np.array(after.json()["long"]), 2 * np.array(before.json()["long"]), atol=2)

    # the cache can be turned off
    nocache = create_app(data, registry_file=PACKAGED_FILE, cache=False)
    c2 = TestClient(nocache)
    assert get(c2, **past).headers["x-cache"] == get(c2, **past).headers["x-cache"] == "miss"


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
