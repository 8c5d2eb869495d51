"""The time-evolving liquidation model: a replay over fixed-size steps with state on a fixed liquidation-price grid.

**State, in coins.** ``S[cohort, side, leverage, bin]`` (float64), side 0 = long, 1 = short: the coins (contracts)
of open positions whose liquidation price lies in the bin, by the day they opened on (the cohort). Open interest is in
coins, so opening, closing and the cap are done in coins and a price move alone closes nothing. A USD figure is a
view: coins x the bin's price (the notional that would be force-sold there). Nothing else is carried between steps,
so a step costs O(cohorts x leverages x bins) whatever the history length.

**Age weight and lookback.** A replay ends at ``T`` (the end of its last step) and covers the lookback window of
``N = lookback_days`` days before it, cut into N cohorts of one day (earlier input steps are dropped). What the map
shows at time ``t`` weights cohort ``c`` (starting at ``t_c``, age ``a = t - t_c``) by
``w = clip((N days - a) / (N - 1 days), 0, 1)``: a day's positions count fully for their first day, then fade
linearly to nothing at N days, beyond what closing and liquidation remove. Every step below acts on each cohort
alone and does not depend on the state (closing scales by the market's own fraction), and the cohort the next day's
replay leaves out has weight 0 from that day on. So the map at ``t`` is the same whichever day's replay computes it:
there is no seam at midnight. (With ``N = 1`` every position of the day counts fully and the map starts afresh at
midnight.)

**Grid.** Bin ``k`` is centred on ``k * price_bin`` and covers ``[(k - 1/2) * price_bin, (k + 1/2) * price_bin)``; a
liquidation price ``LP`` lands in bin ``floor(LP / price_bin + 1/2)``. Centres are whole multiples of the bin, so they
are the same prices on every day and every lookback. The grid spans every liquidation price the inputs can produce
(the margin formula is linear in the entry price) plus one bin each side.

**Open interest.** A reading that is missing, not finite or <= 0 is a gap, never "everything closed". Gaps of up to
``MAX_OI_GAP_STEPS`` are interpolated linearly (their change is spread over the gap); a longer gap (a missing metrics
day) holds the last reading and the first reading after it opens nothing (what opened during the gap is unknown; a
fall still closes in proportion). Leading gaps take the first reading. ``info`` counts both.

**Step t** (in this order):

1. *Consume.* **A long bin is liquidated when its centre is >= the step's low; a short bin when its centre is <= the
   step's high.** Each liquidated bin is an event ``(ts, side, price = bin centre, notional)``, its notional the
   weighted coins x the bin's price.
2. *Open.* ``dOI = OI[t] - OI[t-1] > 0`` opens ``dOI`` coins of longs **and** ``dOI`` of shorts (the first step
   compares with ``oi_start``, or opens nothing without it; the replay starts empty, the window is its warm-up). Entries are spread over the step's volume at price
   (re-bucketed to ``price_bin / 4`` with the VWAP of each bucket, clipped to ``[low, high]``), or put at the typical
   price ``(h + l + c) / 3`` when the step has no trades; each side is split over the leverage mix (optionally tilted
   by taker imbalance), and each piece lands in the bin of its isolated-margin liquidation price for the
   representative position size.
3. *Same-step liquidations.* A position opened in this step is liquidated in it only when the step's **close** is
   through its level (longs: bin centre >= close; shorts: <= close): the price then certainly crossed the level after
   the entry. When only the step's low (high) crossed it, the low may have come before the entry, so it stays open
   and the next step's range decides. (Counting those too over-counts at high leverage: `liq bench model` prints by
   how much on the sample.)
4. *Close.* ``dOI < 0`` closes the fraction ``-dOI / OI[t-1]`` of what is open, on both sides, in proportion.
5. *Cap.* Each side's coins are capped at ``OI[t]``, scaling down in proportion if needed (with the rules above the
   held coins never exceed open interest, so this only guards against float drift).

After step t no long mass sits in a bin whose centre is at or above ``close[t]``, nor at or above ``low[t]`` unless it
opened in step t; the mirror holds for shorts. The ledger per side, in coins: ``opened == open + closed +
liquidated`` (to float rounding). Same inputs (same arrays, same order) give the same output bit for bit: only
order-fixed numpy reductions are used.
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
    - ``oi``: open interest in contracts (coins) at the **end** of the step. NaN, inf or <= 0 means missing: stored
      as NaN, a gap the engine bridges (module docstring).
    - ``profile_step``/``profile_price``/``profile_qty`` (optional, all or none): volume at price, one row per
      (step index, price) — raw aggTrades rows or pre-aggregated buckets. Pre-aggregated buckets should carry their
      VWAP as price and be at most ``price_bin / 4`` wide. Rows outside ``[0, n_steps)`` or with qty <= 0 are ignored.
    - ``taker_buy``/``taker_sell`` (optional, both or none): taker buy / sell volume per step, for the imbalance tilt.
    - ``oi_start`` (optional): open interest at the first step's start, so the first step can open what it added.
      Without it the first step opens nothing.
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
    oi_start: float | None = None

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
        oi = _float_array("oi", self.oi, n).copy()
        # missing, not finite or <= 0: a gap (see the module docstring)
        oi[~(np.isfinite(oi) & (oi > 0))] = np.nan
        if not np.isfinite(oi).any():
            raise ValueError("oi (open interest) has no values: the model cannot open positions without it")
        put(self, "oi", oi)
        start = self.oi_start
        put(
            self, "oi_start", float(start) if start is not None and np.isfinite(start) and start > 0 else None
        )

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

    def steps(self, lo: int, hi: int | None = None) -> ModelInputs:
        """Steps ``[lo, hi)``, as if read for that window: profile rows re-indexed, ``oi_start`` the reading that ends
        the step before ``lo``."""
        hi = self.n_steps if hi is None else hi
        cut = slice(lo, hi)
        kw = {}
        if self.has_profile:
            rows = (self.profile_step >= lo) & (self.profile_step < hi)
            kw = {
                "profile_step": self.profile_step[rows] - lo,
                "profile_price": self.profile_price[rows],
                "profile_qty": self.profile_qty[rows],
            }
        if self.taker_buy is not None:
            kw.update(taker_buy=self.taker_buy[cut], taker_sell=self.taker_sell[cut])
        return ModelInputs(
            ts=self.ts[cut],
            open=self.open[cut],
            high=self.high[cut],
            low=self.low[cut],
            close=self.close[cut],
            oi=self.oi[cut],
            oi_start=self.oi[lo - 1] if lo > 0 else self.oi_start,
            **kw,
        )


@dataclass(eq=False)
class ModelResult:
    """What one replay produces.

    Heatmap (steps from ``keep_from`` on, dense): ``long_usd[i, k]`` / ``short_usd[i, k]`` is the age-weighted open
    position, in USD at the bin's price, whose liquidation price lies in bin ``k`` (centre ``prices[k]``) after step
    ``step_index[i]`` (start time ``ts[i]``). ``events`` (structured array, ``EVENT_DTYPE``) are the predicted
    liquidations of those same steps, valued the same way. Per-step series over the replayed window: ``last_price``
    (step close), ``open_coins[side]`` (coins held after the step, unweighted), ``open_long_usd``/``open_short_usd``
    (those coins x close), ``oi`` (open interest in coins, gaps bridged), ``oi_usd`` (OI x close), ``opened`` (coins
    opened per side). ``ledger`` (coins per side, plus ``liquidated_usd`` = the events' sum) covers the whole replay.
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
    open_coins: np.ndarray
    oi: np.ndarray
    opened: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def open_long_usd(self) -> np.ndarray:
        return self.open_coins[0] * self.last_price

    @property
    def open_short_usd(self) -> np.ndarray:
        return self.open_coins[1] * self.last_price

    @property
    def oi_usd(self) -> np.ndarray:
        return self.oi * self.last_price

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


MAX_OI_GAP_STEPS = (
    12  # open-interest gaps up to an hour are interpolated; longer ones hold (module docstring)
)


@dataclass(frozen=True)
class _OiPath:
    level: np.ndarray  # coins at each step's end, gaps bridged
    opens: np.ndarray  # coins opened per side in each step (>= 0)
    kept: np.ndarray  # share of open positions the step's closing keeps (<= 1)
    missing: int  # readings that were missing, not finite or <= 0
    long_gaps: int  # gaps longer than MAX_OI_GAP_STEPS


def _oi_path(oi: np.ndarray, oi_start: float | None, max_gap: int = MAX_OI_GAP_STEPS) -> _OiPath:
    n = oi.size
    ok = np.isfinite(oi)
    idx = np.arange(n)
    level = np.interp(idx, idx[ok], oi[ok])  # inside: linear; before the first / after the last: that reading
    rebase = np.zeros(n, dtype=bool)
    edges = np.diff(np.concatenate([[0], (~ok).astype(np.int8), [0]]))
    long_gaps = 0
    for a, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if 0 < a and e < n and e - a > max_gap:
            level[a:e] = level[
                a - 1
            ]  # hold; what opened meanwhile is unknown, so the step after opens nothing
            rebase[e] = True
            long_gaps += 1
    before = np.concatenate([[level[0] if oi_start is None else oi_start], level[:-1]])
    d = level - before
    kept = np.ones(n)
    fell = d < 0
    kept[fell] = level[fell] / before[fell]
    return _OiPath(level, np.where((d > 0) & ~rebase, d, 0.0), kept, int((~ok).sum()), long_gaps)


_DAY_NS = 86_400 * 1_000_000_000


def _window_start(ts: np.ndarray, cfg: ModelConfig) -> int:
    """The time (ns) the lookback window starts: ``lookback_days`` before the end of the last step."""
    return int(ts[-1]) + cfg.step_ns - cfg.lookback_days * _DAY_NS


def _cohorts(ts: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(cohort of each step, weight[t, c] of cohort c in the map after step t): module docstring."""
    start = _window_start(ts, cfg)
    n_days = cfg.lookback_days
    cohort = np.clip((ts - start) // _DAY_NS, 0, n_days - 1).astype(np.int64)
    age = (ts + cfg.step_ns - start)[:, None] - np.arange(n_days)[None, :] * _DAY_NS
    if n_days == 1:
        return cohort, np.ones((ts.size, 1))  # a one-day window: today's positions at full weight
    return cohort, np.clip((n_days * _DAY_NS - age) / ((n_days - 1) * _DAY_NS), 0.0, 1.0)


def _price_grid(spec: SymbolSpec, cfg: ModelConfig, inputs: ModelInputs, tier, lev: np.ndarray):
    """(bin centres, index of the first bin): every LP the inputs can produce, plus one bin each side."""
    b = float(cfg.price_bin)
    extremes = np.array([inputs.low.min(), inputs.high.max()])
    lps = np.concatenate(
        [
            np.ravel(
                liquidation_price_for_notional(extremes[:, None], lev[None, :], s, tier, cfg.position_usd)
            )
            for s in (LONG, SHORT)
        ]
    )
    k_min = math.floor(lps.min() / b + 0.5) - 1
    nb = math.floor(lps.max() / b + 0.5) + 1 - k_min + 1
    if nb > MAX_BINS:
        raise ValueError(
            f"{spec.symbol}: the liquidation-price grid would have {nb:,} bins of {b:g} (more than {MAX_BINS:,}); "
            "use a larger price_bin"
        )
    decimals = max(0, math.ceil(-math.log10(b))) + 8
    return np.round((k_min + np.arange(nb, dtype=np.float64)) * b, decimals), k_min


@dataclass(frozen=True)
class _Entries:
    """New positions, one row per (entry bucket, side, leverage) flattened into state indices, sorted by step."""

    step: np.ndarray  # [rows * 2 * L] step of each piece (sorted)
    side: np.ndarray  # [rows * 2 * L] LONG or SHORT
    bin: np.ndarray  # [rows * 2 * L] liquidation-price bin
    flat: np.ndarray  # [rows * 2 * L] index into the flat state
    coins: np.ndarray  # [rows * 2 * L] coins that enter the state (0 where liquidated at once)
    instant: (
        np.ndarray
    )  # [rows * 2 * L] coins liquidated in their own step (the close is through their level)
    opened: np.ndarray  # [2] coins opened per side over the replay
    deferred: np.ndarray  # [2] coins the step's range crossed but its close did not: left to the next steps


def _entry_rows(inputs: ModelInputs, b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, price, qty) of every entry bucket: the volume profile, or the typical price of a step without trades."""
    n, high, low, close = inputs.n_steps, inputs.high, inputs.low, inputs.close
    if inputs.has_profile:
        r_step, r_price, r_qty = _bucket_profile(
            n, inputs.profile_step, inputs.profile_price, inputs.profile_qty, b / ENTRY_SUBBINS
        )
        r_price = np.clip(r_price, low[r_step], high[r_step])
    else:
        r_step, r_price, r_qty = np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
    covered = np.zeros(n, dtype=bool)
    covered[r_step] = True
    missing = np.flatnonzero(~covered)
    if missing.size:
        r_step = np.concatenate([r_step, missing])
        r_price = np.concatenate([r_price, (high[missing] + low[missing] + close[missing]) / 3.0])
        r_qty = np.concatenate([r_qty, np.ones(missing.size)])
        order = np.argsort(r_step, kind="stable")
        r_step, r_price, r_qty = r_step[order], r_price[order], r_qty[order]
    return r_step, r_price, r_qty


def _entries(
    cfg: ModelConfig, inputs: ModelInputs, opens: np.ndarray, tier, lev, prices, k_min, cohort
) -> _Entries:
    b, nb, L = float(cfg.price_bin), prices.size, lev.size
    r_step, r_price, r_qty = _entry_rows(inputs, b)
    step_qty = np.bincount(r_step, weights=r_qty, minlength=inputs.n_steps)
    sel = opens[r_step] > 0
    r_step, r_price, r_qty = r_step[sel], r_price[sel], r_qty[sel]
    lw = _leverage_weights(cfg, inputs)
    coins = (opens[r_step] * r_qty / step_qty[r_step])[:, None, None] * lw[r_step]  # [rows, side, leverage]
    bins = np.empty((r_step.size, 2, L), dtype=np.int64)
    for side in (LONG, SHORT):
        lp = liquidation_price_for_notional(r_price[:, None], lev[None, :], side, tier, cfg.position_usd)
        bins[:, side, :] = np.clip(np.floor(lp / b + 0.5).astype(np.int64) - k_min, 0, nb - 1)
    # Same-step rule: liquidated at once only where the step's close is through the level.
    close_long = np.searchsorted(prices, inputs.close, side="left")[r_step]
    close_short = np.searchsorted(prices, inputs.close, side="right")[r_step]
    at_once = np.empty(bins.shape, dtype=bool)
    at_once[:, LONG, :] = bins[:, LONG, :] >= close_long[:, None]
    at_once[:, SHORT, :] = bins[:, SHORT, :] < close_short[:, None]
    side = np.broadcast_to(np.arange(2)[None, :, None], bins.shape)
    low_long = np.searchsorted(prices, inputs.low, side="left")[r_step]
    high_short = np.searchsorted(prices, inputs.high, side="right")[r_step]
    crossed = np.empty(bins.shape, dtype=bool)
    crossed[:, LONG, :] = bins[:, LONG, :] >= low_long[:, None]
    crossed[:, SHORT, :] = bins[:, SHORT, :] < high_short[:, None]
    flat = (cohort[r_step][:, None, None] * 2 + side) * (L * nb) + np.arange(L)[None, None, :] * nb + bins
    return _Entries(
        step=np.repeat(r_step, 2 * L),
        side=side.reshape(-1),
        bin=bins.reshape(-1),
        flat=flat.reshape(-1),
        coins=np.where(at_once, 0.0, coins).reshape(-1),
        instant=np.where(at_once, coins, 0.0).reshape(-1),
        opened=coins.sum(axis=(0, 2)),
        deferred=np.where(crossed & ~at_once, coins, 0.0).sum(axis=(0, 2)),
    )


def _liquidate(s4: np.ndarray, side: int, lo: int, hi: int, w: np.ndarray, scale: float):
    """Zero bins [lo, hi) of one side in every cohort. Returns (coins, bins that held mass, their weighted coins)."""
    blk = s4[:, side, :, lo:hi]
    per_bin = blk.sum(axis=1)  # [cohort, bins]
    total = per_bin.sum(axis=0)
    nz = np.flatnonzero(total)
    coins = float(total[nz].sum()) * scale
    shown = (w @ per_bin[:, nz]) * scale
    blk[...] = 0.0
    return coins, nz + lo, shown


@dataclass
class _Replay:
    heat: np.ndarray  # [side, kept steps, bins] age-weighted coins
    held: np.ndarray  # [side, steps] coins after each step
    ev: list  # (step, side, bins, weighted coins) of range liquidations
    liquidated: np.ndarray  # [2] coins
    closed: np.ndarray  # [2] coins
    capped: np.ndarray  # [2] coins


def _replay(
    inputs: ModelInputs, prices, entries: _Entries, oi: _OiPath, weight: np.ndarray, keep: int, L: int
):
    """Steps 1, 2, 4 and 5 of the module docstring (step 3 is precomputed in `_entries`). ``weight[t, c]`` is cohort
    c's weight in the map after step t."""
    n, nb, C = inputs.n_steps, prices.size, weight.shape[1]
    s_flat = np.zeros(C * 2 * L * nb)
    s4 = s_flat.reshape(C, 2, L, nb)
    cut_long = np.searchsorted(prices, inputs.low, side="left")  # longs: bins with centre >= low are hit
    cut_short = np.searchsorted(prices, inputs.high, side="right")  # shorts: bins with centre <= high are hit
    seg = np.searchsorted(entries.step, np.arange(n + 1), side="left")
    entered = np.zeros((2, n))
    np.add.at(entered, (entries.side, entries.step), entries.coins)
    lived = entries.coins > 0
    long_top = np.zeros(n, dtype=np.int64)  # per step: 1 + the highest long bin it opens
    short_bot = np.full(n, nb, dtype=np.int64)  # per step: the lowest short bin it opens
    is_long = lived & (entries.side == LONG)
    is_short = lived & (entries.side == SHORT)
    np.maximum.at(long_top, entries.step[is_long], entries.bin[is_long] + 1)
    np.minimum.at(short_bot, entries.step[is_short], entries.bin[is_short])
    out = _Replay(np.zeros((2, n - keep, nb)), np.zeros((2, n)), [], np.zeros(2), np.zeros(2), np.zeros(2))
    held = np.zeros(2)  # coins per side, kept up to date instead of summing the state every step
    # Closing and the cap scale a whole side, so the state is stored divided by a per-side scale: O(1) per close.
    scale = np.ones(2)
    top, bot = 0, nb  # longs live only in bins < top, shorts only in bins >= bot
    for t in range(n):
        if cut_long[t] < top:
            coins, bins, shown = _liquidate(s4, LONG, int(cut_long[t]), top, weight[t], scale[LONG])
            held[LONG] -= coins
            out.liquidated[LONG] += coins
            out.ev.append((t, LONG, bins, shown))
            top = int(cut_long[t])
        if cut_short[t] > bot:
            coins, bins, shown = _liquidate(s4, SHORT, bot, int(cut_short[t]), weight[t], scale[SHORT])
            held[SHORT] -= coins
            out.liquidated[SHORT] += coins
            out.ev.append((t, SHORT, bins, shown))
            bot = int(cut_short[t])
        a, e = seg[t], seg[t + 1]
        if e > a:
            np.add.at(s_flat, entries.flat[a:e], entries.coins[a:e] / scale[entries.side[a:e]])
            held += entered[:, t]
            top = max(top, int(long_top[t]))
            bot = min(bot, int(short_bot[t]))
        if oi.kept[t] < 1.0:
            out.closed += held * (1.0 - oi.kept[t])
            held *= oi.kept[t]
            scale *= oi.kept[t]
        for side in (LONG, SHORT):
            if held[side] > oi.level[t]:
                out.capped[side] += held[side] - oi.level[t]
                scale[side] *= oi.level[t] / held[side]
                held[side] = oi.level[t]
            if scale[side] < 1e-150:  # fold the scale back in long before it could underflow
                s4[:, side] *= scale[side]
                scale[side] = 1.0
        out.held[:, t] = np.maximum(held, 0.0)
        if t >= keep:
            out.heat[:, t - keep, :] = np.tensordot(weight[t], s4.sum(axis=2), axes=1) * scale[:, None]
    return out


def _events(
    run: _Replay, entries: _Entries, inputs: ModelInputs, prices, weight, cohort, keep: int
) -> np.ndarray:
    """Range and same-step liquidations of the kept steps, one row per (step, side, bin), in USD at the bin."""
    nb = prices.size
    parts_key, parts_coins = [], []
    for t, side, bins, shown in run.ev:
        if t >= keep and bins.size:
            parts_key.append((t * 2 + side) * nb + bins)
            parts_coins.append(shown)
    hit = np.flatnonzero((entries.instant > 0) & (entries.step >= keep))
    if hit.size:
        step = entries.step[hit]
        parts_key.append((step * 2 + entries.side[hit]) * nb + entries.bin[hit])
        parts_coins.append(entries.instant[hit] * weight[step, cohort[step]])
    if not parts_key:
        return np.empty(0, dtype=EVENT_DTYPE)
    keys, inv = np.unique(np.concatenate(parts_key), return_inverse=True)
    coins = np.bincount(inv, weights=np.concatenate(parts_coins), minlength=keys.size)
    step, side, k = keys // (2 * nb), (keys // nb) % 2, keys % nb
    events = np.empty(keys.size, dtype=EVENT_DTYPE)
    events["ts"] = inputs.ts.view("datetime64[ns]")[step]
    events["side"] = side.astype(np.int8)
    events["price"] = prices[k]
    events["notional"] = coins * prices[k]
    return events[events["notional"] > 0]


def run_model(spec: SymbolSpec, config: ModelConfig, inputs: ModelInputs, *, keep_from=None) -> ModelResult:
    """Replay ``inputs`` step by step; keep heatmap snapshots and events from ``keep_from`` (a step index, a
    datetime or a datetime64 — the first step starting at or after it; None = every step) on. Steps before the
    lookback window that ends with the last step are dropped (``info["dropped_steps"]``)."""
    cfg = config.resolve(spec)
    gaps = np.diff(inputs.ts)
    if np.any(gaps % cfg.step_ns):
        bad = int(np.flatnonzero(gaps % cfg.step_ns)[0])
        raise ValueError(
            f"step {bad + 1} starts {gaps[bad] / 6e10:g} min after the previous one: ts must be on a "
            f"{cfg.step_minutes}-minute grid (config.step_minutes)"
        )
    keep = _resolve_keep_from(keep_from, inputs.ts)
    first = int(np.searchsorted(inputs.ts, _window_start(inputs.ts, cfg), side="left"))
    if first:
        inputs, keep = inputs.steps(first), max(keep - first, 0)
    tier = representative_tier(spec, cfg.position_usd)
    lev = np.asarray(cfg.leverage, dtype=np.float64)
    prices, k_min = _price_grid(spec, cfg, inputs, tier, lev)
    oi = _oi_path(inputs.oi, inputs.oi_start)
    cohort, weight = _cohorts(inputs.ts, cfg)
    entries = _entries(cfg, inputs, oi.opens, tier, lev, prices, k_min, cohort)
    run = _replay(inputs, prices, entries, oi, weight, keep, lev.size)
    events = _events(run, entries, inputs, prices, weight, cohort, keep)
    return _result(spec, cfg, inputs, prices, keep, first, run, events, entries, oi, tier)


def _result(
    spec, cfg, inputs, prices, keep, first, run: _Replay, events, entries: _Entries, oi: _OiPath, tier
):
    n = inputs.n_steps
    instant = np.bincount(entries.side, weights=entries.instant, minlength=2)
    liquidated = run.liquidated + instant
    ledger = {
        SIDES[s]: {
            "opened": float(entries.opened[s]),
            "open": float(run.held[s, -1]),
            "closed": float(run.closed[s] + run.capped[s]),
            "liquidated": float(liquidated[s]),
            "closed_by_cap": float(run.capped[s]),
        }
        for s in (LONG, SHORT)
    }
    all_ts = inputs.ts.view("datetime64[ns]")
    return ModelResult(
        symbol=spec.symbol,
        config=cfg,
        prices=prices,
        step_index=first + np.arange(keep, n),
        ts=all_ts[keep:],
        long_usd=run.heat[LONG] * prices,
        short_usd=run.heat[SHORT] * prices,
        close=inputs.close[keep:].copy(),
        events=events,
        ledger=ledger,
        n_steps=n,
        all_ts=all_ts,
        last_price=inputs.close.copy(),
        open_coins=run.held,
        oi=oi.level,
        opened=oi.opens,
        info={
            "bins": prices.size,
            "leverages": len(cfg.leverage),
            "tier": {"mmr": tier.mmr, "cum": tier.cum, "floor": tier.floor, "cap": tier.cap},
            "entry_rows": int(entries.step.size // (2 * len(cfg.leverage))),
            "kept_steps": n - keep,
            "dropped_steps": first,
            "oi_missing_readings": oi.missing,
            "oi_long_gaps": oi.long_gaps,
            "same_step_deferred_coins": entries.deferred.tolist(),
        },
    )
