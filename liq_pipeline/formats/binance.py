"""Binance archive file formats -> typed Arrow tables for the lake. The one place that knows these formats.

Each format names its CSV columns in file order, the SQL that turns a row into lake columns, and the key that
orders the rows and identifies duplicates. Parsing runs in an in-memory DuckDB (parallel CSV reader); nothing here
touches the warehouse.

Facts handled (DESIGN §3): headers appear only in newer files; rows can be out of order or repeated; futures
timestamps are ms, spot moved to µs in 2025, so the unit is detected per value rather than assumed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class FormatError(ValueError):
    """A file does not hold what its name promises. The message names the file and says what to do."""


@dataclass(frozen=True)
class ArchiveFormat:
    kind: str  # the archive's folder name, e.g. "aggTrades"
    table: str  # the lake table and Dagster asset key
    columns: tuple[tuple[str, str], ...]  # CSV columns in file order, with DuckDB types
    select: str  # SQL select list over the CSV producing the lake columns; {ts} converts ms/µs integers
    key: str  # lake column that orders rows; rows repeating the whole key are dropped
    period: str = "daily"  # "daily" or "monthly"
    interval: str | None = None  # klines only
    has_symbol_column: bool = False

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]

    def file_stem(self, symbol: str, day: date) -> str:
        stamp = day.strftime("%Y-%m") if self.period == "monthly" else day.isoformat()
        return f"{symbol}-{self.interval or self.kind}-{stamp}"

    def relpath(self, symbol: str, day: date) -> str:
        """Path of the zip under the archive root, exactly as data.binance.vision lays it out."""
        sub = f"{symbol}/{self.interval}" if self.interval else symbol
        return f"data/futures/um/{self.period}/{self.kind}/{sub}/{self.file_stem(symbol, day)}.zip"


# ms or µs since the epoch -> TIMESTAMP. 1e14 µs is 1973 and 1e14 ms is year 5138, so the magnitude tells the unit.
_TS = "CASE WHEN {c} > 100000000000000 THEN make_timestamp({c}) ELSE make_timestamp({c} * 1000) END"

AGG_TRADES = ArchiveFormat(
    kind="aggTrades",
    table="agg_trades",
    columns=(
        ("agg_trade_id", "BIGINT"),
        ("price", "DOUBLE"),
        ("quantity", "DOUBLE"),
        ("first_trade_id", "BIGINT"),
        ("last_trade_id", "BIGINT"),
        ("transact_time", "BIGINT"),
        ("is_buyer_maker", "BOOLEAN"),
    ),
    select=(
        "agg_trade_id, {ts} AS ts, price, quantity, first_trade_id, last_trade_id, is_buyer_maker".replace(
            "{ts}", _TS.format(c="transact_time")
        )
    ),
    key="agg_trade_id",
)

KLINES = ArchiveFormat(
    kind="klines",
    table="klines",
    interval="1m",
    columns=(
        ("open_time", "BIGINT"),
        ("open", "DOUBLE"),
        ("high", "DOUBLE"),
        ("low", "DOUBLE"),
        ("close", "DOUBLE"),
        ("volume", "DOUBLE"),
        ("close_time", "BIGINT"),
        ("quote_volume", "DOUBLE"),
        ("count", "BIGINT"),
        ("taker_buy_volume", "DOUBLE"),
        ("taker_buy_quote_volume", "DOUBLE"),
        ("ignore", "VARCHAR"),
    ),
    select=(
        f"{_TS.format(c='open_time')} AS open_time, open, high, low, close, volume, "
        f"{_TS.format(c='close_time')} AS close_time, quote_volume, count AS trade_count, "
        "taker_buy_volume, taker_buy_quote_volume"
    ),
    key="open_time",
)

METRICS = ArchiveFormat(
    kind="metrics",
    table="open_interest",
    columns=(
        ("create_time", "VARCHAR"),
        ("symbol", "VARCHAR"),
        ("sum_open_interest", "DOUBLE"),
        ("sum_open_interest_value", "DOUBLE"),
        ("count_toptrader_long_short_ratio", "DOUBLE"),
        ("sum_toptrader_long_short_ratio", "DOUBLE"),
        ("count_long_short_ratio", "DOUBLE"),
        ("sum_taker_long_short_vol_ratio", "DOUBLE"),
    ),
    select=(
        "strptime(create_time, '%Y-%m-%d %H:%M:%S') AS ts, sum_open_interest AS open_interest, "
        "sum_open_interest_value AS open_interest_value, count_toptrader_long_short_ratio, "
        "sum_toptrader_long_short_ratio, count_long_short_ratio, sum_taker_long_short_vol_ratio"
    ),
    key="ts",
    has_symbol_column=True,
)

FUNDING_RATE = ArchiveFormat(
    kind="fundingRate",
    table="funding_rate",
    period="monthly",
    columns=(("calc_time", "BIGINT"), ("funding_interval_hours", "BIGINT"), ("last_funding_rate", "DOUBLE")),
    select=f"{_TS.format(c='calc_time')} AS ts, last_funding_rate AS funding_rate, funding_interval_hours",
    key="ts",
)

LIQUIDATION_SNAPSHOT = ArchiveFormat(
    kind="liquidationSnapshot",
    table="forced_liquidations",
    columns=(
        ("time", "BIGINT"),
        ("side", "VARCHAR"),
        ("order_type", "VARCHAR"),
        ("time_in_force", "VARCHAR"),
        ("original_quantity", "DOUBLE"),
        ("price", "DOUBLE"),
        ("average_price", "DOUBLE"),
        ("order_status", "VARCHAR"),
        ("last_fill_quantity", "DOUBLE"),
        ("accumulated_fill_quantity", "DOUBLE"),
    ),
    # A SELL order closes a long: the position liquidated is on the other side of the order.
    select=(
        f"{_TS.format(c='time')} AS ts, CASE upper(side) WHEN 'SELL' THEN 'long' WHEN 'BUY' THEN 'short' END AS side, "
        "coalesce(nullif(average_price, 0), price) AS price, "
        "coalesce(nullif(accumulated_fill_quantity, 0), original_quantity) AS quantity, "
        "coalesce(nullif(average_price, 0), price) * coalesce(nullif(accumulated_fill_quantity, 0), original_quantity) "
        "AS notional_usd"
    ),
    key="*",
)

FORMATS = {f.table: f for f in (AGG_TRADES, KLINES, METRICS, FUNDING_RATE, LIQUIDATION_SNAPSHOT)}


def _sniff(path: Path, fmt: ArchiveFormat, name: str) -> bool:
    """True if the CSV starts with a header. Raises FormatError if its columns are not the format's."""
    with open(path, newline="") as fh:
        first = next(csv.reader(fh), None)
    if not first:
        raise FormatError(f"{name}: the file is empty; delete it and fetch the {fmt.kind} file again")
    first = [c.strip() for c in first]
    expected = fmt.column_names
    is_header = not _looks_numeric(first[0])
    if is_header and first != expected:
        raise FormatError(
            f"{name}: wrong columns for a Binance {fmt.kind} file: got {first}, expected {expected}. "
            "Is this the right file for this table?"
        )
    if not is_header and len(first) != len(expected):
        raise FormatError(
            f"{name}: rows have {len(first)} fields but a Binance {fmt.kind} file has {len(expected)} "
            f"({', '.join(expected)}). Is this the right file for this table?"
        )
    return is_header


def _looks_numeric(text: str) -> bool:
    try:
        float(text.strip().strip('"') or "x")
        return True
    except ValueError:
        return False


def parse_csv(path: Path, fmt: ArchiveFormat, symbol: str, day: date, origin: str | None = None) -> pa.Table:
    """Parse one archive CSV into the lake table for (symbol, day): typed, sorted by key, without repeats.

    `origin` names the file in errors (the zip or URL the CSV came from) when `path` is a temporary extract.

    Rows outside the day are an error for daily files (the file belongs to another day) and are filtered out for
    monthly files, which hold a month of days.
    """
    name = origin or str(path)
    header = _sniff(path, fmt, name)
    cols = "{" + ", ".join(f"'{c}': '{t}'" for c, t in fmt.columns) + "}"
    con = duckdb.connect()
    try:
        rel = con.sql(
            f"SELECT {fmt.select}{', symbol AS _file_symbol' if fmt.has_symbol_column else ''} "
            f"FROM read_csv(?, header={str(header).lower()}, columns={cols}, auto_detect=false, delim=',', quote='\"')",
            params=[str(path)],
        )
        table = rel.to_arrow_table()
    except duckdb.Error as exc:
        raise FormatError(f"{name}: cannot parse as a Binance {fmt.kind} file: {str(exc).splitlines()[0]}") from exc
    finally:
        con.close()

    if fmt.has_symbol_column:
        others = pc.unique(table["_file_symbol"]).to_pylist()
        if any(s != symbol for s in others):
            raise FormatError(
                f"{name}: rows belong to {sorted(set(others) - {symbol})}, not {symbol}. "
                "The file was saved under the wrong symbol; fetch the right one."
            )
        table = table.drop_columns(["_file_symbol"])

    ts_col = "open_time" if "open_time" in table.column_names else "ts"
    start = datetime.combine(day, time())
    in_day = pc.and_(pc.greater_equal(table[ts_col], start), pc.less(table[ts_col], start + timedelta(days=1)))
    if fmt.period == "monthly":
        table = table.filter(in_day)
    elif table.num_rows and not pc.all(in_day).as_py():
        bad = table.filter(pc.invert(in_day))
        raise FormatError(
            f"{name}: {bad.num_rows} of {table.num_rows} rows fall outside {day} (first at {bad[ts_col][0]}). "
            f"The file belongs to another day; fetch {symbol}'s file for {day}."
        )
    table = _sort_unique(table, fmt.key)
    n = table.num_rows
    return table.add_column(0, "date", pa.array(np.full(n, day), pa.date32())).add_column(
        0, "symbol", pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([symbol]))
    )


def _sort_unique(table: pa.Table, key: str) -> pa.Table:
    """Order by key and drop repeats. Sorted, unique files (the usual case) cost one vectorised check."""
    if key == "*":  # no id column: a repeat is a whole repeated row
        con = duckdb.connect()
        try:
            con.register("rows", table)
            return con.sql("SELECT DISTINCT * FROM rows ORDER BY ALL").to_arrow_table()
        finally:
            con.close()
    values = table[key].combine_chunks()
    as_int = np.asarray(values.cast(pa.int64()) if pa.types.is_timestamp(values.type) else values)
    if len(as_int) < 2 or bool(np.all(as_int[1:] > as_int[:-1])):
        return table
    order = np.argsort(as_int, kind="stable")
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = as_int[order][1:] != as_int[order][:-1]
    return table.take(pa.array(order[keep]))
