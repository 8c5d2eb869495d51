"""Files we did not make: real archive rows quoted by other projects, written into an archive by an independent
writer (independent_archive.py, which shares no code with the project's formats), read through the `local` and
`binance` sources, then through the model and the API. And every bad value the parser must refuse, refused."""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from liq_pipeline.formats import FORMATS, FormatError
from liq_pipeline.sources.archive import BinanceArchive, LocalMirror, ingest

from .conftest import ArchiveServer
from .independent_archive import AGG_HEADER, Market, Truth, write_days

# ---- Real rows, verbatim -------------------------------------------------------------------------------------------

# BTCUSDT metrics, 2025-06-01 00:00 and 00:05. Quoted as "a real row" by the parseMetricsCsv tests of a public
# TypeScript archive reader (binance-archive.test.ts; the code search that found it did not name its repository), and
# the same two rows, rounded, by an independent Python parser test: two projects agree on them.
REAL_METRICS = {
    "2025-06-01 00:00:00": "2025-06-01 00:00:00,BTCUSDT,83624.1980000000000000,8736988614.4487060000000000,"
    "1.23458273,1.56163700,1.19060369,0.55280100",
    "2025-06-01 00:05:00": "2025-06-01 00:05:00,BTCUSDT,83584.7940000000000000,8734318426.2210000000000000,"
    "1.23146650,1.56293100,1.18671018,1.16437200",
    # BTCUSDT metrics, 2025-06-02 00:00: the "real rows" of a public C++ parser benchmark (repository not named by the
    # search either). It is the row that ends the 2025-06-01 file and starts the 2025-06-02 one.
    "2025-06-02 00:00:00": "2025-06-02 00:00:00,BTCUSDT,82795.1230000000000000,8742808969.7711000000000000,"
    "1.21422318,1.53311800,1.13511948,0.94273600",
}
# BTCUSDT futures 1h kline, 2025-06-01 00:00, from BTCUSDT-1h-2025-06.zip: github.com/ArataEndou24/cryptobot,
# tests/test_binance_vision.py (KLINE_ROW_NEW; the quote volumes there are cut to one decimal, a second public test
# quotes them whole, as here). The independent writer makes the day's first sixty 1m bars add up to it.
REAL_KLINE_1H = (
    "1748736000000,104544.60,104599.60,104277.30,104408.70,3438.526,1748739599999,358998670.72560,71534,1691.726,"
    "176614558.10500,0"
)
# BTCUSDT fundingRate, 2025-06: github.com/ArataEndou24/cryptobot, tests/test_binance_vision.py
# (test_parse_funding_rounds_to_second). Note the times: a few ms after the hour.
REAL_FUNDING = ("1748736000001,8,-0.00000582", "1748764800002,8,0.00002335")
# ETHUSDT aggTrades, the first row of ETHUSDT-aggTrades-2023-05 (futures/um), quoted in
# github.com/binance/binance-public-data/issues/342: real trades with quantity 0.0, which must load, not fail.
REAL_AGG_TRADE = "1290241731,1868.42,0.0,2943174956,2943174958,1682899200037,false"

BTC = Market(
    "BTCUSDT",
    open_price=104544.6,
    price_decimals=2,
    qty_decimals=3,
    tick=0.1,
    open_interest=83624.198,
    metrics_rows=REAL_METRICS,
    first_hour=REAL_KLINE_1H,
    funding_rows=REAL_FUNDING,
    blank_ratios=3,
)
AVAX = Market(
    "AVAXUSDT", open_price=21.474, price_decimals=3, qty_decimals=0, tick=0.001, open_interest=9.6e6, seed=11
)
DAYS = [date(2025, 6, 1), date(2025, 6, 2)]
KINDS = {f.kind: f for f in FORMATS.values()}


@pytest.fixture(scope="module")
def btc_archive(tmp_path_factory) -> tuple[Path, Truth]:
    root = tmp_path_factory.mktemp("independent")
    return root, write_days(root, BTC, DAYS)


@pytest.fixture
def btc_copy(btc_archive, tmp_path) -> Path:
    return Path(shutil.copytree(btc_archive[0], tmp_path / "mirror"))


def _ts(ms: str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC).replace(tzinfo=None)


def expected(kind: str, cells: list[str]) -> dict:
    """A row of the file, in lake columns: the test's own reading of the archive formats."""
    num = lambda c: None if c == "" else float(c)  # noqa: E731
    if kind == "aggTrades":
        return {
            "agg_trade_id": int(cells[0]),
            "price": float(cells[1]),
            "quantity": float(cells[2]),
            "first_trade_id": int(cells[3]),
            "last_trade_id": int(cells[4]),
            "ts": _ts(cells[5]),
            "is_buyer_maker": cells[6] == "true",
        }
    if kind == "klines":
        return {
            "open_time": _ts(cells[0]),
            "open": float(cells[1]),
            "high": float(cells[2]),
            "low": float(cells[3]),
            "close": float(cells[4]),
            "volume": float(cells[5]),
            "close_time": _ts(cells[6]),
            "quote_volume": float(cells[7]),
            "trade_count": int(cells[8]),
            "taker_buy_volume": float(cells[9]),
            "taker_buy_quote_volume": float(cells[10]),
        }
    if kind == "metrics":
        names = (
            "count_toptrader_long_short_ratio",
            "sum_toptrader_long_short_ratio",
            "count_long_short_ratio",
            "sum_taker_long_short_vol_ratio",
        )
        return {
            "ts": datetime.strptime(cells[0], "%Y-%m-%d %H:%M:%S"),
            "open_interest": float(cells[2]),
            "open_interest_value": float(cells[3]),
            **{n: num(c) for n, c in zip(names, cells[4:])},
        }
    if kind == "liquidationSnapshot":  # a SELL order liquidates a long; the fill is the average price
        return {
            "ts": _ts(cells[0]),
            "side": "long" if cells[1] == "SELL" else "short",
            "price": float(cells[6]),
            "quantity": float(cells[9]),
            "notional_usd": pytest.approx(float(cells[6]) * float(cells[9])),
        }
    return {"ts": _ts(cells[0]), "funding_rate": float(cells[2]), "funding_interval_hours": int(cells[1])}


def assert_matches_truth(result, kind: str, day: date, truth: Truth, symbol: str) -> None:
    table = result.table
    key = (kind, day)
    assert table.num_rows == truth.rows[key], key
    assert result.dropped_other_day == truth.dropped[key], key
    first, last = table.slice(0, 1).to_pylist()[0], table.slice(table.num_rows - 1).to_pylist()[0]
    for row, cells in ((first, truth.first[key]), (last, truth.last[key])):
        want = expected(kind, cells)
        assert {k: row[k] for k in want} == want, key
        assert row["symbol"] == symbol and row["date"] == day


def source_for(name: str, root: Path, server: ArchiveServer | None, cache: Path):
    return LocalMirror(root) if name == "local" else BinanceArchive(server.url, cache, backoff=0)


@pytest.fixture
def server(btc_archive):
    srv = ArchiveServer(btc_archive[0])
    yield srv
    srv.close()


# ---- They load exactly ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["local", "binance"])
def test_the_independent_archive_loads_exactly(btc_archive, server, tmp_path, source):
    root, truth = btc_archive
    src = source_for(source, root, server, tmp_path / "cache")
    for kind in ("aggTrades", "klines", "metrics", "liquidationSnapshot", "fundingRate"):
        for day in DAYS:
            result = ingest(src, KINDS[kind], "BTCUSDT", day)
            assert result.fetched.verified
            assert_matches_truth(result, kind, day, truth, "BTCUSDT")
    if source == "binance":  # it really went over HTTP
        assert any(r.endswith("BTCUSDT-metrics-2025-06-01.zip") for r in server.requests)


def test_the_real_rows_come_out_as_they_went_in(btc_archive):
    root, truth = btc_archive
    mirror = LocalMirror(root)
    met = ingest(mirror, KINDS["metrics"], "BTCUSDT", DAYS[0])
    # 289 distinct times in the file (plus repeats, shuffled): the day's 288 are kept, the next day's 00:00 dropped.
    assert met.table.num_rows == 288 and met.dropped_other_day == truth.dropped[("metrics", DAYS[0])] >= 1
    rows = met.table.to_pylist()
    for row, stamp in zip(rows, ("2025-06-01 00:00:00", "2025-06-01 00:05:00")):
        want = expected("metrics", REAL_METRICS[stamp].split(","))
        assert {k: row[k] for k in want} == want
    assert rows[0]["open_interest"] == 83624.198 and rows[0]["sum_taker_long_short_vol_ratio"] == 0.552801
    assert [r["ts"] for r in rows] == [datetime(2025, 6, 1) + timedelta(minutes=5 * k) for k in range(288)]
    following = ingest(mirror, KINDS["metrics"], "BTCUSDT", DAYS[1]).table.slice(0, 1).to_pylist()[0]
    assert following["open_interest"] == 82795.123 and following["open_interest_value"] == 8742808969.7711
    # Empty ratio cells load as null, never as 0; the rest of the row is there.
    blanks = pc.sum(
        pc.is_null(
            ingest(mirror, KINDS["metrics"], "BTCUSDT", DAYS[1]).table["sum_toptrader_long_short_ratio"]
        )
    )
    assert blanks.as_py() == truth.blank_ratio_rows[DAYS[1]] == 3

    kl = ingest(mirror, KINDS["klines"], "BTCUSDT", DAYS[0]).table.slice(0, 60).to_pydict()
    hour = REAL_KLINE_1H.split(",")
    assert (kl["open"][0], max(kl["high"]), min(kl["low"]), kl["close"][-1]) == tuple(map(float, hour[1:5]))
    assert sum(kl["trade_count"]) == int(hour[8])
    for col, cell in (
        ("volume", 5),
        ("quote_volume", 7),
        ("taker_buy_volume", 9),
        ("taker_buy_quote_volume", 10),
    ):
        assert sum(kl[col]) == pytest.approx(float(hour[cell]), abs=1e-4), col

    funding = ingest(mirror, KINDS["fundingRate"], "BTCUSDT", DAYS[0]).table.slice(0, 2).to_pylist()
    assert [(f["ts"], f["funding_rate"]) for f in funding] == [
        (datetime(2025, 6, 1, 0, 0, 0, 1000), -0.00000582),
        (datetime(2025, 6, 1, 8, 0, 0, 2000), 0.00002335),
    ]


def test_a_real_trade_of_quantity_zero_loads(tmp_path):
    name = "data/futures/um/daily/aggTrades/ETHUSDT/ETHUSDT-aggTrades-2023-05-01"
    _zip(tmp_path / f"{name}.zip", [AGG_HEADER.split(","), REAL_AGG_TRADE.split(",")])
    row = ingest(LocalMirror(tmp_path), KINDS["aggTrades"], "ETHUSDT", date(2023, 5, 1)).table.to_pylist()
    assert row == [
        {"symbol": "ETHUSDT", "date": date(2023, 5, 1), **expected("aggTrades", REAL_AGG_TRADE.split(","))}
    ]
    assert row[0]["quantity"] == 0.0 and row[0]["ts"] == datetime(2023, 5, 1, 0, 0, 0, 37000)


@pytest.mark.parametrize("source", ["local", "binance"])
def test_a_new_symbol_loads_exactly_too(tmp_path, monkeypatch, avax_registry, source):
    monkeypatch.setenv("LIQ_SYMBOLS_FILE", str(avax_registry))
    root = tmp_path / "avax"
    truth = write_days(root, AVAX, DAYS)
    server = ArchiveServer(root) if source == "binance" else None
    try:
        src = source_for(source, root, server, tmp_path / "cache")
        for kind in ("aggTrades", "klines", "metrics", "liquidationSnapshot"):
            for day in DAYS:
                assert_matches_truth(ingest(src, KINDS[kind], "AVAXUSDT", day), kind, day, truth, "AVAXUSDT")
    finally:
        if server:
            server.close()


def test_the_dropped_boundary_rows_show_in_the_asset_metadata(btc_archive):
    from liq_pipeline.assets.raw import ingest_metadata

    root, truth = btc_archive
    meta = ingest_metadata(ingest(LocalMirror(root), KINDS["metrics"], "BTCUSDT", DAYS[0]))
    assert meta["rows of another day dropped"] == truth.dropped[("metrics", DAYS[0])] >= 1
    assert "rows of another day dropped" not in ingest_metadata(
        ingest(LocalMirror(root), KINDS["klines"], "BTCUSDT", DAYS[0])
    )


# ---- The model runs on them and the API answers --------------------------------------------------------------------


def test_the_model_and_the_api_run_on_the_independent_archive(btc_archive, tmp_path, monkeypatch):
    from dagster import materialize
    from fastapi.testclient import TestClient

    from liq_pipeline.api.app import create_app
    from liq_pipeline.assets.model import MODEL_ASSETS
    from liq_pipeline.assets.raw import RAW_ASSETS
    from liq_pipeline.lake import Lake
    from liq_pipeline.partitions import partition_key
    from liq_pipeline.resources import ArchiveSource, LakeIOManager, LakeResource

    root, truth = btc_archive
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(root))
    data = tmp_path / "data"
    resources = {
        "lake_io_manager": LakeIOManager(data_dir=str(data)),
        "lake": LakeResource(data_dir=str(data)),
        "archive": ArchiveSource(source="local"),
    }
    for day in DAYS:
        result = materialize(
            [*RAW_ASSETS, *MODEL_ASSETS],
            partition_key=partition_key("BTCUSDT", day),
            resources=resources,
            raise_on_error=False,
        )
        assert result.success, [e.message for e in result.all_events if e.is_failure]
    lake = Lake.at(data)
    heat = lake.read("liquidation_heatmap", "BTCUSDT", DAYS)
    assert heat.num_rows > 0
    lo, hi = min(truth.prices), max(truth.prices)
    # Liquidation prices sit around the market: within the leverage range of where it traded.
    assert 0.5 * lo < pc.min(heat["price"]).as_py() and pc.max(heat["price"]).as_py() < 1.5 * hi

    client = TestClient(create_app(data))
    r = client.get("/liquidations/heatmap-timeseries", params={"symbol": "BTCUSDT", "time_window": "48h"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["data_source"] == "local"  # real files: the page shows no "synthetic" badge
    grid = np.array(body["long"], dtype=float) + np.array(body["short"], dtype=float)
    assert grid.shape == (len(body["times"]), len(body["prices"])) and grid.sum() > 0
    assert (grid.sum(axis=1) > 0).mean() > 0.9  # nearly every column has open notional
    closes = [c for c in body["candles"]["close"] if c is not None]
    assert closes and all(lo - 1 <= c <= hi + 1 for c in closes)  # the candles are the archive's prices
    prices = np.array(body["prices"], dtype=float)
    weighted = float((grid.sum(axis=0) * prices).sum() / grid.sum())
    assert abs(weighted / 105_000 - 1) < 0.15  # the mass of the map is near where BTC traded (104.5k-106k)


def test_a_new_symbol_runs_from_the_binance_source_to_the_api(tmp_path, avax_registry):
    """AVAXUSDT, only in a registry file, backfilled by `liq backfill` over HTTP from the independent archive (a
    subprocess: the Dagster symbol dimension is read from the registry at import), then served by the API."""
    import os
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from liq_pipeline.api.app import create_app

    root = tmp_path / "avax"
    truth = write_days(root, AVAX, DAYS)
    server = ArchiveServer(root)
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        "LIQ_SYMBOLS_FILE": str(avax_registry),
        "LIQ_SOURCE": "binance",
        "LIQ_BINANCE_ARCHIVE_URL": server.url,
        "LIQ_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "liq_pipeline.cli",
                "backfill",
                "AVAXUSDT",
                "--start",
                str(DAYS[0]),
                "--end",
                str(DAYS[1]),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        server.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert any("AVAXUSDT-metrics-2025-06-02.zip" in r for r in server.requests)
    client = TestClient(create_app(tmp_path / "data", registry_file=avax_registry))
    r = client.get("/liquidations/heatmap-timeseries", params={"symbol": "AVAXUSDT", "time_window": "48h"})
    assert r.status_code == 200, r.text
    body = r.json()
    grid = np.array(body["long"], dtype=float) + np.array(body["short"], dtype=float)
    assert grid.sum() > 0
    closes = [c for c in body["candles"]["close"] if c is not None]
    assert closes and all(min(truth.prices) - 0.01 <= c <= max(truth.prices) + 0.01 for c in closes)


# ---- Boundary rows, header-only files, and files of another day ------------------------------------------------------


def test_a_boundary_trade_of_the_next_day_is_dropped_and_counted(btc_copy):
    path = _path(btc_copy, "aggTrades", DAYS[0])
    lines = _read(path)
    last = lines[-1].split(",")
    extra = [
        str(int(last[0]) + 1),
        last[1],
        "0.004",
        str(int(last[4]) + 1),
        str(int(last[4]) + 1),
        "1748822400000",
        "true",
    ]  # 2025-06-02 00:00:00.000
    _rewrite(path, [*lines, ",".join(extra)])
    result = ingest(LocalMirror(btc_copy), KINDS["aggTrades"], "BTCUSDT", DAYS[0])
    assert result.dropped_other_day == 1 and result.table.num_rows == 3000
    assert pc.max(result.table["ts"]).as_py() < datetime(2025, 6, 2)


def test_a_file_mostly_of_another_day_fails(btc_copy):
    # The 2025-06-01 metrics file saved under 2025-06-02's name: only its boundary row is of 2025-06-02.
    wrong = _read(_path(btc_copy, "metrics", DAYS[0]))
    _rewrite(_path(btc_copy, "metrics", DAYS[1]), wrong, csv_name="BTCUSDT-metrics-2025-06-02.csv")
    with pytest.raises(
        FormatError,
        match=r"BTCUSDT-metrics-2025-06-02\.zip: \d+ of \d+ rows fall outside 2025-06-02 "
        r"\(first at 2025-06-01 .*\)\. The file belongs to another day",
    ):
        ingest(LocalMirror(btc_copy), KINDS["metrics"], "BTCUSDT", DAYS[1])


@pytest.mark.parametrize("kind", ["aggTrades", "klines", "metrics", "liquidationSnapshot"])
def test_a_header_only_file_is_an_empty_table(btc_copy, kind):
    path = _path(btc_copy, kind, DAYS[1])
    _rewrite(path, _read(path)[:1])
    result = ingest(LocalMirror(btc_copy), KINDS[kind], "BTCUSDT", DAYS[1])
    assert result.table.num_rows == 0 and result.dropped_other_day == 0
    assert result.table.schema == ingest(LocalMirror(btc_copy), KINDS[kind], "BTCUSDT", DAYS[0]).table.schema


# ---- Bad values fail loudly --------------------------------------------------------------------------------------

BAD = [
    # (kind, column index in the CSV, new value, lake column, what the message says about it)
    ("aggTrades", 1, "NaN", "price", r"nan \(empty or not a number\)"),
    ("aggTrades", 1, "", "price", r"nan \(empty or not a number\)"),
    ("aggTrades", 1, "inf", "price", r"inf \(infinite\)"),
    ("aggTrades", 1, "0", "price", r"0\.0 \(zero or negative\)"),
    ("aggTrades", 1, "-105000.10", "price", r"-105000\.1 \(zero or negative\)"),
    (
        "aggTrades",
        1,
        "1e300",
        "price",
        r"1e\+300 \(above 1e\+07 USDT, more than any USDT-M contract has traded at\)",
    ),
    (
        "aggTrades",
        1,
        "1000.00",
        "price",
        r"1000\.0 \(more than 100x away from the file's median price 10\d{4}\)",
    ),
    ("aggTrades", 2, "-0.500", "quantity", r"-0\.5 \(negative\)"),
    ("aggTrades", 2, "inf", "quantity", r"inf \(infinite\)"),
    ("aggTrades", 2, "nan", "quantity", r"nan \(empty or not a number\)"),
    ("klines", 4, "NaN", "close", r"nan \(empty or not a number\)"),
    ("klines", 1, "0.00", "open", r"0\.0 \(zero or negative\)"),
    # the bar's low raised above its high
    ("klines", 3, "999999.90", "high", r"10\d{4}(\.\d+)? \(below the bar's low, 999999\.9\)"),
    ("klines", 5, "-1.000", "volume", r"-1\.0 \(negative\)"),
    ("metrics", 2, "NaN", "open_interest", r"nan \(empty or not a number\)"),
    ("metrics", 3, "inf", "open_interest_value", r"inf \(infinite\)"),
    ("liquidationSnapshot", 6, "NaN", "price", r"nan \(empty or not a number\)"),
    ("liquidationSnapshot", 9, "-0.010", "quantity", r"-0\.01 \(negative\)"),
]


@pytest.mark.parametrize(
    ("kind", "cell", "value", "column", "says"), BAD, ids=[f"{b[0]}-{b[3]}-{b[2] or 'empty'}" for b in BAD]
)
def test_bad_values_fail_naming_file_column_count_first_row_and_what_to_do(
    btc_copy, kind, cell, value, column, says
):
    day = DAYS[1]
    path = _path(btc_copy, kind, day)
    lines = _read(path)
    # Damage two distinct rows of the day (every copy of each: the archive repeats rows); name the earlier one.
    distinct = sorted(set(lines[1:]), key=lambda line: _time_of(kind, line))
    targets = [distinct[len(distinct) // 10], distinct[2 * len(distinct) // 3]]
    damaged = {}
    for line in targets:
        cells = line.split(",")
        cells[cell] = value
        damaged[line] = ",".join(cells)
    _rewrite(path, [damaged.get(line, line) for line in lines])
    with pytest.raises(FormatError) as err:
        ingest(LocalMirror(btc_copy), KINDS[kind], "BTCUSDT", day)
    message = str(err.value)
    assert re.search(
        rf"BTCUSDT-{_stem(kind)}-2025-06-02\.zip: 2 of \d+ rows have a bad {column} ", message
    ), message
    assert f"the first, at {_time_of(kind, targets[0])}, is " in message, message
    assert re.search(rf", is {says}", message), message
    assert "fetch it again" in message and "report it" in message


@pytest.mark.parametrize(
    ("kind", "cell", "value"),
    [("metrics", 2, "0.0000000000000000"), ("aggTrades", 2, "0.000"), ("metrics", 4, "")],
    ids=["zero-open-interest-is-a-missing-reading", "zero-quantity-trade", "empty-ratio-cell"],
)
def test_values_that_look_odd_but_are_real_load(btc_copy, kind, cell, value):
    path = _path(btc_copy, kind, DAYS[1])
    lines = _read(path)
    cells = lines[5].split(",")
    cells[cell] = value
    lines[5] = ",".join(cells)
    _rewrite(path, lines)
    table = ingest(LocalMirror(btc_copy), KINDS[kind], "BTCUSDT", DAYS[1]).table
    column = {
        ("metrics", 2): "open_interest",
        ("aggTrades", 2): "quantity",
        ("metrics", 4): "count_toptrader_long_short_ratio",
    }[(kind, cell)]
    values = table[column].to_pylist()
    assert (values.count(None) if value == "" else values.count(0.0)) >= 1


def test_a_crash_day_is_not_an_absurd_price(tmp_path):
    """A fall of 97 % within one file (the price ends 33x below where it started) is a market, not a broken file."""
    day = date(2025, 6, 2)
    start = 1748822400000
    rows = [AGG_HEADER.split(",")] + [
        [
            str(1000 + k),
            f"{100.0 * (0.03 ** (k / 2879)):.4f}",
            "1.000",
            str(5000 + k),
            str(5000 + k),
            str(start + k * 30_000),
            "false",
        ]
        for k in range(2880)
    ]
    _zip(tmp_path / f"data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-{day}.zip", rows)
    table = ingest(LocalMirror(tmp_path), KINDS["aggTrades"], "BTCUSDT", day).table
    assert table.num_rows == 2880 and pc.min(table["price"]).as_py() == pytest.approx(3.0, rel=1e-3)


# ---- helpers -----------------------------------------------------------------------------------------------------


def _stem(kind: str) -> str:
    return "1m" if kind == "klines" else kind


def _path(root: Path, kind: str, day: date) -> Path:
    return root / KINDS[kind].relpath("BTCUSDT", day)


def _read(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.read(zf.namelist()[0]).decode().splitlines()


def _rewrite(path: Path, lines: list[str], csv_name: str | None = None) -> None:
    """Replace the CSV in a zip and its CHECKSUM, as a damaged-but-consistent download would be."""
    _zip(path, [line.split(",") for line in lines], csv_name)


def _zip(path: Path, rows: list[list[str]], csv_name: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(csv_name or path.name.replace(".zip", ".csv"), "".join(",".join(r) + "\n" for r in rows))
    path.with_name(path.name + ".CHECKSUM").write_text(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    )


def _time_of(kind: str, line: str) -> datetime:
    cells = line.split(",")
    if kind == "metrics":
        return datetime.strptime(cells[0], "%Y-%m-%d %H:%M:%S")
    return _ts(cells[5] if kind == "aggTrades" else cells[0])
