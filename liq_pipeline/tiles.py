"""Heatmap tiles: the states and candles the API's coarse windows need, cut from a day's model output.

A heatmap answer of 7 days or more steps by 1 h to 1 day, and each of its columns is the model's state at the end
of its bucket: a whole hour (7d, 14d, 30d: steps of 1, 2 and 4 h) or 12:00 / 24:00 (90d: 12 h; 180d and 1y: 1 day).
Reading those few states from the 5-minute heatmap means reading every day's 288 states; the tiles hold them
already cut, per `date|symbol` partition:

- `heatmap_tile_1h`: the heatmap rows whose `as_of` is a whole hour (the day's 24 hourly states);
- `heatmap_tile_12h`: the rows whose `as_of` is 12:00 or 24:00 (2 states);
- `candles_1h`: the day's 1-minute klines aggregated per hour (12 h and 1 day candles aggregate these).

The rows are the heatmap's own, at the registry price bin, in the heatmap's order, with its column names: any
`price_bin_size` is a regroup of the same cells and the numbers are exactly the 5-minute path's. A live day's
tile holds the states its heatmap has so far.

Each tile records in its Parquet metadata (`TILE_KEY`) the version of the file it was cut from (its size, mtime
and `footer_digest`: the Parquet footer holds every column chunk's size and statistics), so a reader can tell a
tile that no longer matches its source (a heatmap re-materialized after it) and fall back (`matches`); and, for the
page, the lookback days the model had (from the heatmap's stored inputs record) and the day's `as_of` range.

Plain functions; `assets/tiles.py` wraps them for Dagster, `api.sample_lake` calls them for test and bench lakes,
and the API reads tiles with `load_day_tile` / `load_candles`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from liq_pipeline.lake import OHLC_SQL, Lake, LakePath, as_numpy, uri
from liq_pipeline.model_io import CONFIG_KEY, HEATMAP
from liq_pipeline.staleness import INPUTS_KEY

TILE_1H, TILE_12H, CANDLES_1H = "heatmap_tile_1h", "heatmap_tile_12h", "candles_1h"
TILE_TABLES = (TILE_1H, TILE_12H, CANDLES_1H)
HOUR_US = 3_600_000_000
TILE_STEP_US = {TILE_1H: HOUR_US, TILE_12H: 12 * HOUR_US}  # a tile holds the states on this grid
TILE_KEY = b"liq_tile"  # JSON: the source file's version, lookback and as_of range (see heatmap_tiles)
KLINES = "klines"
HEAT_COLUMNS = ("as_of", "price", "long_usd", "short_usd")
CANDLE_COLUMNS = ("open", "high", "low", "close")
_TAIL = 8  # a Parquet file ends with a 4-byte footer length and b"PAR1"


# --- the version of a file, by content ------------------------------------------------------------------------


def _digest_footer(tail: bytes, footer: bytes) -> str:
    return hashlib.blake2b(footer + tail, digest_size=12).hexdigest()


def footer_digest(path: LakePath) -> str:
    """A digest of a Parquet file's footer: it changes when the file is rewritten with other content (row count,
    chunk sizes and min/max per column, key-value metadata), not when it is copied or touched."""
    with path.open("rb") as f:
        f.seek(-_TAIL, os.SEEK_END)
        tail = f.read(_TAIL)
        length = int.from_bytes(tail[:4], "little")
        f.seek(-_TAIL - length, os.SEEK_END)
        return _digest_footer(tail, f.read(length))


def read_with_version(path: LakePath) -> tuple[pa.Table, dict]:
    """A partition's table and its version from one open file, so the two always agree even when the file is
    replaced meanwhile (`Lake.write` renames a new file over it; an open file keeps its content). The version is
    the file's size and mtime (what a reader compares first: a `stat`, no read) and its footer digest (what it
    compares when those differ, e.g. in a copied lake)."""
    # An S3 object has no descriptor: its mtime is taken before the read and its size is what was read, so a
    # replacement in between leaves an older mtime beside the newer digest, and a reader compares the digests.
    mtime_ns = None if isinstance(path, Path) else path.stat().st_mtime_ns
    with path.open("rb") as f:
        data = f.read()
        st = os.fstat(f.fileno()) if mtime_ns is None else None
    size, mtime_ns = (st.st_size, st.st_mtime_ns) if st else (len(data), mtime_ns)
    length = int.from_bytes(data[-_TAIL:-4], "little")
    digest = _digest_footer(data[-_TAIL:], data[-_TAIL - length : -_TAIL])
    version = {"digest": digest, "size": size, "mtime_ns": mtime_ns}
    return pq.read_table(pa.BufferReader(data)), version


# --- writing -----------------------------------------------------------------------------------------------------


def lookback_of(metadata: dict[bytes, bytes] | None) -> dict:
    """The lookback a model partition was computed with, from its stored inputs record (the days of klines it
    found) and config: {"lookback_days": n, "lookback_days_used": m}; None where not recorded."""
    metadata = metadata or {}
    record = json.loads(metadata[INPUTS_KEY]) if INPUTS_KEY in metadata else {}
    config = json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else {}
    n = record.get("lookback_days", config.get("lookback_days"))
    used = len(record["inputs"].get(KLINES, {})) if "inputs" in record else None
    return {"lookback_days": n, "lookback_days_used": used}


def _on_grid(table: pa.Table, column: str, step_us: int) -> pa.Table:
    return table.filter(pa.array(as_numpy(table[column]) % step_us == 0))


def _iso(value) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def heatmap_tiles(heat: pa.Table, version: dict) -> dict[str, pa.Table]:
    """TILE_1H and TILE_12H of one heatmap partition: its rows at whole-hour (12:00/24:00) states, unchanged and
    in order, with the heatmap's config and a record of their source (the heatmap file's `version`), its lookback
    and its `as_of` range."""
    metadata = heat.schema.metadata or {}
    as_of = heat["as_of"]
    info = {
        "source": HEATMAP,
        **version,
        **lookback_of(metadata),
        "first_as_of": _iso(pc.min(as_of).as_py()) if heat.num_rows else None,
        "last_as_of": _iso(pc.max(as_of).as_py()) if heat.num_rows else None,
        "states": pc.count_distinct(as_of).as_py() if heat.num_rows else 0,
    }
    keep = {k: v for k, v in metadata.items() if k == CONFIG_KEY}
    out = {}
    for name, step_us in TILE_STEP_US.items():
        tile_info = json.dumps({**info, "step_seconds": step_us // 1_000_000}, sort_keys=True).encode()
        out[name] = _on_grid(heat, "as_of", step_us).replace_schema_metadata({**keep, TILE_KEY: tile_info})
    return out


_HOURLY_SQL = f"""
    SELECT make_timestamp(epoch_us(open_time) // {HOUR_US} * {HOUR_US}) AS open_time,
           {OHLC_SQL},
           sum(volume) AS volume, sum(quote_volume) AS quote_volume, sum(trade_count) AS trade_count,
           sum(taker_buy_volume) AS taker_buy_volume, sum(taker_buy_quote_volume) AS taker_buy_quote_volume,
           count(*) AS minutes
    FROM klines GROUP BY 1 ORDER BY 1
"""


def hourly_candles(klines: pa.Table, version: dict) -> pa.Table:
    """CANDLES_1H of one klines partition: per hour, the OHLC of its 1-minute klines (the same aggregation as the
    API's candles, so a bucket of whole hours gets the same numbers), summed volumes and the minutes it holds."""
    with duckdb.connect() as con:
        con.register("klines", klines)
        table = con.sql(_HOURLY_SQL).to_arrow_table()
    info = {
        "source": KLINES,
        **version,
        "minutes": klines.num_rows,
        "first_open_time": _iso(pc.min(klines["open_time"]).as_py()) if klines.num_rows else None,
        "last_open_time": _iso(pc.max(klines["open_time"]).as_py()) if klines.num_rows else None,
    }
    return table.replace_schema_metadata({TILE_KEY: json.dumps(info, sort_keys=True).encode()})


def build_tiles(heat_file: LakePath, klines_file: LakePath | None) -> dict[str, pa.Table]:
    """The three tile tables of one `date|symbol` partition from its heatmap and klines files (the klines may be
    missing: then no hourly candles)."""
    out = heatmap_tiles(*read_with_version(heat_file))
    if klines_file is not None and klines_file.exists():
        out[CANDLES_1H] = hourly_candles(*read_with_version(klines_file))
    return out


def write_tiles(lake: Lake, symbol: str, day: date) -> dict[str, pa.Table]:
    """Build and write one partition's tiles as the `heatmap_tiles` asset does (for lakes written outside Dagster:
    `api.sample_lake`)."""
    tables = build_tiles(lake.partition_file(HEATMAP, symbol, day), lake.partition_file(KLINES, symbol, day))
    for name, table in tables.items():
        lake.write(name, symbol, day, table)
    return tables


# --- reading (the API) ----------------------------------------------------------------------------------------


def tile_info(metadata: dict[bytes, bytes] | None) -> dict:
    raw = (metadata or {}).get(TILE_KEY)
    return json.loads(raw) if raw else {}


def matches(info: dict, mtime_ns: int, size: int, digest: Callable[[], str]) -> bool:
    """Whether a tile was cut from the source file as it is now: the same size and mtime (no read), else the same
    footer digest (`digest()` reads the footer: a lake copied without its mtimes)."""
    if not info.get("digest"):
        return False
    if info.get("size") == size and info.get("mtime_ns") == mtime_ns:
        return True
    return info["digest"] == digest()


@dataclass(frozen=True)
class DayTile:
    """One heatmap tile (or a day of 5-minute heatmap) in memory: its cells grouped by state, in file order."""

    states: np.ndarray  # int64 µs: the as_of of each state present, increasing
    bounds: np.ndarray  # cells of states[i] are [bounds[i], bounds[i + 1])
    price: np.ndarray
    long_usd: np.ndarray
    short_usd: np.ndarray
    info: dict  # TILE_KEY record (empty for a heatmap partition)

    @property
    def nbytes(self) -> int:
        arrays = (self.states, self.bounds, self.price, self.long_usd, self.short_usd)
        return sum(a.nbytes for a in arrays) + 500

    def cells(self) -> dict[str, np.ndarray]:
        """Every cell: t (as_of µs), price, long, short, grouped by state."""
        t = np.repeat(self.states, np.diff(self.bounds))
        return {"t": t, "price": self.price, "long_usd": self.long_usd, "short_usd": self.short_usd}

    def select(self, as_of_us: np.ndarray) -> dict[str, np.ndarray]:
        """The cells of the given states (those present), in the file's order: t (as_of µs), price, long, short."""
        counts = np.diff(self.bounds)
        wanted = np.isin(self.states, as_of_us)
        t = np.repeat(self.states[wanted], counts[wanted])
        if wanted.all():  # every state of the tile (a 1 h answer): the arrays as they are
            return {"t": t, "price": self.price, "long_usd": self.long_usd, "short_usd": self.short_usd}
        rows = np.repeat(wanted, counts)
        return {
            "t": t,
            "price": self.price[rows],
            "long_usd": self.long_usd[rows],
            "short_usd": self.short_usd[rows],
        }


def group_cells(t: np.ndarray, columns: dict[str, np.ndarray], info: dict | None = None) -> DayTile:
    """Cells (t = as_of µs, price, long_usd, short_usd) as a DayTile, grouped by state keeping their order within
    a state (a stable sort; the model already writes them by time), so sums per state are the 5-minute path's."""
    order = np.argsort(t, kind="stable") if t.size and (np.diff(t) < 0).any() else None
    if order is not None:
        t, columns = t[order], {k: v[order] for k, v in columns.items()}
    states, starts = np.unique(t, return_index=True)
    return DayTile(
        states=states,
        bounds=np.append(starts, t.size).astype(np.int64),
        price=columns["price"],
        long_usd=columns["long_usd"],
        short_usd=columns["short_usd"],
        info=info or {},
    )


def load_day_tile(path: LakePath) -> DayTile:
    """A heatmap tile as a DayTile, with its TILE_KEY record."""
    pf = pq.ParquetFile(uri(path))
    table = pf.read(columns=list(HEAT_COLUMNS))
    # Copies owned by numpy: a cached tile holds no Arrow buffer.
    columns = {c: as_numpy(table[c]) for c in HEAT_COLUMNS[1:]}
    return group_cells(as_numpy(table["as_of"]), columns, tile_info(pf.schema_arrow.metadata))


@dataclass(frozen=True)
class Candles:
    """Candles of one day in memory (hourly from CANDLES_1H, or 1-minute klines), ordered by open time."""

    t: np.ndarray  # open_time, int64 µs
    ohlc: dict[str, np.ndarray]
    info: dict

    @property
    def nbytes(self) -> int:
        return self.t.nbytes + sum(a.nbytes for a in self.ohlc.values()) + 500

    def between(self, first_us: int, end_us: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The candles opening in [first_us, end_us)."""
        a, b = np.searchsorted(self.t, [first_us, end_us])
        return self.t[a:b], {k: v[a:b] for k, v in self.ohlc.items()}


def load_candles(path: LakePath) -> Candles:
    """A CANDLES_1H tile or a klines partition: open_time and OHLC, sorted by open_time (stable)."""
    pf = pq.ParquetFile(uri(path))
    table = pf.read(columns=["open_time", *CANDLE_COLUMNS])
    t = as_numpy(table["open_time"])
    order = np.argsort(t, kind="stable")
    return Candles(
        t=t[order],
        ohlc={c: as_numpy(table[c])[order] for c in CANDLE_COLUMNS},
        info=tile_info(pf.schema_arrow.metadata),
    )


def bucket_candles(t: np.ndarray, ohlc: dict[str, np.ndarray], step_us: int) -> tuple[np.ndarray, dict]:
    """Aggregate candles (1-minute or hourly, sorted by open time) into buckets of `step_us`: open of the first,
    close of the last, max of highs, min of lows, with DuckDB's NaN order (NaN is the largest value, so a NaN high
    wins `max` and a NaN low loses `min`), so the numbers are those of the API's SQL over 1-minute klines."""
    if not t.size:
        return t, {c: np.zeros(0) for c in CANDLE_COLUMNS}
    b = t // step_us * step_us
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    ends = np.r_[starts[1:], t.size] - 1
    return b[starts], {
        "open": ohlc["open"][starts],
        "high": np.maximum.reduceat(ohlc["high"], starts),
        "low": np.fmin.reduceat(ohlc["low"], starts),
        "close": ohlc["close"][ends],
    }
