"""The embedded sample market: exact archive layout and formats, determinism, and a market that hangs together."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from liq_pipeline.sources import sample
from liq_pipeline.symbols import load_registry

DAY = date(2024, 12, 27)
N = 4_000  # trades per day: small, to keep the tests fast

HEADERS = {
    "aggTrades": "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker",
    "klines": "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    "taker_buy_quote_volume,ignore",
    "metrics": "create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
    "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio",
    "fundingRate": "calc_time,funding_interval_hours,last_funding_rate",
    "liquidationSnapshot": "time,side,order_type,time_in_force,original_quantity,price,average_price,order_status,"
    "last_fill_quantity,accumulated_fill_quantity",
}


@pytest.fixture(scope="module")
def btc():
    return load_registry().get("BTCUSDT")


@pytest.fixture(scope="module")
def eth():
    return load_registry().get("ETHUSDT")


@pytest.fixture(scope="module")
def written(tmp_path_factory, btc):
    """BTCUSDT, all four sample days, with headers and ms timestamps."""
    root = tmp_path_factory.mktemp("sample")
    paths = {day: sample.write_day(root, btc, day, trades_per_day=N) for day in sample.SAMPLE_DAYS}
    return root, paths


def member(zip_path: Path) -> tuple[zipfile.ZipInfo, bytes]:
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
        assert len(infos) == 1, infos
        return infos[0], zf.read(infos[0])


def read(zip_path: Path, header: bool = True) -> pd.DataFrame:
    _, data = member(zip_path)
    return pd.read_csv(io.BytesIO(data), header=0 if header else None, dtype={"create_time": str})


def day_rows(metrics: pd.DataFrame, day: date) -> pd.DataFrame:
    """A metrics file's rows of its own day, in order and without repeats (what a reader of the archive keeps)."""
    own = metrics[metrics["create_time"].str.startswith(day.isoformat())]
    return own.drop_duplicates().sort_values("create_time").reset_index(drop=True)


def test_public_constants():
    assert sample.SAMPLE_DAYS == tuple(date(2024, 12, 25) + timedelta(days=i) for i in range(4))
    assert sample.SAMPLE_SYMBOLS == ("BTCUSDT", "ETHUSDT")
    assert sample.DEFAULT_TRADES_PER_DAY == 20_000


def test_layout_is_the_archive_layout(written, btc):
    root, paths = written
    rel = [p.relative_to(root).as_posix() for p in paths[DAY]]
    assert rel == [
        "data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-12-27.zip",
        "data/futures/um/daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-12-27.zip",
        "data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-12-27.zip",
        "data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-12.zip",
        "data/futures/um/daily/liquidationSnapshot/BTCUSDT/BTCUSDT-liquidationSnapshot-2024-12-27.zip",
    ]
    assert rel == [sample.archive_relpath(kind, "BTCUSDT", DAY) for kind in sample.KINDS]
    with pytest.raises(ValueError, match="Unknown archive kind"):
        sample.archive_relpath("bookTicker", "BTCUSDT", DAY)


def test_layout_agrees_with_the_format_definitions():
    from liq_pipeline.formats import FORMATS

    by_kind = {fmt.kind: fmt for fmt in FORMATS.values()}
    assert set(by_kind) == set(sample.KINDS)
    for kind, fmt in by_kind.items():
        assert fmt.relpath("ETHUSDT", DAY) == sample.archive_relpath(kind, "ETHUSDT", DAY)


def test_each_zip_holds_one_csv_named_like_it_with_a_fixed_time_and_a_matching_checksum(written):
    _, paths = written
    for path in paths[DAY]:
        info, data = member(path)
        assert info.filename == path.name[: -len(".zip")] + ".csv"
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.date_time[:3] in ((2024, 12, 27), (2024, 12, 1))
        checksum = path.with_name(path.name + ".CHECKSUM").read_text()
        assert checksum == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
        assert data.endswith(b"\n") and b"\r" not in data


def test_headers_and_column_order_are_exact(written):
    _, paths = written
    for kind, path in zip(sample.KINDS, paths[DAY]):
        _, data = member(path)
        first, second = data.split(b"\n", 2)[:2]
        assert first.decode() == HEADERS[kind], kind
        assert len(second.split(b",")) == len(HEADERS[kind].split(",")), kind
        assert b'"' not in data


def test_writes_are_byte_identical_across_roots_and_idempotent(tmp_path, eth):
    a = sample.write_day(tmp_path / "a", eth, DAY, trades_per_day=1_500)
    b = sample.write_day(tmp_path / "b", eth, DAY, trades_per_day=1_500)
    again = sample.write_day(tmp_path / "a", eth, DAY, trades_per_day=1_500)
    assert again == a
    for pa_, pb in zip(a, b):
        assert pa_.read_bytes() == pb.read_bytes(), pa_.name
        assert (
            pa_.with_name(pa_.name + ".CHECKSUM").read_bytes()
            == pb.with_name(pb.name + ".CHECKSUM").read_bytes()
        )
    leftovers = [
        p for p in (tmp_path / "a").rglob("*") if p.is_file() and p.suffix not in (".zip", ".CHECKSUM")
    ]
    assert leftovers == []  # no temporary files left behind


def test_output_does_not_depend_on_process_state(tmp_path, eth):
    """A fresh interpreter (new hash seed, cold caches) writes the same bytes as this one."""
    here = sample.write_day(tmp_path / "here", eth, DAY, trades_per_day=1_500)
    code = (
        "import sys; from pathlib import Path; from datetime import date; "
        "from liq_pipeline.sources import sample; from liq_pipeline.symbols import load_registry; "
        "sample.write_day(Path(sys.argv[1]), load_registry().get('ETHUSDT'), date(2024, 12, 27), trades_per_day=1_500); "
        "assert 'dagster' not in sys.modules"
    )
    env_root = tmp_path / "there"
    subprocess.run(
        [sys.executable, "-c", code, str(env_root)], check=True, env={"PYTHONHASHSEED": "12345"} | _env()
    )
    for path in here:
        assert (env_root / path.relative_to(tmp_path / "here")).read_bytes() == path.read_bytes(), path.name


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}


def test_headerless_and_microsecond_files(tmp_path, eth):
    ms = sample.write_day(tmp_path / "ms", eth, DAY, trades_per_day=1_500)
    us = sample.write_day(tmp_path / "us", eth, DAY, trades_per_day=1_500, header=False, ts_unit="us")
    agg_ms, agg_us = read(ms[0]), read(us[0], header=False)
    assert member(us[0])[1].split(b"\n", 1)[0][:1].isdigit()
    assert list(agg_us.columns) == list(range(7))
    assert (agg_us[5] == agg_ms["transact_time"] * 1000).all()
    assert agg_us[5].astype(str).str.len().eq(16).all()
    kl_ms, kl_us = read(ms[2]), read(us[2], header=False)
    assert (kl_us[0] == kl_ms["open_time"] * 1000).all() and (kl_us[6] == kl_ms["close_time"] * 1000).all()
    # Everything but the timestamps is the same.
    assert (agg_us[[0, 1, 2, 3, 4]].to_numpy() == agg_ms.iloc[:, :5].to_numpy()).all()
    # Metrics, funding and liquidation files always have their header and ms timestamps, as in the archive.
    for i in (1, 3, 4):
        assert member(us[i])[1] == member(ms[i])[1]
    with pytest.raises(ValueError, match="ts_unit"):
        sample.write_day(tmp_path / "x", eth, DAY, ts_unit="ns")
    with pytest.raises(ValueError, match="trades_per_day"):
        sample.write_day(tmp_path / "x", eth, DAY, trades_per_day=0)


def test_agg_trades(written, btc):
    _, paths = written
    agg = read(paths[DAY][0])
    assert len(agg) == N
    assert agg["agg_trade_id"].diff().iloc[1:].eq(1).all()
    assert (agg["first_trade_id"].iloc[1:].to_numpy() == agg["last_trade_id"].iloc[:-1].to_numpy() + 1).all()
    assert (agg["last_trade_id"] >= agg["first_trade_id"]).all()
    assert agg["transact_time"].is_monotonic_increasing
    start = pd.Timestamp(DAY, tz="UTC").value // 10**6
    assert agg["transact_time"].between(start, start + 86_400_000 - 1).all()
    assert set(agg["is_buyer_maker"].unique()) == {True, False}
    assert (agg["quantity"] > 0).all()
    ticks = agg["price"] / 0.1  # BTC trades on a 0.1 tick
    assert np.allclose(ticks, ticks.round(), atol=1e-6)
    text = member(paths[DAY][0])[1].decode().splitlines()[1].split(",")
    assert (
        text[6] in ("true", "false") and len(text[1].split(".")[1]) == 1 and len(text[2].split(".")[1]) == 3
    )
    quote = (agg["price"] * agg["quantity"]).sum()
    assert 4e9 < quote < 40e9  # a realistic BTC day whatever the number of trades


def test_klines_are_the_trades_aggregated(written):
    _, paths = written
    agg, kl = read(paths[DAY][0]), read(paths[DAY][2])
    assert len(kl) == 1440
    assert (kl["open_time"].diff().iloc[1:] == 60_000).all()
    assert (kl["close_time"] == kl["open_time"] + 59_999).all() and (kl["ignore"] == 0).all()
    agg["minute"] = (agg["transact_time"] - kl["open_time"].iloc[0]) // 60_000
    agg["quote"] = agg["price"] * agg["quantity"]
    agg["raw"] = agg["last_trade_id"] - agg["first_trade_id"] + 1
    agg["buy_qty"] = agg["quantity"].where(~agg["is_buyer_maker"], 0.0)
    agg["buy_quote"] = agg["quote"].where(~agg["is_buyer_maker"], 0.0)
    g = agg.groupby("minute")
    expect = pd.DataFrame(
        {
            "open": g["price"].first(),
            "high": g["price"].max(),
            "low": g["price"].min(),
            "close": g["price"].last(),
            "volume": g["quantity"].sum(),
            "quote_volume": g["quote"].sum(),
            "count": g["raw"].sum(),
            "taker_buy_volume": g["buy_qty"].sum(),
            "taker_buy_quote_volume": g["buy_quote"].sum(),
        }
    )
    traded = kl.loc[expect.index]
    for col in expect:
        assert np.allclose(traded[col].to_numpy(), expect[col].to_numpy(), rtol=1e-9, atol=1e-6), col
    empty = kl.drop(index=expect.index)
    assert len(empty) > 0  # a small day has quiet minutes
    assert (empty["volume"] == 0).all() and (empty["count"] == 0).all()
    assert (empty["open"] == empty["close"]).all() and (empty["high"] == empty["low"]).all()
    previous_close = kl["close"].shift(1)
    inner = empty.index[empty.index > 0]
    assert (empty.loc[inner, "close"] == previous_close.loc[inner]).all()
    assert (kl["low"] <= kl[["open", "close"]].min(axis=1)).all()
    assert (kl["high"] >= kl[["open", "close"]].max(axis=1)).all()


def test_the_market_is_continuous_across_days(written, btc):
    _, paths = written
    days = sample.SAMPLE_DAYS
    kl = {d: read(paths[d][2]) for d in days}
    agg = {d: read(paths[d][0]) for d in days}
    for prev, cur in zip(days, days[1:]):
        assert abs(kl[cur]["open"].iloc[0] / kl[prev]["close"].iloc[-1] - 1) < 0.003, cur
        assert agg[cur]["agg_trade_id"].iloc[0] == agg[prev]["agg_trade_id"].iloc[-1] + 1
        assert agg[cur]["first_trade_id"].iloc[0] == agg[prev]["last_trade_id"].iloc[-1] + 1
    assert abs(kl[days[0]]["open"].iloc[0] / btc.sample_price - 1) < 0.003
    for d in days:
        day_range = kl[d]["high"].max() / kl[d]["low"].min() - 1
        assert 0.01 < day_range < 0.12, (d, day_range)
    # The per-minute path is continuous too: no jump between the last minute of a day and the first of the next.
    closes = pd.concat([kl[d]["close"] for d in days], ignore_index=True)
    jumps = closes.pct_change().abs()
    assert jumps.iloc[1:].max() < 0.03


def test_open_interest(written, btc, eth):
    root, paths = written
    met = day_rows(read(paths[DAY][1]), DAY)
    kl = read(paths[DAY][2])
    assert len(met) == 288 and (met["symbol"] == "BTCUSDT").all()
    times = pd.to_datetime(met["create_time"], format="%Y-%m-%d %H:%M:%S")
    assert (times.diff().iloc[1:] == pd.Timedelta(minutes=5)).all() and times.iloc[0] == pd.Timestamp(DAY)
    assert (met["sum_open_interest"] > 0).all() and (met["sum_open_interest_value"] > 0).all()
    price = met["sum_open_interest_value"] / met["sum_open_interest"]
    minute_open = kl["open"].iloc[::5].to_numpy()
    assert np.allclose(price.to_numpy(), minute_open, rtol=0.01)
    assert 5e9 < met["sum_open_interest_value"].median() < 11e9  # about 80k BTC
    eth_met = sample.market_day(eth, DAY, 500).metrics
    assert 2e9 < eth_met["sum_open_interest_value"].median() < 4.5e9
    for col in (
        "count_toptrader_long_short_ratio",
        "sum_toptrader_long_short_ratio",
        "count_long_short_ratio",
        "sum_taker_long_short_vol_ratio",
    ):
        assert met[col].between(0.2, 6).all(), col
    # Open interest moves, and is continuous across days.
    all_days = pd.concat([day_rows(read(paths[d][1]), d) for d in sample.SAMPLE_DAYS], ignore_index=True)
    oi = all_days["sum_open_interest"]
    assert oi.pct_change().abs().iloc[1:].max() < 0.05
    assert oi.max() / oi.min() > 1.01


def test_metrics_files_run_to_the_next_midnight_out_of_order_and_with_repeats(written):
    """As the archive's: 289 distinct times, 00:00:00 of the day through 00:00:00 of the next; that last row is the
    next file's first row; some days' files are shuffled and some repeat rows verbatim."""
    _, paths = written
    files = {d: read(paths[d][1]) for d in sample.SAMPLE_DAYS}
    shuffled = repeated = 0
    for d, met in files.items():
        times = pd.to_datetime(met["create_time"], format="%Y-%m-%d %H:%M:%S")
        distinct = times.drop_duplicates().sort_values()
        assert len(distinct) == 289, d
        assert distinct.iloc[0] == pd.Timestamp(d) and distinct.iloc[-1] == pd.Timestamp(
            d + timedelta(days=1)
        )
        assert (distinct.diff().iloc[1:] == pd.Timedelta(minutes=5)).all()
        assert met.drop_duplicates().shape[0] == 289  # repeats are whole rows, never two values for one time
        # a shuffled file steps back in time about every other row; a repeated row adds at most one step back
        shuffled += int((times.diff().dropna() < pd.Timedelta(0)).sum() > 10)
        repeated += len(met) > 289
    assert shuffled >= 1 and repeated >= 1 and shuffled < len(files)
    for d, following in zip(sample.SAMPLE_DAYS, sample.SAMPLE_DAYS[1:]):
        boundary = files[d][files[d]["create_time"] == f"{following} 00:00:00"].drop_duplicates()
        first = files[following][files[following]["create_time"] == f"{following} 00:00:00"].drop_duplicates()
        assert boundary.reset_index(drop=True).equals(first.reset_index(drop=True)), d  # the series continues


def test_blank_ratio_cells(tmp_path, eth):
    paths = sample.write_day(tmp_path, eth, DAY, trades_per_day=500, blank_ratios=True)
    text = member(paths[1])[1].decode()
    assert ",,," in text and ",,,," not in text  # exactly the two top-trader cells are blank
    met = read(paths[1])
    blank = met["count_toptrader_long_short_ratio"].isna()
    assert blank.sum() == 36 and met.loc[blank, "sum_toptrader_long_short_ratio"].isna().all()
    assert met.loc[blank, "create_time"].str[11:13].astype(int).max() < 3  # the first three hours
    assert met["sum_open_interest"].notna().all() and met["count_long_short_ratio"].notna().all()


def test_headers_only_from_the_day_the_archive_added_them(tmp_path, eth):
    """aggTrades files have a header from 2022-08-11, klines files from 2022-05-01; `header=` overrides."""

    def starts_with_header(zip_path):
        return not member(zip_path)[1][:1].isdigit()

    for day, agg, kl in (
        (date(2022, 4, 30), False, False),
        (date(2022, 5, 1), False, True),
        (date(2022, 8, 10), False, True),
        (date(2022, 8, 11), True, True),
    ):
        paths = sample.write_day(tmp_path / str(day), eth, day, trades_per_day=300)
        assert (starts_with_header(paths[0]), starts_with_header(paths[2])) == (agg, kl), day
        assert starts_with_header(paths[1]) and starts_with_header(paths[4])  # metrics, liquidations: always
    forced = sample.write_day(tmp_path / "forced", eth, date(2022, 4, 30), trades_per_day=300, header=True)
    assert starts_with_header(forced[0]) and starts_with_header(forced[2])


def test_open_interest_falls_when_longs_or_shorts_are_liquidated(btc):
    """Across the sample days, 5-minute windows with heavy liquidations lose open interest; calm ones do not."""
    rows = []
    for d in sample.SAMPLE_DAYS:
        md = sample.market_day(btc, d, 500)
        liq = md.liquidations.drop_duplicates()
        notional = (
            (liq["average_price"] * liq["original_quantity"])
            .groupby((liq["time"] - liq["time"].min() // 86_400_000 * 86_400_000) // 300_000)
            .sum()
        )
        oi = md.metrics["sum_open_interest"].to_numpy()
        change = np.diff(oi) / oi[:-1]  # window k: from mark k to mark k + 1
        liq_k = notional.reindex(range(len(change)), fill_value=0.0).to_numpy()
        rows.append(pd.DataFrame({"change": change, "liq": liq_k}))
    frame = pd.concat(rows)
    heavy = frame["liq"] > frame["liq"].quantile(0.97)
    assert frame.loc[heavy, "change"].mean() < 0
    assert frame.loc[heavy, "change"].mean() < frame.loc[~heavy, "change"].mean()


def test_funding_is_monthly_every_eight_hours(written):
    _, paths = written
    fr = read(paths[DAY][3])
    assert len(fr) == 31 * 3
    t = pd.to_datetime(fr["calc_time"], unit="ms")
    assert t.iloc[0] == pd.Timestamp("2024-12-01") and t.iloc[-1] == pd.Timestamp("2024-12-31 16:00")
    assert (t.diff().iloc[1:] == pd.Timedelta(hours=8)).all()
    assert (fr["funding_interval_hours"] == 8).all()
    assert fr["last_funding_rate"].abs().max() <= 0.003
    assert (fr["last_funding_rate"] == 0.0001).mean() > 0.3  # the interest-rate floor, as on Binance
    assert fr["last_funding_rate"].nunique() > 5
    # The same month's file is identical whichever day wrote it.
    assert len({paths[d][3].read_bytes() for d in sample.SAMPLE_DAYS}) == 1
    # It matches the day's rows of market_day.
    md = sample.market_day(load_registry().get("BTCUSDT"), DAY, 500)
    day_rows = fr[t.dt.date == DAY].reset_index(drop=True)
    assert np.allclose(day_rows.to_numpy(dtype=float), md.funding.to_numpy(dtype=float))


def test_liquidations_follow_the_path(written):
    _, paths = written
    liq = pd.concat([read(paths[d][4]) for d in sample.SAMPLE_DAYS], ignore_index=True)
    kl = pd.concat([read(paths[d][2]) for d in sample.SAMPLE_DAYS], ignore_index=True)
    assert set(liq["side"]) == {"SELL", "BUY"}
    assert (liq["order_type"] == "LIMIT").all() and (liq["time_in_force"] == "IOC").all()
    assert (liq["order_status"] == "FILLED").all()
    assert liq.duplicated().sum() * 2 == len(liq)  # the archive writes every row twice
    assert (liq.groupby(list(liq.columns)).size() == 2).all()
    assert (liq["accumulated_fill_quantity"] == liq["original_quantity"]).all()
    assert (liq["last_fill_quantity"] <= liq["accumulated_fill_quantity"]).all()
    sell, buy = liq[liq["side"] == "SELL"], liq[liq["side"] == "BUY"]
    assert (sell["price"] <= sell["average_price"]).all() and (buy["price"] >= buy["average_price"]).all()
    # Fills sit on the market: within the kline range of their minute (give or take slippage).
    minute = (liq["time"] - kl["open_time"].iloc[0]) // 60_000
    k = kl.iloc[minute.to_numpy()]
    assert (liq["average_price"].to_numpy() > k["low"].to_numpy() * 0.99).all()
    assert (liq["average_price"].to_numpy() < k["high"].to_numpy() * 1.01).all()
    # Longs are liquidated as the price falls, shorts as it rises.
    close = kl["close"].to_numpy()
    move = close[np.minimum(minute + 1, len(close) - 1)] / close[np.maximum(minute - 15, 0)] - 1
    notional = liq["average_price"] * liq["original_quantity"]
    is_sell = (liq["side"] == "SELL").to_numpy()
    assert np.average(move[is_sell], weights=notional[is_sell]) < -0.002
    assert np.average(move[~is_sell], weights=notional[~is_sell]) > 0.002
    per_day = notional.groupby(liq["time"] // 86_400_000).sum()
    assert (per_day > 1e6).all() and (per_day < 3e9).all()


def test_market_day_matches_the_files(written, btc):
    _, paths = written
    md = sample.market_day(btc, DAY, N)
    frames = [md.agg_trades, md.metrics, md.klines_1m, None, md.liquidations]
    for path, frame in zip(paths[DAY], frames):
        if frame is None:
            continue
        on_disk = read(path)
        if frame is md.metrics:  # the file adds the next day's 00:00 row and may reorder and repeat rows
            on_disk = day_rows(on_disk, DAY)
        assert list(on_disk.columns) == list(frame.columns)
        assert len(on_disk) == len(frame)
        for col in frame.columns:
            if frame[col].dtype.kind in "fiu":
                assert np.allclose(on_disk[col].to_numpy(float), frame[col].to_numpy(float), rtol=1e-12), col
            else:
                assert (on_disk[col].astype(str).to_numpy() == frame[col].astype(str).to_numpy()).all(), col
    assert md.agg_trades["transact_time"].dtype == np.int64 and md.agg_trades["is_buyer_maker"].dtype == bool


def test_the_files_parse_with_the_project_formats(written):
    from liq_pipeline.formats import FORMATS, parse_csv

    root, paths = written
    by_kind = {fmt.kind: fmt for fmt in FORMATS.values()}
    for kind, path in zip(sample.KINDS, paths[DAY]):
        info, data = member(path)
        csv_path = root / info.filename
        csv_path.write_bytes(data)
        table = parse_csv(csv_path, by_kind[kind], "BTCUSDT", DAY)
        expected = {"fundingRate": 3, "metrics": 288, "klines": 1440, "aggTrades": N}.get(kind)
        assert table.num_rows == expected if expected else table.num_rows > 0, kind


def test_a_symbol_only_in_a_custom_registry_works(tmp_path, avax_registry):
    spec = load_registry(avax_registry).get("AVAXUSDT")
    paths = sample.write_day(tmp_path / "m", spec, sample.SAMPLE_DAYS[0], trades_per_day=1_000)
    assert [p.name for p in paths] == [
        "AVAXUSDT-aggTrades-2024-12-25.zip",
        "AVAXUSDT-metrics-2024-12-25.zip",
        "AVAXUSDT-1m-2024-12-25.zip",
        "AVAXUSDT-fundingRate-2024-12.zip",
        "AVAXUSDT-liquidationSnapshot-2024-12-25.zip",
    ]
    agg, kl, met = read(paths[0]), read(paths[2]), read(paths[1])
    assert abs(kl["open"].iloc[0] / 38.0 - 1) < 0.005
    assert (met["symbol"] == "AVAXUSDT").all() and (met["sum_open_interest"] > 0).all()
    assert len(agg) == 1_000
    # Its own market, not a rescaled copy of another symbol's.
    btc = sample.market_day(load_registry().get("BTCUSDT"), sample.SAMPLE_DAYS[0], 1_000).klines_1m
    r_avax, r_btc = np.diff(np.log(kl["close"])), np.diff(np.log(btc["close"].to_numpy()))
    assert abs(np.corrcoef(r_avax, r_btc)[0, 1]) < 0.5


def test_days_before_and_after_the_sample_stay_sane(btc):
    for day in (date(2024, 6, 1), date(2025, 3, 1)):
        md = sample.market_day(btc, day, 500)
        close = md.klines_1m["close"]
        assert 0.4 * btc.sample_price < close.iloc[-1] < 2.5 * btc.sample_price, day
        assert (md.metrics["sum_open_interest"] > 0).all()
        previous = sample.market_day(btc, day - timedelta(days=1), 500).klines_1m
        assert abs(md.klines_1m["open"].iloc[0] / previous["close"].iloc[-1] - 1) < 0.005
