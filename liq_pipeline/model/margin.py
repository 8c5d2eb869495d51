"""Binance USDT-M isolated-margin liquidation prices.

For a position of Q coins entered at E with leverage L in a maintenance-margin bracket (MMR, cum):

    long:  LP = (E * (1 - 1/L) - cum/Q) / (1 - MMR)
    short: LP = (E * (1 + 1/L) + cum/Q) / (1 + MMR)

(isolated wallet balance E*Q/L, fees and funding ignored). Everything is vectorised over numpy arrays.
"""

from __future__ import annotations

import numpy as np

from liq_pipeline.symbols import MarginTier, SymbolSpec

LONG = 0
SHORT = 1
SIDES = ("long", "short")


def side_index(side: str | int) -> int:
    """0 for long, 1 for short; accepts "long"/"short" (any case) or 0/1."""
    if isinstance(side, str):
        key = side.strip().lower()
        if key in SIDES:
            return SIDES.index(key)
    elif isinstance(side, int | np.integer) and int(side) in (LONG, SHORT):
        return int(side)
    raise ValueError(f"side must be 'long' or 'short' (or 0/1), got {side!r}")


def liquidation_price(entry, leverage, side: str | int, tier: MarginTier, qty) -> np.ndarray | float:
    """Isolated-margin liquidation price. ``entry``, ``leverage`` and ``qty`` (coins, > 0) broadcast together.

    Returns a float for scalar inputs, else a float64 array. A long with very low leverage can get LP <= 0: it can
    never be liquidated.
    """
    s = side_index(side)
    e = np.asarray(entry, dtype=np.float64)
    lev = np.asarray(leverage, dtype=np.float64)
    q = np.asarray(qty, dtype=np.float64)
    if np.any(lev < 1) or np.any(~np.isfinite(lev)):
        raise ValueError("leverage must be >= 1")
    if np.any(q <= 0) or np.any(~np.isfinite(q)):
        raise ValueError("qty must be a positive number of coins")
    if s == LONG:
        lp = (e * (1.0 - 1.0 / lev) - tier.cum / q) / (1.0 - tier.mmr)
    else:
        lp = (e * (1.0 + 1.0 / lev) + tier.cum / q) / (1.0 + tier.mmr)
    return float(lp) if lp.ndim == 0 else lp


def liquidation_price_for_notional(entry, leverage, side: str | int, tier: MarginTier, notional: float):
    """Liquidation price for a position of ``notional`` USDT at each entry (Q = notional / entry)."""
    e = np.asarray(entry, dtype=np.float64)
    if np.any(e <= 0):
        raise ValueError("entry prices must be positive")
    return liquidation_price(e, leverage, side, tier, notional / e)


def representative_tier(spec: SymbolSpec, position_usd: float) -> MarginTier:
    """The maintenance-margin bracket of the model's representative position (``spec.tier_for``)."""
    if not position_usd > 0:
        raise ValueError(f"position_usd must be positive, got {position_usd!r}")
    return spec.tier_for(float(position_usd))
