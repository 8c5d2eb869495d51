"""A market whose true positions are known: individual leveraged positions, written as a Binance archive.

The sample market (`sample.py`) writes what an exchange publishes, but nobody holds its positions, so no one can
say what its true liquidation map is. Here every position is an agent with its own rules, so the true map and the
true liquidations are known exactly, and the model can be scored against them through the real archive path.

Design (all deterministic in ``TruthParams.seed``, the symbol and the days):

- **Price path and trades.** The sample market's trades of each day (`sample._trades`), so the aggTrades and 1m
  klines files are exactly the sample's (klines are aggregated from those trades). The trades are the price path:
  positions are opened, and liquidated, at trades.
- **Opens.** Each day ``pairs_per_day`` openings, each at a trade drawn with probability proportional to its
  quantity (traders open where volume trades), entry = that trade's price. Every opening is a *pair*: a long and a
  short of the same size (each contract has a buyer and a seller), notional lognormal around ``median_usd``.
- **Legs live on their own.** Each leg draws its own leverage from the known mix (``leverage`` /
  ``leverage_weights``, capped at its margin tier's maximum) and its own holding time (lognormal around
  ``median_hold_hours``). Its liquidation price is the isolated-margin formula (`model.margin.liquidation_price`)
  with the maintenance tier of its own notional (the registry's tiers). A leg is **liquidated** at the first later
  trade that reaches its liquidation price (a long: a trade at or below it; a short: at or above), if that comes
  before its holding time ends; else it **closes** then. A liquidation is a forced order of the leg's whole size
  at its liquidation price, at that trade's time (the trade that opened the leg is not checked: it is the entry;
  orders set off by the same trade go out 1 ms apart, as the ingest merges identical rows). Nothing is simulated
  after the last written day.
- **Open interest** = (coins held by open long legs + coins held by open short legs) / 2. While both legs of a pair
  are open this is the pair's size, as on an exchange. When one leg ends first, its closing trade is matched half
  with other legs closing (open interest falls) and half with new holders taking it over; we count that as half of
  its size leaving open interest. The metrics file is written every 5 minutes from this, with the archive's quirks
  (289 rows, shuffled, repeats) by the sample's own writer.
- **Warm-up.** The simulation starts ``warmup_days`` before the first written day, so the written days open with a
  book of older positions, as a real market does; those days are not written.

`simulate` runs the market; `TruthMarket.true_map` gives the true liquidation map at any instant (USD = coins x
liquidation price, per liquidation-price bin and side, of the legs open then), `TruthMarket.liquidations` the true
forced liquidations, `TruthMarket.open_interest` the open interest, `write_truth_archive` the archive files.
`static_liquidation_map` is a py-liquidation-map-style baseline (every trade at its liquidation prices for a fixed
mix, never consumed or closed) and `profile_distance` the distance used to compare maps. Not exchange data. This
module must not import dagster.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from liq_pipeline.model.margin import LONG, SHORT, liquidation_price
from liq_pipeline.sources import sample
from liq_pipeline.symbols import SymbolSpec

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class TruthParams:
    """The hidden rules of the agent market (see the module docstring)."""

    pairs_per_day: int = 3_000
    trades_per_day: int = 4_000
    leverage: tuple[int, ...] = (3, 5, 10, 20, 25, 50, 75, 100)
    leverage_weights: tuple[float, ...] = (0.05, 0.15, 0.25, 0.15, 0.12, 0.14, 0.06, 0.08)
    median_usd: float = 15_000.0
    size_sigma: float = 1.0
    max_usd: float = 500_000.0
    median_hold_hours: float = 8.0
    hold_sigma: float = 1.2
    warmup_days: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.leverage) != len(self.leverage_weights) or not self.leverage:
            raise ValueError("leverage and leverage_weights must be non-empty and of equal length")
        if min(self.leverage) < 2:
            raise ValueError(
                f"leverage must be >= 2 (lower puts long liquidations at <= 0), got {self.leverage}"
            )
        if not math.isclose(sum(self.leverage_weights), 1.0, abs_tol=1e-9) or min(self.leverage_weights) < 0:
            raise ValueError(f"leverage_weights must be >= 0 and sum to 1, got {self.leverage_weights}")
        if self.pairs_per_day < 1 or self.trades_per_day < 1 or self.warmup_days < 0:
            raise ValueError("pairs_per_day and trades_per_day must be >= 1 and warmup_days >= 0")


@dataclass(frozen=True)
class Legs:
    """One row per position (leg). Times in ms since the epoch; a leg is open on ``[open_ms, end_ms)``."""

    side: np.ndarray  # int8: 0 long, 1 short
    open_ms: np.ndarray
    end_ms: np.ndarray  # liquidation time, or open + holding time
    entry: np.ndarray
    qty: np.ndarray  # coins
    leverage: np.ndarray
    liq_price: np.ndarray
    liquidated: np.ndarray  # bool

    @property
    def notional(self) -> np.ndarray:
        """Entry notional in USD."""
        return self.qty * self.entry


@dataclass(frozen=True)
class TrueMap:
    prices: np.ndarray  # bin centres
    long_usd: np.ndarray
    short_usd: np.ndarray


def _ms(at) -> int:
    """ms since the epoch of a datetime (naive = UTC), numpy datetime64, or an int already in ms."""
    if isinstance(at, datetime):
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        return int(round(at.timestamp() * 1000))
    if isinstance(at, np.datetime64):
        return int(at.astype("datetime64[ms]").astype(np.int64))
    return int(at)


@dataclass(frozen=True, eq=False)
class TruthMarket:
    """A simulated market: its legs, the trades it ran on, and the days `write_truth_archive` writes."""

    spec: SymbolSpec
    days: tuple[date, ...]  # the written days
    params: TruthParams
    legs: Legs
    trades: dict[date, object]  # sample._Trades per simulated day (warm-up included)
    horizon_ms: int  # end of the last written day: nothing is simulated after it

    def open_interest(self, at_ms: np.ndarray) -> np.ndarray:
        """Open interest in coins at each time (ms): half the coins of the legs open then."""
        at_ms = np.asarray(at_ms, np.int64)
        lg = self.legs
        o = np.argsort(lg.open_ms, kind="stable")
        e = np.argsort(lg.end_ms, kind="stable")
        opened = np.concatenate([[0.0], np.cumsum(lg.qty[o])])[np.searchsorted(lg.open_ms[o], at_ms, "right")]
        ended = np.concatenate([[0.0], np.cumsum(lg.qty[e])])[np.searchsorted(lg.end_ms[e], at_ms, "right")]
        return (opened - ended) / 2.0

    def true_map(self, at, prices: np.ndarray) -> TrueMap:
        """USD per liquidation-price bin and side of the legs open at ``at`` (coins x liquidation price: what would
        be force-sold there, as in `liquidations`), on the grid of bin centres ``prices`` (evenly spaced; a bin
        covers half a step either side). Legs off the grid are left out."""
        t = _ms(at)
        prices = np.asarray(prices, np.float64)
        step = float(prices[1] - prices[0])
        lg = self.legs
        live = (lg.open_ms <= t) & (t < lg.end_ms)
        k = np.floor((lg.liq_price - prices[0]) / step + 0.5).astype(np.int64)
        on = live & (k >= 0) & (k < prices.size)
        usd = lg.qty * lg.liq_price
        out = [
            np.bincount(k[on & (lg.side == s)], weights=usd[on & (lg.side == s)], minlength=prices.size)
            for s in (LONG, SHORT)
        ]
        return TrueMap(prices, out[LONG], out[SHORT])

    def liquidations(self, start=None, end=None) -> pd.DataFrame:
        """The true forced liquidations in ``[start, end)``: ts (naive UTC), side (the position liquidated),
        price (its liquidation price), quantity (coins), notional_usd (price x quantity)."""
        lg = self.legs
        sel = lg.liquidated.copy()
        if start is not None:
            sel &= lg.end_ms >= _ms(start)
        if end is not None:
            sel &= lg.end_ms < _ms(end)
        order = np.flatnonzero(sel)[np.argsort(lg.end_ms[sel], kind="stable")]
        return pd.DataFrame(
            {
                "ts": lg.end_ms[order].astype("datetime64[ms]").astype("datetime64[ns]"),
                "side": np.where(lg.side[order] == LONG, "long", "short"),
                "price": lg.liq_price[order],
                "quantity": lg.qty[order],
                "notional_usd": lg.liq_price[order] * lg.qty[order],
            }
        )


def simulate(spec: SymbolSpec, days: list[date], params: TruthParams | None = None) -> TruthMarket:
    """Run the agent market over ``days`` (consecutive) after ``params.warmup_days`` of warm-up."""
    params = params or TruthParams()
    days = sorted(days)
    if any((b - a).days != 1 for a, b in zip(days, days[1:], strict=False)) or not days:
        raise ValueError(f"days must be consecutive and non-empty, got {days}")
    first = days[0] - timedelta(days=params.warmup_days)
    sim_days = [first + timedelta(days=i) for i in range((days[-1] - first).days + 1)]
    trades = {d: sample._trades(spec, d, params.trades_per_day) for d in sim_days}
    m = sample._market(spec)
    t_ms = np.concatenate([trades[d].time_ms for d in sim_days])
    t_px = np.concatenate([trades[d].price_ticks for d in sim_days]) * m.tick
    t_qty = np.concatenate([trades[d].qty_units for d in sim_days]).astype(np.float64)
    horizon = sample._day_ms(days[-1]) + sample.DAY_MS

    # Openings: trades drawn by quantity, one pair each.
    rng = np.random.default_rng([params.seed, zlib.crc32(spec.symbol.encode()), first.toordinal()])
    at = np.sort(rng.choice(t_ms.size, size=params.pairs_per_day * len(sim_days), p=t_qty / t_qty.sum()))
    usd = np.minimum(rng.lognormal(math.log(params.median_usd), params.size_sigma, at.size), params.max_usd)
    qty = np.maximum(np.round(usd / t_px[at] / m.qty_step), 1) * m.qty_step
    # Two legs per opening: long then short, each with its own leverage and holding time.
    j = np.repeat(at, 2)
    side = np.tile(np.array([LONG, SHORT], np.int8), at.size)
    qty = np.repeat(qty, 2)
    entry = t_px[j]
    lev = rng.choice(np.asarray(params.leverage, np.float64), size=j.size, p=params.leverage_weights)
    hold = rng.lognormal(math.log(params.median_hold_hours * HOUR_MS), params.hold_sigma, j.size)
    close_ms = t_ms[j] + hold.astype(np.int64)
    lev, lp = _liquidation_prices(spec, entry, qty, lev, side)

    end_ms, liquidated = close_ms.copy(), np.zeros(j.size, bool)
    stop = np.searchsorted(t_ms, np.minimum(close_ms, horizon), "left")
    for i in range(j.size):  # first later trade through the level, before the leg closes
        path = t_px[j[i] + 1 : stop[i]]
        hit = path <= lp[i] if side[i] == LONG else path >= lp[i]
        k = int(hit.argmax()) if path.size else 0
        if path.size and hit[k]:
            end_ms[i], liquidated[i] = t_ms[j[i] + 1 + k], True
    # Forced orders at one trade go out 1 ms apart: the archive repeats every row, so the ingest drops identical rows.
    hit = np.flatnonzero(liquidated)
    hit = hit[np.argsort(end_ms[hit], kind="stable")]
    new = np.r_[True, np.diff(end_ms[hit]) > 0]
    end_ms[hit] += np.arange(hit.size) - np.maximum.accumulate(np.where(new, np.arange(hit.size), 0))
    legs = Legs(side, t_ms[j], end_ms, entry, qty, lev, lp, liquidated)
    return TruthMarket(spec, tuple(days), params, legs, trades, horizon)


def _liquidation_prices(
    spec: SymbolSpec, entry: np.ndarray, qty: np.ndarray, lev: np.ndarray, side: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(leverage capped at each leg's tier maximum, isolated-margin liquidation price), per leg's own tier."""
    notional = entry * qty
    tier_index = np.searchsorted([t.cap for t in spec.tiers], notional, side="right")
    tier_index = np.minimum(tier_index, len(spec.tiers) - 1)
    lev = lev.copy()
    lp = np.empty(entry.size)
    for ti in np.unique(tier_index):
        tier = spec.tiers[int(ti)]
        for s in (LONG, SHORT):
            sel = (tier_index == ti) & (side == s)
            lev[sel] = np.minimum(lev[sel], tier.max_leverage)
            lp[sel] = liquidation_price(entry[sel], lev[sel], s, tier, qty[sel])
    return lev, lp


# ----------------------------------------------------------------------------------------------------------------
# The archive


def _metrics_for(market: TruthMarket):
    """`_metrics(spec, day)` for the sample's metrics writer: the sample's ratio columns, our open interest."""

    def metrics(spec: SymbolSpec, day: date) -> sample._Metrics:
        m = sample._market(spec)
        met = sample._metrics(spec, day)
        marks = sample._day_ms(day) + np.arange(0, sample.MINUTES, 5, dtype=np.int64) * sample.MINUTE_MS
        oi = np.round(market.open_interest(marks), m.qty_decimals)
        price = met.oi_value / met.oi  # the sample path's price at each mark
        return replace(met, oi=oi, oi_value=np.round(oi * price, 8))

    return metrics


def _forced_orders(market: TruthMarket, day: date) -> sample._Liquidations:
    """The day's liquidations as the archive writes them: SELL for a long, every row twice."""
    m = sample._market(market.spec)
    start = datetime.combine(day, datetime.min.time())
    liq = market.liquidations(start, start + timedelta(days=1))
    sell = (liq["side"] == "long").to_numpy()
    ticks = np.maximum(np.rint(liq["price"].to_numpy() / m.tick), 1).astype(np.int64)
    units = np.maximum(np.rint(liq["quantity"].to_numpy() / m.qty_step), 1).astype(np.int64)
    ms = liq["ts"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    take = np.repeat(np.arange(len(liq)), 2)
    return sample._Liquidations(ms[take], sell[take], units[take], units[take], ticks[take], ticks[take])


def write_truth_archive(root: Path | str, market: TruthMarket) -> list[Path]:
    """Write aggTrades, metrics, 1m klines and liquidationSnapshot of every written day under ``root`` in the
    archive's layout (with CHECKSUMs), through the sample market's own writers. No fundingRate: nothing here
    depends on it. Returns the zip paths."""
    root, spec, s = Path(root), market.spec, market.spec.symbol
    metrics = _metrics_for(market)
    out: list[Path] = []
    for day in market.days:
        tr = market.trades[day]
        header = {k: day >= since for k, since in sample.HEADER_SINCE.items()}
        agg = sample._agg_trades_chunks(spec, tr, header["aggTrades"], 1)
        out.append(sample._write_zip(root, "aggTrades", s, day, agg, sample._AGG_LEVEL))
        met = sample._metrics_csv(spec, day, metrics=metrics)
        out.append(sample._write_zip(root, "metrics", s, day, [met], sample._SMALL_LEVEL))
        kl = sample._klines_csv(spec, day, tr, header["klines"], 1)
        out.append(sample._write_zip(root, "klines", s, day, [kl], sample._SMALL_LEVEL))
        liq = sample._liquidations_csv(spec, day, _forced_orders(market, day))
        out.append(sample._write_zip(root, "liquidationSnapshot", s, day, [liq], sample._SMALL_LEVEL))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Comparing maps


def static_liquidation_map(
    spec: SymbolSpec,
    prices: np.ndarray,
    trade_price: np.ndarray,
    trade_qty: np.ndarray,
    taker_buy: np.ndarray,
    leverage: tuple[int, ...],
    weights: tuple[float, ...],
    position_usd: float = 10_000.0,
) -> TrueMap:
    """A py-liquidation-map-style static map: every trade opens a long (taker buy) or a short (taker sell) of its
    size, split over the leverage mix at its isolated-margin liquidation prices (tier of ``position_usd``), and is
    never consumed or closed. USD = coins x liquidation price, on the grid convention of `TruthMarket.true_map`."""
    prices = np.asarray(prices, np.float64)
    price = np.asarray(trade_price, np.float64)
    qty = np.asarray(trade_qty, np.float64)
    buy = np.asarray(taker_buy, bool)
    step = float(prices[1] - prices[0])
    tier = spec.tier_for(position_usd)
    out = []
    for s, sel in ((LONG, buy), (SHORT, ~buy)):
        acc = np.zeros(prices.size)
        for lev, w in zip(leverage, weights, strict=True):
            lp = liquidation_price(price[sel], lev, s, tier, position_usd / price[sel])
            k = np.floor((lp - prices[0]) / step + 0.5).astype(np.int64)
            on = (k >= 0) & (k < prices.size)
            acc += np.bincount(k[on], weights=w * qty[sel][on] * lp[on], minlength=prices.size)
        out.append(acc)
    return TrueMap(prices, out[LONG], out[SHORT])


def visible_window(prices: np.ndarray, price: float, span: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the long bins in ``[price (1 - span), price)`` and the short bins in ``(price, price (1 + span)]``:
    where each side's levels can be, within what a heatmap shows."""
    prices = np.asarray(prices, np.float64)
    return (prices >= price * (1 - span)) & (prices < price), (prices > price) & (
        prices <= price * (1 + span)
    )


def profile_distance(a: np.ndarray, b: np.ndarray, mask: np.ndarray, pool: int = 4) -> float:
    """L1 distance of two profiles over ``mask`` after normalising each to sum 1: 0 = the same shape, 2 = no
    overlap. ``pool`` adjacent bins are summed first, so a level one bin off is not a total miss. A profile with no
    mass in the window counts as flat (uniform) there: an empty map says nothing about where levels are."""
    out = []
    for x in (a, b):
        x = np.asarray(x, np.float64)[mask]
        n = x.size // pool * pool
        x = x[:n].reshape(-1, pool).sum(axis=1) if pool > 1 and n else x
        total = x.sum()
        out.append(x / total if total > 0 else np.full(x.size, 1.0 / max(x.size, 1)))
    return float(np.abs(out[0] - out[1]).sum())
