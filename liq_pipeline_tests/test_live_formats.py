"""Live rows land exactly as the archive's rows of the same events: the decoders pinned on Binance's documented
payloads, compared with the archive ingest of the same events, and the live partition's commit rules."""

from __future__ import annotations

import csv
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pytest

from liq_pipeline.formats import AGG_TRADES, KLINES, LIQUIDATION_SNAPSHOT, parse_csv, stream
from liq_pipeline.lake import Lake
from liq_pipeline.live.collector import IdRanges, stream_names
from liq_pipeline.live.partition import ArchiveOwnedError, LivePartition, covered_until, live_info
from liq_pipeline.sources import sample
from liq_pipeline.symbols import load_registry

DAY = date(2019, 9, 9)  # the day of Binance's documented forceOrder example (E = 1568014460893)

# Binance's documented examples (developers.binance.com, USDT-M futures market streams), values as published.
DOC_AGG_TRADE = {
    "e": "aggTrade",
    "E": 123456789,
    "s": "BTCUSDT",
    "a": 5933014,
    "p": "0.001",
    "q": "100",
    "f": 100,
    "l": 105,
    "T": 123456785,
    "m": True,
}
DOC_FORCE_ORDER = {
    "e": "forceOrder",
    "E": 1568014460893,
    "o": {
        "s": "BTCUSDT",
        "S": "SELL",
        "o": "LIMIT",
        "f": "IOC",
        "q": "0.014",
        "p": "9910",
        "ap": "9910",
        "X": "FILLED",
        "l": "0.014",
        "z": "0.014",
        "T": 1568014460893,
    },
}
DOC_KLINE_REST = [1499040000000, "0.01634790", "0.80000000", "0.01575800", "0.01577100", "148976.11427815",
                  1499644799999, "2434.19055334", 308, "1756.87402397", "28.46694368", "17928899.62484339"]  # fmt: skip


def _archive_rows(tmp_path, fmt, rows: list[list], day: date) -> pa.Table:
    """The archive ingest of CSV rows, as the archive would publish them."""
    path = tmp_path / f"{fmt.kind}.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([fmt.column_names, *rows])
    return parse_csv(path, fmt, "BTCUSDT", day)


def test_documented_payloads_decode_to_the_archive_rows_of_the_same_events(tmp_path):
    day = date(1970, 1, 2)
    trade = stream.agg_trades([DOC_AGG_TRADE], "BTCUSDT", date(1970, 1, 2))
    archive = _archive_rows(
        tmp_path, AGG_TRADES, [[5933014, "0.001", "100", 100, 105, 123456785, "true"]], day
    )
    assert trade.equals(archive)
    assert trade.to_pylist()[0]["ts"] == datetime(1970, 1, 2, 10, 17, 36, 785000)

    liq = stream.forced_liquidations([DOC_FORCE_ORDER["o"]], "BTCUSDT", DAY)
    row = ["1568014460893", "SELL", "LIMIT", "IOC", "0.014", "9910", "9910", "FILLED", "0.014", "0.014"]
    assert liq.equals(_archive_rows(tmp_path, LIQUIDATION_SNAPSHOT, [row], DAY))
    assert liq.to_pylist()[0]["side"] == "long"  # a SELL order closes a long

    bar = stream.klines([stream.kline_object(DOC_KLINE_REST)], "BTCUSDT", date(2017, 7, 3))
    assert bar.equals(_archive_rows(tmp_path, KLINES, [DOC_KLINE_REST], date(2017, 7, 3)))


def test_an_unfilled_force_order_is_valued_like_the_archive_values_it(tmp_path):
    """ap = 0 and z = 0 (an order not yet filled): price and quantity fall back to p and q, as for the archive."""
    order = {**DOC_FORCE_ORDER["o"], "ap": "0", "z": "0", "S": "BUY"}
    row = ["1568014460893", "BUY", "LIMIT", "IOC", "0.014", "9910", "0", "NEW", "0", "0"]
    live = stream.forced_liquidations([order], "BTCUSDT", DAY)
    assert live.equals(_archive_rows(tmp_path, LIQUIDATION_SNAPSHOT, [row], DAY))
    assert live["side"][0].as_py() == "short"
    assert live["notional_usd"][0].as_py() == pytest.approx(9910 * 0.014)


def test_a_sample_day_sent_as_payloads_equals_its_archive_ingest(mirror):
    """The generator's day as stream payloads -> the same table as the archive's zip of that day."""
    from liq_pipeline.formats import FORMATS
    from liq_pipeline.sources.archive import LocalMirror, ingest

    spec, day = load_registry().get("BTCUSDT"), date(2024, 12, 28)
    market = sample.market_day(spec, day, trades_per_day=3_000)
    payloads = [
        {"a": r.agg_trade_id, "p": repr(r.price), "q": repr(r.quantity), "f": r.first_trade_id,
         "l": r.last_trade_id, "T": r.transact_time, "m": bool(r.is_buyer_maker)}
        for r in market.agg_trades.itertuples()
    ]  # fmt: skip
    live = stream.agg_trades(payloads, "BTCUSDT", day)
    archived = ingest(LocalMirror(mirror), FORMATS["agg_trades"], "BTCUSDT", day).table
    assert live.select(archived.column_names).equals(archived.replace_schema_metadata(None))


def test_stream_names_are_binance_combined_stream_names():
    assert stream_names(["BTCUSDT", "ETHUSDT"]) == [
        "btcusdt@aggTrade",
        "btcusdt@kline_1m",
        "ethusdt@aggTrade",
        "ethusdt@kline_1m",
        "!forceOrder@arr",
    ]


def test_id_ranges_find_the_holes_a_reconnect_leaves():
    ranges = IdRanges(np.array([5, 6, 7, 10, 11, 20]), floor=3)
    assert ranges.ranges == [[5, 7], [10, 11], [20, 20]]
    assert ranges.first_gap() == (3, 4)
    ranges.add(3, 4)
    assert ranges.first_gap() == (8, 9)
    ranges.add(8, 9)
    ranges.add(12, 19)
    assert ranges.ranges == [[3, 20]] and ranges.first_gap() is None
    ranges.add(21, 21)  # the stream's usual step
    assert ranges.newest == 21


def test_a_live_partition_commits_whole_sorted_without_repeats_and_never_over_the_archive(tmp_path):
    lake, day = Lake.at(tmp_path), date(2024, 12, 28)
    market = sample.market_day(load_registry().get("BTCUSDT"), day, trades_per_day=3_000)
    items = [{"a": r.agg_trade_id, "p": r.price, "q": r.quantity, "f": r.first_trade_id, "l": r.last_trade_id,
              "T": r.transact_time, "m": r.is_buyer_maker} for r in market.agg_trades.itertuples()]  # fmt: skip
    p = LivePartition(lake, "agg_trades", "BTCUSDT", day)
    p.add(stream.agg_trades(items[1000:2000], "BTCUSDT", day))
    p.add(stream.agg_trades(items[:1200], "BTCUSDT", day))  # overlaps the first chunk
    p.cover(0, 10**13)  # clipped to the day
    assert p.commit() == 2000
    again = LivePartition(lake, "agg_trades", "BTCUSDT", day)  # a restart reads it back
    again.add(stream.agg_trades(items[1500:2500], "BTCUSDT", day))
    assert again.commit() == 500
    ids = lake.read("agg_trades", "BTCUSDT", [day])["agg_trade_id"].to_numpy()
    assert (np.diff(ids) == 1).all() and len(ids) == 2500
    info = live_info(lake.partition_file("agg_trades", "BTCUSDT", day))
    assert info.live and info.coverage == [(1735344000000, 1735430400000)]
    assert covered_until(info.coverage, day) == datetime(2024, 12, 29)

    lake.write("agg_trades", "BTCUSDT", day, stream.agg_trades(items, "BTCUSDT", day))  # the archive's file
    with pytest.raises(ArchiveOwnedError, match="archive"):
        again.add(stream.agg_trades(items[:1], "BTCUSDT", day))
        again.commit()
    with pytest.raises(ArchiveOwnedError, match="archive"):
        LivePartition(lake, "agg_trades", "BTCUSDT", day)


def test_coverage_that_starts_late_or_has_a_hole_ends_the_known_truth():
    day = date(2024, 6, 10)
    midnight = 1717977600000
    assert covered_until([(midnight + 30_000, midnight + 3_600_000)], day) == datetime(2024, 6, 10, 1)
    assert covered_until([(midnight + 6 * 3_600_000, midnight + 7 * 3_600_000)], day) is None
    hole = [
        (midnight, midnight + 12 * 3_600_000),
        (midnight + 12 * 3_600_000 + 600_000, midnight + 86_400_000),
    ]
    assert covered_until(hole, day) == datetime(2024, 6, 10, 12)
