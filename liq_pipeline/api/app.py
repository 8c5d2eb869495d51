"""The read-only HTTP API and the heatmap page.

Every answer is read from the lake's Parquet partitions (`Lake.partition_file`) with an in-memory DuckDB, for the
one symbol and the days a request needs; nothing here writes or takes the warehouse file's lock. The symbol whitelist
is the registry (`liq_pipeline.symbols`), read at request time, so a symbol removed from the registry file is gone
from the API without a code change.

Heatmap answers are cached in an LRU keyed on the request parameters and on a fingerprint of the symbol's
partitions (file count, newest mtime, and a hash of every heatmap and klines file's day, mtime, size and inode), so
a new or re-materialized partition changes the key and is never hidden by the cache.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from importlib.resources import files as package_files
from pathlib import Path
from typing import Annotated, Any, Literal

import duckdb
import numpy as np
import pyarrow.parquet as pq
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from liq_pipeline import symbols as symbols_module
from liq_pipeline.lake import PART_FILE, Lake
from liq_pipeline.symbols import SYMBOL_RE, Registry, RegistryError, load_registry, registry_path

HEATMAP = "liquidation_heatmap"
LEVELS = "liquidation_levels"
KLINES = "klines"

NOTE = (
    "Model estimate of where open positions would be liquidated, reconstructed from public Binance data "
    "(open interest, trades, klines). It is not exchange data."
)
TARGET_PRICE_BUCKETS = 400  # default re-binning aims at no more than this many price rows
MAX_BUCKETS = 5000  # hard limit on price (and time) buckets in one answer
_NICE_MULTIPLES = (1, 2, 4, 5)  # automatic re-binning uses k * 10^n of the registry bin, k in these


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
_EPOCH = datetime(1970, 1, 1)


class ApiError(Exception):
    """An error the caller caused (4xx) or a data problem (503), with a message that says what to do."""

    def __init__(self, status: int, detail: str, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


def step_for_span(span: timedelta) -> timedelta:
    """The time step of the shortest named window that covers `span`."""
    for length, step in WINDOWS.values():
        if span <= length:
            return step
    raise ApiError(
        400, f"the requested time range spans {span}; the longest supported window is 1y (365 days)"
    )


def _to_naive_utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    if not (datetime(2000, 1, 1) <= value <= datetime(2200, 1, 1)):
        raise ApiError(
            400, f"{name} {value.isoformat()} is out of range; use an ISO datetime between 2000 and 2200"
        )
    return value


def _iso(us: int | np.integer) -> str:
    return (_EPOCH + timedelta(microseconds=int(us))).isoformat() + "Z"


def _epoch_us(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class Listing:
    """One symbol's partitions of one table: the days that exist and a fingerprint of their files."""

    days: tuple[date, ...]
    paths: tuple[Path, ...]
    fingerprint: tuple[
        int, int, int
    ]  # file count, newest mtime (ns), hash of every file's day/mtime/size/inode


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


def _dates_summary(days: tuple[date, ...]) -> dict[str, Any] | None:
    if not days:
        return None
    return {"start": days[0].isoformat(), "end": days[-1].isoformat(), "days": len(days)}


class LakeApi:
    """The API's logic without HTTP: each method returns a JSON-able dict or raises ApiError."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        registry_file: Path | str | None = None,
        cache: bool = True,
        cache_size: int = 64,
    ):
        self.lake = Lake.at(data_dir)
        self._registry_file = Path(registry_file) if registry_file else None
        self._registry_state: tuple[tuple, Registry] | None = None
        self.registry_error: str | None = None
        self._db = duckdb.connect()
        self.cache_enabled = cache
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._meta: dict[tuple, Any] = {}  # footer facts per (path, mtime): small, always valid
        self._lock = threading.Lock()
        self.stats = {"cache_hits": 0, "cache_misses": 0, "heatmap_queries": 0}

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
            return self._db.cursor()

    # --- footer facts, cached per file version -----------------------------------------------------------

    def _footer(self, path: Path, what: str) -> Any:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        key = (str(path), mtime, what)
        if key in self._meta:
            return self._meta[key]
        value = None
        try:
            if what == "config":
                raw = (pq.read_schema(path).metadata or {}).get(b"liq_model_config")
                value = json.loads(raw, parse_constant=lambda _: None) if raw else {}
                value = value if isinstance(value, dict) else {"value": value}
            elif what == "max_ts":
                value = self._max_ts(path)
        except Exception:  # a file being replaced or unreadable: answer without this fact
            value = {} if what == "config" else None
        with self._lock:
            if len(self._meta) > 10_000:
                self._meta.clear()
            self._meta[key] = value
        return value

    def _max_ts(self, path: Path) -> datetime | None:
        md = pq.ParquetFile(path).metadata
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        if "ts" not in names:
            return None
        col = names.index("ts")
        best = None
        for rg in range(md.num_row_groups):
            stats = md.row_group(rg).column(col).statistics
            if stats is None or not stats.has_min_max:
                best = None
                break
            best = stats.max if best is None else max(best, stats.max)
        if best is None:
            con = self._cursor()
            try:
                best = con.execute("SELECT max(ts) FROM read_parquet(?)", [str(path)]).fetchone()[0]
            finally:
                con.close()
        if isinstance(best, datetime) and best.tzinfo is not None:
            best = best.astimezone(UTC).replace(tzinfo=None)
        return best

    # --- endpoints ---------------------------------------------------------------------------------------

    def heatmap(
        self,
        symbol: str,
        time_window: str = "48h",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        price_bin_size: float | None = None,
    ) -> tuple[bytes, bool]:
        """The heatmap answer as JSON bytes, and whether it came from the cache."""
        registry, symbol = self.check_symbol(symbol)
        if time_window not in WINDOWS:
            raise ApiError(
                400, f"time_window {time_window!r} is not supported; use one of {', '.join(WINDOWS)}"
            )
        start_time = _to_naive_utc(start_time, "start_time")
        end_time = _to_naive_utc(end_time, "end_time")
        if start_time is not None and end_time is not None and end_time <= start_time:
            raise ApiError(
                400,
                f"end_time {end_time.isoformat()} must be after start_time {start_time.isoformat()}",
            )
        spec = registry.specs[symbol]
        k = self._bin_multiple(price_bin_size, spec.price_bin)

        heat = list_partitions(self.lake, HEATMAP, symbol)
        if not heat.days:
            raise ApiError(
                404,
                f"no heatmap data for {symbol} yet: no dates exist in the lake ({self.lake.root / HEATMAP}). "
                "Materialize the liquidation_heatmap asset for it first.",
                available_dates=None,
            )
        klines = list_partitions(self.lake, KLINES, symbol)
        length, _ = WINDOWS[time_window]
        if start_time is not None and end_time is not None:
            start, end = start_time, end_time
        elif end_time is not None:
            start, end = end_time - length, end_time
        elif start_time is not None:
            start, end = start_time, start_time + length
        else:
            latest = self._footer(heat.paths[-1], "max_ts")
            if latest is None:
                latest = datetime.combine(heat.days[-1] + timedelta(days=1), datetime.min.time())
            start, end = latest - length, latest
        step = step_for_span(end - start)

        key = (symbol, spec.price_bin, time_window, start, end, k, heat.fingerprint, klines.fingerprint)
        if self.cache_enabled:
            with self._lock:
                body = self._cache.get(key)
                if body is not None:
                    self._cache.move_to_end(key)
                    self.stats["cache_hits"] += 1
                    return body, True
                self.stats["cache_misses"] += 1

        answer = self._heatmap_answer(symbol, spec.price_bin, time_window, start, end, step, k, heat, klines)
        body = json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()
        if self.cache_enabled:
            with self._lock:
                self._cache[key] = body
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return body, False

    @staticmethod
    def _bin_multiple(price_bin_size: float | None, price_bin: float) -> int | None:
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

    def _heatmap_answer(
        self,
        symbol: str,
        price_bin: float,
        time_window: str,
        start: datetime,
        end: datetime,
        step: timedelta,
        k: int | None,
        heat: Listing,
        klines: Listing,
    ) -> dict:
        # The days whose partitions can hold a step ending in (start, end]: a step ending at midnight may sit in
        # the previous day's partition, and the window's own days; only files that exist are read.
        wanted_days = set()
        day = start.date()
        while day <= end.date():
            wanted_days.add(day)
            day += timedelta(days=1)
        files = [str(p) for d, p in zip(heat.days, heat.paths) if d in wanted_days]
        dates_hint = _dates_summary(heat.days)
        if not files:
            raise ApiError(
                404,
                f"no heatmap data for {symbol} between {start.isoformat()} and {end.isoformat()}; "
                f"dates that exist: {dates_hint['start']} to {dates_hint['end']} ({dates_hint['days']} days)",
                available_dates=dates_hint,
            )
        step_us = int(step.total_seconds()) * 1_000_000
        con = self._cursor()
        with self._lock:
            self.stats["heatmap_queries"] += 1
        try:
            # Phase 1: the last model step of each time bucket (the heatmap is a state: a bucket shows its end).
            # Bucket b holds steps ending in (b*step, (b+1)*step], i.e. the candles opening in [b*step, (b+1)*step).
            last = con.execute(
                "SELECT max(ts) FROM read_parquet(?) WHERE ts > ? AND ts <= ? GROUP BY (epoch_us(ts) - 1) // ?",
                [files, start, end, step_us],
            ).fetchall()
            wanted = sorted(r[0] for r in last)
            if not wanted:
                raise ApiError(
                    404,
                    f"no heatmap steps for {symbol} between {start.isoformat()} and {end.isoformat()}; "
                    f"dates that exist: {dates_hint['start']} to {dates_hint['end']} ({dates_hint['days']} days)",
                    available_dates=dates_hint,
                )
            # Phase 2: only those steps' cells.
            cells = con.execute(
                "SELECT epoch_us(ts) AS t, price, long_usd, short_usd FROM read_parquet(?) "
                "WHERE ts IN (SELECT unnest(?::TIMESTAMP[]))",
                [files, wanted],
            ).fetchnumpy()
            kfiles = [str(p) for d, p in zip(klines.days, klines.paths) if d in wanted_days]
            first_bucket_us = ((_epoch_us(wanted[0]) - 1) // step_us) * step_us
            candles = None
            if kfiles:
                candles = con.execute(
                    "SELECT epoch_us(open_time) // ? AS b, arg_min(open, open_time) AS open, max(high) AS high, "
                    "min(low) AS low, arg_max(close, open_time) AS close FROM read_parquet(?) "
                    "WHERE open_time >= ? AND open_time < ? GROUP BY b ORDER BY b",
                    [step_us, kfiles, _EPOCH + timedelta(microseconds=first_bucket_us), wanted[-1]],
                ).fetchnumpy()
        except duckdb.Error as exc:
            raise ApiError(503, f"could not read the lake partitions of {symbol}: {exc}") from exc
        finally:
            con.close()

        t = np.asarray(cells["t"], dtype=np.int64)
        price = np.asarray(cells["price"], dtype=np.float64)
        long_usd = np.nan_to_num(np.asarray(cells["long_usd"], dtype=np.float64))
        short_usd = np.nan_to_num(np.asarray(cells["short_usd"], dtype=np.float64))
        buckets = (t - 1) // step_us
        time_keys, ti = np.unique(buckets, return_inverse=True)

        # Prices: index each cell on the registry grid (whatever its offset), then group k bins together.
        if len(price):
            frac = (price[0] / price_bin) % 1.0
            frac = 0.0 if min(frac, 1 - frac) < 1e-6 else frac
            g = np.rint(price / price_bin - frac).astype(np.int64)
            span = int(g.max() - g.min()) + 1
        else:
            frac, g, span = 0.0, np.zeros(0, np.int64), 1
        if k is None:
            k = _auto_multiple(span)
        coarse = np.floor_divide(g, k)
        lo = int(coarse.min()) if len(coarse) else 0
        n_prices = (int(coarse.max()) - lo + 1) if len(coarse) else 0
        if n_prices > MAX_BUCKETS:
            raise ApiError(
                400,
                f"price_bin_size {k * price_bin:g} would give {n_prices} price buckets (more than {MAX_BUCKETS}); "
                f"use at least {price_bin * math.ceil(span / MAX_BUCKETS):g}",
            )
        pi = coarse - lo
        n_times = len(time_keys)
        flat = ti * n_prices + pi
        long_grid = np.bincount(flat, weights=long_usd, minlength=n_times * n_prices).reshape(
            n_times, n_prices
        )
        short_grid = np.bincount(flat, weights=short_usd, minlength=n_times * n_prices).reshape(
            n_times, n_prices
        )
        prices = (np.arange(lo, lo + n_prices) * k + (k - 1) / 2 + frac) * price_bin

        ohlc: dict[str, list] = {"time": [], "open": [], "high": [], "low": [], "close": []}
        times = [_iso(b * step_us) for b in time_keys]
        ohlc["time"] = times
        for name in ("open", "high", "low", "close"):
            ohlc[name] = [None] * n_times
        if candles is not None and len(candles["b"]):
            pos = np.searchsorted(time_keys, candles["b"])
            for j, b in enumerate(candles["b"]):
                i = int(pos[j])
                if i < n_times and time_keys[i] == b:
                    for name in ("open", "high", "low", "close"):
                        value = float(candles[name][j])
                        ohlc[name][i] = value if math.isfinite(value) else None

        params = self._footer(Path(files[-1]), "config") or {}
        decimals = _price_decimals(price_bin * k)
        return {
            "symbol": symbol,
            "time_window": time_window,
            "start_time": start.isoformat() + "Z",
            "end_time": end.isoformat() + "Z",
            "step_seconds": int(step.total_seconds()),
            "price_bin_size": round(price_bin * k, 12),
            "times": times,
            "prices": [round(float(p), decimals) for p in prices],
            "long": np.rint(long_grid).astype(np.int64).tolist(),
            "short": np.rint(short_grid).astype(np.int64).tolist(),
            "candles": ohlc,
            "params": params,
            "units": "USD",
            "note": NOTE
            + " times[i] starts bucket i; long/short[i] are the state at the end of that bucket.",
        }

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
        path = str(listing.paths[-1])
        sides = ["long", "short"] if side == "both" else [side]
        con = self._cursor()
        try:
            rows = con.execute(
                "WITH src AS (SELECT * FROM read_parquet(?)), "
                "latest AS (SELECT * FROM src WHERE ts = (SELECT max(ts) FROM src)), "
                "ranked AS (SELECT *, row_number() OVER (PARTITION BY side ORDER BY rank, notional_usd DESC) AS r "
                "FROM latest WHERE side IN (SELECT unnest(?::VARCHAR[]))) "
                "SELECT ts, side, price_low, price_high, notional_usd, distance_pct, rank FROM ranked "
                "WHERE r <= ? ORDER BY side, r",
                [path, sides, top],
            ).fetchall()
        except duckdb.Error as exc:
            raise ApiError(503, f"could not read {path}: {exc}") from exc
        finally:
            con.close()
        ts = rows[0][0] if rows else None
        return {
            "symbol": symbol,
            "ts": ts.isoformat() + "Z" if isinstance(ts, datetime) else None,
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
            "note": NOTE,
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
                    "heatmap_dates": _dates_summary(listing.days),
                }
            )
        return {"symbols": out}

    def health(self) -> dict:
        registry = self.registry()
        now = datetime.now(UTC).replace(tzinfo=None)
        per_symbol = {}
        for symbol in registry.symbols:
            heat = list_partitions(self.lake, HEATMAP, symbol)
            latest_days = {t: list_partitions(self.lake, t, symbol).days for t in (KLINES, LEVELS)}
            latest_days[HEATMAP] = heat.days
            last_days = [d[-1] for d in latest_days.values() if d]
            latest_ts = self._footer(heat.paths[-1], "max_ts") if heat.days else None
            per_symbol[symbol] = {
                "latest_data_day": max(last_days).isoformat() if last_days else None,
                "latest_day": {t: d[-1].isoformat() if d else None for t, d in latest_days.items()},
                "latest_heatmap_ts": latest_ts.isoformat() + "Z" if latest_ts else None,
                "heatmap_age_seconds": round((now - latest_ts).total_seconds()) if latest_ts else None,
                "heatmap_days": len(heat.days),
            }
        return {
            "status": "ok",
            "checked_at": now.isoformat() + "Z",
            "registry_symbols": len(registry.symbols),
            "registry_error": self.registry_error,  # set while an edited registry file is invalid
            "cache": {"enabled": self.cache_enabled, "entries": len(self._cache), **self.stats},
            "symbols": per_symbol,
        }


def _f(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _auto_multiple(span: int) -> int:
    """The smallest 'nice' multiple (1, 2, 4, 5 x 10^n) of the registry bin giving <= TARGET_PRICE_BUCKETS rows."""
    scale = 1
    while True:
        for m in _NICE_MULTIPLES:
            k = m * scale
            if math.ceil(span / k) + 1 <= TARGET_PRICE_BUCKETS:
                return k
        scale *= 10


def _price_decimals(size: float) -> int:
    return max(0, min(12, 2 - math.floor(math.log10(size)))) if size > 0 else 8


# --- HTTP ------------------------------------------------------------------------------------------------


def _plotly_js() -> Path:
    return Path(str(package_files("plotly") / "package_data" / "plotly.min.js"))


def create_app(
    data_dir: Path | str | None = None,
    *,
    registry_file: Path | str | None = None,
    cache: bool = True,
    cache_size: int = 64,
) -> FastAPI:
    """The read-only API over the lake at `data_dir` (default `$LIQ_DATA_DIR`).

    `registry_file` overrides `$LIQ_SYMBOLS_FILE`; `cache=False` turns the heatmap answer cache off (benchmarks).
    """
    api = LakeApi(data_dir, registry_file=registry_file, cache=cache, cache_size=cache_size)
    app = FastAPI(
        title="liq_pipeline API",
        version="0.1.0",
        description="Read-only liquidation heatmaps estimated by liq_pipeline's model. " + NOTE,
    )
    app.state.api = api

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail, **exc.extra})

    error_responses = {
        400: {"description": "bad parameter (malformed or unknown symbol, bad window, times or bin size)"},
        404: {"description": "no data for the symbol or the range; the body says which dates exist"},
    }

    @app.get(
        "/liquidations/heatmap-timeseries",
        responses={200: {"description": "dense time x price arrays plus candles"}, **error_responses},
        summary="Liquidation heatmap over a time window",
    )
    def heatmap_timeseries(
        symbol: SymbolQuery,
        time_window: Annotated[
            Window, Query(description="window length; the time step grows with it")
        ] = Window.h48,
        start_time: Annotated[datetime | None, Query(description="ISO datetime (UTC if no offset)")] = None,
        end_time: Annotated[
            datetime | None, Query(description="ISO datetime; default: the latest step")
        ] = None,
        price_bin_size: Annotated[
            float | None,
            Query(gt=0, description="a multiple of the symbol's registry price bin; default: automatic"),
        ] = None,
    ) -> Response:
        body, hit = api.heatmap(symbol, time_window.value, start_time, end_time, price_bin_size)
        return Response(
            content=body, media_type="application/json", headers={"X-Cache": "hit" if hit else "miss"}
        )

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

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, data_dir: Path | str | None = None) -> None:
    """Run the API and page with uvicorn (blocking). Loopback by default."""
    import uvicorn

    print(f"liq_pipeline API and heatmap page on http://{host}:{port}/ (lake: {Lake.at(data_dir).root})")
    uvicorn.run(create_app(data_dir), host=host, port=port, log_level="info")


class BackgroundServer:
    """uvicorn serving an app from a daemon thread on a socket bound here (port 0: a free one). For tests and
    benchmarks: `with BackgroundServer(app) as url: ...`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 20.0) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {self.url}")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
