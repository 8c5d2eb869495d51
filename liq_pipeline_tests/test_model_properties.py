"""Property tests of the liquidation model over random price and open-interest paths (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from liq_pipeline.model import ModelConfig, ModelInputs, liquidation_price, run_model, zones
from liq_pipeline.symbols import load_registry
from liq_pipeline_tests.test_model import STEP, T0, assert_invariants

REGISTRY = load_registry()
SYMBOLS = {"BTCUSDT": 94_000.0, "ETHUSDT": 3_350.0, "ADAUSDT": 0.9, "DOGEUSDT": 0.32}
FAST = settings(max_examples=50, deadline=None)


@st.composite
def markets(draw):
    symbol = draw(st.sampled_from(sorted(SYMBOLS)))
    n = draw(st.integers(2, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    vol = draw(st.sampled_from([0.0, 0.001, 0.01, 0.05]))
    rng = np.random.default_rng(seed)
    close = SYMBOLS[symbol] * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    wick = np.abs(rng.normal(0.0, max(vol, 1e-4), n)) * close
    high = np.maximum(open_, close) + wick * rng.uniform(0, 1, n)
    low = np.maximum(np.minimum(open_, close) - wick * rng.uniform(0, 1, n), close * 0.5)
    # open interest: jumps up and down, sometimes crashes, sometimes missing
    oi = np.maximum(100.0 + np.cumsum(rng.normal(0.0, draw(st.sampled_from([1.0, 20.0, 80.0])), n)), 0.0)
    if draw(st.booleans()):
        oi[rng.uniform(0, 1, n) < 0.1] = np.nan
    oi[0] = 100.0  # at least one reading; zeros and NaNs elsewhere are gaps
    kw = {}
    if draw(st.booleans()):
        rows = int(rng.integers(0, 6 * n + 1))
        step = rng.integers(0, n, rows)
        kw = {
            "profile_step": step,
            "profile_price": rng.uniform(low[step], high[step]),
            "profile_qty": rng.exponential(1.0, rows),
        }
    if draw(st.booleans()):
        kw["taker_buy"] = rng.uniform(0, 10, n)
        kw["taker_sell"] = rng.uniform(0, 10, n)
    inputs = ModelInputs(
        ts=T0 + np.arange(n) * STEP, open=open_, high=high, low=low, close=close, oi=oi, **kw
    )
    spec = REGISTRY.get(symbol)
    weights = draw(st.lists(st.floats(0.01, 1.0), min_size=len(spec.leverage), max_size=len(spec.leverage)))
    tilt = draw(st.sampled_from([0.0, 0.0, 0.7, 3.0]))
    config = ModelConfig.for_symbol(
        spec, leverage=spec.leverage, leverage_weights=weights, imbalance_tilt=tilt
    )
    return spec, config, inputs


@FAST
@given(markets())
def test_conservation_invariants_and_cap_hold_on_random_paths(market):
    spec, config, inputs = market
    result = run_model(spec, config, inputs)
    assert_invariants(result, inputs)
    for i, side in enumerate(("long", "short")):
        events = result.events[result.events["side"] == i]
        assert np.all(events["notional"] > 0)
        # events are the age-weighted coins at the bin's price: at most the coins the ledger liquidated
        weighted_coins = (events["notional"] / events["price"]).sum()
        assert weighted_coins <= result.ledger[side]["liquidated"] * (1 + 1e-9) + 1e-12


@FAST
@given(markets(), st.integers(0, 59))
def test_replays_are_bit_for_bit_deterministic(market, keep):
    spec, config, inputs = market
    keep = min(keep, inputs.n_steps - 1)
    a = run_model(spec, config, inputs, keep_from=keep)
    b = run_model(spec, config, inputs, keep_from=keep)
    assert a.long_usd.tobytes() == b.long_usd.tobytes()
    assert a.short_usd.tobytes() == b.short_usd.tobytes()
    assert a.events.tobytes() == b.events.tobytes()
    assert a.ledger == b.ledger


@FAST
@given(
    st.sampled_from(sorted(SYMBOLS)),
    st.floats(0.01, 200_000.0),
    st.floats(100.0, 5_000_000.0),
)
def test_long_levels_sit_below_entry_and_short_levels_above(symbol, entry, notional):
    spec = REGISTRY.get(symbol)
    tier = spec.tier_for(notional)
    allowed = [lev for lev in sorted({1, 2, 3, *spec.leverage}) if lev <= tier.max_leverage]
    qty = notional / entry
    longs = [liquidation_price(entry, lev, "long", tier, qty) for lev in allowed]
    shorts = [liquidation_price(entry, lev, "short", tier, qty) for lev in allowed]
    assert all(lp < entry for lp in longs) and all(lp > entry for lp in shorts)
    # more leverage -> closer to the entry
    assert longs == sorted(longs) and shorts == sorted(shorts, reverse=True)


@FAST
@given(
    st.lists(st.floats(0.0, 1e6), min_size=3, max_size=80),
    st.lists(st.floats(0.0, 1e6), min_size=3, max_size=80),
    st.floats(0.0, 1.0),
    st.integers(0, 2),
)
def test_zones_partition_the_significant_bins_on_each_side(long_list, short_list, where, gap):
    n = min(len(long_list), len(short_list))
    prices = 1_000.0 + np.arange(n) * 5.0
    current = float(prices[0] + where * (prices[-1] - prices[0]))
    long_usd, short_usd = np.array(long_list[:n]), np.array(short_list[:n])
    rows = zones(prices, long_usd, short_usd, current, 5.0, top=n, min_frac=0.1, gap_bins=gap)
    for side, usd, ok in (("long", long_usd, prices < current), ("short", short_usd, prices > current)):
        mine = sorted((r for r in rows if r["side"] == side), key=lambda r: r["price_low"])
        assert [r["rank"] for r in sorted(mine, key=lambda r: r["rank"])] == list(range(1, len(mine) + 1))
        notionals = [r["notional_usd"] for r in sorted(mine, key=lambda r: r["rank"])]
        assert notionals == sorted(notionals, reverse=True)
        for a, b in zip(mine, mine[1:]):
            assert b["price_low"] - a["price_high"] > (gap + 1) * 5.0  # disjoint and not neighbours
        masked = np.where(ok, usd, 0.0)
        if masked.max(initial=0.0) > 0:
            significant = prices[(masked >= 0.1 * masked.max()) & (masked > 0)]
            covered = [any(r["price_low"] <= p <= r["price_high"] for r in mine) for p in significant]
            assert all(covered)
        for r in mine:
            assert (r["price_high"] < current) if side == "long" else (r["price_low"] > current)
