"""The hand-over from live rows to the archive: when the archive publishes a day the collector wrote, its file
replaces the live partition and the materialization says how the two compared; for forced liquidations after the
archive's last liquidationSnapshot the live rows are kept; the collector never writes over the archive afterwards.

The live partitions are written the way `liq collect` writes them: Binance stream/REST payloads, built from the
sample generator's day (the same rows the mirror's archive files hold), decoded by `formats.stream` and committed
by `LivePartition`, with what a real collector loses: a reconnect gap in the trades, a bar never closed, open
interest polled for half the day, and forceOrder snapshots of at most one liquidation per second."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import materialize

from liq_pipeline import quality
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.formats import FORMATS, stream
from liq_pipeline.live import handover
from liq_pipeline.live.partition import ArchiveOwnedError, LivePartition, day_bounds_ms, live_info
from liq_pipeline.partitions import partition_key
from liq_pipeline.sources import sample
from liq_pipeline.sources.archive import LIQUIDATION_SNAPSHOT_LAST_DAY, SOURCE_KEY
from liq_pipeline.symbols import load_registry

from .conftest import failure_message, local_resources

SYMBOL = "BTCUSDT"
TRADES = 3_000
REPLACE_DAY = date(2024, 3, 30)  # the archive has every file, liquidationSnapshot included
KEEP_DAY = LIQUIDATION_SNAPSHOT_LAST_DAY + timedelta(days=1)  # 2024-04-01: no liquidationSnapshot file
ASSETS = {a.key.path[-1]: a for a in RAW_ASSETS}
LIVE_TABLES = ("agg_trades", "klines", "open_interest", "forced_liquidations")
HOUR_MS = 3_600_000
TRADE_GAPS = ((10 * HOUR_MS, 10 * HOUR_MS + 30 * 60_000), (20 * HOUR_MS, 20 * HOUR_MS + 5 * 60_000))
MISSING_BAR = 10 * HOUR_MS + 2 * 60_000  # 10:02, a bar the stream never closed
OI_HOURS = (6, 18)  # openInterestHist polled from 06:00 to 18:00 only
POLLED_AT = (
    6 * HOUR_MS + 150_000
)  # and one /fapi/v1/openInterest reading between the 5-minute marks (06:02:30)


@pytest.fixture(scope="module")
def market():
    spec = load_registry().get(SYMBOL)
    return {day: sample.market_day(spec, day, TRADES) for day in (REPLACE_DAY, KEEP_DAY)}


@pytest.fixture
def archive(tmp_path, lake, monkeypatch):
    """The archive mirror of both days, as the real archive has it: no liquidationSnapshot after 2024-03-31."""
    root = tmp_path / "mirror"
    spec = load_registry().get(SYMBOL)
    for day in (REPLACE_DAY, KEEP_DAY):
        sample.write_day(root, spec, day, trades_per_day=TRADES)
    gone = root / FORMATS["forced_liquidations"].relpath(SYMBOL, KEEP_DAY)
    gone.unlink()
    gone.with_name(gone.name + ".CHECKSUM").unlink()
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(root))
    return root


# --- payloads, as Binance sends them --------------------------------------------------------------------------


def _in_gap(ms: pd.Series, day: date) -> pd.Series:
    start, _ = day_bounds_ms(day)
    return pd.concat([(ms >= start + a) & (ms < start + b) for a, b in TRADE_GAPS], axis=1).any(axis=1)


def trade_payloads(m: sample.SampleDay) -> list[dict]:
    """aggTrade stream messages' data, minus the trades sent while the socket was down."""
    t = m.agg_trades[~_in_gap(m.agg_trades.transact_time, m.day)]
    return [
        {"e": "aggTrade", "s": SYMBOL, "a": r.agg_trade_id, "p": str(r.price), "q": str(r.quantity),
         "f": r.first_trade_id, "l": r.last_trade_id, "T": r.transact_time, "m": bool(r.is_buyer_maker)}
        for r in t.itertuples()
    ]  # fmt: skip


def kline_payloads(m: sample.SampleDay) -> list[dict]:
    """Closed kline `k` objects (x = true), all but the one the stream never closed."""
    k = m.klines_1m[m.klines_1m.open_time != day_bounds_ms(m.day)[0] + MISSING_BAR]
    return [
        {"t": r.open_time, "T": r.close_time, "s": SYMBOL, "i": "1m", "o": str(r.open), "h": str(r.high),
         "l": str(r.low), "c": str(r.close), "v": str(r.volume), "n": r.count, "x": True,
         "q": str(r.quote_volume), "V": str(r.taker_buy_volume), "Q": str(r.taker_buy_quote_volume)}
        for r in k.itertuples()
    ]  # fmt: skip


def oi_readings(m: sample.SampleDay) -> list[tuple[int, float, float]]:
    """openInterestHist items (5-minute) for OI_HOURS only, plus one polled reading valued at a trade price."""
    met = m.metrics.assign(
        ms=(pd.to_datetime(m.metrics.create_time) - pd.Timestamp(0)) // pd.Timedelta("1ms")
    )
    start = day_bounds_ms(m.day)[0]
    met = met[(met.ms >= start + OI_HOURS[0] * HOUR_MS) & (met.ms < start + OI_HOURS[1] * HOUR_MS)]
    items = [
        {"symbol": SYMBOL, "sumOpenInterest": str(r.sum_open_interest),
         "sumOpenInterestValue": str(r.sum_open_interest_value), "timestamp": r.ms}
        for r in met.itertuples()
    ]  # fmt: skip
    polled = met.iloc[0]
    price = float(m.agg_trades.price.iloc[len(m.agg_trades) // 4])
    return [
        *stream.open_interest_hist(items),
        (start + POLLED_AT, polled.sum_open_interest, polled.sum_open_interest * price),
    ]


def force_orders(m: sample.SampleDay) -> list[dict]:
    """forceOrder `o` objects: the stream pushes only the latest liquidation of each 1000 ms, per symbol."""
    liq = m.liquidations.drop_duplicates()  # the archive writes every row twice
    latest = liq.groupby(liq.time // 1000, sort=True).tail(1)
    return [
        {"s": SYMBOL, "S": r.side, "o": r.order_type, "f": r.time_in_force, "q": str(r.original_quantity),
         "p": str(r.price), "ap": str(r.average_price), "X": r.order_status, "l": str(r.last_fill_quantity),
         "z": str(r.accumulated_fill_quantity), "T": r.time}
        for r in latest.itertuples()
    ]  # fmt: skip


def collect(lake, table: str, day: date, rows: pa.Table, coverage: list[tuple[int, int]]) -> LivePartition:
    """Commit rows as the collector does: in chunks, each an atomic rewrite of the partition with the coverage so
    far."""
    part = LivePartition(lake, table, SYMBOL, day)
    start = day_bounds_ms(day)[0]
    cut = rows.num_rows // 2
    for chunk, spans in ((rows.slice(0, cut), coverage[:1]), (rows.slice(cut), coverage[1:])):
        part.add(chunk)
        for a, b in spans:
            part.cover(start + a, start + b)
        part.commit()
    return part


def trade_coverage() -> list[tuple[int, int]]:
    (a1, b1), (a2, b2) = TRADE_GAPS
    return [(0, a1), (b1, a2), (b2, 24 * HOUR_MS)]


def collect_day(lake, m: sample.SampleDay, tables=LIVE_TABLES) -> dict[str, LivePartition]:
    day, whole = m.day, [(0, 24 * HOUR_MS)]
    made = {
        "agg_trades": lambda: (stream.agg_trades(trade_payloads(m), SYMBOL, day), trade_coverage()),
        "klines": lambda: (
            stream.klines(kline_payloads(m), SYMBOL, day),
            [(0, MISSING_BAR), (MISSING_BAR + 60_000, 24 * HOUR_MS)],
        ),
        "open_interest": lambda: (
            stream.open_interest(oi_readings(m), SYMBOL, day),
            [(OI_HOURS[0] * HOUR_MS, OI_HOURS[1] * HOUR_MS)],
        ),
        "forced_liquidations": lambda: (stream.forced_liquidations(force_orders(m), SYMBOL, day), whole),
    }
    return {t: collect(lake, t, day, *made[t]()) for t in tables}


def run_raw(tables, day, symbol=SYMBOL):
    return materialize(
        [ASSETS[t] for t in tables],
        partition_key=partition_key(symbol, day),
        resources=local_resources(),
        raise_on_error=False,
    )


def metadata(result, table) -> dict:
    (mat,) = result.asset_materializations_for_node(table)
    return {k: v.value for k, v in mat.metadata.items()}


# --- through Dagster ------------------------------------------------------------------------------------------


def test_the_archive_replaces_live_partitions_and_says_how_they_compared(archive, lake, market):
    m = market[REPLACE_DAY]
    parts = collect_day(lake, m)
    assert all(live_info(lake.partition_file(t, SYMBOL, REPLACE_DAY)).live for t in LIVE_TABLES)

    result = run_raw(LIVE_TABLES, REPLACE_DAY)
    assert result.success, failure_message(result)

    start, ms = day_bounds_ms(REPLACE_DAY)[0], m.agg_trades.transact_time
    gap_ids = [m.agg_trades.agg_trade_id[(ms >= start + a) & (ms < start + b)] for a, b in TRADE_GAPS]
    assert all(len(ids) > 5 for ids in gap_ids)  # the gaps really cut trades out
    t = metadata(result, "agg_trades")
    assert t["live handover"] == handover.REPLACED
    assert (t["live rows"], t["archive rows"]) == (TRADES - sum(map(len, gap_ids)), TRADES)
    assert t["trades missing live"] == sum(map(len, gap_ids))
    assert t["trade id gaps live"] == 2
    assert t["trade id ranges missing live"] == [[int(ids.min()), int(ids.max())] for ids in gap_ids]
    assert (t["trades live only (should be 0)"], t["trades differing"]) == (0, 0)
    assert t["live coverage hours"] == round(24 - 35 / 60, 3)
    assert t["live coverage (UTC)"] == [
        ["00:00:00", "10:00:00"],
        ["10:30:00", "20:00:00"],
        ["20:05:00", "24:00:00"],
    ]

    k = metadata(result, "klines")
    assert (k["live rows"], k["archive rows"], k["bars missing live"]) == (1439, 1440, 1)
    assert k["bar times missing live (UTC)"] == [["10:02:00", "10:02:00"]]
    assert (k["bars live only"], k["bars differing (OHLCV)"]) == (0, 0)

    o = metadata(result, "open_interest")
    assert (o["live rows"], o["archive rows"]) == (145, 288)
    assert (o["readings compared"], o["readings missing live"], o["readings live only"]) == (144, 144, 1)
    assert o["max relative difference (contracts)"] < 1e-12  # the same readings, as decimal text both ways
    assert o["max relative difference (USD value)"] < 1e-12
    assert o["live coverage hours"] == 12.0

    f = metadata(result, "forced_liquidations")
    archived = m.liquidations.drop_duplicates()
    live = archived.groupby(archived.time // 1000).tail(1)
    assert len(live) < len(archived)  # the stream's one-per-second limit really drops some
    assert (f["liquidations live"], f["liquidations archived"]) == (len(live), len(archived))
    same = archived.merge(live[["time", "side"]].drop_duplicates(), on=["time", "side"])
    assert f["archived with a live one at the same ms and side"] == len(same)
    assert f["live without an archived one (should be 0)"] == 0
    usd = lambda d: float((d.average_price * d.accumulated_fill_quantity).sum())  # noqa: E731
    assert f["notional live USD"] == pytest.approx(usd(live), rel=1e-9)
    assert f["notional archived USD"] == pytest.approx(usd(archived), rel=1e-9)
    assert f["notional live USD"] < f["notional archived USD"]
    assert "at most one per symbol per second" in f["liquidations live vs archived"]

    for table in LIVE_TABLES:  # the lake now holds the archive's rows, marked as the archive's
        path = lake.partition_file(table, SYMBOL, REPLACE_DAY)
        assert not live_info(path).live
        assert pq.read_schema(path).metadata[SOURCE_KEY] == b"local"
        assert pq.ParquetFile(path).metadata.num_rows == metadata(result, table)["archive rows"]
        parts[table].add(pq.read_table(path).slice(0, 1))
        with pytest.raises(ArchiveOwnedError):  # a collector still running on the day stops there
            parts[table].commit()
        with pytest.raises(ArchiveOwnedError):  # and a restarted one does not start on it
            LivePartition(lake, table, SYMBOL, REPLACE_DAY)


def test_an_archive_partition_has_no_live_comparison(archive, lake):
    # Without a live partition, the ingest's metadata is as it always was.
    result = run_raw(["agg_trades"], REPLACE_DAY)
    assert result.success
    assert not {k for k in metadata(result, "agg_trades") if "live" in k}


def test_forced_liquidations_after_the_archive_end_keep_the_live_rows(archive, lake, market):
    collect_day(lake, market[KEEP_DAY], ["forced_liquidations"])
    path = lake.partition_file("forced_liquidations", SYMBOL, KEEP_DAY)
    before, info = path.read_bytes(), live_info(path)
    assert info.rows > 100

    result = run_raw(["forced_liquidations"], KEEP_DAY)
    assert result.success, failure_message(result)
    assert path.read_bytes() == before  # not rewritten, not emptied
    assert live_info(path) == info  # still live, same coverage and rows
    meta = metadata(result, "forced_liquidations")
    assert meta["live handover"] == (
        "kept the live rows: the archive publishes no liquidationSnapshot after 2024-03-31"
    )
    assert (meta["dagster/row_count"], meta["live rows"], meta["live coverage hours"]) == (
        info.rows,
        info.rows,
        24.0,
    )
    assert "No liquidationSnapshot file" in meta["note"]
    LivePartition(lake, "forced_liquidations", SYMBOL, KEEP_DAY).commit()  # the collector carries on

    # Without a live partition the same day is written empty, with the reason: the kept rows above are no accident.
    other = run_raw(["forced_liquidations"], KEEP_DAY, symbol="ETHUSDT")
    assert other.success
    empty = lake.partition_file("forced_liquidations", "ETHUSDT", KEEP_DAY)
    assert pq.ParquetFile(empty).metadata.num_rows == 0
    assert "live handover" not in metadata(other, "forced_liquidations")


def test_a_missing_file_of_another_table_fails_and_leaves_the_live_partition(archive, lake, market):
    collect_day(lake, market[KEEP_DAY], ["agg_trades"])
    path = lake.partition_file("agg_trades", SYMBOL, KEEP_DAY)
    before = path.read_bytes()
    (archive / FORMATS["agg_trades"].relpath(SYMBOL, KEEP_DAY)).unlink()  # not published yet

    result = run_raw(["agg_trades"], KEEP_DAY)
    assert not result.success
    assert f"{SYMBOL} aggTrades for {KEEP_DAY}: no file at" in failure_message(result)
    assert path.read_bytes() == before
    assert live_info(path).live


# --- the comparison alone, on live rows that disagree with the archive ------------------------------------------


def _archive_table(table: str, m: sample.SampleDay, archive_root) -> pa.Table:
    from liq_pipeline.sources.archive import LocalMirror, ingest

    return ingest(LocalMirror(archive_root), FORMATS[table], SYMBOL, m.day).table


def _with(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table[column].to_pylist()
    values[row] = value
    i = table.column_names.index(column)
    return table.set_column(i, column, pa.array(values, table.schema.field(column).type))


def test_the_comparison_counts_rows_that_disagree(archive, market):
    m = market[REPLACE_DAY]
    whole = [day_bounds_ms(REPLACE_DAY)]

    trades = _archive_table("agg_trades", m, archive)
    live = _with(trades, "price", 7, trades["price"][7].as_py() * 1.001)
    extra = _with(live.slice(0, 1), "agg_trade_id", 0, 10**12)  # an id the archive does not have
    d = handover.compare("agg_trades", pa.concat_tables([live, extra]), trades, whole, REPLACE_DAY)
    assert (d["trades differing"], d["trades live only (should be 0)"], d["trades missing live"]) == (1, 1, 0)
    assert d["live coverage hours"] == 24.0

    bars = _archive_table("klines", m, archive)
    live = _with(bars, "close", 100, bars["close"][100].as_py() + 1.0)
    live = _with(live, "trade_count", 200, 10**6)  # not OHLCV: not compared
    d = handover.compare("klines", live.slice(1), bars, whole, REPLACE_DAY)
    assert (d["bars differing (OHLCV)"], d["bars missing live"]) == (1, 1)
    assert d["bar times missing live (UTC)"] == [["00:00:00", "00:00:00"]]

    oi = _archive_table("open_interest", m, archive)
    live = _with(oi, "open_interest", 3, oi["open_interest"][3].as_py() * 1.01)
    d = handover.compare("open_interest", live, oi, whole, REPLACE_DAY)
    assert d["max relative difference (contracts)"] == pytest.approx(0.01, rel=1e-9)
    assert d["max relative difference (USD value)"] == 0.0

    liq = _archive_table("forced_liquidations", m, archive)
    live = _with(liq.slice(0, 10), "side", 0, "short" if liq["side"][0].as_py() == "long" else "long")
    d = handover.compare("forced_liquidations", live, liq, whole, REPLACE_DAY)
    assert d["live without an archived one (should be 0)"] == 1
    assert d["liquidations live"] == 10
    assert d["notional live USD"] == pytest.approx(pc.sum(live["notional_usd"]).as_py(), abs=0.01)


@pytest.mark.parametrize("table", LIVE_TABLES)
def test_an_empty_live_partition_misses_everything(archive, market, table):
    # The collector writes a partition without rows once it has coverage (no liquidation in an hour is a fact).
    full = _archive_table(table, market[REPLACE_DAY], archive)
    d = handover.compare(table, full.slice(0, 0), full, [], REPLACE_DAY)
    assert (d["live rows"], d["archive rows"], d["live coverage hours"]) == (0, full.num_rows, 0.0)
    missing = {
        "agg_trades": "trades missing live",
        "klines": "bars missing live",
        "open_interest": "readings missing live",
        "forced_liquidations": "liquidations archived",
    }[table]
    assert d[missing] == full.num_rows


def test_coverage_is_clipped_to_the_day_and_merged():
    start, end = day_bounds_ms(REPLACE_DAY)
    got = handover.coverage_entries([(start - 5000, start + HOUR_MS), (start + HOUR_MS, start + 2 * HOUR_MS),
                                     (end - 1800_000, end + 99)], REPLACE_DAY)  # fmt: skip
    assert got == {
        "live coverage hours": 2.5,
        "live coverage (UTC)": [["00:00:00", "02:00:00"], ["23:30:00", "24:00:00"]],
    }


# --- the guard against foreign files, over live partitions that cover part of the day ---------------------------


def test_a_live_reference_is_compared_over_the_hours_it_covers(archive, lake, market):
    m = market[REPLACE_DAY]
    first_hour = [b for b in kline_payloads(m) if b["t"] < day_bounds_ms(REPLACE_DAY)[0] + HOUR_MS]
    collect(lake, "klines", REPLACE_DAY, stream.klines(first_hour, SYMBOL, REPLACE_DAY), [(0, HOUR_MS)])
    trades = _archive_table("agg_trades", m, archive)
    # No slack at all: every trade must lie inside the reference's range. The first hour's trades do (Binance
    # builds the bars from them); the rest of the day's do not, so comparing them would refuse a true file.
    strict = dict(tolerance=0.0, max_share=0.0)
    assert (
        quality.lake_price_conflict(lake, "agg_trades", SYMBOL, REPLACE_DAY, trades, "file", **strict) is None
    )

    as_archive = pq.read_table(lake.partition_file("klines", SYMBOL, REPLACE_DAY))
    lake.write("klines", SYMBOL, REPLACE_DAY, as_archive.replace_schema_metadata({SOURCE_KEY: b"local"}))
    refused = quality.lake_price_conflict(lake, "agg_trades", SYMBOL, REPLACE_DAY, trades, "file", **strict)
    assert refused and "lie far outside BTCUSDT's klines" in refused


def test_another_symbols_file_is_still_refused_over_a_live_partition(archive, lake, market):
    m = market[REPLACE_DAY]
    collect_day(lake, m, ["klines"])
    eth = sample.market_day(load_registry().get("ETHUSDT"), REPLACE_DAY, TRADES)
    foreign = stream.agg_trades(trade_payloads(eth), SYMBOL, REPLACE_DAY)  # ETH's trades under BTC's name
    refused = quality.lake_price_conflict(lake, "agg_trades", SYMBOL, REPLACE_DAY, foreign, "ETH's file")
    assert refused.startswith("ETH's file: 100% of its prices")
    assert "live rows of liq collect, compared over the hours they cover" in refused
