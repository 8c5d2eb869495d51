"""The time-evolving liquidation model: a replay over fixed-size steps with state on a fixed liquidation-price grid.

State: ``state[side, leverage, bin]`` (float64 USDT notional at entry), side 0 = long, 1 = short. Nothing else is
carried between steps, so a step costs O(leverages x bins) whatever the history length.

**Grid.** Bin ``k`` is centred on ``k * price_bin`` and covers ``[(k - 1/2) * price_bin, (k + 1/2) * price_bin)``; a
liquidation price ``LP`` lands in bin ``floor(LP / price_bin + 1/2)``. Centres are whole multiples of the bin, so they
are the same prices on every day and every lookback. The grid spans every liquidation price the inputs can produce
(the margin formula is linear in the entry price, so the extremes come from the lowest low and highest high at each
leverage) plus one bin each side.

**Step t** (in this order):

1. *Open.* ``dOI = OI[t] - OI[t-1] > 0`` opens ``dOI * vwap_t`` USDT of longs **and** the same of shorts (``dOI`` of
   the first step is 0: the replay starts empty, the lookback is the warm-up). Entries are spread over the step's
   volume at price (re-bucketed to ``price_bin / 4`` with the VWAP of each bucket, clipped to the step's
   ``[low, high]``), or put at the typical price ``(h + l + c) / 3`` when the step has no trades; each side is split
   over the leverage mix (optionally tilted by taker imbalance), and each piece lands in the bin of its
   isolated-margin liquidation price for the representative position size.
2. *Consume.* The bin rule: **a long bin is liquidated when its centre is >= the step's low; a short bin when its
   centre is <= the step's high.** So after step t no long mass sits in a bin whose centre is at or above ``low[t]``
   and no short mass in a bin whose centre is at or below ``high[t]`` — exactly, on the returned ``prices`` array.
   Doing this after opening also catches positions opened in this step whose level the same step's range already
   crossed (high-leverage entries near the top of a wide candle): they count as liquidated, like older ones.
   Each liquidated bin is an event ``(ts, side, price = bin centre, notional)``.
3. *Close and cap.* ``dOI < 0`` closes ``|dOI| * close`` USDT on both sides in proportion to what is open (never more
   than is open). Then each side is capped at the open-interest notional ``OI[t] * close[t]``, scaling it down in
   proportion if needed. Both count as closed.

The ledger per side: ``opened == open + closed + liquidated`` (to float rounding, ~1e-13 relative).
Same inputs (same arrays, same order) give the same output bit for bit: only order-fixed numpy reductions are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from liq_pipeline.model.config import ModelConfig
from liq_pipeline.model.margin import LONG, SHORT, SIDES, liquidation_price_for_notional, representative_tier
from liq_pipeline.symbols import SymbolSpec

MAX_BINS = 200_000
ENTRY_SUBBINS = 4  # the volume profile is re-bucketed to price_bin / ENTRY_SUBBINS
_DENSE_KEY_LIMIT = 1 << 25

EVENT_DTYPE = np.dtype([("ts", "datetime64[ns]"), ("side", "i1"), ("price", "f8"), ("notional", "f8")])


def _as_ns(ts) -> np.ndarray:
    arr = np.asarray(ts)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").view(np.int64).copy()
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    raise ValueError(
        f"timestamps must be datetime64 or int64 nanoseconds since the epoch (UTC), got dtype {arr.dtype}"
    )


def _float_array(name: str, x, n: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values, expected {n} (one per step)")
    return arr


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """Per-step inputs of one replay, as numpy arrays (the engine never sees a DataFrame).

    - ``ts``: step start times, datetime64 (UTC, naive) or int64 ns since the epoch; strictly increasing.
    - ``open``/``high``/``low``/``close``: the step's kline (1m klines aggregated to the step), finite and > 0.
    - ``oi``: open interest in contracts (coins) at the **end** of the step. NaN means missing: carried forward
      (leading NaNs take the first value).
    - ``profile_step``/``profile_price``/``profile_qty`` (optional, all or none): volume at price, one row per
      (step index, price) — raw aggTrades rows or pre-aggregated buckets. Pre-aggregated buckets should carry their
      VWAP as price and be at most ``price_bin / 4`` wide. Rows outside ``[0, n_steps)`` or with qty <= 0 are ignored.
    - ``taker_buy``/``taker_sell`` (optional, both or none): taker buy / sell volume per step, for the imbalance tilt.
    """

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    oi: np.ndarray
    profile_step: np.ndarray | None = None
    profile_price: np.ndarray | None = None
    profile_qty: np.ndarray | None = None
    taker_buy: np.ndarray | None = None
    taker_sell: np.ndarray | None = None

    def __post_init__(self) -> None:
        ts = _as_ns(self.ts)
        if ts.ndim != 1 or ts.size == 0:
            raise ValueError("ts must be a non-empty 1-D array of step start times")
        if ts.size > 1 and np.any(np.diff(ts) <= 0):
            raise ValueError("ts must be strictly increasing (one row per step, no duplicates)")
        n = ts.size
        put = object.__setattr__
        put(self, "ts", ts)
        ohlc = {}
        for name in ("open", "high", "low", "close"):
            arr = _float_array(name, getattr(self, name), n)
            if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                bad = int(np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))[0])
                raise ValueError(f"{name} must be finite and > 0 at every step; step {bad} has {arr[bad]!r}")
            ohlc[name] = arr
            put(self, name, arr)
        lo, hi = ohlc["low"], ohlc["high"]
        bad = (
            (lo > hi)
            | (ohlc["open"] < lo)
            | (ohlc["open"] > hi)
            | (ohlc["close"] < lo)
            | (ohlc["close"] > hi)
        )
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"step {i}: the kline must satisfy low <= open, close <= high; got o={ohlc['open'][i]} "
                f"h={hi[i]} l={lo[i]} c={ohlc['close'][i]}"
            )
        oi = _float_array("oi", self.oi, n)
        finite = np.isfinite(oi)
        if not np.any(finite):
            raise ValueError("oi (open interest) has no values: the model cannot open positions without it")
        if np.any(oi[finite] < 0) or np.any(np.isinf(oi)):
            raise ValueError("oi must be >= 0 (NaN marks a missing value)")
        if not np.all(finite):
            idx = np.where(finite, np.arange(n), 0)
            np.maximum.accumulate(idx, out=idx)
            first = int(np.flatnonzero(finite)[0])
            idx[:first] = first
            oi = oi[idx]
        put(self, "oi", oi)

        prof = (self.profile_step, self.profile_price, self.profile_qty)
        if any(p is not None for p in prof):
            if any(p is None for p in prof):
                raise ValueError(
                    "profile_step, profile_price and profile_qty go together: give all three or none"
                )
            step = np.asarray(self.profile_step)
            if step.dtype.kind not in "iu":
                raise ValueError(f"profile_step must be integer step indices, got dtype {step.dtype}")
            step = np.ascontiguousarray(step, dtype=np.int64)
            price = _float_array("profile_price", self.profile_price)
            qty = _float_array("profile_qty", self.profile_qty)
            if not (step.shape == price.shape == qty.shape) or step.ndim != 1:
                raise ValueError(
                    "profile_step, profile_price and profile_qty must be 1-D and of equal length"
                )
            put(self, "profile_step", step)
            put(self, "profile_price", price)
            put(self, "profile_qty", qty)
        taker = (self.taker_buy, self.taker_sell)
        if any(t is not None for t in taker):
            if any(t is None for t in taker):
                raise ValueError("taker_buy and taker_sell go together: give both or none")
            put(self, "taker_buy", _float_array("taker_buy", self.taker_buy, n))
            put(self, "taker_sell", _float_array("taker_sell", self.taker_sell, n))

    @property
    def n_steps(self) -> int:
        return int(self.ts.size)

    @property
    def has_profile(self) -> bool:
        return self.profile_step is not None


@dataclass(eq=False)
class ModelResult:
    """What one replay produces.

    Heatmap (steps from ``keep_from`` on, dense): ``long_usd[i, k]`` / ``short_usd[i, k]`` is the open notional whose
    liquidation price lies in bin ``k`` (centre ``prices[k]``) after step ``step_index[i]`` (start time ``ts[i]``).
    ``events`` (structured array, ``EVENT_DTYPE``) are the predicted liquidations of those same steps. Per-step series
    over the whole replay: ``last_price`` (step close), ``open_long_usd``/``open_short_usd`` (after the step),
    ``oi_usd`` (OI x close). ``ledger`` covers the whole replay.
    """

    symbol: str
    config: ModelConfig
    prices: np.ndarray
    step_index: np.ndarray
    ts: np.ndarray
    long_usd: np.ndarray
    short_usd: np.ndarray
    close: np.ndarray
    events: np.ndarray
    ledger: dict[str, dict[str, float]]
    n_steps: int
    all_ts: np.ndarray
    last_price: np.ndarray
    open_long_usd: np.ndarray
    open_short_usd: np.ndarray
    oi_usd: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def price_bin(self) -> float:
        return float(self.config.price_bin)

    @property
    def ts_end(self) -> np.ndarray:
        """The time each kept snapshot holds at: the end of its step."""
        return self.ts + np.timedelta64(self.config.step_ns, "ns")

    def intensity(self) -> np.ndarray:
        """``long_usd + short_usd``, [kept steps, bins]: what a combined heatmap draws."""
        return self.long_usd + self.short_usd

    def heatmap_rows(self, min_usd: float = 0.0) -> dict[str, np.ndarray]:
        """The non-empty heatmap cells as flat columns: ts (step start), price (bin centre), long_usd, short_usd.
        Cells whose long + short notional is <= ``min_usd`` are left out. Ordered by ts, then price."""
        total = self.long_usd + self.short_usd
        i, k = np.nonzero(total > min_usd)
        return {
            "ts": self.ts[i],
            "price": self.prices[k],
            "long_usd": self.long_usd[i, k],
            "short_usd": self.short_usd[i, k],
        }


def _resolve_keep_from(keep_from, ts: np.ndarray) -> int:
    if keep_from is None:
        return 0
    if isinstance(keep_from, int | np.integer) and not isinstance(keep_from, bool):
        idx = int(keep_from)
        if not 0 <= idx <= ts.size:
            raise ValueError(f"keep_from={idx} is outside the {ts.size} steps")
        return idx
    if isinstance(keep_from, datetime):
        if keep_from.tzinfo is not None:
            keep_from = keep_from.astimezone(UTC).replace(tzinfo=None)
        keep_from = np.datetime64(keep_from, "ns")
    if isinstance(keep_from, np.datetime64):
        ns = keep_from.astype("datetime64[ns]").view(np.int64)
        return int(np.searchsorted(ts, ns, side="left"))
    raise ValueError(f"keep_from must be a step index, a datetime or a numpy datetime64, got {keep_from!r}")


def _bucket_profile(
    n: int, step: np.ndarray, price: np.ndarray, qty: np.ndarray, sub: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, vwap, qty) rows, one per (step, price bucket of width ``sub``), sorted by step then price."""
    ok = (step >= 0) & (step < n) & (qty > 0) & np.isfinite(qty) & np.isfinite(price) & (price > 0)
    if not np.all(ok):
        step, price, qty = step[ok], price[ok], qty[ok]
    if step.size == 0:
        empty = np.zeros(0)
        return np.zeros(0, dtype=np.int64), empty, empty
    bucket = np.floor(price / sub).astype(np.int64)
    b0 = int(bucket.min())
    width = int(bucket.max()) - b0 + 1
    key = step * width + (bucket - b0)
    notional = qty * price
    if n * width <= _DENSE_KEY_LIMIT and step.size * 8 >= n * width:
        qsum = np.bincount(key, weights=qty, minlength=n * width)
        keys = np.flatnonzero(qsum)
        nsum = np.bincount(key, weights=notional, minlength=n * width)[keys]
        qsum = qsum[keys]
    else:
        keys, inv = np.unique(key, return_inverse=True)
        qsum = np.bincount(inv, weights=qty, minlength=keys.size)
        nsum = np.bincount(inv, weights=notional, minlength=keys.size)
    return keys // width, nsum / qsum, qsum


def volume_profile(
    step_ts, trade_ts, trade_price, trade_qty, *, step_minutes: int = 5, price_bucket: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw trades -> compact volume profile ``(step index, VWAP, qty)``, one row per (step, price bucket).

    ``step_ts`` are step start times; a trade belongs to the step whose ``[start, start + step)`` holds it; trades in
    no step are dropped. Use ``price_bucket = price_bin / 4`` (what the engine re-buckets to anyway).
    """
    starts = _as_ns(step_ts)
    t = _as_ns(trade_ts)
    idx = np.searchsorted(starts, t, side="right") - 1
    inside = (idx >= 0) & (t < starts[np.clip(idx, 0, None)] + step_minutes * 60 * 1_000_000_000)
    if not price_bucket > 0:
        raise ValueError(f"price_bucket must be positive, got {price_bucket!r}")
    return _bucket_profile(
        starts.size,
        idx[inside].astype(np.int64),
        np.asarray(trade_price, dtype=np.float64)[inside],
        np.asarray(trade_qty, dtype=np.float64)[inside],
        float(price_bucket),
    )


def _leverage_weights(cfg: ModelConfig, inputs: ModelInputs) -> np.ndarray:
    """[steps, side, leverage] weights; each (step, side) sums to 1."""
    base = np.asarray(cfg.leverage_weights, dtype=np.float64)
    n, L = inputs.n_steps, base.size
    out = np.broadcast_to(base, (n, 2, L))
    if cfg.imbalance_tilt == 0.0 or inputs.taker_buy is None or L < 2:
        return out
    buy, sell = inputs.taker_buy, inputs.taker_sell
    total = buy + sell
    valid = np.isfinite(total) & (total > 0)
    imb = np.zeros(n)
    imb[valid] = (buy[valid] - sell[valid]) / total[valid]
    imb = np.clip(imb, -1.0, 1.0)
    loglev = np.log(np.asarray(cfg.leverage, dtype=np.float64))
    z = loglev - loglev.mean()
    sd = z.std()
    z = z / sd if sd > 0 else z
    expo = cfg.imbalance_tilt * imb[:, None] * z[None, :]
    w = np.empty((n, 2, L))
    w[:, LONG, :] = base * np.exp(expo)
    w[:, SHORT, :] = base * np.exp(-expo)
    w /= w.sum(axis=2, keepdims=True)
    return w


def run_model(spec: SymbolSpec, config: ModelConfig, inputs: ModelInputs, *, keep_from=None) -> ModelResult:
    """Replay ``inputs`` step by step; keep heatmap snapshots and events from ``keep_from`` (a step index, a
    datetime or a datetime64 — the first step starting at or after it; None = every step) on."""
    cfg = config.resolve(spec)
    b = float(cfg.price_bin)
    n = inputs.n_steps
    keep = _resolve_keep_from(keep_from, inputs.ts)
    gaps = np.diff(inputs.ts)
    if np.any(gaps % cfg.step_ns):
        bad = int(np.flatnonzero(gaps % cfg.step_ns)[0])
        raise ValueError(
            f"step {bad + 1} starts {gaps[bad] / 6e10:g} min after the previous one: ts must be on a "
            f"{cfg.step_minutes}-minute grid (config.step_minutes)"
        )
    tier = representative_tier(spec, cfg.position_usd)
    lev = np.asarray(cfg.leverage, dtype=np.float64)
    L = lev.size
    high, low, close, oi = inputs.high, inputs.low, inputs.close, inputs.oi

    # Grid: every LP the inputs can produce (linear in the entry, so the extreme entries give the extremes).
    extremes = np.array([low.min(), high.max()])
    lps = np.concatenate(
        [
            np.ravel(
                liquidation_price_for_notional(extremes[:, None], lev[None, :], side, tier, cfg.position_usd)
            )
            for side in (LONG, SHORT)
        ]
    )
    k_min = math.floor(lps.min() / b + 0.5) - 1
    k_max = math.floor(lps.max() / b + 0.5) + 1
    nb = k_max - k_min + 1
    if nb > MAX_BINS:
        raise ValueError(
            f"{spec.symbol}: the liquidation-price grid would have {nb:,} bins of {b:g} (more than {MAX_BINS:,}); "
            "use a larger price_bin"
        )
    decimals = max(0, math.ceil(-math.log10(b))) + 8
    prices = np.round((k_min + np.arange(nb, dtype=np.float64)) * b, decimals)

    # Entries: volume at price per step (fallback: typical price), as rows sorted by step.
    if inputs.has_profile:
        r_step, r_price, r_qty = _bucket_profile(
            n, inputs.profile_step, inputs.profile_price, inputs.profile_qty, b / ENTRY_SUBBINS
        )
        r_price = np.clip(r_price, low[r_step], high[r_step])
    else:
        r_step = np.zeros(0, dtype=np.int64)
        r_price = r_qty = np.zeros(0)
    covered = np.zeros(n, dtype=bool)
    covered[r_step] = True
    missing = np.flatnonzero(~covered)
    if missing.size:
        typical = (high[missing] + low[missing] + close[missing]) / 3.0
        r_step = np.concatenate([r_step, missing])
        r_price = np.concatenate([r_price, typical])
        r_qty = np.concatenate([r_qty, np.ones(missing.size)])
        order = np.argsort(r_step, kind="stable")
        r_step, r_price, r_qty = r_step[order], r_price[order], r_qty[order]
    r_notional = r_qty * r_price
    step_notional = np.bincount(r_step, weights=r_notional, minlength=n)
    step_qty = np.bincount(r_step, weights=r_qty, minlength=n)
    vwap = step_notional / step_qty

    d_oi = np.zeros(n)
    d_oi[1:] = np.diff(oi)
    open_usd = np.where(d_oi > 0, d_oi, 0.0) * vwap

    sel = open_usd[r_step] > 0
    r_step, r_price, r_notional = r_step[sel], r_price[sel], r_notional[sel]
    share = r_notional / step_notional[r_step]
    lw = _leverage_weights(cfg, inputs)
    amt = (open_usd[r_step] * share)[:, None, None] * lw[r_step]  # [rows, side, leverage]
    bins = np.empty((r_step.size, 2, L), dtype=np.int64)
    for side in (LONG, SHORT):
        lp = liquidation_price_for_notional(r_price[:, None], lev[None, :], side, tier, cfg.position_usd)
        bins[:, side, :] = np.clip(np.floor(lp / b + 0.5).astype(np.int64) - k_min, 0, nb - 1)
    flat = (np.arange(2)[None, :, None] * (L * nb) + np.arange(L)[None, None, :] * nb + bins).reshape(-1)
    amt_flat = amt.reshape(-1)
    opened = amt.sum(axis=(0, 2))

    seg_a = np.searchsorted(r_step, np.arange(n), side="left")
    seg_e = np.searchsorted(r_step, np.arange(n), side="right")
    has_rows = seg_e > seg_a
    long_top = np.zeros(n, dtype=np.int64)  # per step: 1 + highest long bin opened
    short_bot = np.full(n, nb, dtype=np.int64)  # per step: lowest short bin opened
    if r_step.size:
        starts = seg_a[has_rows]
        long_top[has_rows] = np.maximum.reduceat(bins[:, LONG, :].max(axis=1), starts) + 1
        short_bot[has_rows] = np.minimum.reduceat(bins[:, SHORT, :].min(axis=1), starts)

    cut_long = np.searchsorted(prices, low, side="left")  # longs: bins with centre >= low are hit
    cut_short = np.searchsorted(prices, high, side="right")  # shorts: bins with centre <= high are hit
    oi_usd = oi * close

    state = np.zeros(2 * L * nb)
    s3 = state.reshape(2, L, nb)
    kept = n - keep
    hm = np.zeros((2, kept, nb))
    open_side = np.zeros((2, n))
    closed = [0.0, 0.0]
    capped = [0.0, 0.0]
    liquidated = [0.0, 0.0]
    ev_step: list[int] = []
    ev_side: list[int] = []
    ev_bin: list[np.ndarray] = []
    ev_usd: list[np.ndarray] = []
    top = 0  # longs live only in bins < top
    bot = nb  # shorts live only in bins >= bot
    two_l = 2 * L

    for t in range(n):
        # 1. open
        if has_rows[t]:
            a, e = seg_a[t] * two_l, seg_e[t] * two_l
            np.add.at(state, flat[a:e], amt_flat[a:e])
            top = max(top, int(long_top[t]))
            bot = min(bot, int(short_bot[t]))
        # 2. consume
        k = int(cut_long[t])
        if k < top:
            blk = s3[LONG, :, k:top]
            per_bin = blk.sum(axis=0)
            nz = np.flatnonzero(per_bin)
            if nz.size:
                liquidated[LONG] += float(per_bin[nz].sum())
                if t >= keep:
                    ev_step.append(t)
                    ev_side.append(LONG)
                    ev_bin.append(nz + k)
                    ev_usd.append(per_bin[nz])
            blk[...] = 0.0
            top = k
        k = int(cut_short[t])
        if k > bot:
            blk = s3[SHORT, :, bot:k]
            per_bin = blk.sum(axis=0)
            nz = np.flatnonzero(per_bin)
            if nz.size:
                liquidated[SHORT] += float(per_bin[nz].sum())
                if t >= keep:
                    ev_step.append(t)
                    ev_side.append(SHORT)
                    ev_bin.append(nz + bot)
                    ev_usd.append(per_bin[nz])
            blk[...] = 0.0
            bot = k
        # 3. close (dOI < 0) and cap at the OI notional
        cut = -d_oi[t] * close[t] if d_oi[t] < 0 else 0.0
        cap = oi_usd[t]
        for side in (LONG, SHORT):
            side_state = s3[side]
            m = float(side_state.sum())
            if m > 0.0:
                after_close = m - cut if cut < m else 0.0
                target = after_close if after_close < cap else cap
                if target < m:
                    if target <= 0.0:
                        side_state[...] = 0.0
                        new = 0.0
                    else:
                        side_state *= target / m
                        new = float(side_state.sum())
                    closed[side] += m - new
                    capped[side] += max(0.0, after_close - target)
                    m = new
            open_side[side, t] = m
        if t >= keep:
            s3.sum(axis=1, out=hm[:, t - keep, :])

    all_ts = inputs.ts.view("datetime64[ns]")
    if ev_step:
        counts = np.array([x.size for x in ev_bin])
        events = np.empty(int(counts.sum()), dtype=EVENT_DTYPE)
        events["ts"] = np.repeat(all_ts[np.array(ev_step)], counts)
        events["side"] = np.repeat(np.array(ev_side, dtype=np.int8), counts)
        events["price"] = prices[np.concatenate(ev_bin)]
        events["notional"] = np.concatenate(ev_usd)
    else:
        events = np.empty(0, dtype=EVENT_DTYPE)

    ledger = {
        SIDES[s]: {
            "opened": float(opened[s]),
            "open": float(s3[s].sum()),
            "closed": closed[s],
            "liquidated": liquidated[s],
            "closed_by_cap": capped[s],
        }
        for s in (LONG, SHORT)
    }
    return ModelResult(
        symbol=spec.symbol,
        config=cfg,
        prices=prices,
        step_index=np.arange(keep, n),
        ts=all_ts[keep:],
        long_usd=hm[LONG],
        short_usd=hm[SHORT],
        close=close[keep:].copy(),
        events=events,
        ledger=ledger,
        n_steps=n,
        all_ts=all_ts,
        last_price=close.copy(),
        open_long_usd=open_side[LONG],
        open_short_usd=open_side[SHORT],
        oi_usd=oi_usd,
        info={
            "bins": nb,
            "leverages": L,
            "tier": {"mmr": tier.mmr, "cum": tier.cum, "floor": tier.floor, "cap": tier.cap},
            "entry_rows": int(r_step.size),
            "kept_steps": kept,
        },
    )
