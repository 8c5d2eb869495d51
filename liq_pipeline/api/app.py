"""The read-only HTTP API and the heatmap page.

Every answer is read from the lake's Parquet partitions (pyarrow, or an in-memory DuckDB for windows under 7 days),
for the one symbol and the days a request needs (`queries`); nothing here writes or takes the warehouse file's lock. The symbol whitelist is the
registry (`liq_pipeline.symbols`), read at request time, so a symbol removed from the registry file is gone from the
API without a code change. Heatmap answers are cached (`cache.AnswerCache`) under a key that includes a fingerprint
of the symbol's heatmap and klines partitions, so a new or re-materialized partition is never hidden by the cache.

Windows of 7 days and more (steps of 1 h to 1 day) read their states from the heatmap tiles (`liq_pipeline.tiles`:
the whole-hour and 12-hour states and hourly candles, per day), parsed once per file version into a byte-bounded
LRU (`cache.ByteLRU`) beside each day's [state, price bucket] sums (`grid.Grids`); a state off the tile's grid (the data's end, an end_time off the hour) and a day whose tile is
missing or older than its heatmap come from the 5-minute heatmap, so the numbers are always the 5-minute path's.
Answers are serialized with orjson and gzip-compressed (ISA-L) for clients that accept it (both forms cached).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import partial
from importlib.resources import files as package_files
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import duckdb
import numpy as np
import orjson
import pyarrow as pa
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from isal import igzip
from starlette.middleware.gzip import GZipMiddleware

from liq_pipeline import symbols as symbols_module
from liq_pipeline.api.cache import AnswerCache, ByteLRU, FooterCache
from liq_pipeline.api.grid import Grids, Matrices, Piece, candle_decimals, price_decimals
from liq_pipeline.api.queries import (
    DAY_US,
    OHLC,
    ApiError,
    Axis,
    Listing,
    Read,
    Sources,
    align_candles,
    as_of_ranges,
    axis_files,
    covering_days,
    dates_summary,
    days_in_window,
    epoch_us,
    from_us,
    iso_list,
    latest_levels,
    list_partitions,
    model_step,
    read_candles,
    read_cells,
    read_config,
    read_heat_states,
    read_lookback,
    read_source,
    time_axis,
)
from liq_pipeline.lake import Lake, column_max
from liq_pipeline.live.partition import newest_live_rows
from liq_pipeline.symbols import SYMBOL_RE, Registry, RegistryError, load_registry, registry_path
from liq_pipeline.tiles import (
    CANDLES_1H,
    HOUR_US,
    TILE_1H,
    TILE_12H,
    TILE_STEP_US,
    Candles,
    DayTile,
    bucket_candles,
    footer_digest,
    group_cells,
    load_candles,
    load_day_tile,
    matches,
)

HEATMAP = "liquidation_heatmap"
LEVELS = "liquidation_levels"
KLINES = "klines"
HEATMAP_5M = "heatmap_5m"  # coverage.source when the states came from the 5-minute heatmap
GZIP_MIN_BYTES = 1024  # smaller answers go uncompressed
# ISA-L's gzip (python-isal) at level 1: a 7-day answer (~470 KB of JSON) takes 1.8 ms and gives ~208 KB, where
# zlib takes 6 ms at level 1 (~214 KB); the compressed stream is ordinary gzip.
GZIP_LEVEL = 1
# What one server process's caches may hold, MB (`LIQ_API_CACHE_MB`): 3/4 parsed day files and kept day blocks
# (`ByteLRU`), 1/4 whole answers (`AnswerCache`). Each `liq serve --workers` process has its own.
CACHE_MB = 64
# The heatmap endpoint is async and hands each request to this many threads of its own: on 2 cores with the GIL,
# more in flight add no throughput, only GIL hand-offs, memory (every thread that allocates large arrays grows a
# malloc arena of its own) and latency spread. Sync endpoints would run on anyio's 40 threads instead.
ANSWER_THREADS = int(os.environ.get("LIQ_API_THREADS", "2"))

NOTE = (
    "Model estimate of where open positions would be liquidated, reconstructed from public Binance data "
    "(open interest, trades, klines). It is not exchange data."
)
TIME_NOTE = (
    "times[i] starts bucket i, [times[i], times[i] + step_seconds), UTC. candles[i] aggregates the 1-minute klines "
    "opening in bucket i. long[i] and short[i] are the model's state at the end of bucket i, at as_of[i] (the last "
    "model step ending in the bucket): a level that candle i's wick ran through is already gone from column i and "
    "still shown in column i-1, so a column never shows what a later candle did. A bucket whose state is empty has "
    "a column of zeros; missing_dates lists days without a heatmap partition (their columns are zeros too)."
)


class Window(StrEnum):
    h12 = "12h"
    h24 = "24h"
    h48 = "48h"
    d3 = "3d"
    d7 = "7d"
    d14 = "14d"
    d30 = "30d"
    d90 = "90d"
    d180 = "180d"
    y1 = "1y"


# window -> (length, time step). The step grows with the window like Coinglass's.
WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "12h": (timedelta(hours=12), timedelta(minutes=5)),
    "24h": (timedelta(hours=24), timedelta(minutes=5)),
    "48h": (timedelta(hours=48), timedelta(minutes=15)),
    "3d": (timedelta(days=3), timedelta(minutes=30)),
    "7d": (timedelta(days=7), timedelta(hours=1)),
    "14d": (timedelta(days=14), timedelta(hours=2)),
    "30d": (timedelta(days=30), timedelta(hours=4)),
    "90d": (timedelta(days=90), timedelta(hours=12)),
    "180d": (timedelta(days=180), timedelta(days=1)),
    "1y": (timedelta(days=365), timedelta(days=1)),
}
_STATIC = Path(__file__).with_name("static")
SymbolQuery = Annotated[str, Query(description="a registry symbol, e.g. BTCUSDT", examples=["BTCUSDT"])]
_TIME_RANGE = (datetime(2000, 1, 1), datetime(2200, 1, 1))


def step_for_span(span: timedelta) -> timedelta:
    """The time step of the shortest named window that covers `span`."""
    for length, step in WINDOWS.values():
        if span <= length:
            return step
    raise ApiError(
        400, f"the requested time range spans {span}; the longest supported window is 1y (365 days)"
    )


def to_naive_utc(value: datetime | None, name: str) -> datetime | None:
    """A request time as naive UTC; a time outside 2000..2200 (before or after its offset) is a 400."""
    if value is None:
        return None
    out_of_range = ApiError(
        400, f"{name} {value.isoformat()} is out of range; use an ISO datetime between 2000 and 2200"
    )
    try:
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
    except (OverflowError, ValueError):  # year 1 or 9999 shifted by its offset leaves datetime's range
        raise out_of_range from None
    if not (_TIME_RANGE[0] <= value <= _TIME_RANGE[1]):
        raise out_of_range
    return value


def bin_multiple(price_bin_size: float | None, price_bin: float) -> int | None:
    """How many registry bins one answer bin holds (None: automatic)."""
    if price_bin_size is None:
        return None
    if not math.isfinite(price_bin_size) or price_bin_size <= 0:
        raise ApiError(400, f"price_bin_size must be a positive number, got {price_bin_size!r}")
    k = round(price_bin_size / price_bin)
    if k < 1 or not math.isclose(k * price_bin, price_bin_size, rel_tol=1e-9, abs_tol=price_bin * 1e-6):
        raise ApiError(
            400,
            f"price_bin_size {price_bin_size:g} is not a whole multiple of this symbol's price bin "
            f"{price_bin:g}; use e.g. {price_bin:g}, {2 * price_bin:g} or {10 * price_bin:g}",
        )
    if k > 10**9:
        raise ApiError(400, f"price_bin_size {price_bin_size:g} is too large")
    return int(k)


def _midnight_after(day: date) -> datetime:
    return datetime(day.year, day.month, day.day) + timedelta(days=1)


def tile_table(step_us: int) -> str | None:
    """The tile whose grid holds every bucket end of this step (12 h and 1 day: TILE_12H; 1, 2 and 4 h: TILE_1H);
    None below 1 h (the 5-minute heatmap)."""
    for name in (TILE_12H, TILE_1H):
        if step_us % TILE_STEP_US[name] == 0:
            return name
    return None


def is_gzip(body: bytes) -> bool:
    """Whether `LakeApi.heatmap` compressed this body (gzip's magic bytes; JSON never starts with them)."""
    return body[:2] == b"\x1f\x8b"


def layout(axis: Axis, grid: Matrices, candles: dict[str, np.ndarray], price_bin: float) -> dict:
    """Phase 3: the matrices and candles as the answer's arrays: prices rounded to the grid's decimals, candles to
    the symbol's (`candle_decimals`; NaN is null). Arrays stay numpy for orjson."""
    times = iso_list(axis.start_us)
    places = candle_decimals(price_bin)
    return {
        "price_bin_size": round(grid.size, 12),
        "times": times,
        "as_of": iso_list(axis.as_of_us),
        "prices": np.round(grid.prices, price_decimals(grid.size)),
        "long": grid.long,
        "short": grid.short,
        "candles": {"time": times, **{c: np.round(candles[c], places) for c in OHLC}},
    }


class LakeApi:
    """The API's logic without HTTP: each method returns a JSON-able dict (or bytes) or raises ApiError."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        registry_file: Path | str | None = None,
        cache: bool = True,
        tiles: bool = True,
        cache_mb: float | None = None,
    ):
        self.lake = Lake.at(data_dir)
        self.use_tiles = tiles  # False: every answer from the 5-minute heatmap (tests compare the two)
        budget = int((cache_mb or float(os.environ.get("LIQ_API_CACHE_MB") or CACHE_MB)) * 2**20)
        self.day_files = ByteLRU(budget * 3 // 4)
        # A tile day's [state, bucket] sums (`grid.Grids`) are kept beside the parsed files.
        self.grids = Grids(self.day_files)
        self._registry_file = Path(registry_file) if registry_file else None
        self._registry_state: tuple[tuple, Registry] | None = None
        self.registry_error: str | None = None
        self._db: duckdb.DuckDBPyConnection | None = None  # opened on first use (~20 MB): tiles need none
        self._lock = threading.Lock()
        self.cache = AnswerCache(budget // 4, enabled=cache)
        self.footers = FooterCache()
        self.stats = self.cache.stats
        self.stats.update(heatmap_queries=0, tile_states=0, heatmap_5m_states=0, files_read=0, bytes_read=0)

    # --- the registry --------------------------------------------------------------------------------------

    def registry(self) -> Registry:
        """The registry as the file says now: reloaded when the file's mtime or size changes."""
        path = self._registry_file or registry_path()
        try:
            st = path.stat()
            key = (str(path), st.st_mtime_ns, st.st_size)
        except OSError:
            key = (str(path), 0, 0)
        state = self._registry_state
        if state is not None and state[0] == key:
            return state[1]
        try:
            # `load_registry` caches per path forever; read the file itself so an edited registry takes effect.
            loader = getattr(symbols_module._load, "__wrapped__", None)
            registry = loader(path) if loader else load_registry(path)
        except RegistryError as exc:
            self.registry_error = str(exc)
            if state is not None:
                return state[1]  # keep serving the last good registry; /health reports the problem
            raise ApiError(503, f"the symbol registry cannot be read: {exc}") from exc
        self.registry_error = None
        self._registry_state = (key, registry)
        return registry

    def check_symbol(self, symbol: str) -> tuple[Registry, str]:
        registry = self.registry()
        if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
            raise ApiError(
                400,
                f"malformed symbol {str(symbol)[:40]!r}: expected 5-20 upper-case letters or digits, like BTCUSDT. "
                f"Supported symbols: {', '.join(registry.symbols)}",
                supported_symbols=registry.symbols,
            )
        if symbol not in registry.specs:
            raise ApiError(
                400,
                f"unknown symbol {symbol!r}. Supported symbols: {', '.join(registry.symbols)} "
                f"(from the registry {registry.path.name})",
                supported_symbols=registry.symbols,
            )
        return registry, symbol

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own for one request (DuckDB connections are not shared between threads)."""
        with self._lock:
            if self._db is None:
                self._db = self.lake.connect()
            return self._db.cursor()

    def _latest_as_of(self, listing: Listing) -> datetime | None:
        return self.footers.get(listing.paths[-1], "max as_of", lambda p: column_max(p, "as_of"))

    # --- the heatmap ---------------------------------------------------------------------------------------

    def heatmap(
        self,
        symbol: str,
        time_window: str = "48h",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        price_bin_size: float | None = None,
        gzip: bool = False,
    ) -> tuple[bytes, bool]:
        """The heatmap answer as JSON bytes, and whether it came from the cache. With `gzip=True` an answer of at
        least GZIP_MIN_BYTES comes gzip-compressed (`is_gzip` tells)."""
        registry, symbol = self.check_symbol(symbol)
        if time_window not in WINDOWS:
            raise ApiError(
                400, f"time_window {time_window!r} is not supported; use one of {', '.join(WINDOWS)}"
            )
        start_time = to_naive_utc(start_time, "start_time")
        end_time = to_naive_utc(end_time, "end_time")
        if start_time is not None and end_time is not None and end_time <= start_time:
            raise ApiError(
                400, f"end_time {end_time.isoformat()} must be after start_time {start_time.isoformat()}"
            )
        spec = registry.specs[symbol]
        k = bin_multiple(price_bin_size, spec.price_bin)
        start, end = self._window(symbol, time_window, start_time, end_time)
        # Only the partitions that can hold a state in (start, end] are listed (stat-ed): a year of days is not.
        days = ((start - timedelta(days=1)).date(), end.date())
        heat = list_partitions(self.lake, HEATMAP, symbol, *days)
        if not heat.days:
            self._no_data(symbol, start, end)
        src = self._sources(symbol, heat, step_for_span(end - start), days)
        key = (symbol, spec.price_bin, time_window, start, end, k, src.fingerprint)
        return self._body(
            key, gzip, lambda: self._heatmap_answer(symbol, spec.price_bin, time_window, start, end, k, src)
        )

    def _no_data(self, symbol: str, start: datetime | None = None, end: datetime | None = None) -> NoReturn:
        """The 404 for no heatmap state in (start, end] (or none at all), naming the dates that exist."""
        every = list_partitions(self.lake, HEATMAP, symbol).days
        if not every:
            raise ApiError(
                404,
                f"no heatmap data for {symbol} yet: no dates exist in the lake ({self.lake.root / HEATMAP}). "
                "Materialize the liquidation_heatmap asset for it first.",
                available_dates=None,
            )
        hint = dates_summary(every)
        raise ApiError(
            404,
            f"no heatmap data for {symbol} between {start.isoformat()} and {end.isoformat()}; "
            f"dates that exist: {hint['start']} to {hint['end']} ({hint['days']} days)",
            available_dates=hint,
        )

    def _sources(self, symbol: str, heat: Listing, step: timedelta, days: tuple[date, date]) -> Sources:
        """The partitions of these days an answer of this step reads: the heatmap and klines, and from 1 h steps up
        (tiles on) the tile whose grid holds the buckets' ends and the hourly candles. Their fingerprints key the
        cache."""
        klines = list_partitions(self.lake, KLINES, symbol, *days)
        tile = tile_table(int(step.total_seconds()) * 1_000_000) if self.use_tiles else None
        if tile is None:
            return Sources(heat, klines)
        tiles, candles = (list_partitions(self.lake, t, symbol, *days) for t in (tile, CANDLES_1H))
        return Sources(heat, klines, tile, tiles, candles)

    def _body(self, key: tuple, gzip: bool, answer: Callable[[], dict]) -> tuple[bytes, bool]:
        """The body cached under `key`, else `answer()` serialized (orjson) and cached. The gzip form is cached
        beside it, so an answer served many times is compressed once."""
        if gzip:
            body = self.cache.get((*key, "gzip"))
            if body is not None:
                return body, True
        body = self.cache.get(key)
        hit = body is not None
        if body is None:
            body = orjson.dumps(answer(), option=orjson.OPT_SERIALIZE_NUMPY)
            self.cache.put(key, body)
        if gzip and len(body) >= GZIP_MIN_BYTES:
            body = igzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
            self.cache.put((*key, "gzip"), body)
        return body, hit

    def _window(
        self, symbol: str, time_window: str, start_time: datetime | None, end_time: datetime | None
    ) -> tuple[datetime, datetime]:
        """(start, end] of the answer: the given times, else the window's length before the newest state."""
        length, _ = WINDOWS[time_window]
        if start_time is not None and end_time is not None:
            return start_time, end_time
        if end_time is not None:
            return end_time - length, end_time
        if start_time is not None:
            return start_time, start_time + length
        heat = list_partitions(self.lake, HEATMAP, symbol)
        if not heat.days:
            self._no_data(symbol)
        latest = self._latest_as_of(heat) or _midnight_after(heat.days[-1])
        return latest - length, latest

    def _heatmap_answer(
        self,
        symbol: str,
        price_bin: float,
        time_window: str,
        start: datetime,
        end: datetime,
        k: int | None,
        src: Sources,
    ) -> dict:
        """The answer in phases: its columns (`_columns`), their states and candles (`_read`: tiles or the
        5-minute heatmap), the grid (`layout`) and what the window covers (`_coverage`)."""
        with self._lock:
            self.stats["heatmap_queries"] += 1
        present, params, axis = self._columns(symbol, start, end, src.heat)
        read = self._read(symbol, axis, src)
        last_klines = src.klines.file(present[-1][0])
        data_source = (
            self.footers.get(last_klines[0], "source", read_source, None, last_klines[1])
            if last_klines
            else None
        )
        return {
            "symbol": symbol,
            "time_window": time_window,
            "start_time": start.isoformat() + "Z",
            "end_time": end.isoformat() + "Z",
            "step_seconds": axis.step_us // 1_000_000,
            **layout(
                axis, self.grids.matrices(axis.as_of_us, read.pieces, price_bin, k), read.candles, price_bin
            ),
            "missing_dates": [d.isoformat() for d in axis.missing_days],
            "coverage": self._coverage(start, end, present, src.heat, read),
            "params": params,
            "data_source": data_source,
            "units": "USD",
            "note": f"{NOTE} {TIME_NOTE}",
        }

    def _columns(
        self, symbol: str, start: datetime, end: datetime, heat: Listing
    ) -> tuple[list[tuple[date, Path]], dict, Axis]:
        """Phase 1: the columns, from the partitions that hold states in (start, end] and the model's step; a 404
        naming the dates that exist when there are none."""
        present = covering_days(heat, start, end)
        params: dict = {}
        axis = None
        if present:
            path, version = heat.file(present[-1][0])
            params = self.footers.get(path, "config", read_config, {}, version)
            axis = time_axis(start, end, step_for_span(end - start), model_step(params), heat, present)
        if axis is None or not axis.start_us.size:
            self._no_data(symbol, start, end)
        return present, params, axis

    def _read(self, symbol: str, axis: Axis, src: Sources) -> Read:
        """Phase 2: exactly the axis' states' cells and the buckets' candles: from the tiles where they hold them
        and still match their source, from the 5-minute heatmap and 1-minute klines for the rest."""
        try:
            if src.tile is not None:
                return self._read_tiles(axis, src)
            self._count_reads(axis_files(axis, src.heat, src.klines))
            con = self._cursor()
            try:
                cells = read_cells(con, axis)
                return Read(
                    [Piece(axis.as_of_us, lambda: cells)], read_candles(con, src.klines, axis), HEATMAP_5M
                )
            finally:
                con.close()
        except (duckdb.Error, pa.ArrowException) as exc:
            hint = ""
            if "as_of" in str(exc):
                hint = (
                    f" A partition lacks the as_of column: it was written by an older version. Re-materialize "
                    f"liquidation_heatmap for {symbol}."
                )
            raise ApiError(503, f"could not read the lake partitions of {symbol}: {exc}.{hint}") from exc

    def _read_tiles(self, axis: Axis, src: Sources) -> Read:
        """Each day's states on the tile's grid from its tile (if it matches the day's heatmap file); the others
        (the data's end, an end_time off the grid, a day without a fresh tile) from the 5-minute heatmap: one
        `grid.Piece` per day's tile (keyed by the tile file's version, so its sums are kept) and per day's other
        states."""
        grid_us = TILE_STEP_US[src.tile]
        day_of = (axis.as_of_us - 1) // DAY_US
        pieces, lookback, counts = [], {}, [0, 0]
        for d in np.unique(day_of):
            day = from_us(int(d) * DAY_US).date()
            heat_file = src.heat.file(day)
            if heat_file is None:
                continue  # no heatmap partition: the day's columns are zeros (missing_dates)
            wanted = axis.as_of_us[day_of == d]
            found = self._day_tile(src, day, heat_file)
            on = wanted % grid_us == 0 if found is not None else np.zeros(wanted.size, dtype=bool)
            if found is not None:
                (path, version), tile = found
                lookback[day] = tile.info
                pieces.append(Piece(wanted[on], tile.cells, (str(path), *version)))
            off = wanted[~on]
            if off.size:
                pieces.append(Piece(off, lambda f=heat_file, off=off: self._heat_states(f, off).select(off)))
            counts[0], counts[1] = counts[0] + int(on.sum()), counts[1] + int(off.size)
        with self._lock:
            self.stats["tile_states"] += counts[0]
            self.stats["heatmap_5m_states"] += counts[1]
        source = src.tile if lookback else HEATMAP_5M
        return Read(pieces, self._tile_candles(axis, src), source, lookback)

    def _heat_states(self, file: tuple[Path, tuple[int, int, int]], as_of_us: np.ndarray) -> DayTile:
        """Some states of one 5-minute heatmap partition (off the tile's grid), kept in the day cache: the answers
        ending at the same time (users looking at "now" through different windows) read them once."""
        path, version = file

        def load() -> DayTile:
            self._count_reads([file])
            ranges = self.footers.get(path, "as_of ranges", as_of_ranges, None, version)
            cells = read_heat_states(path, as_of_us, ranges)
            return group_cells(cells["t"], cells)

        return self.day_files.get((str(path), *version, as_of_us.tobytes()), load)

    def _load(self, file: tuple[Path, tuple[int, int, int]], loader: Callable[[Path], Any]) -> Any:
        """A parsed day file from the byte-bounded LRU (keyed by the file's version), else `loader(path)`."""
        path, version = file

        def load() -> Any:
            self._count_reads([file])
            return loader(path)

        return self.day_files.get((str(path), *version), load)

    def _fresh(self, info: dict, source: tuple[Path, tuple[int, int, int]]) -> bool:
        """Whether a tile was cut from `source` as the listing sees it now (`tiles.matches`)."""
        path, version = source
        return matches(
            info,
            version[0],
            version[1],
            lambda: self.footers.get(path, "digest", footer_digest, None, version),
        )

    def _day_tile(self, src: Sources, day: date, heat_file: tuple) -> tuple[tuple, DayTile] | None:
        """The day's tile file and heatmap tile if there is one and it matches the day's heatmap file; else None
        (fall back)."""
        tile_file = src.tiles.file(day)
        if tile_file is None:
            return None
        try:
            tile = self._load(tile_file, load_day_tile)
        except (OSError, ValueError, pa.ArrowException):  # being replaced or unreadable: the heatmap has it
            return None
        return (tile_file, tile) if self._fresh(tile.info, heat_file) else None

    def _day_candles(self, src: Sources, day: date) -> Candles | None:
        """The day's hourly candles if the tile matches the day's klines file now (a live day's klines grow)."""
        tile_file, klines_file = src.candles.file(day), src.klines.file(day)
        if tile_file is None or klines_file is None:
            return None
        try:
            hourly = self._load(tile_file, load_candles)
        except (OSError, ValueError, pa.ArrowException):
            return None
        return hourly if self._fresh(hourly.info, klines_file) else None

    def _tile_candles(self, axis: Axis, src: Sources) -> dict[str, np.ndarray]:
        """The buckets' candles from whole hours of CANDLES_1H and, for the last hour before the last column's
        state and for days without fresh hourly candles, the 1-minute klines: the same klines, the same OHLC."""
        first, cutoff = int(axis.start_us[0]), int(axis.as_of_us[-1])
        whole = cutoff // HOUR_US * HOUR_US
        parts = []
        for day, _ in src.klines.between(from_us(first).date(), from_us(cutoff - 1).date()):
            a, b = max(first, epoch_us(day)), min(cutoff, epoch_us(day) + DAY_US)
            hourly = self._day_candles(src, day)
            if hourly is not None:
                parts.append(hourly.between(a, min(whole, b)))
                a = max(a, whole)
            if a < b:
                parts.append(self._load(src.klines.file(day), load_candles).between(a, b))
        t = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        ohlc = {c: np.concatenate([p[1][c] for p in parts]) if parts else np.zeros(0) for c in OHLC}
        return align_candles(axis, *bucket_candles(t, ohlc, axis.step_us))

    def _count_reads(self, files: list[tuple[Path, tuple[int, int, int]]]) -> None:
        with self._lock:
            self.stats["files_read"] += len(files)
            self.stats["bytes_read"] += sum(version[1] for _, version in files)

    def _coverage(
        self, start: datetime, end: datetime, present: list[tuple[date, Path]], heat: Listing, read: Read
    ) -> dict:
        """What the window holds, for the page: the first and last day with heatmap data in it, how many days it
        has and spans, the days the model computed with less than its full lookback, and where the states came
        from. The lookback comes from the tiles already read, else the heatmap's stored inputs record."""
        partial = []
        for day, path in present:
            info = read.lookback.get(day)
            if info is None:
                info = self.footers.get(path, "lookback", read_lookback, {}, heat.file(day)[1])
            n, used = info.get("lookback_days"), info.get("lookback_days_used")
            if isinstance(n, int) and isinstance(used, int) and used < n:
                partial.append({"date": day.isoformat(), "lookback_days_used": used, "lookback_days": n})
        return {
            "first_day": present[0][0].isoformat() if present else None,
            "last_day": present[-1][0].isoformat() if present else None,
            "days_with_data": len(present),
            "days_in_window": days_in_window(start, end),
            "partial_lookback": partial,
            "source": read.source,
        }

    # --- the other endpoints -------------------------------------------------------------------------------

    def levels(self, symbol: str, side: str = "both", top: int = 10) -> dict:
        registry, symbol = self.check_symbol(symbol)
        if side not in ("long", "short", "both"):
            raise ApiError(400, f"side {side!r} is not supported; use long, short or both")
        if not isinstance(top, int) or not 1 <= top <= 50:
            raise ApiError(400, f"top must be between 1 and 50, got {top!r}")
        listing = list_partitions(self.lake, LEVELS, symbol)
        if not listing.days:
            raise ApiError(
                404,
                f"no liquidation levels for {symbol} yet: no dates exist in the lake ({self.lake.root / LEVELS}). "
                "Materialize the liquidation_levels asset for it first.",
                available_dates=None,
            )
        path = listing.paths[-1]
        con = self._cursor()
        try:
            rows = latest_levels(con, path, ["long", "short"] if side == "both" else [side], top)
        except duckdb.Error as exc:
            raise ApiError(
                503, f"could not read {path}: {exc}; re-materialize liquidation_levels for {symbol}"
            ) from exc
        finally:
            con.close()
        as_of = rows[0][0] if rows else None
        return {
            "symbol": symbol,
            "as_of": as_of.isoformat() + "Z" if isinstance(as_of, datetime) else None,
            "side": side,
            "top": top,
            "levels": [
                {
                    "side": r[1],
                    "price_low": _f(r[2]),
                    "price_high": _f(r[3]),
                    "price": _f((r[2] + r[3]) / 2) if r[2] is not None and r[3] is not None else None,
                    "notional_usd": _f(r[4]),
                    "distance_pct": _f(r[5]),
                    "rank": int(r[6]) if r[6] is not None else None,
                }
                for r in rows
            ],
            "units": "USD",
            "note": NOTE + " as_of is the time of the model state the zones were read from.",
        }

    def symbols(self) -> dict:
        registry = self.registry()
        out = []
        for symbol, spec in registry.specs.items():
            listing = list_partitions(self.lake, HEATMAP, symbol)
            out.append(
                {
                    "symbol": symbol,
                    "price_bin": spec.price_bin,
                    "first_date": spec.first_date.isoformat(),
                    "last_date": spec.last_date.isoformat() if spec.last_date else None,
                    "heatmap_dates": dates_summary(listing.days),
                }
            )
        return {"symbols": out}

    def health(self) -> dict:
        registry = self.registry()
        now = datetime.now(UTC).replace(tzinfo=None)
        per_symbol = {}
        live = newest_live_rows(self.lake, registry.symbols, now)
        for symbol in registry.symbols:
            heat = list_partitions(self.lake, HEATMAP, symbol)
            latest_days = {t: list_partitions(self.lake, t, symbol).days for t in (KLINES, LEVELS)}
            latest_days[HEATMAP] = heat.days
            last_days = [d[-1] for d in latest_days.values() if d]
            latest = self._latest_as_of(heat) if heat.days else None
            per_symbol[symbol] = {
                "latest_data_day": max(last_days).isoformat() if last_days else None,
                "latest_day": {t: d[-1].isoformat() if d else None for t, d in latest_days.items()},
                "latest_heatmap_as_of": latest.isoformat() + "Z" if latest else None,
                "heatmap_age_seconds": round((now - latest).total_seconds()) if latest else None,
                "heatmap_days": len(heat.days),
                # live mode: the newest row `liq collect` wrote (null when no collector wrote today or yesterday)
                "live_newest_row": live[symbol]["newest"].isoformat() + "Z" if symbol in live else None,
                "live_age_seconds": live[symbol]["age_seconds"] if symbol in live else None,
            }
        return {
            "status": "ok",
            "checked_at": now.isoformat() + "Z",
            "registry_symbols": len(registry.symbols),
            "registry_error": self.registry_error,  # set while an edited registry file is invalid
            "cache": {"enabled": self.cache.enabled, "entries": len(self.cache), **self.stats},
            "symbols": per_symbol,
        }


def _f(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --- HTTP ------------------------------------------------------------------------------------------------


def _plotly_js() -> Path:
    return Path(str(package_files("plotly") / "package_data" / "plotly.min.js"))


def create_app(
    data_dir: Path | str | None = None,
    *,
    registry_file: Path | str | None = None,
    cache: bool = True,
    tiles: bool = True,
) -> FastAPI:
    """The read-only API over the lake at `data_dir` (default `$LIQ_DATA_DIR`).

    `registry_file` overrides `$LIQ_SYMBOLS_FILE`; `cache=False` turns the heatmap answer cache off (benchmarks);
    `tiles=False` answers every window from the 5-minute heatmap (tests compare the two paths). Answers are
    gzip-compressed for clients that accept it (the heatmap's in `LakeApi.heatmap`, cached; the rest here).
    """
    # Arrow's default allocator (mimalloc) kept ~75 MB more resident than the system's after a few hundred varied
    # answers on a 30-day lake (each reads Parquet pages it frees at once); the server is its own process.
    pa.set_memory_pool(pa.system_memory_pool())
    api = LakeApi(data_dir, registry_file=registry_file, cache=cache, tiles=tiles)
    answers = ThreadPoolExecutor(ANSWER_THREADS, thread_name_prefix="liq-answer")
    app = FastAPI(
        title="liq_pipeline API",
        version="0.1.0",
        description="Read-only liquidation heatmaps estimated by liq_pipeline's model. " + NOTE,
    )
    app.state.api = api
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail, **exc.extra})

    error_responses = {
        400: {"description": "bad parameter (malformed or unknown symbol, bad window, times or bin size)"},
        404: {"description": "no data for the symbol or the range; the body says which dates exist"},
    }

    @app.get(
        "/liquidations/heatmap-timeseries",
        responses={
            200: {
                "description": "dense time x price arrays plus candles, one column per time bucket. "
                + TIME_NOTE
            },
            **error_responses,
        },
        summary="Liquidation heatmap over a time window",
        description="Each column is the model's state at the end of its time bucket, beside that bucket's candle. "
        + TIME_NOTE,
    )
    async def heatmap_timeseries(
        request: Request,
        symbol: SymbolQuery,
        time_window: Annotated[
            Window, Query(description="window length; the time step grows with it")
        ] = Window.h48,
        start_time: Annotated[
            datetime | None, Query(description="ISO datetime (UTC if no offset); default: end_time - window")
        ] = None,
        end_time: Annotated[
            datetime | None, Query(description="ISO datetime; default: the newest model state in the lake")
        ] = None,
        price_bin_size: Annotated[
            float | None,
            Query(gt=0, description="a multiple of the symbol's registry price bin; default: automatic"),
        ] = None,
    ) -> Response:
        accepts_gzip = "gzip" in request.headers.get("accept-encoding", "")
        body, hit = await asyncio.get_running_loop().run_in_executor(
            answers,
            partial(
                api.heatmap, symbol, time_window.value, start_time, end_time, price_bin_size, accepts_gzip
            ),
        )
        headers = {"X-Cache": "hit" if hit else "miss", "Vary": "Accept-Encoding"}
        if is_gzip(body):  # compressed and cached by the API; the middleware passes it through
            headers["Content-Encoding"] = "gzip"
        return Response(content=body, media_type="application/json", headers=headers)

    @app.get(
        "/liquidations/levels", responses=error_responses, summary="The current strongest liquidation zones"
    )
    def liquidation_levels(
        symbol: SymbolQuery,
        side: Annotated[Literal["long", "short", "both"], Query(description="which side's zones")] = "both",
        top: Annotated[int, Query(ge=1, le=50, description="zones per side")] = 10,
    ) -> dict:
        return api.levels(symbol, side, top)

    @app.get("/symbols", summary="Registry symbols, their price bin and heatmap date range")
    def symbols() -> dict:
        return api.symbols()

    @app.get("/health", summary="Latest data per symbol")
    def health() -> dict:
        return api.health()

    _add_page(app)
    return app


def _add_page(app: FastAPI) -> None:
    """The heatmap page and its static files (Plotly from the installed package: no CDN)."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(_STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(_plotly_js(), media_type="application/javascript")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        allowed = {p.name: p for p in _STATIC.iterdir() if p.is_file()}
        if name not in allowed:
            raise ApiError(404, f"no static file {name[:60]!r}")
        media = "application/javascript" if name.endswith(".js") else None
        return FileResponse(allowed[name], media_type=media)
