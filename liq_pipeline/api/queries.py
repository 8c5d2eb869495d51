"""What the API reads from the lake, and how a heatmap answer is laid out in time and price. No HTTP here.

**Time.** Every model table has `as_of`, the time of the state a row holds (the end of the model step it follows;
the heatmap also has `ts`, that step's start). A heatmap answer is a row of time buckets: bucket i is
`[start_i, start_i + step)`. Its candle aggregates the 1-minute klines opening in the bucket; its column is the
model's state at the end of the bucket, the latest step end in `(start_i, start_i + step]`. So a band that a
candle's wick runs through is already gone from that candle's column and still there in every column before it:
a column never shows what a later candle did. The model writes only non-empty cells, so the steps a column needs
are computed from the bucket grid, never searched among the rows: a bucket whose state is empty has zeros.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq

from liq_pipeline.lake import PART_FILE, Lake
from liq_pipeline.model_io import CONFIG_KEY
from liq_pipeline.sources.archive import SOURCE_KEY

DEFAULT_MODEL_STEP = timedelta(minutes=5)
TARGET_PRICE_BUCKETS = 400  # default re-binning aims at no more than this many price rows
MAX_BUCKETS = 5000  # hard limit on price buckets in one answer
_NICE_MULTIPLES = (1, 2, 4, 5)  # automatic re-binning uses k * 10^n of the registry bin, k in these
DAY_US = 86_400_000_000
EPOCH = datetime(1970, 1, 1)
OHLC = ("open", "high", "low", "close")


class ApiError(Exception):
    """An error the caller caused (4xx) or a data problem (503), with a message that says what to do."""

    def __init__(self, status: int, detail: str, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


def epoch_us(value: datetime | date) -> int:
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int | np.integer) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


def iso(us: int | np.integer) -> str:
    return from_us(us).isoformat() + "Z"


# --- partitions ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One symbol's partitions of one table: the days that exist and a fingerprint of their files."""

    days: tuple[date, ...]
    paths: tuple[Path, ...]
    fingerprint: tuple[
        int, int, int
    ]  # file count, newest mtime (ns), hash of every file's day/mtime/size/inode

    def between(self, first: date, last: date) -> list[tuple[date, Path]]:
        return [(d, p) for d, p in zip(self.days, self.paths) if first <= d <= last]


def list_partitions(lake: Lake, table: str, symbol: str) -> Listing:
    """A directory listing of one symbol's partitions: one `scandir` and one `stat` per day, no data read.

    The fingerprint changes whenever a partition is added, removed or replaced (`os.replace` gives a new inode),
    even when the replacement keeps an older mtime.
    """
    base = lake.root / table / f"symbol={symbol}"
    found: list[tuple[date, Path, tuple[int, int, int]]] = []
    try:
        entries = list(os.scandir(base))
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        if not entry.name.startswith("date="):
            continue
        try:
            day = date.fromisoformat(entry.name[5:])
            path = Path(entry.path) / PART_FILE
            st = path.stat()
        except (ValueError, OSError):
            continue
        found.append((day, path, (st.st_mtime_ns, st.st_size, st.st_ino)))
    found.sort()
    return Listing(
        days=tuple(d for d, _, _ in found),
        paths=tuple(p for _, p, _ in found),
        fingerprint=(
            len(found),
            max((s[0] for _, _, s in found), default=0),
            hash(tuple((d.toordinal(), *s) for d, _, s in found)),
        ),
    )


def dates_summary(days: tuple[date, ...]) -> dict[str, Any] | None:
    if not days:
        return None
    return {"start": days[0].isoformat(), "end": days[-1].isoformat(), "days": len(days)}


# --- footer facts ----------------------------------------------------------------------------------------------


def read_config(path: Path) -> dict:
    """The model parameters stored in a model table's footer ({} if none)."""
    raw = (pq.read_schema(path).metadata or {}).get(CONFIG_KEY)
    value = json.loads(raw, parse_constant=lambda _: None) if raw else {}
    return value if isinstance(value, dict) else {"value": value}


def read_source(path: Path) -> str | None:
    """The archive source a raw partition was ingested from (sample, local, binance), from its footer."""
    raw = (pq.read_schema(path).metadata or {}).get(SOURCE_KEY)
    return raw.decode() if raw else None


def column_max(path: Path, column: str) -> datetime | None:
    """The largest value of a timestamp column, from the row-group statistics (the data when they lack it)."""
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    if column not in names:
        return None
    col = names.index(column)
    best = None
    for rg in range(md.num_row_groups):
        stats = md.row_group(rg).column(col).statistics
        if stats is None or not stats.has_min_max:
            best = None
            break
        best = stats.max if best is None else max(best, stats.max)
    if best is None:
        with duckdb.connect() as con:
            best = con.execute(f'SELECT max("{column}") FROM read_parquet(?)', [str(path)]).fetchone()[0]
    if isinstance(best, datetime) and best.tzinfo is not None:
        best = best.replace(tzinfo=None) - best.utcoffset()
    return best


def model_step(config: dict) -> timedelta:
    """The model's step from its stored config; the default when absent or not a whole divisor of a day."""
    minutes = config.get("step_minutes")
    if (
        isinstance(minutes, int)
        and not isinstance(minutes, bool)
        and 1 <= minutes <= 1440
        and 1440 % minutes == 0
    ):
        return timedelta(minutes=minutes)
    return DEFAULT_MODEL_STEP


# --- the time axis -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """The answer's columns: bucket i is [start_us[i], start_us[i] + step_us); its candle is the klines opening in
    it (up to the last column's state time), its column the state at as_of_us[i] in (start_us[i], bucket end]."""

    step_us: int
    start_us: np.ndarray  # int64 µs since the epoch, increasing
    as_of_us: np.ndarray  # int64, increasing
    heat_files: list[str]  # the heatmap partitions holding those states
    missing_days: list[date]  # days under the axis with no heatmap partition: their columns are zeros


def covering_days(heat: Listing, start: datetime, end: datetime) -> list[tuple[date, Path]]:
    """Heatmap partitions with a state time in (start, end]: partition D holds the states of (D, D + 1 day]."""
    first = (start - timedelta(days=1)).date()
    return [
        (d, p)
        for d, p in heat.between(first, end.date())
        if start < _midnight(d) + timedelta(days=1) and _midnight(d) < end
    ]


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day)


def time_axis(
    start: datetime,
    end: datetime,
    step: timedelta,
    model: timedelta,
    heat: Listing,
    present: list[tuple[date, Path]],
) -> Axis:
    """The buckets of `step` (at least the model's step) over (start, end] clipped to the `present` partitions.

    Each bucket's state is the last model step end in it: the bucket's end, or the last state before `end` or the
    data's end. Steps lie on the model's grid (whole multiples of its step since the epoch)."""
    m = int(model.total_seconds()) * 1_000_000
    s_us = max(int(step.total_seconds()) * 1_000_000, m)
    lo = max(epoch_us(start), epoch_us(present[0][0]))
    hi = min(epoch_us(end), epoch_us(present[-1][0]) + DAY_US) // m * m
    starts = np.arange(lo // s_us * s_us, hi, s_us, dtype=np.int64)
    as_of = np.minimum(starts + s_us, hi) // m * m
    keep = as_of > np.maximum(starts, lo)
    starts, as_of = starts[keep], as_of[keep]
    paths = dict(zip(heat.days, heat.paths))
    needed = [from_us(d * DAY_US).date() for d in np.unique((as_of - 1) // DAY_US)]
    return Axis(
        step_us=s_us,
        start_us=starts,
        as_of_us=as_of,
        heat_files=[str(paths[d]) for d in needed if d in paths],
        missing_days=[d for d in needed if d not in paths],
    )


# --- reading ---------------------------------------------------------------------------------------------------


def read_cells(con: duckdb.DuckDBPyConnection, axis: Axis) -> dict[str, np.ndarray]:
    """The heatmap rows of exactly the axis' states: t (as_of, µs), price, long_usd, short_usd."""
    if not axis.heat_files or not axis.as_of_us.size:
        empty = np.zeros(0)
        return {"t": empty.astype(np.int64), "price": empty, "long_usd": empty, "short_usd": empty}
    wanted = [from_us(t) for t in axis.as_of_us]
    return con.execute(
        "SELECT epoch_us(as_of) AS t, price, long_usd, short_usd FROM read_parquet(?) "
        "WHERE as_of >= ? AND as_of <= ? AND as_of IN (SELECT unnest(?::TIMESTAMP[]))",
        [axis.heat_files, wanted[0], wanted[-1], wanted],
    ).fetchnumpy()


def read_candles(con: duckdb.DuckDBPyConnection, klines: Listing, axis: Axis) -> dict[str, list]:
    """OHLC per bucket from the 1-minute klines opening in it, aligned with the axis (None where none)."""
    n = int(axis.start_us.size)
    out: dict[str, list] = {name: [None] * n for name in OHLC}
    if not n:
        return out
    first, cutoff = int(axis.start_us[0]), int(axis.as_of_us[-1])  # no kline after the last column's state
    files = [str(p) for _, p in klines.between(from_us(first).date(), from_us(cutoff - 1).date())]
    if not files:
        return out
    rows = con.execute(
        "SELECT epoch_us(open_time) // ? * ? AS b, arg_min(open, open_time) AS open, max(high) AS high, "
        "min(low) AS low, arg_max(close, open_time) AS close FROM read_parquet(?) "
        "WHERE open_time >= ? AND open_time < ? GROUP BY b ORDER BY b",
        [axis.step_us, axis.step_us, files, from_us(first), from_us(cutoff)],
    ).fetchnumpy()
    pos = np.searchsorted(axis.start_us, rows["b"])
    for j, i in enumerate(pos):
        if i < n and axis.start_us[i] == rows["b"][j]:
            for name in OHLC:
                value = float(rows[name][j])
                out[name][i] = value if math.isfinite(value) else None
    return out


def latest_levels(con: duckdb.DuckDBPyConnection, path: Path, sides: list[str], top: int) -> list[tuple]:
    """The zones of the newest state (largest as_of) in one levels partition, `top` per side by rank."""
    return con.execute(
        "WITH src AS (SELECT * FROM read_parquet(?)), "
        "latest AS (SELECT * FROM src WHERE as_of = (SELECT max(as_of) FROM src)), "
        "ranked AS (SELECT *, row_number() OVER (PARTITION BY side ORDER BY rank, notional_usd DESC) AS r "
        "FROM latest WHERE side IN (SELECT unnest(?::VARCHAR[]))) "
        "SELECT as_of, side, price_low, price_high, notional_usd, distance_pct, rank FROM ranked "
        "WHERE r <= ? ORDER BY side, r",
        [str(path), sides, top],
    ).fetchall()


# --- price grid and pivot --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceGrid:
    prices: np.ndarray  # bucket centres, increasing
    index: np.ndarray  # each cell's bucket
    size: float  # bucket width = k registry bins


def price_grid(price: np.ndarray, price_bin: float, k: int | None) -> PriceGrid:
    """Index each cell on the registry grid (whatever its offset), then group k bins (automatic when None)."""
    if len(price):
        frac = (price[0] / price_bin) % 1.0
        frac = 0.0 if min(frac, 1 - frac) < 1e-6 else frac
        g = np.rint(price / price_bin - frac).astype(np.int64)
        span = int(g.max() - g.min()) + 1
    else:
        frac, g, span = 0.0, np.zeros(0, np.int64), 1
    if k is None:
        k = auto_multiple(span)
    coarse = np.floor_divide(g, k)
    lo = int(coarse.min()) if len(coarse) else 0
    n_prices = (int(coarse.max()) - lo + 1) if len(coarse) else 0
    if n_prices > MAX_BUCKETS:
        raise ApiError(
            400,
            f"price_bin_size {k * price_bin:g} would give {n_prices} price buckets (more than {MAX_BUCKETS}); "
            f"use at least {price_bin * math.ceil(span / MAX_BUCKETS):g}",
        )
    prices = (np.arange(lo, lo + n_prices) * k + (k - 1) / 2 + frac) * price_bin
    return PriceGrid(prices=prices, index=coarse - lo, size=k * price_bin)


def pivot(column: np.ndarray, grid: PriceGrid, values: np.ndarray, n_columns: int) -> np.ndarray:
    """[column, price bucket] sums of `values` (NaN as 0), rounded to whole USD."""
    n = grid.prices.size
    flat = column * n + grid.index
    summed = np.bincount(flat, weights=np.nan_to_num(values), minlength=n_columns * n)
    return np.rint(summed.reshape(n_columns, n)).astype(np.int64)


def auto_multiple(span: int) -> int:
    """The smallest 'nice' multiple (1, 2, 4, 5 x 10^n) of the registry bin giving <= TARGET_PRICE_BUCKETS rows."""
    scale = 1
    while True:
        for m in _NICE_MULTIPLES:
            k = m * scale
            if math.ceil(span / k) + 1 <= TARGET_PRICE_BUCKETS:
                return k
        scale *= 10


def price_decimals(size: float) -> int:
    return max(0, min(12, 2 - math.floor(math.log10(size)))) if size > 0 else 8
