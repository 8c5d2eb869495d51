"""Data-quality rules, as plain functions over Arrow tables: the asset checks (`checks.py`) and the raw assets'
guards against foreign data wrap them.

Every day boundary is UTC: a partition's day is [00:00, 24:00) UTC whatever the machine's time zone, and
timestamps in the lake are naive UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from liq_pipeline.lake import Lake, uri
from liq_pipeline.live.partition import live_info

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US


@dataclass(frozen=True)
class Verdict:
    passed: bool
    detail: str
    metadata: dict = field(default_factory=dict)
    # Of a failure: ERROR stops downstream assets when the check is blocking, WARN never does.
    severity: str = "ERROR"


def day_start_us(day: date) -> int:
    """00:00 UTC of `day`, in µs since the epoch."""
    return int(datetime.combine(day, time(), tzinfo=UTC).timestamp()) * 1_000_000


def _ts(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table[column].combine_chunks().cast(pa.timestamp("us")).cast(pa.int64()))


def _at(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _floats(table: pa.Table, column: str) -> np.ndarray:
    return table[column].combine_chunks().cast(pa.float64()).to_numpy(zero_copy_only=False)


def longest_gap(ts_us: np.ndarray, day: date) -> tuple[int, int]:
    """(length, start) in µs of the longest stretch of the UTC day with no timestamp, counting from midnight to
    the next midnight."""
    start = day_start_us(day)
    edges = np.concatenate(([start], np.sort(ts_us), [start + DAY_US]))
    i = int(np.argmax(np.diff(edges)))
    return int(edges[i + 1] - edges[i]), int(edges[i])


def oi_continuity(table: pa.Table, day: date, limit: timedelta = timedelta(minutes=15)) -> Verdict:
    """Open interest every 5 minutes: no stretch of the day longer than `limit` without a reading, and no reading
    that is zero, negative or missing (the model would read it as every position closed)."""
    gap, gap_start = longest_gap(_ts(table, "ts"), day)
    values = np.stack([_floats(table, "open_interest"), _floats(table, "open_interest_value")])
    bad = ~(np.isfinite(values) & (values > 0)).all(axis=0)
    problems = []
    if gap > limit / timedelta(microseconds=1):
        problems.append(f"no reading for {timedelta(microseconds=gap)} from {_at(gap_start)} (limit {limit})")
    if bad.any():
        first = int(_ts(table, "ts")[np.argmax(bad)])
        problems.append(f"{int(bad.sum())} readings zero, negative or missing, the first at {_at(first)}")
    detail = "; ".join(problems) or f"{table.num_rows} readings, longest gap {timedelta(microseconds=gap)}"
    meta = {"readings": table.num_rows, "max_gap_minutes": gap / MINUTE_US, "bad_readings": int(bad.sum())}
    return Verdict(not problems, detail, meta)


def trades_inside_klines(
    trades: pa.Table, klines: pa.Table | None, day: date, rel_tol: float = 1e-9
) -> Verdict:
    """Every trade's price lies within the low..high of the 1-minute kline it falls in (Binance builds the klines
    from these trades, so one outside means one of the two files is wrong). Trades in a minute without a bar
    are counted, not judged: that is what `coverage` is for."""
    if klines is None or klines.num_rows == 0:
        return Verdict(False, f"no klines for {day} in the lake to compare the trades with", severity="WARN")
    start = day_start_us(day)
    low, high = np.full(1440, np.nan), np.full(1440, np.nan)
    bar = (_ts(klines, "open_time") - start) // MINUTE_US
    ok = (bar >= 0) & (bar < 1440)
    low[bar[ok]], high[bar[ok]] = _floats(klines, "low")[ok], _floats(klines, "high")[ok]
    ts, price = _ts(trades, "ts"), _floats(trades, "price")
    minute = np.clip((ts - start) // MINUTE_US, 0, 1439)
    lo, hi = low[minute], high[minute]
    no_bar = np.isnan(lo)
    outside = ~no_bar & ((price < lo * (1 - rel_tol)) | (price > hi * (1 + rel_tol)))
    n = int(outside.sum())
    meta = {"trades": trades.num_rows, "trades_outside": n, "trades_without_bar": int(no_bar.sum())}
    if n == 0:
        return Verdict(True, f"all {trades.num_rows} trades inside their minute's low..high", meta)
    i = int(np.argmax(outside))
    excess = np.maximum(lo - price, price - hi)[outside] / np.where(price < lo, lo, hi)[outside]
    meta["worst_excess_pct"] = round(float(excess.max()) * 100, 4)
    return Verdict(
        False,
        f"{n} of {trades.num_rows} trades outside their minute's kline; the first at {_at(int(ts[i]))}: "
        f"price {price[i]:g}, bar {lo[i]:g}..{hi[i]:g}",
        meta,
    )


def coverage(klines: pa.Table | None, oi: pa.Table | None, trades: pa.Table | None, day: date) -> Verdict:
    """The three tables the model reads cover the whole UTC day, each: 1440 one-minute bars, 288 open-interest
    readings, trades from the first quarter hour to the last, and rows in each of the 24 hours."""
    start = day_start_us(day)
    tables = {"klines": (klines, "open_time"), "open_interest": (oi, "ts"), "agg_trades": (trades, "ts")}
    expected = {"klines": 1440, "open_interest": 288}
    problems, meta = [], {}
    for name, (table, column) in tables.items():
        if table is None:
            problems.append(f"no {name} partition for {day}")
            continue
        ts = _ts(table, column)
        meta[f"{name}_rows"] = table.num_rows
        if name in expected and table.num_rows < expected[name]:
            problems.append(f"{name} has {table.num_rows} of {expected[name]} rows")
        hours = sorted(set(range(24)) - set(((ts - start) // HOUR_US).tolist()))
        if hours:
            problems.append(f"{name} has no rows in hours {_hours(hours)} UTC")
        if name == "agg_trades" and ts.size:
            first, last = int(ts.min()), int(ts.max())
            if first - start > 15 * MINUTE_US or start + DAY_US - last > 15 * MINUTE_US:
                problems.append(f"agg_trades span only {_at(first)} .. {_at(last)}")
    detail = "; ".join(problems) or "klines, open interest and trades cover the whole day"
    return Verdict(not problems, detail, meta, severity="WARN")


def _hours(hours: list[int]) -> str:
    return (
        ", ".join(f"{h:02d}" for h in hours)
        if len(hours) < 8
        else f"{hours[0]:02d} .. {hours[-1]:02d} ({len(hours)})"
    )


# --- guards: refuse a raw file whose prices are clearly another market's ------------------------------------

# The columns each table states prices in. Open interest value / contracts is the mark price.
PRICE_COLUMNS = {
    "agg_trades": ["price"],
    "klines": ["low", "high"],
    "open_interest": ["open_interest", "open_interest_value"],
    "forced_liquidations": ["price"],
}
REFERENCE_TABLES = ("klines", "agg_trades", "open_interest")  # what a new file is compared against


def price_points(table_name: str, table: pa.Table) -> np.ndarray:
    """The positive finite prices a raw table states (empty for a table without prices)."""
    if table_name not in PRICE_COLUMNS or table.num_rows == 0:
        return np.empty(0)
    if table_name == "open_interest":
        with np.errstate(divide="ignore", invalid="ignore"):
            values = _floats(table, "open_interest_value") / _floats(table, "open_interest")
    else:
        values = np.concatenate([_floats(table, c) for c in PRICE_COLUMNS[table_name]])
    return values[np.isfinite(values) & (values > 0)]


def foreign_share(points: np.ndarray, reference: np.ndarray, tolerance: float) -> tuple[float, float, float]:
    """(share of `points` outside the reference's range widened by `tolerance` either way, low, high)."""
    lo, hi = float(reference.min()), float(reference.max())
    outside = (points < lo / (1 + tolerance)) | (points > hi * (1 + tolerance))
    return float(outside.mean()), lo, hi


def live_windows(path: Path) -> list[tuple[int, int]] | None:
    """The stretches of the day a live partition (written by `liq collect`) saw, as [start, end) µs; None for a
    partition that holds the archive's rows."""
    info = live_info(path)
    if info is None or not info.live:
        return None
    return [(start * 1000, end * 1000) for start, end in info.coverage]


def rows_within(table: pa.Table, windows_us: list[tuple[int, int]]) -> pa.Table:
    """The rows of a raw table whose time (open_time for klines, else ts) lies in one of the windows."""
    ts = _ts(table, "open_time" if "open_time" in table.column_names else "ts")
    keep = np.zeros(len(ts), dtype=bool)
    for start, end in windows_us:
        keep |= (ts >= start) & (ts < end)
    return table.filter(pa.array(keep))


def lake_price_conflict(
    lake: Lake,
    table_name: str,
    symbol: str,
    day: date,
    table: pa.Table,
    origin: str,
    tolerance: float = 0.25,
    max_share: float = 0.1,
) -> str | None:
    """Why `table` (about to become partition (table_name, symbol, day)) cannot be this symbol-day's data, or None.

    Its prices are compared with the other raw tables of the same symbol and day already in the lake. Real files of
    one market and day agree to well within `tolerance` (25 %); a file of another symbol (BTC at 95k under ETH's
    name at 3.4k) puts nearly all its prices outside. Refused when over `max_share` of them are. A live partition
    (liq collect) may cover only part of the day, and a real day can move more than 25 % beyond a few hours' range:
    against one, only the file's rows in the hours the stream saw are compared."""
    points = price_points(table_name, table)
    if not points.size:
        return None
    for other in REFERENCE_TABLES:
        path = lake.partition_file(other, symbol, day)
        if other == table_name or not path.exists():
            continue
        reference = price_points(other, lake.read(other, symbol, [day], columns=PRICE_COLUMNS[other]))
        windows = live_windows(path)
        compared = points if windows is None else price_points(table_name, rows_within(table, windows))
        if not reference.size or not compared.size:
            continue
        share, lo, hi = foreign_share(compared, reference, tolerance)
        if share > max_share:
            seen = "" if windows is None else ", live rows of liq collect, compared over the hours they cover"
            return (
                f"{origin}: {share:.0%} of its prices (median {float(np.median(compared)):g}) lie far outside "
                f"{symbol}'s {other} for {day} already in the lake ({lo:g} .. {hi:g}, {path}{seen}). The file "
                f"probably holds another symbol's data: fetch {symbol}'s {table_name} file for {day} again. If the "
                f"lake's {other} partition is the wrong one, delete {path.parent} and materialize {other} for "
                f"{day}|{symbol} first."
            )
    return None


def empty_over_full(
    lake: Lake, table_name: str, symbol: str, day: date, table: pa.Table, origin: str
) -> str | None:
    """Why a file with no rows must not replace the partition, or None: the lake already holds rows for that day."""
    path = lake.partition_file(table_name, symbol, day)
    if table.num_rows or not path.exists():
        return None
    held = pq.ParquetFile(uri(path)).metadata.num_rows
    if not held:
        return None
    return (
        f"{origin}: the file has no rows (a header only?) but {path} holds {held} rows for {day}; keeping them. "
        f"Delete the file and fetch it again. If {symbol} really had no {table_name} rows on {day}, delete "
        f"{path.parent} and materialize again."
    )
