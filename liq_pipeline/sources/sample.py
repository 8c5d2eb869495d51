"""The embedded sample market: a deterministic SYNTHETIC market written in the exact Binance archive formats.

It lets the whole pipeline run offline (`LIQ_SOURCE=sample`, the default). It is not real data. Every file is a
pure function of (symbol, day, parameters): the random streams are seeded from `zlib.crc32(symbol)` and the day, and
the zips carry a fixed timestamp, so the same call writes byte-identical files on every run.

The model, per symbol:

- A one-minute log-price path: trends (a sum of slow sinusoids in absolute time, so they run across days), fat-tailed
  noise whose volatility clusters (slow regimes, an exponentially smoothed fast component, an intraday season, and a
  rise after shocks), cascades (sharp moves that stay) and wicks (sharp moves that revert within minutes). A weak
  daily mean reversion keeps the level near `sample_price` over the years.
- Continuity: the level at the start of a day is chained from a fixed origin, the first sample day, where the price is
  exactly `sample_price`. Later days chain forwards, earlier days backwards; both directions revert towards
  `sample_price`, so the chain is stable either way. Open interest is chained the same way.
- Forced liquidations: when the price falls through its recent lows or drops by more than ~1.5 typical 15-minute
  moves, longs are liquidated (SELL orders at falling prices); the mirror image liquidates shorts (BUY). Their
  notional is a fraction of open interest, and open interest drops by that much (and a bit more: panic closes).
- Open interest grows while the market trends and falls on liquidation cascades.
- Taker flow leans with the minute's return and the trend; funding follows the 8-hour average of that imbalance.
- Trades: minute counts follow activity; inside a minute prices follow a Brownian bridge between the minute's end
  points, on the tick grid, buyers at the ask and sellers at the bid; sizes are lognormal and scaled so that the
  daily quote volume is realistic whatever `trades_per_day` is. Klines are aggregated from those trades, so both
  tables always agree.

This module must not import dagster.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from liq_pipeline.formats import FORMATS
from liq_pipeline.symbols import SymbolSpec, load_registry

SAMPLE_DAYS: tuple[date, ...] = tuple(date(2024, 12, 25) + timedelta(days=i) for i in range(4))
SAMPLE_SYMBOLS = ("BTCUSDT", "ETHUSDT")
DEFAULT_TRADES_PER_DAY = 20_000

KINDS = ("aggTrades", "metrics", "klines", "fundingRate", "liquidationSnapshot")
ORIGIN = SAMPLE_DAYS[0]  # the price is exactly spec.sample_price at 00:00 UTC of this day
ID_EPOCH = date(2019, 9, 1)  # trade ids count from here, so they run on across days
MINUTES = 1440
MINUTE_MS = 60_000
DAY_MS = 86_400_000
FUNDING_HOURS = (0, 8, 16)
RAW_TRADES_PER_AGG = 3  # each day has exactly 3 * trades_per_day raw trades, so trade ids are continuous too
# The archive's files have a header row only from these days on (binance-public-data issues #177 and #246).
HEADER_SINCE = {"aggTrades": date(2022, 8, 11), "klines": date(2022, 5, 1)}

AGG_TRADES_HEADER = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
KLINES_HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"
METRICS_HEADER = (
    "create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
    "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio"
)
FUNDING_HEADER = "calc_time,funding_interval_hours,last_funding_rate"
LIQUIDATION_HEADER = (
    "time,side,order_type,time_in_force,original_quantity,price,average_price,order_status,"
    "last_fill_quantity,accumulated_fill_quantity"
)

# Model constants (per-minute log units unless said otherwise).
_PRICE_REVERSION = 1 / 30  # share of the gap to sample_price closed per day
_OI_REVERSION = 1 / 7
_LIQ_SHARE = 1.5e-4  # share of open interest liquidated per minute per unit of liquidation intensity
_PANIC = 1.6  # open interest drop per liquidated unit (liquidations plus the closes they trigger)
_VOLUME_PER_OI = 1.8  # daily quote volume / open interest notional
_TRADE_SIZE_SIGMA = 1.5  # lognormal spread of trade notionals
_INTEREST = 0.0001  # funding interest component per 8 hours
_FUNDING_CAP = 0.003
_AGG_CHUNK = 1 << 18  # rows per CSV chunk when streaming aggTrades into the zip
_AGG_LEVEL = 1  # deflate level for aggTrades (by far the largest file; level 6 is 5x slower for 15 % less)
_SMALL_LEVEL = 6

_lock = threading.RLock()


# ----------------------------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class SampleDay:
    """One synthetic day in archive column names and units (timestamps are ms since the epoch)."""

    symbol: str
    day: date
    agg_trades: pd.DataFrame
    klines_1m: pd.DataFrame
    metrics: pd.DataFrame  # the day's 288 rows in order (the file adds the next day's 00:00 row, may reorder)
    funding: pd.DataFrame  # the funding rows that fall on this day
    liquidations: pd.DataFrame  # as in the file: every row twice


def archive_relpath(kind: str, symbol: str, day: date) -> str:
    """Relative path of a zip under the archive root: the formats module's layout, looked up by archive kind."""
    for fmt in FORMATS.values():
        if fmt.kind == kind:
            return fmt.relpath(symbol, day)
    raise ValueError(f"Unknown archive kind {kind!r}; expected one of {', '.join(KINDS)}")


def market_day(spec: SymbolSpec, day: date, trades_per_day: int = DEFAULT_TRADES_PER_DAY) -> SampleDay:
    """The synthetic market of one symbol for one UTC day, as DataFrames in the archive's columns and units."""
    _check_args(spec, day, trades_per_day, "ms")
    m = _market(spec)
    trades = _trades(spec, day, trades_per_day)
    kl = _klines(spec, day, trades)
    agg = pd.DataFrame(
        {
            "agg_trade_id": trades.agg_id,
            "price": np.round(trades.price_ticks * m.tick, m.price_decimals),
            "quantity": np.round(trades.qty_units * m.qty_step, m.qty_decimals),
            "first_trade_id": trades.first_id,
            "last_trade_id": trades.last_id,
            "transact_time": trades.time_ms,
            "is_buyer_maker": ~trades.taker_buy,
        }
    )
    klines = pd.DataFrame(
        {
            "open_time": kl.open_time,
            "open": np.round(kl.open * m.tick, m.price_decimals),
            "high": np.round(kl.high * m.tick, m.price_decimals),
            "low": np.round(kl.low * m.tick, m.price_decimals),
            "close": np.round(kl.close * m.tick, m.price_decimals),
            "volume": np.round(kl.volume * m.qty_step, m.qty_decimals),
            "close_time": kl.open_time + MINUTE_MS - 1,
            "quote_volume": kl.quote / 10.0**m.quote_decimals,
            "count": kl.count,
            "taker_buy_volume": np.round(kl.buy_volume * m.qty_step, m.qty_decimals),
            "taker_buy_quote_volume": kl.buy_quote / 10.0**m.quote_decimals,
            "ignore": np.zeros(MINUTES, np.int64),
        }
    )
    met = _metrics(spec, day)
    metrics = pd.DataFrame(
        {
            "create_time": met.create_time,
            "symbol": spec.symbol,
            "sum_open_interest": met.oi,
            "sum_open_interest_value": met.oi_value,
            "count_toptrader_long_short_ratio": met.top_accounts,
            "sum_toptrader_long_short_ratio": met.top_positions,
            "count_long_short_ratio": met.accounts,
            "sum_taker_long_short_vol_ratio": met.taker_ratio,
        }
    )
    calc, rate = _funding_day(spec, day)
    funding = pd.DataFrame(
        {
            "calc_time": calc,
            "funding_interval_hours": np.full(len(calc), 8, np.int64),
            "last_funding_rate": rate,
        }
    )
    liq = _liquidations(spec, day)
    liquidations = pd.DataFrame(
        {
            "time": liq.time_ms,
            "side": np.where(liq.sell, "SELL", "BUY"),
            "order_type": "LIMIT",
            "time_in_force": "IOC",
            "original_quantity": np.round(liq.qty_units * m.qty_step, m.qty_decimals),
            "price": np.round(liq.price_ticks * m.tick, m.price_decimals),
            "average_price": np.round(liq.avg_ticks * m.tick, m.price_decimals),
            "order_status": "FILLED",
            "last_fill_quantity": np.round(liq.last_units * m.qty_step, m.qty_decimals),
            "accumulated_fill_quantity": np.round(liq.qty_units * m.qty_step, m.qty_decimals),
        }
    )
    return SampleDay(spec.symbol, day, agg, klines, metrics, funding, liquidations)


def write_day(
    root: Path | str,
    spec: SymbolSpec,
    day: date,
    *,
    trades_per_day: int = DEFAULT_TRADES_PER_DAY,
    header: bool | None = None,
    ts_unit: str = "ms",
    blank_ratios: bool = False,
) -> list[Path]:
    """Write every archive file of (symbol, day) under root, in the archive's layout, each zip with its CHECKSUM.

    Files: the day's aggTrades, metrics, 1m klines and liquidationSnapshot, and the month's fundingRate (the whole
    calendar month). They have the real files' quirks: aggTrades and klines have a header row only from the day the
    archive added one (`HEADER_SINCE`; `header=True/False` overrides it); the metrics file holds 289 rows, 00:00:00
    of the day through 00:00:00 of the next day (the next file's first row), on some days out of order and with some
    rows repeated; every liquidationSnapshot row appears twice. `ts_unit="us"` writes aggTrades and klines in
    microseconds (the 2025 spot change), to exercise unit detection. `blank_ratios=True` leaves the top-trader ratio
    cells of the first hours empty, as in some early alt-coin metrics files. Metrics, fundingRate and
    liquidationSnapshot files always have a header and ms timestamps, as in the archive; so the monthly fundingRate
    file is the same whichever day or options wrote it.
    Writes are atomic and the content is deterministic, so calling it again (even from several processes at once)
    is harmless. Returns the zip paths in the order of `KINDS`.
    """
    _check_args(spec, day, trades_per_day, ts_unit)
    root = Path(root)
    scale = 1000 if ts_unit == "us" else 1
    s = spec.symbol
    trades = _trades(spec, day, trades_per_day)
    has_header = {k: day >= since if header is None else header for k, since in HEADER_SINCE.items()}
    paths = [
        _write_zip(
            root,
            "aggTrades",
            s,
            day,
            _agg_trades_chunks(spec, trades, has_header["aggTrades"], scale),
            _AGG_LEVEL,
            large=trades_per_day > 10_000_000,
        ),
        _write_zip(root, "metrics", s, day, [_metrics_csv(spec, day, blank_ratios)], _SMALL_LEVEL),
        _write_zip(
            root,
            "klines",
            s,
            day,
            [_klines_csv(spec, day, trades, has_header["klines"], scale)],
            _SMALL_LEVEL,
        ),
        _write_zip(root, "fundingRate", s, day, [_funding_csv(spec, day)], _SMALL_LEVEL),
        _write_zip(root, "liquidationSnapshot", s, day, [_liquidations_csv(spec, day)], _SMALL_LEVEL),
    ]
    return paths


def write_sample_archive(
    root: Path | str,
    symbols: Iterable[str | SymbolSpec] = SAMPLE_SYMBOLS,
    days: Iterable[date] = SAMPLE_DAYS,
    **kw,
) -> list[Path]:
    """Write the sample archive for every (symbol, day); symbols are names looked up in the registry, or specs."""
    registry = None
    out: list[Path] = []
    days = list(days)
    for symbol in symbols:
        if isinstance(symbol, SymbolSpec):
            spec = symbol
        else:
            registry = registry or load_registry()
            spec = registry.get(symbol)
        for day in days:
            out.extend(write_day(root, spec, day, **kw))
    return out


def _check_args(spec: SymbolSpec, day: date, trades_per_day: int, ts_unit: str) -> None:
    if ts_unit not in ("ms", "us"):
        raise ValueError(f"ts_unit must be 'ms' or 'us', got {ts_unit!r}")
    if not isinstance(trades_per_day, int | np.integer) or trades_per_day < 1:
        raise ValueError(f"trades_per_day must be a positive whole number, got {trades_per_day!r}")
    if isinstance(day, datetime) or not isinstance(day, date):
        raise ValueError(f"day must be a datetime.date, got {day!r}")
    if day < ID_EPOCH:
        raise ValueError(
            f"The sample market starts on {ID_EPOCH}; {spec.symbol} has no sample data for {day}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Per-symbol constants


@dataclass(frozen=True)
class _Market:
    symbol: str
    seed: int
    tick: float
    price_decimals: int
    qty_step: float
    qty_decimals: int
    quote_decimals: int
    log_price_target: float
    log_oi_target: float  # open interest in coins
    volume_usd: float  # typical daily quote volume
    sigma0: float  # typical per-minute volatility (log)
    trend: tuple[tuple[float, float, float], ...]  # (drift amplitude per minute, period in minutes, phase)
    trend_scale: float  # standard deviation of the trend drift
    vol: tuple[tuple[float, float, float], ...]  # (log-vol amplitude, period in minutes, phase)
    ratios: tuple[tuple[float, float], ...]  # (period in minutes, phase) for the three long/short ratios


@lru_cache(maxsize=64)
def _market(spec: SymbolSpec) -> _Market:
    seed = zlib.crc32(spec.symbol.encode())
    rng = np.random.default_rng([seed, 0])
    price = spec.sample_price
    # A power-of-ten tick about 1e-5 of the price (BTC 0.1, ETH 0.01, as on Binance), and at most a tenth of a bin.
    tick_exp = math.floor(math.log10(min(spec.price_bin / 10, price * 1e-5)) + 1e-9)
    qty_exp = min(0, math.floor(math.log10(100 / price) + 1e-9))
    price_decimals, qty_decimals = max(0, -tick_exp), max(0, -qty_exp)
    # About 7.5 bn USD of open interest for BTC and 3 bn for ETH; smaller coins get less, by price as a size proxy.
    oi_usd = 7.5e9 * (price / 94_000.0) ** 0.275
    periods = np.array([0.35, 0.8, 1.9, 4.3, 9.7]) * rng.uniform(0.85, 1.15, 5) * MINUTES
    amplitudes = np.array([0.002, 0.004, 0.007, 0.012, 0.02]) * rng.uniform(
        0.7, 1.3, 5
    )  # integrated, in log price
    phases = rng.uniform(0, 2 * np.pi, 5)
    drift = amplitudes * 2 * np.pi / periods
    vol_periods = np.array([0.45, 2.3, 6.1]) * rng.uniform(0.85, 1.15, 3) * MINUTES
    vol_amp = np.array([0.12, 0.18, 0.22])
    vol_phase = rng.uniform(0, 2 * np.pi, 3)
    ratio_periods = np.array([1.7, 3.1, 5.3]) * rng.uniform(0.85, 1.15, 3) * MINUTES
    ratio_phase = rng.uniform(0, 2 * np.pi, 3)
    sigma_day = float(rng.uniform(0.013, 0.017))
    return _Market(
        symbol=spec.symbol,
        seed=seed,
        tick=10.0**tick_exp,
        price_decimals=price_decimals,
        qty_step=10.0**qty_exp,
        qty_decimals=qty_decimals,
        quote_decimals=price_decimals + qty_decimals,
        log_price_target=math.log(price),
        log_oi_target=math.log(oi_usd / price),
        volume_usd=_VOLUME_PER_OI * oi_usd,
        sigma0=sigma_day / math.sqrt(MINUTES),
        trend=tuple(zip(drift.tolist(), periods.tolist(), phases.tolist())),
        trend_scale=float(np.sqrt(np.sum(drift**2) / 2)),
        vol=tuple(zip(vol_amp.tolist(), vol_periods.tolist(), vol_phase.tolist())),
        ratios=tuple(zip(ratio_periods.tolist(), ratio_phase.tolist())),
    )


def _rng(m: _Market, day: date, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([m.seed, day.toordinal(), stream, *extra])


def _abs_minutes(day: date, count: int = MINUTES, offset: float = 0.0) -> np.ndarray:
    return (day - ORIGIN).days * MINUTES + np.arange(count, dtype=np.float64) + offset


def _waves(components, t: np.ndarray) -> np.ndarray:
    out = np.zeros_like(t)
    for amp, period, phase in components:
        out += amp * np.sin(2 * np.pi * t / period + phase)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Price: a level-free "shape" per day, chained into levels from the origin


@dataclass(frozen=True)
class _Shape:
    r: np.ndarray  # 1440 minute log returns, without the day's mean-reversion drift
    wick: np.ndarray  # 1441 transient log displacement at minute boundaries (0 at both ends)
    sigma: np.ndarray  # 1440 per-minute volatility
    trend: np.ndarray  # 1440 trend drift, normalised to unit standard deviation
    total: float  # sum of r


@lru_cache(maxsize=256)
def _shape(spec: SymbolSpec, day: date) -> _Shape:
    m = _market(spec)
    rng = _rng(m, day, 1)
    t = _abs_minutes(day, offset=0.5)
    drift = _waves(m.trend, t)
    trend = drift / m.trend_scale

    # Volatility: slow regimes + smoothed fast noise + intraday season (US session) + excitation after shocks.
    warm = 360
    z = rng.standard_normal(MINUTES + warm)
    kernel = np.exp(-np.arange(warm) / 60.0)
    fast = np.convolve(z, kernel, mode="valid")[1:] * (0.35 / np.sqrt(np.sum(kernel**2)))
    hours = (np.arange(MINUTES) + 0.5) / 60
    us_open = np.exp(-0.5 * ((hours - 14.5) / 2.0) ** 2)
    asia_open = np.exp(-0.5 * ((hours - 1.0) / 1.5) ** 2)
    season = 0.3 * us_open + 0.1 * asia_open
    slow = _waves(m.vol, t)
    # The constant keeps the mean volatility near sigma0; falling markets are livelier.
    log_vol = slow + fast + season - (0.35**2 / 2 + 0.11) - 0.1 * np.tanh(trend)
    sigma = m.sigma0 * np.exp(log_vol)

    eps = np.clip(rng.standard_t(4, MINUTES) / np.sqrt(2.0), -8, 8)
    r = drift.copy()
    excite = np.zeros(MINUTES)
    idx = np.arange(MINUTES)

    # Cascades: a sharp move over a few minutes that stays, more often with the trend.
    for _ in range(rng.poisson(0.5)):
        start = int(rng.integers(0, MINUTES - 10))
        length = int(rng.integers(3, 9))
        size = float(rng.uniform(0.006, 0.018))
        with_trend = np.sign(trend[start]) or 1.0
        sign = with_trend if rng.random() < 0.65 else -with_trend
        r[start : start + length] += sign * size / length
        excite += np.where(idx >= start, np.exp(-(idx - start) / 45.0), 0.0)

    # Wicks: a sharp move that reverts within minutes; it peaks on a minute boundary and ends inside the day.
    wick = np.zeros(MINUTES + 1)
    bounds = np.arange(MINUTES + 1)
    for _ in range(rng.poisson(1.2)):
        peak_after = int(rng.integers(1, 3))
        tau = float(rng.uniform(2.0, 10.0))
        span = peak_after + int(np.ceil(8 * tau)) + 1
        start = int(rng.integers(0, MINUTES - span))
        size = float(rng.uniform(0.005, 0.018)) * (-1.0 if rng.random() < 0.55 else 1.0)
        k = bounds - start
        rise = np.clip(k / peak_after, 0.0, 1.0)
        decay = np.where(k > peak_after, np.exp(-(k - peak_after) / tau), 1.0)
        shape = np.where((k >= 0) & (k < span), rise * decay, 0.0)
        wick += size * shape
        excite += np.where(idx >= start, 0.6 * np.exp(-(idx - start) / 30.0), 0.0)

    sigma = sigma * (1.0 + 0.8 * excite)
    r += sigma * eps
    return _Shape(r=r, wick=wick, sigma=sigma, trend=trend, total=float(r.sum()))


_PRICE_LEVELS: dict[tuple, dict[date, float]] = {}
_OI_LEVELS: dict[tuple, dict[date, float]] = {}


def _chain(levels: dict[date, float], day: date, target: float, k: float, total) -> float:
    """The level at the start of `day`, chained day by day from the nearest known day.

    Forwards: end = target + (1 - k) (start - target) + total(d); backwards, the same AR(1) read the other way:
    start = target + (1 - k) (end - target) - total(d). Both revert towards the target, so the chain stays bounded
    (inverting the forward rule instead would blow up by 1 / (1 - k) a day).
    """
    if day in levels:
        return levels[day]
    if day > ORIGIN:
        d = max(x for x in levels if x < day)
        while d < day:
            start = levels[d]
            levels[d + timedelta(days=1)] = start + total(d) - k * (start - target)
            d += timedelta(days=1)
    else:
        d = min(x for x in levels if x > day)
        while d > day:
            end = levels[d]
            d -= timedelta(days=1)
            levels[d] = target + (1 - k) * (end - target) - total(d)
    return levels[day]


def _price_level(spec: SymbolSpec, day: date) -> float:
    m = _market(spec)
    with _lock:
        levels = _PRICE_LEVELS.setdefault((spec, "price"), {ORIGIN: m.log_price_target})
        return _chain(levels, day, m.log_price_target, _PRICE_REVERSION, lambda d: _shape(spec, d).total)


@dataclass(frozen=True)
class _Path:
    log: np.ndarray  # 1441 log prices at minute boundaries, wicks included
    start: float
    end: float


@lru_cache(maxsize=64)
def _path(spec: SymbolSpec, day: date) -> _Path:
    sh = _shape(spec, day)
    start = _price_level(spec, day)
    end = _price_level(spec, day + timedelta(days=1))
    reversion = (end - start - sh.total) / MINUTES
    log = np.empty(MINUTES + 1)
    log[0] = start
    np.cumsum(sh.r + reversion, out=log[1:])
    log[1:] += start
    log[-1] = end  # exact, whatever the rounding of the cumulative sum
    return _Path(log=log + sh.wick, start=start, end=end)


# ----------------------------------------------------------------------------------------------------------------
# Flow: liquidation pressure, taker imbalance, activity and open-interest changes per minute


@dataclass(frozen=True)
class _Flow:
    boundary: np.ndarray  # 240 boundaries of the previous day + 1441 of this day (log prices)
    long_liq: np.ndarray  # 1440 liquidation intensity of longs (price falling through levels)
    short_liq: np.ndarray
    buy_prob: np.ndarray  # probability that a trade's taker is the buyer
    activity: np.ndarray  # relative trading activity (mean about 1)
    oi_step: np.ndarray  # 1440 level-free log open-interest changes
    oi_total: float


_HIST = 240


@lru_cache(maxsize=128)
def _flow(spec: SymbolSpec, day: date) -> _Flow:
    m = _market(spec)
    sh = _shape(spec, day)
    prev = _path(spec, day - timedelta(days=1)).log
    cur = _path(spec, day).log
    b = np.concatenate([prev[-_HIST - 1 : -1], cur])
    ends = b[_HIST + 1 :]  # boundary at the end of each minute of the day
    s15 = m.sigma0 * np.sqrt(15) * 1.3
    win16 = np.lib.stride_tricks.sliding_window_view(b, 17)[_HIST - 16 : _HIST - 16 + MINUTES]
    win240 = np.lib.stride_tricks.sliding_window_view(b, _HIST + 1)[
        :MINUTES
    ]  # the 4 h before each minute's end
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
    long_liq = relu((win16.max(1) - ends) / s15 - 2.0) + 0.3 * relu((win240.min(1) - ends) / s15)
    short_liq = relu((ends - win16.min(1)) / s15 - 2.0) + 0.3 * relu((ends - win240.max(1)) / s15)

    ret = np.diff(b[_HIST:])
    buy_prob = np.clip(0.5 + 0.2 * np.tanh(0.7 * ret / sh.sigma) + 0.08 * np.tanh(sh.trend), 0.05, 0.95)
    activity = (
        (sh.sigma / m.sigma0) ** 1.5 * (1 + 0.4 * np.abs(ret) / sh.sigma) * (1 + 0.5 * (long_liq + short_liq))
    )

    ret60 = ends - b[_HIST + 1 - 60 : _HIST + 1 - 60 + MINUTES]
    trendiness = np.clip(np.abs(ret60) / (m.sigma0 * np.sqrt(60)), 0, 4)
    noise = _rng(m, day, 2).normal(0.0, 1.0e-4, MINUTES)
    oi_step = 2.5e-5 * (trendiness - 0.1) + noise - _PANIC * _LIQ_SHARE * (long_liq + short_liq)
    return _Flow(b, long_liq, short_liq, buy_prob, activity, oi_step, float(oi_step.sum()))


def _oi_level(spec: SymbolSpec, day: date) -> float:
    m = _market(spec)
    with _lock:
        levels = _OI_LEVELS.setdefault((spec, "oi"), {ORIGIN: m.log_oi_target})
        return _chain(levels, day, m.log_oi_target, _OI_REVERSION, lambda d: _flow(spec, d).oi_total)


@lru_cache(maxsize=64)
def _oi_path(spec: SymbolSpec, day: date) -> np.ndarray:
    """1441 log open interest (coins) at minute boundaries."""
    fl = _flow(spec, day)
    start, end = _oi_level(spec, day), _oi_level(spec, day + timedelta(days=1))
    out = np.empty(MINUTES + 1)
    out[0] = start
    out[1:] = start + np.cumsum(fl.oi_step + (end - start - fl.oi_total) / MINUTES)
    out[-1] = end
    return out


# ----------------------------------------------------------------------------------------------------------------
# Trades and klines


@dataclass(frozen=True)
class _Trades:
    agg_id: np.ndarray
    price_ticks: np.ndarray
    qty_units: np.ndarray
    first_id: np.ndarray
    last_id: np.ndarray
    time_ms: np.ndarray
    taker_buy: np.ndarray
    minute: np.ndarray
    raw: np.ndarray  # raw trades per aggregate trade


def _trades(spec: SymbolSpec, day: date, n: int) -> _Trades:
    m = _market(spec)
    fl = _flow(spec, day)
    sh = _shape(spec, day)
    log = _path(spec, day).log
    rng = _rng(m, day, 4, int(n))

    counts = rng.multinomial(n, fl.activity / fl.activity.sum())
    in_day = np.sort(
        np.repeat(np.arange(MINUTES, dtype=np.int64) * MINUTE_MS, counts) + rng.integers(0, MINUTE_MS, n)
    )
    minute = in_day // MINUTE_MS
    frac = (in_day - minute * MINUTE_MS + 0.5) / MINUTE_MS

    # Brownian bridge inside each minute, pinned at the minute's end points.
    nonempty = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[nonempty])[:-1]])
    dfrac = np.diff(frac, prepend=0.0)
    dfrac[starts] = frac[starts]
    dw = np.sqrt(np.maximum(dfrac, 0.0)) * rng.standard_normal(n) * (0.8 * sh.sigma[minute])
    cs = np.cumsum(dw)
    offset = np.repeat(cs[starts] - dw[starts], counts[nonempty])
    w = cs - offset
    ends = np.concatenate([starts[1:], [n]]) - 1
    bridge = w - frac * np.repeat(w[ends], counts[nonempty])
    mid = np.exp(log[minute] + (log[minute + 1] - log[minute]) * frac + bridge) / m.tick

    taker_buy = rng.random(n) < fl.buy_prob[minute]
    price_ticks = np.where(taker_buy, np.ceil(mid), np.floor(mid)).astype(np.int64)
    price_ticks = np.maximum(price_ticks, 1)

    act = fl.activity[minute] / fl.activity.mean()
    mu = math.log(m.volume_usd / n) - _TRADE_SIZE_SIGMA**2 / 2
    notional = np.exp(rng.normal(mu, _TRADE_SIZE_SIGMA, n)) * act**0.3
    qty_units = np.maximum(np.rint(notional / (price_ticks * m.tick) / m.qty_step), 1).astype(np.int64)

    weights = np.sqrt(qty_units.astype(np.float64))
    raw = 1 + rng.multinomial((RAW_TRADES_PER_AGG - 1) * n, weights / weights.sum())
    day_index = (day - ID_EPOCH).days
    agg_id = day_index * n + 1 + np.arange(n, dtype=np.int64)
    last_id = day_index * RAW_TRADES_PER_AGG * n + np.cumsum(raw)
    first_id = last_id - raw + 1
    time_ms = _day_ms(day) + in_day
    return _Trades(agg_id, price_ticks, qty_units, first_id, last_id, time_ms, taker_buy, minute, raw)


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000


@dataclass(frozen=True)
class _Klines:
    open_time: np.ndarray
    open: np.ndarray  # ticks
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray  # qty units
    quote: np.ndarray  # price ticks * qty units (exact integers, scale 10**quote_decimals)
    count: np.ndarray  # raw trades
    buy_volume: np.ndarray
    buy_quote: np.ndarray


def _klines(spec: SymbolSpec, day: date, tr: _Trades) -> _Klines:
    """1m klines aggregated from the day's trades; a minute without trades repeats the last close, volume 0."""
    m = _market(spec)
    counts = np.bincount(tr.minute, minlength=MINUTES)
    nonempty = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[nonempty])[:-1]]).astype(np.int64)
    ends = np.concatenate([starts[1:], [len(tr.minute)]]) - 1

    def per_minute(values: np.ndarray, reducer=np.add) -> np.ndarray:
        out = np.zeros(MINUTES, np.int64)
        out[nonempty] = reducer.reduceat(values, starts)
        return out

    quote = tr.price_ticks * tr.qty_units
    buy = tr.taker_buy.astype(np.int64)
    close = np.zeros(MINUTES, np.int64)
    close[nonempty] = tr.price_ticks[ends]
    # Carry the last close into empty minutes; before the first trade, use the day's opening price.
    has = counts > 0
    last = np.maximum.accumulate(np.where(has, np.arange(MINUTES), -1))
    opening = int(round(math.exp(_path(spec, day).start) / m.tick))
    carried = np.where(last >= 0, close[np.maximum(last, 0)], opening)
    open_ = carried.copy()
    open_[nonempty] = tr.price_ticks[starts]
    high, low = carried.copy(), carried.copy()
    high[nonempty] = np.maximum.reduceat(tr.price_ticks, starts)
    low[nonempty] = np.minimum.reduceat(tr.price_ticks, starts)
    return _Klines(
        open_time=_day_ms(day) + np.arange(MINUTES, dtype=np.int64) * MINUTE_MS,
        open=open_,
        high=high,
        low=low,
        close=carried,
        volume=per_minute(tr.qty_units),
        quote=per_minute(quote),
        count=per_minute(tr.raw),
        buy_volume=per_minute(tr.qty_units * buy),
        buy_quote=per_minute(quote * buy),
    )


# ----------------------------------------------------------------------------------------------------------------
# Metrics (open interest), funding, liquidations


@dataclass(frozen=True)
class _Metrics:
    create_time: list[str]
    oi: np.ndarray
    oi_value: np.ndarray
    top_accounts: np.ndarray
    top_positions: np.ndarray
    accounts: np.ndarray
    taker_ratio: np.ndarray


def _metrics(spec: SymbolSpec, day: date) -> _Metrics:
    m = _market(spec)
    fl = _flow(spec, day)
    prev = _flow(spec, day - timedelta(days=1))
    marks = np.arange(0, MINUTES, 5)
    oi = np.round(np.exp(_oi_path(spec, day)[marks]), m.qty_decimals)
    price = np.exp(fl.boundary[_HIST + marks])
    ret4h = fl.boundary[_HIST + marks] - fl.boundary[marks]
    t = _abs_minutes(day)[marks]
    (p1, f1), (p2, f2), (p3, f3) = m.ratios
    wave = lambda p, f: np.sin(2 * np.pi * t / p + f)  # noqa: E731
    accounts = np.clip(np.exp(0.55 + 0.25 * wave(p1, f1) - 3.0 * ret4h), 0.3, 5.0)
    top_accounts = np.clip(np.exp(0.40 + 0.20 * wave(p2, f2) - 2.0 * ret4h), 0.3, 5.0)
    top_positions = np.clip(np.exp(0.15 + 0.15 * wave(p3, f3) + 1.5 * ret4h), 0.3, 5.0)
    # Taker buy/sell volume over the 5 minutes before each mark, from the same flow the trades are drawn from.
    bp = np.concatenate([prev.buy_prob[-5:], fl.buy_prob[:-5]])
    act = np.concatenate([prev.activity[-5:], fl.activity[:-5]])
    buy = np.add.reduceat(bp * act, marks)
    sell = np.add.reduceat((1 - bp) * act, marks)
    stamp = day.isoformat()
    return _Metrics(
        create_time=[f"{stamp} {k // 60:02d}:{k % 60:02d}:00" for k in marks.tolist()],
        oi=oi,
        oi_value=np.round(oi * price, 8),
        top_accounts=np.round(top_accounts, 4),
        top_positions=np.round(top_positions, 4),
        accounts=np.round(accounts, 4),
        taker_ratio=np.round(buy / sell, 4),
    )


def _funding_day(spec: SymbolSpec, day: date) -> tuple[np.ndarray, np.ndarray]:
    """Funding at 00:00, 08:00 and 16:00 UTC, from the imbalance and trend of the 8 hours before."""
    m = _market(spec)
    prev, cur = _flow(spec, day - timedelta(days=1)), _flow(spec, day)
    bp = np.concatenate([prev.buy_prob, cur.buy_prob])
    trend = np.concatenate([_shape(spec, day - timedelta(days=1)).trend, _shape(spec, day).trend])
    noise = _rng(m, day, 3).normal(0.0, 4e-5, len(FUNDING_HOURS))
    rates, times = [], []
    for i, hour in enumerate(FUNDING_HOURS):
        window = slice(MINUTES + hour * 60 - 480, MINUTES + hour * 60)
        premium = (
            0.0002
            + 0.008 * float(np.mean(bp[window] - 0.5))
            + 0.0003 * float(np.mean(trend[window]))
            + noise[i]
        )
        # Binance: funding = premium + clamp(interest - premium, +-0.05 %), interest 0.01 % per 8 h; so a
        # premium within (-0.04 %, 0.06 %) pays exactly 0.01 %, as most real funding periods do.
        rate = premium + min(max(_INTEREST - premium, -0.0005), 0.0005)
        rates.append(round(min(max(rate, -_FUNDING_CAP), _FUNDING_CAP), 8))
        times.append(_day_ms(day) + hour * 3_600_000)
    return np.array(times, np.int64), np.array(rates)


@dataclass(frozen=True)
class _Liquidations:
    time_ms: np.ndarray
    sell: np.ndarray  # True: SELL order, a long liquidated
    qty_units: np.ndarray
    last_units: np.ndarray
    price_ticks: np.ndarray  # the order's limit (bankruptcy) price
    avg_ticks: np.ndarray  # where it filled


def _liquidations(spec: SymbolSpec, day: date) -> _Liquidations:
    m = _market(spec)
    fl = _flow(spec, day)
    log = _path(spec, day).log
    rng = _rng(m, day, 5)
    oi_usd = math.exp(_oi_level(spec, day) + _path(spec, day).start)
    typical = oi_usd * 2e-6

    minutes, sells, notionals = [], [], []
    for is_sell, intensity in ((True, fl.long_liq), (False, fl.short_liq)):
        hot = np.flatnonzero(intensity > 0.01)
        total = _LIQ_SHARE * intensity[hot] * oi_usd
        k = np.clip(1 + rng.poisson(total / typical / 4), 1, 150)
        idx = np.repeat(hot, k)
        w = rng.lognormal(0.0, 1.0, len(idx))
        group = np.repeat(np.arange(len(hot)), k)
        share = w / np.bincount(group, weights=w, minlength=len(hot))[group]
        minutes.append(idx)
        sells.append(np.full(len(idx), is_sell))
        notionals.append(np.repeat(total, k) * share)
    # A trickle of small liquidations against each minute's move, as on any real day.
    ret = np.diff(log)
    bg = rng.poisson(0.03 * fl.activity)
    idx = np.repeat(np.arange(MINUTES), bg)
    minutes.append(idx)
    sells.append(ret[idx] < 0)
    notionals.append(typical * rng.lognormal(-0.7, 1.0, len(idx)))

    minute = np.concatenate(minutes)
    sell = np.concatenate(sells)
    notional = np.concatenate(notionals)
    in_day = minute * MINUTE_MS + rng.integers(0, MINUTE_MS, len(minute))
    order = np.argsort(in_day, kind="stable")
    in_day, sell, notional, minute = in_day[order], sell[order], notional[order], minute[order]
    frac = (in_day - minute * MINUTE_MS) / MINUTE_MS
    mid = np.exp(log[minute] + (log[minute + 1] - log[minute]) * frac)
    sign = np.where(sell, -1.0, 1.0)  # a SELL fills below the market, a BUY above
    avg = mid * (1 + sign * np.abs(rng.normal(0.0, 3e-4, len(mid))))
    limit = avg * (1 + sign * rng.uniform(0.002, 0.01, len(mid)))
    avg_ticks = np.maximum(np.rint(avg / m.tick), 1).astype(np.int64)
    price_ticks = np.maximum(np.where(sell, np.floor(limit / m.tick), np.ceil(limit / m.tick)), 1).astype(
        np.int64
    )
    qty_units = np.maximum(np.rint(notional / avg / m.qty_step), 1).astype(np.int64)
    partial = rng.random(len(mid)) < 0.2
    last_units = np.where(
        partial, np.maximum(1, (qty_units * rng.uniform(0.1, 1.0, len(mid))).astype(np.int64)), qty_units
    )

    # The archive writes every row twice (binance-public-data issues #259 and #337).
    take = np.repeat(np.arange(len(mid)), 2)
    return _Liquidations(
        time_ms=_day_ms(day) + in_day[take],
        sell=sell[take],
        qty_units=qty_units[take],
        last_units=last_units[take],
        price_ticks=price_ticks[take],
        avg_ticks=avg_ticks[take],
    )


# ----------------------------------------------------------------------------------------------------------------
# CSV text


def _fmt(units: np.ndarray, decimals: int) -> list[str]:
    """Exact fixed-point text of integers scaled by 10**-decimals (e.g. ticks -> '94123.10')."""
    if decimals == 0:
        return [str(v) for v in units.tolist()]
    scale = 10**decimals
    out = []
    for v in units.tolist():
        sign = "-" if v < 0 else ""
        q, r = divmod(abs(v), scale)
        out.append(f"{sign}{q}.{r:0{decimals}d}")
    return out


def _decimal_array(units: np.ndarray, decimals: int) -> pa.Array:
    """Integers as an Arrow decimal128 with the given scale, so the CSV writer prints exact fixed-point text."""
    units = np.ascontiguousarray(units, dtype=np.int64)
    buf = np.empty(2 * len(units), np.int64)
    buf[0::2] = units
    buf[1::2] = units >> 63  # sign extension into the high word
    return pa.Array.from_buffers(pa.decimal128(38, decimals), len(units), [None, pa.py_buffer(buf)])


def _agg_trades_chunks(spec: SymbolSpec, tr: _Trades, header: bool, scale: int) -> Iterator[bytes]:
    m = _market(spec)
    table = pa.table(
        {
            "agg_trade_id": tr.agg_id,
            "price": _decimal_array(tr.price_ticks, m.price_decimals),
            "quantity": _decimal_array(tr.qty_units, m.qty_decimals),
            "first_trade_id": tr.first_id,
            "last_trade_id": tr.last_id,
            "transact_time": tr.time_ms * scale,
            "is_buyer_maker": ~tr.taker_buy,
        }
    )
    if header:
        yield (AGG_TRADES_HEADER + "\n").encode()
    options = pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 16)

    def render(offset: int) -> bytes:
        sink = io.BytesIO()
        pacsv.write_csv(table.slice(offset, _AGG_CHUNK), sink, options)
        return sink.getvalue()

    # Render the next chunk while the current one is being compressed (both release the GIL).
    offsets = range(0, table.num_rows, _AGG_CHUNK)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for offset in offsets:
            future = pool.submit(render, offset)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            yield pending.result()


def _lines(header: str | None, columns: list[list[str]]) -> bytes:
    rows = [",".join(cells) for cells in zip(*columns)]
    if header:
        rows.insert(0, header)
    return ("\n".join(rows) + "\n").encode() if rows else b""


def _ints(values: np.ndarray, scale: int = 1) -> list[str]:
    return [str(v) for v in (np.asarray(values, np.int64) * scale).tolist()]


def _klines_csv(spec: SymbolSpec, day: date, tr: _Trades, header: bool, scale: int) -> bytes:
    m = _market(spec)
    kl = _klines(spec, day, tr)
    p, q = m.price_decimals, m.qty_decimals
    return _lines(
        KLINES_HEADER if header else None,
        [
            _ints(kl.open_time, scale),
            _fmt(kl.open, p),
            _fmt(kl.high, p),
            _fmt(kl.low, p),
            _fmt(kl.close, p),
            _fmt(kl.volume, q),
            _ints(kl.open_time + MINUTE_MS - 1, scale),
            _fmt(kl.quote, m.quote_decimals),
            _ints(kl.count),
            _fmt(kl.buy_volume, q),
            _fmt(kl.buy_quote, m.quote_decimals),
            ["0"] * MINUTES,
        ],
    )


def _metrics_rows(spec: SymbolSpec, day: date, metrics=None) -> list[list[str]]:
    """The day's 288 metrics rows in order, as CSV cells (`metrics(spec, day)` -> `_Metrics`, default the sample's)."""
    m = _market(spec)
    met = (metrics or _metrics)(spec, day)
    n = len(met.create_time)
    columns = [
        met.create_time,
        [spec.symbol] * n,
        _fmt(np.rint(met.oi * 10**m.qty_decimals).astype(np.int64), m.qty_decimals),
        [f"{v:.8f}" for v in met.oi_value.tolist()],
        [f"{v:.4f}" for v in met.top_accounts.tolist()],
        [f"{v:.4f}" for v in met.top_positions.tolist()],
        [f"{v:.4f}" for v in met.accounts.tolist()],
        [f"{v:.4f}" for v in met.taker_ratio.tolist()],
    ]
    return [list(row) for row in zip(*columns)]


def _metrics_csv(spec: SymbolSpec, day: date, blank_ratios: bool = False, metrics=None) -> bytes:
    """The metrics file as the archive writes it: the day's rows and the next day's 00:00:00 row (the first row of
    the next file, so the series continues), shuffled on some days and with a few rows repeated on some days."""
    rows = _metrics_rows(spec, day, metrics) + _metrics_rows(spec, day + timedelta(days=1), metrics)[:1]
    if blank_ratios:  # the two top-trader ratios, missing for the first three hours
        for row in rows[:36]:
            row[4] = row[5] = ""
    rng = _rng(_market(spec), day, 6)
    order = np.arange(len(rows))
    if rng.random() < 0.5:
        order = rng.permutation(order)
    if rng.random() < 0.5:
        repeated = rng.choice(len(rows), size=int(rng.integers(1, 4)), replace=False)
        order = np.insert(order, rng.integers(0, len(order) + 1, len(repeated)), repeated)
    return _lines(METRICS_HEADER, [list(col) for col in zip(*(rows[i] for i in order.tolist()))])


def _funding_csv(spec: SymbolSpec, day: date) -> bytes:
    """The monthly fundingRate file: every 8 hours of the calendar month of `day`."""
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    times, rates = [], []
    d = first
    while d < following:
        t, r = _funding_day(spec, d)
        times.append(t)
        rates.append(r)
        d += timedelta(days=1)
    t, r = np.concatenate(times), np.concatenate(rates)
    return _lines(
        FUNDING_HEADER,
        [_ints(t), ["8"] * len(t), [f"{v:.8f}" for v in r.tolist()]],
    )


def _liquidations_csv(spec: SymbolSpec, day: date, liq: _Liquidations | None = None) -> bytes:
    m = _market(spec)
    liq = _liquidations(spec, day) if liq is None else liq
    n = len(liq.time_ms)
    qty = _fmt(liq.qty_units, m.qty_decimals)
    return _lines(
        LIQUIDATION_HEADER,
        [
            _ints(liq.time_ms),
            ["SELL" if s else "BUY" for s in liq.sell.tolist()],
            ["LIMIT"] * n,
            ["IOC"] * n,
            qty,
            _fmt(liq.price_ticks, m.price_decimals),
            _fmt(liq.avg_ticks, m.price_decimals),
            ["FILLED"] * n,
            _fmt(liq.last_units, m.qty_decimals),
            qty,
        ],
    )


# ----------------------------------------------------------------------------------------------------------------
# Zips


def _write_zip(
    root: Path, kind: str, symbol: str, day: date, chunks: Iterable[bytes], level: int, *, large: bool = False
) -> Path:
    """Write `<name>.zip` holding `<name>.csv` and its `<name>.zip.CHECKSUM`, each atomically (temp + rename).

    The zip is deterministic: fixed entry time (the file's first day), Unix attributes, fixed compression level.
    The CHECKSUM goes first, so a reader that sees the new zip also sees its checksum.
    """
    target = root / archive_relpath(kind, symbol, day)
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = target.name[: -len(".zip")]
    stamp_day = day.replace(day=1) if kind == "fundingRate" else day
    info = zipfile.ZipInfo(f"{stem}.csv", date_time=(stamp_day.year, stamp_day.month, stamp_day.day, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    for attr in ("compress_level", "_compresslevel"):  # Python >= 3.13 spelling, then the older one
        if hasattr(info, attr):
            setattr(info, attr, level)
            break

    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    sha = hashlib.sha256()
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            zipfile.ZipFile(raw, "w") as zf,
            zf.open(info, "w", force_zip64=large) as out,
        ):
            for chunk in chunks:
                out.write(chunk)
        with open(tmp, "rb") as fh:
            while block := fh.read(1 << 22):
                sha.update(block)
        checksum = target.with_name(target.name + ".CHECKSUM")
        _atomic_write(checksum, f"{sha.hexdigest()}  {target.name}\n".encode())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
