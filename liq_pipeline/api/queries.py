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

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow.parquet as pq

from liq_pipeline.lake import OHLC_SQL, PART_FILE, Lake, as_numpy, uri
from liq_pipeline.model_io import CONFIG_KEY
from liq_pipeline.sources.archive import SOURCE_KEY
from liq_pipeline.tiles import lookback_of

if TYPE_CHECKING:
    from upath import UPath

    from liq_pipeline.api.grid import Piece

DEFAULT_MODEL_STEP = timedelta(minutes=5)
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


def iso_list(us: np.ndarray) -> list[str]:
    """`iso` of each value, vectorized when all are whole seconds (an answer's axis always is)."""
    us = np.asarray(us, dtype=np.int64)
    if us.size and not (us % 1_000_000).any():
        return [s + "Z" for s in np.datetime_as_string(us.astype("datetime64[us]"), unit="s").tolist()]
    return [iso(v) for v in us]


# --- partitions ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One symbol's partitions of one table: the days that exist, each file's version and a fingerprint of all."""

    days: tuple[date, ...]
    paths: tuple[Path, ...]
    fingerprint: tuple[
        int, int, int
    ]  # file count, newest mtime (ns), hash of every file's day/mtime/size/inode
    versions: tuple[
        tuple[int, int, int], ...
    ] = ()  # per file: (mtime_ns, size, inode), from the listing's stat

    def between(self, first: date, last: date) -> list[tuple[date, Path]]:
        return [(d, p) for d, p in zip(self.days, self.paths) if first <= d <= last]

    @cached_property
    def _by_day(self) -> dict[date, tuple[Path, tuple[int, int, int]]]:
        return dict(zip(self.days, zip(self.paths, self.versions)))

    def file(self, day: date) -> tuple[Path, tuple[int, int, int]] | None:
        """The day's partition file and its version (mtime_ns, size, inode) as listed, or None."""
        return self._by_day.get(day)


_PATHS: dict[str, Path] = {}  # partition file paths by string: a listing per request builds no Path twice
# symbol folder -> (its mtime, its date= folders), see `_day_folders`
_FOLDERS: dict[str, tuple[int, list[tuple[date, str]]]] = {}
# A folder whose mtime is older than this (ns) is trusted not to change within that clock tick.
_SETTLED_NS = 2_000_000_000


def _partition_path(folder: str) -> Path:
    path = _PATHS.get(folder)
    if path is None:
        if len(_PATHS) > 200_000:
            _PATHS.clear()
        path = _PATHS[folder] = Path(folder, PART_FILE)
    return path


def _day_folders(base: Path) -> list[tuple[date, str]]:
    """A symbol folder's `date=` folders, by day: read again only when the folder's mtime changes (adding or
    removing a day changes it; replacing a day's file does not, and files are stat-ed on every listing). A folder
    changed in the last 2 s is always read: two changes within one clock tick would keep its mtime."""
    key = str(base)
    try:
        mtime = os.stat(key).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return []
    known = _FOLDERS.get(key)
    if known is not None and known[0] == mtime:
        return known[1]
    days = []
    for entry in os.scandir(key):
        if entry.name.startswith("date="):
            try:
                days.append((date.fromisoformat(entry.name[5:]), entry.path))
            except ValueError:
                continue
    days.sort()
    if time.time_ns() - mtime > _SETTLED_NS:
        if len(_FOLDERS) > 10_000:
            _FOLDERS.clear()
        _FOLDERS[key] = (mtime, days)
    else:
        _FOLDERS.pop(key, None)  # never compared again with a list older than this change
    return days


def list_partitions(
    lake: Lake, table: str, symbol: str, first: date | None = None, last: date | None = None
) -> Listing:
    """One symbol's partitions: its day folders (`_day_folders`) and one `stat` per partition file, no data read;
    with `first`/`last`, only those days are stat-ed (a window's days in a year of partitions).

    The fingerprint changes whenever a partition is added, removed or replaced (`os.replace` gives a new inode),
    even when the replacement keeps an older mtime. An S3 lake is listed with one request (`_object_partitions`).
    """
    if lake.remote:
        found = _object_partitions(lake.root / table / f"symbol={symbol}", first, last)
    else:
        found = _file_partitions(lake.root / table / f"symbol={symbol}", first, last)
    return Listing(
        days=tuple(d for d, _, _ in found),
        paths=tuple(p for _, p, _ in found),
        fingerprint=(
            len(found),
            max((s[0] for _, _, s in found), default=0),
            hash(tuple((d.toordinal(), *s) for d, _, s in found)),
        ),
        versions=tuple(s for _, _, s in found),
    )


def _file_partitions(base: Path, first: date | None, last: date | None) -> list[tuple[date, Path, tuple]]:
    found = []
    for day, folder in _day_folders(base):
        if (first is not None and day < first) or (last is not None and day > last):
            continue
        try:
            st = os.stat(f"{folder}/{PART_FILE}")
        except OSError:
            continue
        found.append((day, _partition_path(folder), (st.st_mtime_ns, st.st_size, st.st_ino)))
    return found


def _object_partitions(base: UPath, first: date | None, last: date | None) -> list[tuple[date, UPath, tuple]]:
    """The same from one S3 listing. An object's version is (mtime, size, its ETag as a number): the ETag stands
    for the inode, since LastModified has whole seconds and a replaced object can keep its size."""
    found = []
    listed = base.fs.glob(f"{base.path}/date=*/{PART_FILE}", detail=True)
    for key, info in sorted(listed.items()):
        try:
            day = date.fromisoformat(key.rsplit("/", 2)[1][5:])
        except ValueError:
            continue
        if (first is not None and day < first) or (last is not None and day > last):
            continue
        mtime_ns = int(info["LastModified"].timestamp()) * 1_000_000_000
        etag = int(hashlib.blake2b(str(info.get("ETag")).encode(), digest_size=7).hexdigest(), 16)
        found.append((day, base / f"date={day.isoformat()}" / PART_FILE, (mtime_ns, int(info["size"]), etag)))
    return found


def dates_summary(days: tuple[date, ...]) -> dict[str, Any] | None:
    if not days:
        return None
    return {"start": days[0].isoformat(), "end": days[-1].isoformat(), "days": len(days)}


# --- footer facts ----------------------------------------------------------------------------------------------


def read_config(path: Path) -> dict:
    """The model parameters stored in a model table's footer ({} if none)."""
    raw = (pq.read_schema(uri(path)).metadata or {}).get(CONFIG_KEY)
    value = json.loads(raw, parse_constant=lambda _: None) if raw else {}
    return value if isinstance(value, dict) else {"value": value}


def read_source(path: Path) -> str | None:
    """The archive source a raw partition was ingested from (sample, local, binance), from its footer."""
    raw = (pq.read_schema(uri(path)).metadata or {}).get(SOURCE_KEY)
    return raw.decode() if raw else None


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
    return read_states(con, axis.heat_files, axis.as_of_us)


def read_states(
    con: duckdb.DuckDBPyConnection, files: list[str], as_of_us: np.ndarray
) -> dict[str, np.ndarray]:
    """The rows of the states at `as_of_us` (increasing) in these heatmap files, in file then row order."""
    if not files or not as_of_us.size:
        empty = np.zeros(0)
        return {"t": empty.astype(np.int64), "price": empty, "long_usd": empty, "short_usd": empty}
    wanted = [from_us(t) for t in as_of_us]
    return con.execute(
        "SELECT epoch_us(as_of) AS t, price, long_usd, short_usd FROM read_parquet(?) "
        "WHERE as_of >= ? AND as_of <= ? AND as_of IN (SELECT unnest(?::TIMESTAMP[]))",
        [files, wanted[0], wanted[-1], wanted],
    ).fetchnumpy()


def read_candles(con: duckdb.DuckDBPyConnection, klines: Listing, axis: Axis) -> dict[str, np.ndarray]:
    """OHLC per bucket from the 1-minute klines opening in it, aligned with the axis (NaN where none)."""
    if not axis.start_us.size:
        return align_candles(axis, np.zeros(0, np.int64), {})
    first, cutoff = int(axis.start_us[0]), int(axis.as_of_us[-1])  # no kline after the last column's state
    files = [uri(p) for _, p in klines.between(from_us(first).date(), from_us(cutoff - 1).date())]
    if not files:
        return align_candles(axis, np.zeros(0, np.int64), {})
    rows = con.execute(
        f"SELECT epoch_us(open_time) // ? * ? AS b, {OHLC_SQL} FROM read_parquet(?) "
        "WHERE open_time >= ? AND open_time < ? GROUP BY b ORDER BY b",
        [axis.step_us, axis.step_us, files, from_us(first), from_us(cutoff)],
    ).fetchnumpy()
    return align_candles(axis, rows["b"], rows)


def align_candles(axis: Axis, bucket_us: np.ndarray, ohlc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Candles per bucket start onto the axis' columns, as float arrays: NaN (null in JSON) where a column has
    none or a value is not finite."""
    n = int(axis.start_us.size)
    out = {name: np.full(n, np.nan) for name in OHLC}
    pos = np.searchsorted(axis.start_us, bucket_us)
    hit = pos < n
    hit[hit] = axis.start_us[pos[hit]] == bucket_us[hit]
    for name in OHLC:
        values = np.asarray(ohlc[name], dtype=np.float64)[hit]
        out[name][pos[hit]] = np.where(np.isfinite(values), values, np.nan)
    return out


# --- the tile path ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """The partitions one heatmap answer may read: the heatmap and klines, and with tiles the tile table whose
    grid holds the buckets' ends (`tiles.TILE_1H` or `TILE_12H`) and the hourly candles."""

    heat: Listing
    klines: Listing
    tile: str | None = None
    tiles: Listing | None = None
    candles: Listing | None = None

    @property
    def fingerprint(self) -> tuple:
        """What the answer cache keys on: a new or replaced partition of any of them is a new answer."""
        listings = (self.heat, self.klines, self.tiles, self.candles)
        return (self.tile, *(x.fingerprint if x is not None else None for x in listings))


@dataclass(frozen=True)
class Read:
    """What phase 2 read: the states' cells in pieces (`grid.Piece`), the candles, which source the states came
    from, and the tile info (lookback, as_of range) of the days a tile served."""

    pieces: list[Piece]
    candles: dict[str, np.ndarray]
    source: str
    lookback: dict[date, dict] = field(default_factory=dict)


def axis_files(axis: Axis, heat: Listing, klines: Listing) -> list[tuple[Path, tuple[int, int, int]]]:
    """The files the 5-minute path reads for an axis (its heatmap days and candle days), with their versions."""
    days = [from_us(int(d) * DAY_US).date() for d in np.unique((axis.as_of_us - 1) // DAY_US)]
    first, cutoff = int(axis.start_us[0]), int(axis.as_of_us[-1])
    kline_days = [d for d, _ in klines.between(from_us(first).date(), from_us(cutoff - 1).date())]
    files = [heat.file(d) for d in days] + [klines.file(d) for d in kline_days]
    return [f for f in files if f is not None]


def as_of_ranges(path: Path) -> np.ndarray:
    """[row group, (min, max)] of a heatmap partition's as_of in µs, from its footer's statistics; a row group
    without them spans everything (it is always read)."""
    md = pq.read_metadata(uri(path))
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    col = names.index("as_of") if "as_of" in names else -1
    out = np.tile(np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max]), (md.num_row_groups, 1))
    for i in range(md.num_row_groups):
        stats = md.row_group(i).column(col).statistics if col >= 0 else None
        if (
            stats is not None
            and stats.has_min_max
            and isinstance(stats.min, datetime)
            and not stats.min.tzinfo
        ):
            out[i] = epoch_us(stats.min), epoch_us(stats.max)
    return out


def read_heat_states(
    path: Path, as_of_us: np.ndarray, ranges: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The rows of some states of one 5-minute heatmap partition, in file order: only the row groups whose as_of
    range (`as_of_ranges`, read from the footer unless given) can hold them are read, then filtered. The lake
    writes the heatmap in hour row groups, so a state reads 1/24 of the file."""
    ranges = as_of_ranges(path) if ranges is None else ranges
    lo, hi = int(as_of_us.min()), int(as_of_us.max())
    groups = np.flatnonzero((ranges[:, 1] >= lo) & (ranges[:, 0] <= hi)).tolist()
    table = pq.ParquetFile(uri(path)).read_row_groups(
        groups, columns=["as_of", "price", "long_usd", "short_usd"]
    )
    t = as_numpy(table["as_of"])
    keep = np.isin(t, as_of_us)
    return {"t": t[keep], **{c: as_numpy(table[c])[keep] for c in ("price", "long_usd", "short_usd")}}


def read_lookback(path: Path) -> dict:
    """The lookback a heatmap partition was computed with, from its footer (`tiles.lookback_of`)."""
    return lookback_of(pq.read_schema(uri(path)).metadata)


def latest_levels(con: duckdb.DuckDBPyConnection, path: Path, sides: list[str], top: int) -> list[tuple]:
    """The zones of the newest state (largest as_of) in one levels partition, `top` per side by rank."""
    return con.execute(
        "WITH src AS (SELECT * FROM read_parquet(?)), "
        "latest AS (SELECT * FROM src WHERE as_of = (SELECT max(as_of) FROM src)), "
        "ranked AS (SELECT *, row_number() OVER (PARTITION BY side ORDER BY rank, notional_usd DESC) AS r "
        "FROM latest WHERE side IN (SELECT unnest(?::VARCHAR[]))) "
        "SELECT as_of, side, price_low, price_high, notional_usd, distance_pct, rank FROM ranked "
        "WHERE r <= ? ORDER BY side, r",
        [uri(path), sides, top],
    ).fetchall()


def days_in_window(start: datetime, end: datetime) -> int:
    """How many day partitions can hold a state in (start, end]: D with D < end and D + 1 day > start."""
    last = (end - timedelta(microseconds=1)).date()
    return max(0, (last - start.date()).days + 1)
