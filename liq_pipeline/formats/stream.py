"""Binance USDT-M futures stream and REST payloads -> the same typed lake columns as the archive's files.

The live collector's half of the formats: a row that arrives over the WebSocket or REST lands in the lake exactly as
the archive's CSV row for the same event would (same columns, types, units and side convention), so the archive can
later replace it row for row. Payloads, as documented by Binance:

- aggTrade (stream data and `GET /fapi/v1/aggTrades` items): `{"a": id, "p": "price", "q": "qty", "f": first id,
  "l": last id, "T": ms, "m": buyer is maker}`.
- kline (stream `k` object, only when `"x": true`, the bar closed): `{"t", "T", "o", "h", "l", "c", "v", "n", "q",
  "V", "Q"}`; `GET /fapi/v1/klines` gives the same fields as an array `[t, o, h, l, c, v, T, q, n, V, Q, ignore]`.
- forceOrder (stream `o` object): `{"s", "S": SELL|BUY, "q", "p", "ap", "X", "l", "z", "T"}`. As in the archive's
  liquidationSnapshot, a SELL order closes a long: the side stored is the position liquidated.
- open interest: `GET /futures/data/openInterestHist` items `{"sumOpenInterest", "sumOpenInterestValue",
  "timestamp"}`, or a reading polled from `GET /fapi/v1/openInterest` (`{"openInterest", "time"}`) valued at the
  last trade price by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

import numpy as np
import pyarrow as pa

from liq_pipeline.formats.binance import (
    AGG_TRADES,
    KLINES,
    LIQUIDATION_SNAPSHOT,
    METRICS,
    ArchiveFormat,
    lake_schema,
    with_partition_columns,
)

# GET /fapi/v1/klines array positions, in the archive's column order (the CSV has the same 12 fields).
_KLINE_FIELDS = ("t", "o", "h", "l", "c", "v", "T", "q", "n", "V", "Q")


def _table(fmt: ArchiveFormat, columns: dict[str, Sequence]) -> pa.Table:
    """Columns by lake name -> a table typed like the archive's ingest (ms integers become timestamps)."""
    schema = lake_schema(fmt)
    arrays = []
    for field in schema:
        values = columns.get(field.name)
        if values is None:
            arrays.append(pa.nulls(len(next(iter(columns.values()))), field.type))
        elif pa.types.is_timestamp(field.type):
            arrays.append(pa.array(np.asarray(values, np.int64) * 1000, pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def agg_trades(items: Iterable[dict], symbol: str, day: date) -> pa.Table:
    """aggTrade stream data or REST aggTrades items (same keys) -> agg_trades rows."""
    items = list(items)
    return with_partition_columns(
        _table(
            AGG_TRADES,
            {
                "agg_trade_id": [int(x["a"]) for x in items],
                "ts": [int(x["T"]) for x in items],
                "price": [float(x["p"]) for x in items],
                "quantity": [float(x["q"]) for x in items],
                "first_trade_id": [int(x["f"]) for x in items],
                "last_trade_id": [int(x["l"]) for x in items],
                "is_buyer_maker": [bool(x["m"]) for x in items],
            },
        ),
        symbol,
        day,
    )


def kline_object(row: Sequence) -> dict:
    """A REST klines array -> the stream's `k` object fields (the one shape `klines` reads)."""
    return dict(zip(_KLINE_FIELDS, row))


def klines(bars: Iterable[dict], symbol: str, day: date) -> pa.Table:
    """Closed 1-minute bars (stream `k` objects, or REST arrays through `kline_object`) -> klines rows."""
    bars = list(bars)
    f = lambda key: [float(b[key]) for b in bars]  # noqa: E731
    return with_partition_columns(
        _table(
            KLINES,
            {
                "open_time": [int(b["t"]) for b in bars],
                "open": f("o"),
                "high": f("h"),
                "low": f("l"),
                "close": f("c"),
                "volume": f("v"),
                "close_time": [int(b["T"]) for b in bars],
                "quote_volume": f("q"),
                "trade_count": [int(b["n"]) for b in bars],
                "taker_buy_volume": f("V"),
                "taker_buy_quote_volume": f("Q"),
            },
        ),
        symbol,
        day,
    )


def forced_liquidations(orders: Iterable[dict], symbol: str, day: date) -> pa.Table:
    """forceOrder `o` objects -> forced_liquidations rows, valued like the archive's liquidationSnapshot: the
    average price unless zero, the filled quantity unless zero."""
    orders = list(orders)
    price = [float(o["ap"]) or float(o["p"]) for o in orders]
    qty = [float(o["z"]) or float(o["q"]) for o in orders]
    return with_partition_columns(
        _table(
            LIQUIDATION_SNAPSHOT,
            {
                "ts": [int(o["T"]) for o in orders],
                "side": ["long" if o["S"].upper() == "SELL" else "short" for o in orders],
                "price": price,
                "quantity": qty,
                "notional_usd": [p * q for p, q in zip(price, qty)],
            },
        ),
        symbol,
        day,
    )


def open_interest(readings: Iterable[tuple[int, float, float]], symbol: str, day: date) -> pa.Table:
    """(ms, open interest in coins, its USD value) readings -> open_interest rows; the ratio columns, which the
    streams do not carry, are null."""
    readings = list(readings)
    return with_partition_columns(
        _table(
            METRICS,
            {
                "ts": [r[0] for r in readings],
                "open_interest": [float(r[1]) for r in readings],
                "open_interest_value": [float(r[2]) for r in readings],
            },
        ),
        symbol,
        day,
    )


def open_interest_hist(items: Iterable[dict]) -> list[tuple[int, float, float]]:
    """`openInterestHist` items -> (ms, coins, USD) readings."""
    return [
        (int(x["timestamp"]), float(x["sumOpenInterest"]), float(x["sumOpenInterestValue"])) for x in items
    ]
