"""Binance archive file formats -> typed Arrow tables for the lake. The one place that knows these formats.

Each format names its CSV columns in file order, the SQL that turns a row into lake columns, and the key that
orders the rows and identifies duplicates. Parsing runs in an in-memory DuckDB (parallel CSV reader); nothing here
touches the warehouse.

Facts handled: headers appear only in newer files; rows can be out of order or repeated; futures timestamps are ms,
spot moved to µs in 2025, so the unit is detected per value rather than assumed; a daily file can hold a row of the
next day (a `metrics` file usually runs from 00:00:00 of its day through 00:00:00 of the next, 289 rows), which is
dropped and counted. Values are checked too: see `check_values`.
"""

from __future__ import annotations

import csv
import functools
import tempfile
from collections.abc import Callable
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
    # Value rules over lake columns (see check_values): prices, quantities, columns that must be finite when present,
    # and a (high, low) pair whose high must not be below its low.
    prices: tuple[str, ...] = ()
    quantities: tuple[str, ...] = ()
    finite: tuple[str, ...] = ()
    high_low: tuple[str, str] | None = None

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
    prices=("price",),
    quantities=("quantity",),
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
    prices=("close", "open", "high", "low"),
    quantities=("volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume"),
    high_low=("high", "low"),
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
    # A zero reading is a missing reading (the checks flag it), not a broken file; NaN or inf is.
    finite=("open_interest", "open_interest_value"),
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
    prices=("price",),
    quantities=("quantity",),
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


@dataclass(frozen=True)
class Parsed:
    table: pa.Table  # lake-ready: typed, the day's rows only, sorted by key, without repeats
    dropped_other_day: int = 0  # rows of a daily file that belong to another day (the next day's 00:00 row)


def parse_csv(path: Path, fmt: ArchiveFormat, symbol: str, day: date, origin: str | None = None) -> pa.Table:
    """The lake table of one archive CSV for (symbol, day); `parse_file` says more."""
    return parse_file(path, fmt, symbol, day, origin).table


def parse_file(path: Path, fmt: ArchiveFormat, symbol: str, day: date, origin: str | None = None) -> Parsed:
    """Parse one archive CSV into the lake table for (symbol, day): typed, sorted by key, without repeats.

    `origin` names the file in errors (the zip or URL the CSV came from) when `path` is a temporary extract.

    Monthly files hold a month of days: the day's rows are kept. A daily file may hold a few rows of another day
    (a `metrics` file ends with the next day's 00:00:00 row): they are dropped and counted in `dropped_other_day`.
    A daily file whose rows are mostly (more than half) another day's is the wrong file, and an error. A header-only
    file is a 0-row table. Bad values (see `check_values`) are an error.
    """
    name = origin or str(path)
    table = _read(path, fmt, symbol, name)
    ts_col = _time_column(table)
    start = datetime.combine(day, time())
    in_day = pc.and_(
        pc.greater_equal(table[ts_col], start), pc.less(table[ts_col], start + timedelta(days=1))
    )
    dropped = table.num_rows - (pc.sum(in_day).as_py() or 0)
    kept = table.filter(in_day) if dropped else table  # the usual case costs no copy
    if fmt.period == "daily" and dropped * 2 > table.num_rows:
        bad = table.filter(pc.invert(in_day))
        raise FormatError(
            f"{name}: {dropped} of {table.num_rows} rows fall outside {day} (first at {bad[ts_col][0]}). "
            f"The file belongs to another day; fetch {symbol}'s file for {day}."
        )
    table = sort_unique(kept, fmt.key)
    check_values(table, fmt, name)
    return Parsed(with_partition_columns(table, symbol, day), dropped if fmt.period == "daily" else 0)


def with_partition_columns(table: pa.Table, symbol: str, day: date) -> pa.Table:
    """The lake's leading `symbol` (dictionary-encoded) and `date` columns, added to a table of format columns."""
    n = table.num_rows
    return table.add_column(0, "date", pa.array(np.full(n, day), pa.date32())).add_column(
        0, "symbol", pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([symbol]))
    )


def _read(path: Path, fmt: ArchiveFormat, symbol: str, name: str) -> pa.Table:
    """The CSV as typed lake columns (all its rows, in file order), its symbol column checked and dropped."""
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
        raise FormatError(
            f"{name}: cannot parse as a Binance {fmt.kind} file: {str(exc).splitlines()[0]}"
        ) from exc
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
    return table


@functools.cache
def lake_schema(fmt: ArchiveFormat) -> pa.Schema:
    """The lake columns of a format, typed as the ingest types them (without the leading symbol and date)."""
    with tempfile.TemporaryDirectory(prefix="liq-schema-") as tmp:
        path = Path(tmp) / "empty.csv"
        path.write_text(",".join(fmt.column_names) + "\n")
        return _read(path, fmt, "", str(path)).schema


def _time_column(table: pa.Table) -> str:
    return "open_time" if "open_time" in table.column_names else "ts"


# No USDT-M contract has traded anywhere near 10 million USDT (BTC's record is about 126 thousand).
PRICE_CEILING = 1e7
# A price more than this many times above or below the median of its file is not a trade. Any day whose prices span
# less than 100x passes whatever its shape, and a deeper fall passes too while the median sits between the extremes:
# a day that falls 99.99 % at an even pace has both ends within 100x of its median.
PRICE_FACTOR = 100.0
# The median is taken over an even sample of at most this many prices: cheap, and robust enough for a 100x test.
_MEDIAN_SAMPLE = 1 << 16


def check_values(table: pa.Table, fmt: ArchiveFormat, name: str) -> None:
    """Raise FormatError, naming the file, column, row count, first bad row and what to do, on values no real
    archive file holds. Vectorised: a handful of passes over each checked column.

    - prices (`fmt.prices`): empty, NaN, infinite, zero or negative, above `PRICE_CEILING` (10 million USDT, far
      above anything a USDT-M contract has traded at), or more than `PRICE_FACTOR` (100x) above or below the
      median of the file's first price column. A genuine crash day passes: see `PRICE_FACTOR`.
    - quantities (`fmt.quantities`): empty, NaN, infinite or negative. Zero is allowed: real aggTrades files have
      rows of quantity 0 (e.g. ETHUSDT in May 2023, binance-public-data issue #342).
    - `fmt.finite` (open interest): NaN or infinite. Empty cells load as null and zero is a missing reading: both
      are left to the checks, which flag them.
    - `fmt.high_low`: a bar whose high is below its low.
    """
    if table.num_rows == 0:
        return
    ts = table[_time_column(table)]
    median = _median_price(table, fmt)
    # One range test per column: NaN fails every comparison, so it lands in `bad` with the infinities.
    low = median / PRICE_FACTOR if median is not None else 0.0
    high = min(PRICE_CEILING, median * PRICE_FACTOR) if median is not None else PRICE_CEILING
    for col in fmt.prices:
        values = _floats(table, col)
        bad = ~((values > low) & (values <= high))
        _raise_if_bad(bad, values, ts, fmt, name, col, lambda i, v=values: _price_reason(v[i], median))
    for col in fmt.quantities:
        values = _floats(table, col)
        bad = ~((values >= 0) & (values <= np.finfo(np.float64).max))
        _raise_if_bad(bad, values, ts, fmt, name, col, _quantity_reason_at(values))
    for col in fmt.finite:
        values = _floats(table, col)
        present = table[col].combine_chunks().is_valid().to_numpy(zero_copy_only=False)
        _raise_if_bad(present & ~np.isfinite(values), values, ts, fmt, name, col, _quantity_reason_at(values))
    if fmt.high_low:
        hi, lo = (_floats(table, c) for c in fmt.high_low)
        reason = lambda i: f"below the bar's {fmt.high_low[1]}, {float(lo[i])!r}"  # noqa: E731
        _raise_if_bad(hi < lo, hi, ts, fmt, name, fmt.high_low[0], reason)


def _floats(table: pa.Table, col: str) -> np.ndarray:
    """A float column as numpy; empty cells (null) become NaN."""
    return table[col].combine_chunks().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _median_price(table: pa.Table, fmt: ArchiveFormat) -> float | None:
    if not fmt.prices:
        return None
    values = _floats(table, fmt.prices[0])
    sample = values[:: max(1, len(values) // _MEDIAN_SAMPLE)]
    sample = sample[np.isfinite(sample) & (sample > 0) & (sample <= PRICE_CEILING)]
    return float(np.median(sample)) if len(sample) else None


def _price_reason(v: float, median: float | None) -> str:
    if not np.isfinite(v) or v <= 0:
        return _quantity_reason(v) if not np.isfinite(v) else "zero or negative"
    if v > PRICE_CEILING:
        return f"above {PRICE_CEILING:g} USDT, more than any USDT-M contract has traded at"
    return f"more than {PRICE_FACTOR:g}x away from the file's median price {median:g}"


def _quantity_reason_at(values: np.ndarray):
    return lambda i: _quantity_reason(values[i])


def _quantity_reason(v: float) -> str:
    if np.isnan(v):
        return "empty or not a number"
    return "infinite" if np.isinf(v) else "negative"


def _raise_if_bad(
    bad: np.ndarray,
    values: np.ndarray,
    ts: pa.ChunkedArray,
    fmt: ArchiveFormat,
    name: str,
    col: str,
    reason: Callable[[int], str],
) -> None:
    if not bad.any():
        return
    first = int(np.argmax(bad))
    value = float(values[first])
    raise FormatError(
        f"{name}: {int(bad.sum())} of {len(bad)} rows have a bad {col} in this Binance {fmt.kind} file; the first, "
        f"at {ts[first].as_py()}, is {value!r} ({reason(first)}). The file is damaged or is not what its name says: "
        "delete it and fetch it again; if a fresh copy from the archive holds the same values, report it to Binance "
        "(https://github.com/binance/binance-public-data/issues) and leave this day out."
    )


def sort_unique(table: pa.Table, key: str) -> pa.Table:
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
