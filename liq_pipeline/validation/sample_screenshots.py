"""Coinglass-style screenshots for the demo, named the way N8N names them.

We have no real Coinglass captures offline, so the demo's "Coinglass" is a *different* liquidation model drawn in
Coinglass's layout: our engine with a peer's assumptions (a leverage mix tilted to 25–100x and a larger position
size), plus the candles of the day. Scores against it measure how far two reasonable models agree, not accuracy
against Coinglass. Real captures dropped into LIQ_SCREENSHOT_DIR go through exactly the same path.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from liq_pipeline import model_io
from liq_pipeline.lake import Lake
from liq_pipeline.model import ModelConfig
from liq_pipeline.symbols import load_registry
from liq_pipeline.validation.coinglass_render import render_screenshot

PEER = {"leverage_weights": (0.05, 0.15, 0.30, 0.30, 0.20), "position_usd": 40_000.0}


def write_sample_screenshot(
    lake: Lake, folder: Path, symbol: str, at: datetime, params: dict | None = None
) -> Path:
    """Render the 24 hours before `at` (UTC, on a 5-minute boundary) as `coinglass_{sym}_m1_24hour_...png`.
    `params`: the drawn model's parameters (default PEER; tests draw hidden ones to calibrate against)."""
    spec = load_registry().get(symbol)
    cfg = ModelConfig.for_symbol(spec, **(PEER if params is None else params))
    day = at.date() if at.time() != datetime.min.time() else (at - timedelta(days=1)).date()
    slices = [
        lake.slice(t, symbol, [day - timedelta(days=i) for i in range(cfg.lookback_days - 1, -1, -1)])
        for t in ("klines", "open_interest", "agg_trades")
    ]
    loaded = model_io.load_inputs(day, cfg, *slices)
    result = model_io.run_model(
        spec, cfg, loaded.inputs, keep_from=np.datetime64(at.replace(tzinfo=None) - timedelta(hours=24), "ns")
    )
    keep = result.ts_end <= np.datetime64(at.replace(tzinfo=None), "ns")
    intensity = result.intensity()[keep]
    ts = result.ts_end[keep]
    closes = result.close[keep]
    live = intensity.max(axis=0) > 0
    lo, hi = np.flatnonzero(live)[[0, -1]] if live.any() else (0, result.prices.size - 1)
    centre = float(closes[-1])
    # Coinglass shows about ±8 % around the price; keep the bins there.
    window = (result.prices >= centre * 0.92) & (result.prices <= centre * 1.08)
    window &= (np.arange(result.prices.size) >= lo) & (np.arange(result.prices.size) <= hi)
    opens = np.r_[closes[0], closes[:-1]]
    candles = [
        (t.astype("datetime64[us]").item().replace(tzinfo=UTC), o, max(o, c), min(o, c), c)
        for t, o, c in zip(ts[::12], opens[::12], closes[11::12], strict=False)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"coinglass_{symbol.removesuffix('USDT').lower()}_m1_24hour_{at:%Y%m%d_%H%M%S}.png"
    render_screenshot(
        path,
        prices=result.prices[window],
        times=[t.astype("datetime64[us]").item() for t in ts],
        intensity=intensity[:, window],
        candles=candles,
        max_usd=float(intensity[:, window].max()),
        watermark=True,
    )
    return path
