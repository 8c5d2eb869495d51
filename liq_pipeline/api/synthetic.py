"""A synthetic lake for the API's tests and benchmark: heatmap, levels and klines partitions in the lake's exact
schemas, without running the model. Deterministic for a given seed. Not market data and not the model's output.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from liq_pipeline.lake import Lake

STEP = timedelta(minutes=5)
STEPS_PER_DAY = 288
SYNTHETIC_CONFIG = {"source": "synthetic-test-lake", "step_minutes": 5, "lookback_days": 14}
_LEVERAGES = np.array([10.0, 25.0, 50.0, 100.0])
_WEIGHTS = np.array([0.35, 0.3, 0.2, 0.15])


def _minute_path(rng: np.random.Generator, price: float, minutes: int, vol: float) -> np.ndarray:
    return price * np.exp(np.cumsum(rng.normal(0.0, vol, minutes)))


def synthetic_day(
    symbol: str,
    day: date,
    start_price: float,
    price_bin: float,
    n_bins: int = 300,
    seed: int = 0,
    vol: float = 0.0006,
) -> tuple[dict[str, pa.Table], float]:
    """One day of `liquidation_heatmap`, `liquidation_levels` and `klines` for a symbol, and the closing price.

    The heatmap holds, after each 5-minute step, long mass below the close and short mass above it, in bumps at
    the 10/25/50/100x liquidation distances, on `n_bins` bins of the symbol's grid around the day's opening price.
    """
    rng = np.random.default_rng([seed, day.toordinal(), sum(map(ord, symbol))])
    closes = _minute_path(rng, start_price, 1440, vol)
    opens = np.concatenate([[start_price], closes[:-1]])
    wiggle = np.abs(rng.normal(0.0, vol / 2, 1440))
    highs = np.maximum(opens, closes) * (1 + wiggle)
    lows = np.minimum(opens, closes) * (1 - wiggle)
    day_start = datetime(day.year, day.month, day.day)
    open_times = np.array([day_start + timedelta(minutes=i) for i in range(1440)], dtype="datetime64[us]")
    volume = rng.uniform(50, 150, 1440)
    klines = pa.table(
        {
            "symbol": pa.array([symbol] * 1440, pa.string()),
            "date": pa.array([day] * 1440, pa.date32()),
            "open_time": pa.array(open_times, pa.timestamp("us")),
            "open": opens,
            "high": highs,
            "low": lows,
            "close": closes,
            "volume": volume,
            "quote_volume": volume * closes,
            "trade_count": pa.array(rng.integers(100, 1000, 1440), pa.int64()),
            "taker_buy_volume": volume / 2,
            "taker_buy_quote_volume": volume * closes / 2,
        }
    )

    centre = round(start_price / price_bin)
    grid = (centre + np.arange(n_bins) - n_bins // 2) * price_bin  # bin centres on the registry grid
    step_close = closes[4::5]  # the close of each 5-minute step
    long_lp = step_close[:, None] * (1 - 1 / _LEVERAGES)[None, :]  # (steps, tiers)
    short_lp = step_close[:, None] * (1 + 1 / _LEVERAGES)[None, :]
    width = 0.004 * start_price
    scale = 5e6 * (1 + 0.3 * np.sin(np.arange(STEPS_PER_DAY) / 40.0))[:, None]
    long_usd = (_WEIGHTS * np.exp(-(((grid[None, :, None] - long_lp[:, None, :]) / width) ** 2))).sum(
        -1
    ) * scale
    short_usd = (_WEIGHTS * np.exp(-(((grid[None, :, None] - short_lp[:, None, :]) / width) ** 2))).sum(
        -1
    ) * scale
    long_usd = np.where(grid[None, :] < step_close[:, None], long_usd + 1e3, 0.0)
    short_usd = np.where(grid[None, :] > step_close[:, None], short_usd + 1e3, 0.0)
    keep = (long_usd + short_usd) > 0
    step_idx, bin_idx = np.nonzero(keep)
    ts = np.array([day_start + STEP * (i + 1) for i in range(STEPS_PER_DAY)], dtype="datetime64[us]")
    n = len(step_idx)
    heat_schema = pa.schema(
        [
            ("symbol", pa.string()),
            ("date", pa.date32()),
            ("ts", pa.timestamp("us")),
            ("price", pa.float64()),
            ("long_usd", pa.float64()),
            ("short_usd", pa.float64()),
        ],
        metadata={b"liq_model_config": json.dumps(SYNTHETIC_CONFIG).encode()},
    )
    heatmap = pa.table(
        [
            pa.array([symbol] * n, pa.string()),
            pa.array([day] * n, pa.date32()),
            pa.array(ts[step_idx], pa.timestamp("us")),
            pa.array(grid[bin_idx]),
            pa.array(long_usd[keep]),
            pa.array(short_usd[keep]),
        ],
        schema=heat_schema,
    )

    rows = []
    for hour in range(1, 25):
        k = hour * 12 - 1
        c = step_close[k]
        for side, mass in (("long", long_usd[k]), ("short", short_usd[k])):
            order = np.argsort(-mass)[:10]
            for rank, j in enumerate(order, start=1):
                rows.append(
                    (
                        ts[k],
                        side,
                        grid[j] - price_bin / 2,
                        grid[j] + price_bin / 2,
                        mass[j],
                        (grid[j] / c - 1) * 100,
                        rank,
                    )
                )
    cols = list(zip(*rows))
    levels = pa.table(
        {
            "symbol": pa.array([symbol] * len(rows), pa.string()),
            "date": pa.array([day] * len(rows), pa.date32()),
            "ts": pa.array(np.array(cols[0], dtype="datetime64[us]"), pa.timestamp("us")),
            "side": pa.array(cols[1], pa.string()),
            "price_low": pa.array(cols[2], pa.float64()),
            "price_high": pa.array(cols[3], pa.float64()),
            "notional_usd": pa.array(cols[4], pa.float64()),
            "distance_pct": pa.array(cols[5], pa.float64()),
            "rank": pa.array(cols[6], pa.int32()),
        }
    )
    return {"liquidation_heatmap": heatmap, "liquidation_levels": levels, "klines": klines}, float(closes[-1])


def write_synthetic_lake(
    data_dir: Path | str,
    symbols: dict[str, tuple[float, float]],
    days: list[date],
    n_bins: int = 300,
    seed: int = 0,
) -> Lake:
    """Write `days` of synthetic partitions per symbol: `symbols` maps a symbol to (start price, price bin)."""
    lake = Lake.at(data_dir)
    for symbol, (price, price_bin) in symbols.items():
        for day in sorted(days):
            tables, price = synthetic_day(symbol, day, price, price_bin, n_bins=n_bins, seed=seed)
            for table, data in tables.items():
                lake.write(table, symbol, day, data)
    return lake
