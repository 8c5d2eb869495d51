"""Liquidation levels: the heatmap's columns turned into ranked zones of neighbouring bins.

A zone is a run of neighbouring bins on one side of the current price whose mass is significant: at least
``min_frac`` (default 10 %) of that side's largest bin. Without a threshold a long replay leaves small amounts in
almost every bin and one zone would cover the whole grid; 10 % keeps the clusters a trader would see as bright bands
on the heatmap and drops the haze. ``gap_bins`` (default 0) lets a zone bridge that many insignificant bins.

Long zones lie strictly below the current price (their positions are liquidated when price falls), short zones strictly
above. Prices are bin centres: a zone ``[price_low, price_high]`` covers the bins centred there, i.e. the liquidation
prices ``[price_low - bin/2, price_high + bin/2)``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from liq_pipeline.model.engine import ModelResult

DEFAULT_MIN_FRAC = 0.10
DEFAULT_TOP = 10


def zones(
    prices,
    long_usd,
    short_usd,
    current_price: float,
    price_bin: float,
    top: int = DEFAULT_TOP,
    *,
    min_frac: float = DEFAULT_MIN_FRAC,
    gap_bins: int = 0,
) -> list[dict]:
    """Ranked zones of one heatmap column.

    ``prices`` are increasing bin centres (a whole grid or any subset of it); ``long_usd``/``short_usd`` the notional
    per bin. Returns up to ``top`` rows per side, longs first, each ``{side, rank, price_low, price_high, peak_price,
    notional_usd, distance_pct}``; rank 1 is the largest notional. ``distance_pct`` is how far price must move, in
    percent of ``current_price``, to reach the zone's nearest bin centre (always > 0).
    """
    p = np.asarray(prices, dtype=np.float64)
    if p.ndim != 1 or p.size > 1 and np.any(np.diff(p) <= 0):
        raise ValueError("prices must be a 1-D array of increasing bin centres")
    if not price_bin > 0:
        raise ValueError(f"price_bin must be positive, got {price_bin!r}")
    if not current_price > 0:
        raise ValueError(f"current_price must be positive, got {current_price!r}")
    if not 0 <= min_frac <= 1:
        raise ValueError(f"min_frac must be within [0, 1], got {min_frac!r}")
    if gap_bins < 0 or top < 0:
        raise ValueError("gap_bins and top must be >= 0")
    rows: list[dict] = []
    for side, usd, on_side in (
        ("long", long_usd, p < current_price),
        ("short", short_usd, p > current_price),
    ):
        mass = np.asarray(usd, dtype=np.float64)
        if mass.shape != p.shape:
            raise ValueError(f"{side}_usd has shape {mass.shape}, prices {p.shape}")
        mass = np.where(on_side & np.isfinite(mass) & (mass > 0), mass, 0.0)
        rows.extend(
            _side_zones(side, p, mass, float(current_price), float(price_bin), top, min_frac, gap_bins)
        )
    return rows


def _side_zones(side, p, mass, current, price_bin, top, min_frac, gap_bins) -> list[dict]:
    peak = mass.max() if mass.size else 0.0
    if peak <= 0 or top == 0:
        return []
    idx = np.flatnonzero((mass >= min_frac * peak) & (mass > 0))
    # Neighbours: centres at most (gap_bins + 1) bins apart (with a little slack for float centres).
    breaks = np.flatnonzero(np.diff(p[idx]) > (gap_bins + 1.5) * price_bin) + 1
    found = []
    for run in np.split(idx, breaks):
        first, last = int(run[0]), int(run[-1])
        span = mass[first : last + 1]
        j = first + int(np.argmax(span))
        lo, hi = float(p[first]), float(p[last])
        dist = (current - hi) if side == "long" else (lo - current)
        found.append(
            {
                "side": side,
                "price_low": lo,
                "price_high": hi,
                "peak_price": float(p[j]),
                "notional_usd": float(span.sum()),
                "distance_pct": float(dist / current * 100.0),
            }
        )
    found.sort(key=lambda z: (-z["notional_usd"], z["distance_pct"], z["price_low"]))
    out = []
    for rank, z in enumerate(found[:top], start=1):
        out.append({"side": z.pop("side"), "rank": rank, **z})
    return out


def _utc(ts64: np.datetime64) -> datetime:
    return ts64.astype("datetime64[us]").item().replace(tzinfo=UTC)


def levels_at(
    result: ModelResult,
    rows: np.ndarray | list[int],
    top: int = DEFAULT_TOP,
    *,
    min_frac: float = DEFAULT_MIN_FRAC,
    gap_bins: int = 0,
) -> list[dict]:
    """Zones of the snapshots ``rows`` (indices into the kept steps of ``result``), priced against each step's
    close. Each zone dict gets ``as_of`` (the state's time = end of the step, UTC datetime), ``current_price`` and
    ``symbol``."""
    out: list[dict] = []
    ends = result.ts_end
    for i in np.asarray(rows, dtype=np.int64):
        current = float(result.close[i])
        extra = {"symbol": result.symbol, "as_of": _utc(ends[i]), "current_price": current}
        for z in zones(
            result.prices,
            result.long_usd[i],
            result.short_usd[i],
            current,
            result.price_bin,
            top,
            min_frac=min_frac,
            gap_bins=gap_bins,
        ):
            out.append({**extra, **z})
    return out


def snapshot_rows(result: ModelResult, every_minutes: int = 60) -> np.ndarray:
    """Indices of the kept snapshots that end on a multiple of ``every_minutes`` (UTC), plus the last one (the end
    of the day when the replay ends at midnight), in time order."""
    if every_minutes < 1:
        raise ValueError("every_minutes must be >= 1")
    if result.ts.size == 0:
        return np.zeros(0, dtype=np.int64)
    ends = result.ts_end.view(np.int64)
    on_grid = np.flatnonzero(ends % (every_minutes * 60 * 1_000_000_000) == 0)
    last = result.ts.size - 1
    if on_grid.size == 0 or on_grid[-1] != last:
        on_grid = np.append(on_grid, last)
    return on_grid


def hourly_levels(
    result: ModelResult,
    top: int = DEFAULT_TOP,
    *,
    every_minutes: int = 60,
    min_frac: float = DEFAULT_MIN_FRAC,
    gap_bins: int = 0,
) -> list[dict]:
    """Levels at each hour of the kept steps and at their end; rows of the last snapshot have ``is_end=True``."""
    picks = snapshot_rows(result, every_minutes)
    rows = levels_at(result, picks, top, min_frac=min_frac, gap_bins=gap_bins)
    end_ts = _utc(result.ts_end[picks[-1]]) if picks.size else None
    for row in rows:
        row["is_end"] = row["as_of"] == end_ts
    return rows


def end_of_day_levels(
    result: ModelResult, top: int = DEFAULT_TOP, *, min_frac: float = DEFAULT_MIN_FRAC, gap_bins: int = 0
) -> list[dict]:
    """Levels of the last kept snapshot only."""
    if result.ts.size == 0:
        return []
    return levels_at(result, [result.ts.size - 1], top, min_frac=min_frac, gap_bins=gap_bins)
