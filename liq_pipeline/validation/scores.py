"""Scores of the model against Coinglass screenshots and against real forced liquidations.

Pure numpy/pandas; no Dagster. Every score comes with the number of observations it was computed from, and a score
that has no observations is ``None`` (never 0 or 1) with a ``reason`` saying why.

Coinglass (`coinglass_scores`), one screenshot against our heatmap column at the same time (`step_at` picks the
step at or just before ``captured_at``):

- visible range: ``price_range`` if given, else the span of the screenshot's profile rows (each row covering half a
  row spacing either side, which is `ScreenshotReading.price_range`).
- our zones: `levels.zones` on the heatmap bins whose centres lie in the visible range (so the 10 % significance
  threshold is relative to the strongest *visible* bin, as Coinglass's colour scale is), ``top`` per side, then the
  ``top`` largest by notional over both sides.
- Coinglass levels: the ``top`` strongest levels of the reading.
- tolerance: ``max(tolerance_pct % of current_price, price_bin)``; one number per screenshot so that matching is
  symmetric.
- distance of a price to a zone: distance to the interval ``[price_low, price_high]``, 0 inside.
- ``hit_rate``: fraction of the Coinglass levels within tolerance of one of our zones (``n_coinglass_levels``);
  0.0 when we have no zones in the visible range (we miss every level).
- ``precision``: fraction of our zones within tolerance of one of those Coinglass levels (``n_our_zones``); None
  when the screenshot shows no levels (Coinglass is the reference: nothing to compare with).
- ``rank_correlation``: Spearman correlation (average ranks for ties) between the screenshot's intensity profile and
  our long+short mass per profile row (``n_profile_points``). Our mass is resampled exactly: each bin spreads its
  mass uniformly over ``[centre - bin/2, centre + bin/2]`` and each profile row takes the mass overlapping its cell
  (half-way to its neighbours), divided by the cell width. Rows outside our grid are left out.

Forced liquidations (`backtest_scores`), our zones at ``t0`` against liquidations in ``(t0, t0 + horizon]``:

- the scored zones are the ``k`` largest by notional, both sides pooled.
- a zone matches prices in ``[price_low - price_bin/2, price_high + price_bin/2]``: zone bounds are bin centres and
  a bin covers half a bin either side (see `levels`), so this is exactly the zone's price coverage.
- ``precision_at_k``: share of the scored zones with at least one liquidation of the same side inside.
- ``recall``: share of all liquidated notional in the window (both sides) that fell inside a scored zone of the
  same side.
- baseline: `naive_zones` over the range price travelled in the lookback, as many zones as we score and with the
  same total width ``sum(price_high - price_low)``; both sets are then widened by the same ``price_bin/2`` per side,
  so both cover the same total price width and the comparison is fair.
- with no zones or no liquidations in the window the scores are ``None``: an empty window means missing ground truth
  (the archive ends 2024-03-31), not a model that missed.

What the model claims, against forced liquidations (the scores the report leads with):

- `hourly_liquidation_scores`: per side, the Pearson correlation over hours of the model's predicted liquidated USD
  and the forced liquidations' USD, and the ratio of their totals; baseline: the correlation of the forced USD with
  each hour's move against the side ((open - low) / open for longs, (high - open) / open for shorts), which knows
  only the price path.
- `reached_price_recall`: of the forced liquidations after a map's time, the USD share at prices where the map had
  mass of the same side within a band (0.25 % by default); baseline: the share of the range price reached that the
  map's mass covers, the expected recall of a map as wide placed without knowing where liquidations fall. (A flat
  map has mass everywhere and would score 1: the width, not the flatness, is what the baseline must match.)

Forced liquidations given as orders (side 'SELL'/'BUY', as the archive writes them) are read as the long/short
position liquidated in these two; `backtest_scores` takes positions only.

Records (`comparison_record`, `upsert_jsonl`, `append_jsonl`, `dedupe_jsonl`) and the per-symbol summary
(`summarise`, `report_markdown`) complete the module.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liq_pipeline.lake import LakePath, is_remote
from liq_pipeline.model.levels import zones

DEFAULT_TOP = 10
DEFAULT_TOLERANCE_PCT = 0.5
DEFAULT_HORIZON_HOURS = 24
DEFAULT_K = 10
RECORD_KEY = ("symbol", "captured_at", "file")
NA = "n/a (no observations)"


# ---------------------------------------------------------------------------------------------------------------------
# Small helpers


def _utc_timestamp(value: Any) -> pd.Timestamp:
    """A UTC-aware Timestamp; naive values are taken as UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def iso_utc(value: Any) -> str:
    """ISO 8601 in UTC with an explicit offset, e.g. ``2024-12-28T12:00:00+00:00``; naive values are UTC."""
    return _utc_timestamp(value).to_pydatetime().isoformat()


def _num(value: Any) -> float | None:
    """A finite float, or None."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _get(obj: Any, name: str, index: int) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    if hasattr(obj, name):
        return getattr(obj, name)
    return obj[index]


def _level_arrays(levels: Iterable[Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """(price, intensity) of levels given as `Level` objects, mappings or (price, intensity) tuples; the non-finite
    ones are dropped."""
    out = []
    for lv in levels or []:
        price, inten = _num(_get(lv, "price", 0)), _num(_get(lv, "intensity", 1))
        if price is not None:
            out.append((price, 0.0 if inten is None else inten))
    if not out:
        return np.zeros(0), np.zeros(0)
    arr = np.asarray(out, dtype=np.float64)
    return arr[:, 0], arr[:, 1]


def _profile_arrays(profile: Any) -> tuple[np.ndarray, np.ndarray]:
    """(prices ascending, intensity) of a `Profile`, a mapping or a (prices, intensity) pair; non-finite dropped."""
    if profile is None:
        return np.zeros(0), np.zeros(0)
    p = np.asarray(_get(profile, "prices", 0), dtype=np.float64).ravel()
    v = np.asarray(_get(profile, "intensity", 1), dtype=np.float64).ravel()
    if p.shape != v.shape:
        raise ValueError(f"profile prices {p.shape} and intensity {v.shape} differ in shape")
    ok = np.isfinite(p) & np.isfinite(v)
    p, v = p[ok], v[ok]
    order = np.argsort(p, kind="mergesort")
    return p[order], v[order]


def _cell_edges(centres: np.ndarray) -> np.ndarray:
    """Edges of cells around increasing centres: half-way between neighbours, half a spacing beyond the ends."""
    if centres.size == 1:
        return np.array([centres[0], centres[0]])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate(
        [[centres[0] - (mid[0] - centres[0])], mid, [centres[-1] + (centres[-1] - mid[-1])]]
    )


def _interval_distance(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """|x| x |zones| distances from each price to each interval [low, high], 0 inside."""
    x = x[:, None]
    return np.maximum(np.maximum(low[None, :] - x, x - high[None, :]), 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Spearman


def rank_average(values) -> np.ndarray:
    """Ranks 1..n with ties given the average of the ranks they span (as ``scipy.stats.rankdata``)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of each group's last member
    return (last - (counts - 1) / 2.0)[inverse]


def spearman(a, b) -> float | None:
    """Spearman rank correlation of two equal-length samples (Pearson correlation of their average ranks).

    None when it is undefined: fewer than 2 points, or either sample constant."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"samples differ in length: {x.size} and {y.size}")
    if x.size < 2:
        return None
    rx, ry = rank_average(x), rank_average(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    if den == 0:
        return None
    return float(np.clip((rx * ry).sum() / den, -1.0, 1.0))


# ---------------------------------------------------------------------------------------------------------------------
# Coinglass


def resample_mass(heat_prices, mass, price_bin: float, target_prices) -> tuple[np.ndarray, np.ndarray]:
    """Our mass per unit of price at each of ``target_prices`` (increasing profile rows), and which rows our grid
    covers.

    Each bin (centre c) spreads its mass uniformly over ``[c - bin/2, c + bin/2]``; each target row takes the mass
    overlapping its cell (half-way to its neighbours) divided by the cell width. Exact for any ratio of bin to row
    spacing; gaps in a subset grid count as zero mass."""
    c = np.asarray(heat_prices, dtype=np.float64).ravel()
    m = np.nan_to_num(np.asarray(mass, dtype=np.float64).ravel(), nan=0.0, posinf=0.0, neginf=0.0)
    t = np.asarray(target_prices, dtype=np.float64).ravel()
    if c.shape != m.shape:
        raise ValueError(f"heat prices {c.shape} and mass {m.shape} differ in shape")
    if t.size == 0 or c.size == 0:
        return np.zeros(t.size), np.zeros(t.size, dtype=bool)
    half = price_bin / 2.0
    lo, hi = c - half, c + half
    cum = np.concatenate([[0.0], np.cumsum(m)])

    def cdf(x: np.ndarray) -> np.ndarray:
        full = np.searchsorted(hi, x, side="right")  # bins entirely at or below x
        part = np.zeros_like(x)
        inside = full < c.size
        j = full[inside]
        part[inside] = m[j] * np.clip((x[inside] - lo[j]) / price_bin, 0.0, 1.0)
        return cum[full] + part

    edges = _cell_edges(t)
    width = np.diff(edges)
    cell_mass = np.diff(cdf(edges))
    covered = (t >= lo[0]) & (t <= hi[-1])
    density = np.divide(cell_mass, width, out=np.zeros_like(cell_mass), where=width > 0)
    return density, covered


def our_zones(
    heat_prices,
    heat_long,
    heat_short,
    current_price: float,
    price_bin: float,
    *,
    top: int = DEFAULT_TOP,
    price_range: tuple[float, float] | None = None,
    min_frac: float | None = None,
) -> list[dict]:
    """Our zones as compared with a screenshot: `levels.zones` over the bins centred in ``price_range`` (all bins
    when None), ``top`` per side, then the ``top`` largest by notional over both sides, strongest first."""
    p = np.asarray(heat_prices, dtype=np.float64).ravel()
    lng = np.asarray(heat_long, dtype=np.float64).ravel()
    sht = np.asarray(heat_short, dtype=np.float64).ravel()
    keep = np.ones(p.size, dtype=bool)
    if price_range is not None:
        keep = (p >= price_range[0]) & (p <= price_range[1])
    kw = {} if min_frac is None else {"min_frac": min_frac}
    rows = zones(p[keep], lng[keep], sht[keep], current_price, price_bin, top, **kw)
    rows.sort(key=lambda z: (-z["notional_usd"], z["distance_pct"], z["price_low"]))
    return rows[:top]


def coinglass_scores(
    reading_levels,
    reading_profile,
    heat_prices,
    heat_long,
    heat_short,
    current_price: float,
    price_bin: float,
    *,
    top: int = DEFAULT_TOP,
    tolerance_pct: float = DEFAULT_TOLERANCE_PCT,
    price_range: tuple[float, float] | None = None,
    min_frac: float | None = None,
) -> dict:
    """Compare one Coinglass screenshot with our heatmap column at the same time (see the module docstring).

    ``reading_levels``: `ScreenshotReading.levels` (or mappings / (price, intensity) tuples); ``reading_profile``:
    `ScreenshotReading.profile` (or a (prices, intensity) pair, or None); ``heat_*``: our bin centres and long/short
    notional of that column; ``price_range``: the visible range, default the profile's span.

    Returns ``hit_rate``, ``precision``, ``rank_correlation`` (each None when its count is 0 or the correlation is
    undefined), their counts ``n_coinglass_levels``, ``n_our_zones``, ``n_profile_points``, the matches ``n_hits``
    (Coinglass levels matched) and ``n_matched_zones``, ``tolerance``, ``visible_low``/``visible_high``, and
    ``reason`` (None when all three scored, else the reasons joined by "; ")."""
    if not price_bin > 0:
        raise ValueError(f"price_bin must be positive, got {price_bin!r}")
    if not current_price > 0:
        raise ValueError(f"current_price must be positive, got {current_price!r}")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top!r}")
    prof_p, prof_v = _profile_arrays(reading_profile)
    if price_range is None and prof_p.size:
        edges = _cell_edges(prof_p)
        price_range = (float(edges[0]), float(edges[-1]))
    if price_range is not None:
        price_range = (float(min(price_range)), float(max(price_range)))

    lv_p, lv_i = _level_arrays(reading_levels)
    order = np.argsort(-lv_i, kind="mergesort")[:top]
    cg = lv_p[order]
    ours = our_zones(
        heat_prices, heat_long, heat_short, current_price, price_bin,
        top=top, price_range=price_range, min_frac=min_frac,
    )  # fmt: skip
    z_lo = np.array([z["price_low"] for z in ours], dtype=np.float64)
    z_hi = np.array([z["price_high"] for z in ours], dtype=np.float64)
    tol = max(tolerance_pct / 100.0 * float(current_price), float(price_bin))

    reasons: dict[str, str] = {}
    near = (
        _interval_distance(cg, z_lo, z_hi) <= tol
        if cg.size and z_lo.size
        else np.zeros((cg.size, z_lo.size), bool)
    )
    n_hits = int(near.any(axis=1).sum()) if cg.size else 0
    n_matched = int(near.any(axis=0).sum()) if z_lo.size else 0
    hit_rate = n_hits / cg.size if cg.size else None
    if hit_rate is None:
        reasons["hit_rate"] = "the screenshot shows no Coinglass levels"
    # Coinglass is the reference: with no Coinglass levels there is nothing to compare with (a reading that found
    # none), so precision is None too; with no zones of ours, hit_rate is a real 0 (we miss every level).
    precision = n_matched / z_lo.size if z_lo.size and cg.size else None
    if precision is None:
        reasons["precision"] = (
            "our heatmap has no zones in the visible price range"
            if not z_lo.size
            else "the screenshot shows no Coinglass levels to match our zones with"
        )

    rho, n_points = None, 0
    if prof_p.size:
        in_range = (prof_p >= price_range[0]) & (prof_p <= price_range[1])
        pp, pv = prof_p[in_range], prof_v[in_range]
        total = np.nan_to_num(np.asarray(heat_long, dtype=np.float64)) + np.nan_to_num(
            np.asarray(heat_short, dtype=np.float64)
        )
        ours_at, covered = resample_mass(heat_prices, total, price_bin, pp)
        n_points = int(covered.sum())
        if n_points:
            rho = spearman(pv[covered], ours_at[covered])
            if rho is None:
                reasons["rank_correlation"] = (
                    "undefined: a profile is constant over the visible range"
                    if n_points >= 2
                    else "only one profile point inside our grid"
                )
        else:
            reasons["rank_correlation"] = (
                "our heatmap grid does not cover the screenshot's visible price range"
            )
    else:
        reasons["rank_correlation"] = "the screenshot has no intensity profile"

    return {
        "hit_rate": hit_rate,
        "precision": precision,
        "rank_correlation": rho,
        "n_coinglass_levels": int(cg.size),
        "n_our_zones": int(z_lo.size),
        "n_profile_points": n_points,
        "n_hits": n_hits,
        "n_matched_zones": n_matched,
        "tolerance": tol,
        "tolerance_pct": float(tolerance_pct),
        "top": int(top),
        "current_price": float(current_price),
        "price_bin": float(price_bin),
        "visible_low": None if price_range is None else price_range[0],
        "visible_high": None if price_range is None else price_range[1],
        "reason": "; ".join(f"{k}: {v}" for k, v in reasons.items()) or None,
        "reasons": reasons,
    }


def step_at(step_times, when) -> int | None:
    """Index of the last of ``step_times`` (increasing; e.g. `ModelResult.ts_end`, UTC) at or before ``when``; None
    when every step is later."""
    times = pd.DatetimeIndex(pd.to_datetime(np.asarray(step_times).ravel()))
    times = times.tz_localize("UTC") if times.tz is None else times.tz_convert("UTC")
    i = int(times.searchsorted(_utc_timestamp(when), side="right")) - 1
    return i if i >= 0 else None


# ---------------------------------------------------------------------------------------------------------------------
# Forced liquidations


def naive_zones(
    price_low: float, price_high: float, current_price: float, n: int, total_width: float
) -> list[dict]:
    """The naive baseline: ``n`` zones evenly spread over ``[price_low, price_high]`` (the range price travelled in
    the lookback), zone i centred at ``price_low + (i + 0.5) * range / n`` and ``total_width / n`` wide. A zone
    centred below ``current_price`` is a long zone, else a short zone. Rows look like `levels.zones` rows (bounds in
    the same convention, so `backtest_scores` widens both sets alike), with ``notional_usd`` 0 and ranks by distance
    from the current price per side."""
    lo, hi = float(min(price_low, price_high)), float(max(price_low, price_high))
    if n < 1 or not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return []
    width = max(float(total_width), 0.0) / n
    step = (hi - lo) / n
    rows = []
    for i in range(n):
        centre = lo + (i + 0.5) * step
        side = "long" if centre < current_price else "short"
        rows.append(
            {
                "side": side,
                "price_low": centre - width / 2,
                "price_high": centre + width / 2,
                "peak_price": centre,
                "notional_usd": 0.0,
                "distance_pct": abs(centre - current_price) / current_price * 100.0
                if current_price
                else None,
            }
        )
    for side in ("long", "short"):
        mine = sorted(
            (r for r in rows if r["side"] == side), key=lambda r: abs(r["peak_price"] - current_price)
        )
        for rank, r in enumerate(mine, start=1):
            r["rank"] = rank
    return rows


# An exchange's order side names the order, not the position: a SELL order closes (liquidates) a long.
ORDER_SIDES = {"sell": "long", "buy": "short"}


def _norm_side(values: pd.Series, orders: bool = False) -> np.ndarray:
    """The side of the position liquidated, 'long'/'short'; with ``orders``, an order's 'SELL'/'BUY' is read as the
    long/short it liquidated (as the archive's liquidationSnapshot writes it)."""
    s = values.astype(str).str.strip().str.lower()
    if orders:
        s = s.replace(ORDER_SIDES)
    bad = sorted(set(s.unique()) - {"long", "short"})
    if bad:
        accepted = "'long'/'short' (the position liquidated)" + (
            " or 'SELL'/'BUY' (the order)" if orders else ""
        )
        raise ValueError(f"liquidation side must be {accepted}, got {bad[:5]}")
    return s.to_numpy()


def _zone_table(rows: Sequence[Mapping], half: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    side = np.array([str(r["side"]).lower() for r in rows], dtype=object)
    lo = np.array([float(r["price_low"]) for r in rows], dtype=np.float64) - half
    hi = np.array([float(r["price_high"]) for r in rows], dtype=np.float64) + half
    return side, lo, hi


def _score_zones(rows, half, liq_side, liq_price, liq_usd) -> tuple[float | None, float | None, int]:
    """(precision, recall numerator share, zones hit) of ``rows`` against window liquidations."""
    if not rows:
        return None, None, 0
    side, lo, hi = _zone_table(rows, half)
    inside = (liq_price[:, None] >= lo[None, :]) & (liq_price[:, None] <= hi[None, :])
    inside &= liq_side[:, None] == side[None, :]
    hit = inside.any(axis=0)
    caught = inside.any(axis=1)
    total = float(liq_usd.sum())
    precision = float(hit.mean()) if liq_price.size else None
    recall = float(liq_usd[caught].sum()) / total if total > 0 else None
    return precision, recall, int(hit.sum())


def backtest_scores(
    zones_rows: Sequence[Mapping],
    liquidations: pd.DataFrame,
    *,
    t0: Any = None,
    price_bin: float = 0.0,
    horizon_hours: float = DEFAULT_HORIZON_HOURS,
    k: int = DEFAULT_K,
    price_range: tuple[float, float] | None = None,
    current_price: float | None = None,
    baseline_zones: Sequence[Mapping] | None = None,
) -> dict:
    """Score our zones at ``t0`` against real forced liquidations in ``(t0, t0 + horizon_hours]`` (module docstring).

    ``zones_rows``: dicts with side, price_low, price_high, notional_usd (rank optional); ``t0`` defaults to the rows'
    ``t0`` or ``ts`` (as `levels.levels_at` gives). ``liquidations``: ts (naive = UTC, or aware), side ('long' /
    'short' = the position liquidated), price, notional_usd. ``price_bin``: zones are widened by ``price_bin/2`` per
    side. Baseline: ``baseline_zones`` if given, else `naive_zones` over ``price_range`` (the lookback's low and high)
    around ``current_price`` (default the rows' ``current_price``) with as many zones and the same total width as the
    scored zones; no baseline scores without a range.

    Returns precision_at_k, recall, baseline_precision_at_k, baseline_recall (None when not scorable), n_zones,
    n_baseline_zones, n_zones_hit, n_baseline_zones_hit, n_liquidations, liquidated_usd, zone_width, baseline_width,
    k, horizon_hours, price_bin, t0 and window_end (ISO UTC), and reason / reasons."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    if price_bin < 0:
        raise ValueError(f"price_bin must be >= 0, got {price_bin!r}")
    rows = [dict(r) for r in zones_rows]
    if t0 is None:
        found = next((r.get("t0", r.get("ts")) for r in rows if r.get("t0", r.get("ts")) is not None), None)
        if found is None:
            raise ValueError("t0 is required when the zone rows carry no 't0' or 'ts'")
        t0 = found
    start = _utc_timestamp(t0)
    end = start + pd.Timedelta(hours=float(horizon_hours))
    if current_price is None:
        current_price = next(
            (_num(r.get("current_price")) for r in rows if _num(r.get("current_price"))), None
        )

    scored = sorted(rows, key=lambda r: -float(r["notional_usd"]))[:k]
    width = float(sum(float(r["price_high"]) - float(r["price_low"]) for r in scored))
    reasons: dict[str, str] = {}

    liq = (
        liquidations
        if liquidations is not None
        else pd.DataFrame(columns=["ts", "side", "price", "notional_usd"])
    )
    missing = {"ts", "side", "price", "notional_usd"} - set(liq.columns)
    if missing:
        raise ValueError(f"liquidations lack columns {sorted(missing)}")
    ts = pd.to_datetime(liq["ts"])
    ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    window = ((ts > start) & (ts <= end)).to_numpy()
    win = liq.loc[window]
    liq_side = _norm_side(win["side"]) if len(win) else np.zeros(0, dtype=object)
    liq_price = win["price"].to_numpy(dtype=np.float64)
    liq_usd = np.nan_to_num(win["notional_usd"].to_numpy(dtype=np.float64), nan=0.0)
    total = float(liq_usd.sum())
    half = price_bin / 2.0

    if baseline_zones is not None:
        base = (
            [dict(r) for r in baseline_zones][: len(scored)] if scored else [dict(r) for r in baseline_zones]
        )
    elif price_range is not None and current_price is not None and scored:
        base = naive_zones(price_range[0], price_range[1], float(current_price), len(scored), width)
    else:
        base = []
    base_width = float(sum(float(r["price_high"]) - float(r["price_low"]) for r in base))

    precision, recall, n_hit = _score_zones(scored, half, liq_side, liq_price, liq_usd)
    b_precision, b_recall, b_hit = _score_zones(base, half, liq_side, liq_price, liq_usd)

    no_liq = "no forced liquidations in the window (no ground truth for it)"
    no_usd = "no liquidated notional in the window"
    if not scored:
        reasons["precision_at_k"] = reasons["recall"] = "no zones at t0"
    else:
        if precision is None:
            reasons["precision_at_k"] = no_liq
        if recall is None:
            reasons["recall"] = no_liq if not liq_price.size else no_usd
    if not base:
        why = (
            "no zones to match"
            if not scored
            else "no baseline: pass price_range (and current_price) or baseline_zones"
        )
        reasons["baseline_precision_at_k"] = reasons["baseline_recall"] = why
    else:
        if b_precision is None:
            reasons["baseline_precision_at_k"] = no_liq
        if b_recall is None:
            reasons["baseline_recall"] = no_liq if not liq_price.size else no_usd

    return {
        "precision_at_k": precision,
        "recall": recall,
        "baseline_precision_at_k": b_precision,
        "baseline_recall": b_recall,
        "n_zones": len(scored),
        "n_baseline_zones": len(base),
        "n_zones_hit": n_hit,
        "n_baseline_zones_hit": b_hit,
        "n_liquidations": int(liq_price.size),
        "liquidated_usd": total,
        "zone_width": width,
        "baseline_width": base_width,
        "k": int(k),
        "horizon_hours": float(horizon_hours),
        "price_bin": float(price_bin),
        "t0": start.to_pydatetime().isoformat(),
        "window_end": end.to_pydatetime().isoformat(),
        "reason": "; ".join(f"{key}: {v}" for key, v in reasons.items()) or None,
        "reasons": reasons,
    }


# ---------------------------------------------------------------------------------------------------------------------
# What the model claims: liquidated USD hour by hour, and mass at the prices price reached

SIDES = ("long", "short")


def _utc_series(values: Any) -> pd.Series:
    """Timestamps as a UTC-aware Series (naive values are UTC)."""
    ts = pd.Series(pd.to_datetime(np.asarray(values).ravel()))
    return ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None when undefined (fewer than 2 points or a constant series)."""
    if x.size < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float(np.clip((dx * dy).sum() / den, -1.0, 1.0)) if den > 0 else None


def _usd_by_hour(
    frame: pd.DataFrame | None, hours: pd.DatetimeIndex, what: str
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Per side, the notional of ``frame`` (ts, side, notional_usd) summed into ``hours``, and the rows counted.
    Rows outside the scored hours are left out."""
    usd = {s: np.zeros(len(hours)) for s in SIDES}
    n = dict.fromkeys(SIDES, 0)
    if frame is None or frame.empty:
        return usd, n
    missing = {"ts", "side", "notional_usd"} - set(frame.columns)
    if missing:
        raise ValueError(f"{what} lack columns {sorted(missing)}")
    at = hours.get_indexer(pd.DatetimeIndex(_utc_series(frame["ts"])).floor("h"))
    side = _norm_side(frame["side"], orders=True)
    val = np.nan_to_num(frame["notional_usd"].to_numpy(dtype=np.float64), nan=0.0)
    for s in SIDES:
        keep = (at >= 0) & (side == s)
        usd[s] = np.bincount(at[keep], weights=val[keep], minlength=len(hours)).astype(np.float64)
        n[s] = int(keep.sum())
    return usd, n


def _hourly_moves(klines: pd.DataFrame | None, start: pd.Timestamp, end: pd.Timestamp):
    """The hours in [start, end) that have klines, and per hour the move against each side as a fraction of the
    hour's open: longs max(0, open - low) / open, shorts max(0, high - open) / open."""
    if klines is None or klines.empty:
        return pd.DatetimeIndex([], tz="UTC"), {s: np.zeros(0) for s in SIDES}
    k = pd.DataFrame(
        {
            "hour": pd.DatetimeIndex(_utc_series(klines["open_time"])).floor("h"),
            "t": _utc_series(klines["open_time"]).to_numpy(),
            "open": klines["open"].to_numpy(dtype=np.float64),
            "high": klines["high"].to_numpy(dtype=np.float64),
            "low": klines["low"].to_numpy(dtype=np.float64),
        }
    )
    k = k[(k["hour"] >= start) & (k["hour"] < end)].sort_values("t")
    g = k.groupby("hour", sort=True).agg(open=("open", "first"), high=("high", "max"), low=("low", "min"))
    g = g[g["open"] > 0]
    moves = {
        "long": np.maximum(g["open"] - g["low"], 0.0).to_numpy() / g["open"].to_numpy(),
        "short": np.maximum(g["high"] - g["open"], 0.0).to_numpy() / g["open"].to_numpy(),
    }
    return pd.DatetimeIndex(g.index), moves


def hourly_liquidation_scores(
    predicted: pd.DataFrame | None,
    actual: pd.DataFrame | None,
    klines: pd.DataFrame | None,
    start: Any,
    end: Any,
) -> dict:
    """The model's predicted liquidations against the forced ones, hour by hour and per side, over the hours of
    [start, end) that have klines (a whole hour at a time: ``start`` is rounded up to the hour).

    ``predicted``: the model's ``predicted_liquidations`` (ts, side 'long'/'short', notional_usd); ``actual``: forced
    liquidations (ts, side 'long'/'short' = the position, or the order's 'SELL' = a long / 'BUY' = a short,
    notional_usd); ``klines``: 1-minute klines (open_time, open, high, low). Timestamps naive = UTC.

    Per side: ``corr_*`` the Pearson correlation over hours of predicted and forced USD; ``usd_ratio_*`` their
    totals' ratio (predicted / forced); ``baseline_corr_*`` the correlation of the forced USD with a baseline that
    knows only the price path (each hour's move against the side, see `_hourly_moves`). A score that cannot be
    computed (no hours, a constant series such as an hour-by-hour zero, no forced USD) is None with its reason.
    Also ``n_hours``, ``n_liquidations_*`` (forced orders counted), ``predicted_usd_*``, ``actual_usd_*``."""
    t0 = _utc_timestamp(start).ceil("h")
    t1 = _utc_timestamp(end)
    hours, moves = _hourly_moves(klines, t0, t1)
    pred, _ = _usd_by_hour(predicted, hours, "predicted liquidations")
    real, n_real = _usd_by_hour(actual, hours, "forced liquidations")
    out: dict[str, Any] = {"n_hours": len(hours)}
    reasons: dict[str, str] = {}
    for s in SIDES:
        total_pred, total_real = float(pred[s].sum()), float(real[s].sum())
        out[f"corr_{s}"] = _pearson(pred[s], real[s])
        out[f"baseline_corr_{s}"] = _pearson(moves[s], real[s])
        out[f"usd_ratio_{s}"] = total_pred / total_real if total_real > 0 else None
        out[f"n_liquidations_{s}"] = n_real[s]
        out[f"predicted_usd_{s}"] = total_pred
        out[f"actual_usd_{s}"] = total_real
        for key, series in ((f"corr_{s}", pred[s]), (f"baseline_corr_{s}", moves[s])):
            if out[key] is None:
                reasons[key] = _why_no_corr(len(hours), series, real[s], s)
        if out[f"usd_ratio_{s}"] is None:
            reasons[f"usd_ratio_{s}"] = f"no forced {s} liquidations in the hours scored"
    out["reason"] = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or None
    out["reasons"] = reasons
    return out


def _why_no_corr(n_hours: int, ours: np.ndarray, real: np.ndarray, side: str) -> str:
    if n_hours < 2:
        return f"{n_hours} hour{'s' * (n_hours != 1)} with klines in the window: a correlation needs 2"
    if np.ptp(real) == 0:
        return f"forced {side} liquidations are the same every hour (e.g. none): nothing to follow"
    return f"the {side} series is the same every hour: it cannot follow anything"


def _mass_intervals(prices: np.ndarray, usd: np.ndarray, half_bin: float, band: float, min_frac: float):
    """Merged intervals [low, high] within ``band`` (a fraction of price) of a bin with mass (> ``min_frac`` of the
    side's largest bin); each bin covers half a bin either side of its centre."""
    usd = np.nan_to_num(usd, nan=0.0)
    top = float(usd.max()) if usd.size else 0.0
    c = np.sort(prices[(usd > 0) & (usd > min_frac * top)])
    lo, hi = c * (1 - band) - half_bin, c * (1 + band) + half_bin
    merged: list[list[float]] = []
    for a, b in zip(lo, hi, strict=True):  # lo increases with c: one pass merges
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    arr = np.asarray(merged, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _inside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    i = np.searchsorted(lo, x, side="right") - 1
    return (i >= 0) & (x <= hi[np.clip(i, 0, None)]) if lo.size else np.zeros(x.size, dtype=bool)


def _coverage(lo: np.ndarray, hi: np.ndarray, r_lo: float, r_hi: float) -> float:
    """Share of [r_lo, r_hi] inside the (disjoint, sorted) intervals."""
    covered = np.clip(np.minimum(hi, r_hi) - np.maximum(lo, r_lo), 0.0, None).sum()
    return float(covered) / (r_hi - r_lo)


def reached_price_recall(
    heat_prices,
    long_usd,
    short_usd,
    actual: pd.DataFrame | None,
    band_pct: float = 0.25,
    *,
    price_bin: float = 0.0,
    after: Any = None,
    until: Any = None,
    price_range: tuple[float, float] | None = None,
    min_frac: float = 0.0,
) -> dict:
    """Of the forced liquidations in ``(after, until]`` (all when None), the USD share whose price had model mass of
    the same side within ``band_pct`` % (plus half a bin) of it: recall at the prices price actually reached.

    ``heat_*``: one heatmap column (bin centres, notional per side), the map at ``after``. ``actual``: ts, side
    (position, or order: SELL = long), price, notional_usd. ``price_range``: the range price reached over the window
    (klines' low..high); it is widened to hold every liquidation price and its band.

    Baseline: a map with mass everywhere would catch everything, so the fair comparison is a map as wide as ours
    placed without knowing where liquidations happen. Its expected recall is the share of the reached range our
    mass of each side covers (with the same band), weighted by each side's liquidated USD: ``baseline_recall``.
    The model adds information only where ``recall`` beats it. ``mass_coverage``: the share of the range within the
    band of mass of either side. Also ``n_liquidations``, ``liquidated_usd``, ``range_low``/``range_high``."""
    if band_pct < 0 or price_bin < 0:
        raise ValueError(f"band_pct and price_bin must be >= 0, got {band_pct!r} and {price_bin!r}")
    p = np.asarray(heat_prices, dtype=np.float64).ravel()
    mass = {
        "long": np.asarray(long_usd, np.float64).ravel(),
        "short": np.asarray(short_usd, np.float64).ravel(),
    }
    liq = actual if actual is not None else pd.DataFrame(columns=["ts", "side", "price", "notional_usd"])
    missing = {"ts", "side", "price", "notional_usd"} - set(liq.columns)
    if missing:
        raise ValueError(f"forced liquidations lack columns {sorted(missing)}")
    ts = _utc_series(liq["ts"]) if len(liq) else pd.Series([], dtype="datetime64[ns, UTC]")
    keep = np.ones(len(liq), dtype=bool)
    if after is not None:
        keep &= (ts > _utc_timestamp(after)).to_numpy()
    if until is not None:
        keep &= (ts <= _utc_timestamp(until)).to_numpy()
    win = liq.loc[keep]
    side = _norm_side(win["side"], orders=True) if len(win) else np.zeros(0, dtype=object)
    price = win["price"].to_numpy(dtype=np.float64)
    usd = np.nan_to_num(win["notional_usd"].to_numpy(dtype=np.float64), nan=0.0)
    band, half = band_pct / 100.0, price_bin / 2.0

    bounds = [price * (1 - band), price * (1 + band)] + ([list(price_range)] if price_range else [])
    flat = np.concatenate([np.ravel(b) for b in bounds]) if bounds else np.zeros(0)
    r_lo, r_hi = (float(flat.min()), float(flat.max())) if flat.size else (math.nan, math.nan)
    has_range = r_hi > r_lo  # False for NaN too
    caught = np.zeros(price.size, dtype=bool)
    cover: dict[str, float] = {}
    for s in SIDES:
        lo, hi = _mass_intervals(p, mass[s], half, band, min_frac)
        caught |= (side == s) & _inside(price, lo, hi)
        cover[s] = _coverage(lo, hi, r_lo, r_hi) if has_range else math.nan
    both_lo, both_hi = _mass_intervals(p, np.nan_to_num(mass["long"]) + np.nan_to_num(mass["short"]), half, band, min_frac)  # fmt: skip
    total = float(usd.sum())
    reasons: dict[str, str] = {}
    recall = baseline = None
    if total > 0:
        recall = float(usd[caught].sum()) / total
        baseline = sum(float(usd[side == s].sum()) * cover[s] for s in SIDES) / total if has_range else None
    else:
        reasons["recall"] = reasons["baseline_recall"] = (
            "no forced liquidations in the window"
            if not price.size
            else "no liquidated notional in the window"
        )
    coverage = _coverage(both_lo, both_hi, r_lo, r_hi) if has_range else None
    if coverage is None:
        reasons["mass_coverage"] = "no price range: pass price_range or have liquidations in the window"
    return {
        "recall": recall,
        "baseline_recall": baseline,
        "mass_coverage": coverage,
        "n_liquidations": int(price.size),
        "liquidated_usd": total,
        "band_pct": float(band_pct),
        "range_low": r_lo if has_range else None,
        "range_high": r_hi if has_range else None,
        "reason": "; ".join(f"{k}: {v}" for k, v in reasons.items()) or None,
        "reasons": reasons,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Records: JSON lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | pd.Timestamp | np.datetime64):
        return iso_utc(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def comparison_record(symbol: str, captured_at: Any, file: str | os.PathLike | None, scores: Mapping) -> dict:
    """One JSONL record of a screenshot comparison: ``symbol``, ``captured_at`` (ISO UTC), ``file`` (base name),
    then every score field (``hit_rate``, ``precision``, ``rank_correlation``, counts, ``reason``...), JSON-safe
    (non-finite floats become null)."""
    rec: dict[str, Any] = {
        "symbol": str(symbol),
        "captured_at": iso_utc(captured_at),
        "file": None if file is None else Path(file).name,
    }
    for key, value in scores.items():
        if key not in rec:
            rec[key] = _jsonable(value)
    rec.setdefault("hit_rate", None)
    return rec


def append_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> int:
    """Append one JSON object per line (parent directories created; one write per call). Returns the number of
    records written. Appending does not replace: use `upsert_jsonl` (or `dedupe_jsonl` after) for re-runs."""
    path = Path(path)
    lines = "".join(json.dumps(_jsonable(r), sort_keys=False) + "\n" for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path), open(path, "a", encoding="utf-8") as fh:
        fh.write(lines)
    return lines.count("\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path + '.lock'`` where fcntl exists (so concurrent partition runs do not lose
    each other's records); a no-op elsewhere."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_lines(path: Path) -> list[tuple[str, dict | None]]:
    """(raw line, parsed object or None when the line is not a JSON object), blank lines skipped."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            obj = None
        out.append((raw, obj if isinstance(obj, dict) else None))
    return out


def _key_of(obj: Mapping | None, key: Sequence[str]) -> tuple | None:
    if obj is None or all(obj.get(k) is None for k in key):
        return None  # not keyed: never merged
    return tuple(json.dumps(obj.get(k)) for k in key)


def _write_atomic(path: LakePath, lines: Iterable[str]) -> None:
    if is_remote(path):  # an S3 object is written whole by one PUT (the calibration on an S3 lake)
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _merge(existing: list[tuple[str, dict | None]], new: Iterable[Mapping], key: Sequence[str]) -> list[str]:
    """Lines keeping each key's first position and its last content; unkeyed or unreadable lines kept as they are."""
    out: list[str] = []
    where: dict[tuple, int] = {}
    items = list(existing) + [(json.dumps(_jsonable(r)), _jsonable(r)) for r in new]
    for raw, obj in items:
        k = _key_of(obj, key)
        if k is None:
            out.append(raw)
        elif k in where:
            out[where[k]] = raw
        else:
            where[k] = len(out)
            out.append(raw)
    return out


def upsert_jsonl(path: str | os.PathLike, records: Iterable[Mapping], key: Sequence[str] = RECORD_KEY) -> int:
    """Write ``records`` into the JSONL file, replacing the existing records with the same ``key`` values (so a
    re-run does not duplicate lines) and appending the others. Rewrites via a temp file + `os.replace` under a lock.
    Returns the number of lines in the file."""
    path = Path(path)
    with _locked(path):
        lines = _merge(_read_lines(path), records, key)
        _write_atomic(path, lines)
    return len(lines)


def dedupe_jsonl(path: str | os.PathLike, key: Sequence[str] = RECORD_KEY) -> int:
    """Collapse records with the same ``key`` values to one (the last written, at the first one's position); rewrite
    via temp file + `os.replace`. Returns the number of lines removed (0 if the file does not exist)."""
    path = Path(path)
    with _locked(path):
        existing = _read_lines(path)
        if not existing:
            return 0
        lines = _merge(existing, [], key)
        if len(lines) != len(existing):
            _write_atomic(path, lines)
    return len(existing) - len(lines)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSONL file (unreadable lines skipped); [] if it does not exist."""
    return [obj for _raw, obj in _read_lines(Path(path)) if obj is not None]


# ---------------------------------------------------------------------------------------------------------------------
# Summary and report

# score -> the count that weights it when averaging per symbol
WEIGHTS = {
    "corr_long": "n_hours",
    "corr_short": "n_hours",
    "baseline_corr_long": "n_hours",
    "baseline_corr_short": "n_hours",
    "reached_recall": "reached_usd",
    "baseline_reached_recall": "reached_usd",
    "mass_coverage": "reached_usd",
    "hit_rate": "n_coinglass_levels",
    "precision": "n_our_zones",
    "rank_correlation": "n_profile_points",
    "precision_at_k": "n_zones",
    "recall": "liquidated_usd",
    "baseline_precision_at_k": "n_baseline_zones",
    "baseline_recall": "liquidated_usd",
}
SUM_COLUMNS = (
    "n_coinglass_levels",
    "n_our_zones",
    "n_profile_points",
    "n_zones",
    "n_baseline_zones",
    "n_liquidations",
    "liquidated_usd",
    "n_hours",
    "n_liquidations_long",
    "n_liquidations_short",
    "predicted_usd_long",
    "predicted_usd_short",
    "actual_usd_long",
    "actual_usd_short",
    "n_reached_liquidations",
    "reached_usd",
)
# pooled ratio -> (numerator, denominator) summed over the records
RATIOS = {
    "usd_ratio_long": ("predicted_usd_long", "actual_usd_long"),
    "usd_ratio_short": ("predicted_usd_short", "actual_usd_short"),
}
INT_COLUMNS = (
    "n_screenshots", "n_backtests", "n_reached_maps", "n_coinglass_levels", "n_our_zones", "n_profile_points",
    "n_zones", "n_baseline_zones", "n_liquidations", "n_hours", "n_liquidations_long", "n_liquidations_short",
    "n_reached_liquidations",
)  # fmt: skip
SUMMARY_COLUMNS = [
    "symbol",
    *WEIGHTS,
    *RATIOS,
    "n_screenshots",
    "n_backtests",
    "n_reached_maps",
    *SUM_COLUMNS,
]


def summarise(scores_rows) -> pd.DataFrame:
    """Per-symbol summary of score records (`comparison_record`s and/or `backtest_scores` dicts with a ``symbol``).

    Each score is the mean of the per-record scores weighted by that score's own observation count (`WEIGHTS`):
    pooled over all observations, e.g. hit_rate = matched levels / all levels, recall = caught USD / liquidated USD;
    the daily hourly correlations are averaged weighted by their hours. ``usd_ratio_*`` pool the totals (predicted
    USD / forced USD over every record). Records whose score is None, or whose count is 0, do not count; a symbol
    without any is NaN. Counts are summed; ``n_screenshots`` = records with ``n_coinglass_levels`` (screenshot
    comparisons), ``n_backtests`` = records with ``n_liquidations``, ``n_reached_maps`` = records with
    ``n_reached_liquidations``. One row per symbol, sorted by symbol."""
    df = scores_rows.copy() if isinstance(scores_rows, pd.DataFrame) else pd.DataFrame(list(scores_rows))
    if df.empty or "symbol" not in df.columns:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    for col in set(WEIGHTS) | set(SUM_COLUMNS):
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    out = []
    for symbol, g in df.groupby("symbol", sort=True):
        row: dict[str, Any] = {"symbol": symbol}
        for score, weight in WEIGHTS.items():
            v, w = g[score].to_numpy(dtype=float), g[weight].to_numpy(dtype=float)
            ok = np.isfinite(v) & np.isfinite(w) & (w > 0)
            row[score] = float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else np.nan
        row["n_screenshots"] = int(g["n_coinglass_levels"].notna().sum())
        row["n_backtests"] = int(g["n_liquidations"].notna().sum())
        row["n_reached_maps"] = int(g["n_reached_liquidations"].notna().sum())
        for col in SUM_COLUMNS:
            total = g[col].sum(min_count=1)
            row[col] = float(total) if pd.notna(total) else 0.0
        for ratio, (num, den) in RATIOS.items():
            row[ratio] = row[num] / row[den] if row[den] > 0 else np.nan
        out.append(row)
    res = pd.DataFrame(out, columns=SUMMARY_COLUMNS)
    for col in INT_COLUMNS:
        res[col] = res[col].astype("int64")
    return res


REPORT_METRICS = (
    ("hit_rate", "hit_rate (Coinglass levels we match)"),
    ("precision", "precision (our zones Coinglass shows)"),
    ("rank_correlation", "rank correlation of profiles"),
    ("precision_at_k", "precision@k (forced liquidations)"),
    ("recall", "recall (liquidated USD in our zones)"),
    ("baseline_precision_at_k", "baseline precision@k"),
    ("baseline_recall", "baseline recall"),
    ("n_screenshots", "screenshots"),
    ("n_liquidations", "forced liquidations"),
)
COUNT_METRICS = {"n_screenshots", "n_liquidations"}


def relative_delta_pct(a: float | None, b: float | None) -> float | None:
    """|a - b| / |mean(a, b)| x 100 (symmetric in a and b); 0 when a == b; None when either is missing or the mean
    is 0 with a != b."""
    a, b = _num(a), _num(b)
    if a is None or b is None:
        return None
    if a == b:
        return 0.0
    mean = (a + b) / 2.0
    return abs(a - b) / abs(mean) * 100.0 if mean != 0 else None


def _cell(value: Any, count: bool) -> str:
    v = _num(value)
    if v is None:
        return NA
    return f"{int(round(v)):,}" if count else f"{v:.3f}"


def report_markdown(rows: pd.DataFrame, symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT")) -> str:
    """A markdown table comparing two symbols side by side: one line per metric (those of `REPORT_METRICS` present
    in the columns or not — a missing column or symbol shows "n/a (no observations)"), the two values and the
    relative delta ``|a - b| / mean(a, b) x 100`` in %. ``rows``: one row per symbol, e.g. from `summarise`."""
    a_sym, b_sym = symbols
    by_symbol: dict[str, Mapping] = {}
    if rows is not None and len(rows) and "symbol" in rows.columns:
        for rec in rows.to_dict("records"):
            by_symbol.setdefault(str(rec["symbol"]), rec)
    a, b = by_symbol.get(a_sym, {}), by_symbol.get(b_sym, {})
    lines = [
        f"| metric | {a_sym} | {b_sym} | delta % |",
        "|---|---:|---:|---:|",
    ]
    for col, label in REPORT_METRICS:
        count = col in COUNT_METRICS
        va, vb = a.get(col), b.get(col)
        delta = relative_delta_pct(va, vb)
        if delta is None:
            d = NA if _num(va) is None or _num(vb) is None else "n/a (mean is 0)"
        else:
            d = f"{delta:.1f} %"
        lines.append(f"| {label} | {_cell(va, count)} | {_cell(vb, count)} | {d} |")
    lines.append("")
    lines.append(
        "delta % = |a - b| / mean(a, b) x 100, the relative difference between the two symbols. Scores are "
        "averaged over screenshots / backtests weighted by their observation counts. Target: "
        "hit_rate > 0.60; a forced-liquidation score means something only next to its baseline."
    )
    return "\n".join(lines) + "\n"


__all__ = [
    "append_jsonl",
    "backtest_scores",
    "coinglass_scores",
    "comparison_record",
    "dedupe_jsonl",
    "hourly_liquidation_scores",
    "iso_utc",
    "naive_zones",
    "our_zones",
    "rank_average",
    "reached_price_recall",
    "read_jsonl",
    "relative_delta_pct",
    "report_markdown",
    "resample_mass",
    "spearman",
    "step_at",
    "summarise",
    "upsert_jsonl",
]
