"""The liquidation model (liq_pipeline.model): margin formula, replay invariants, zones, preview. Synthetic numpy
inputs only; no Dagster."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import numpy as np
import pytest

from liq_pipeline.model import (
    EVENT_DTYPE,
    ModelConfig,
    ModelInputs,
    end_of_day_levels,
    heatmap_png,
    hourly_levels,
    liquidation_price,
    liquidation_price_for_notional,
    representative_tier,
    run_model,
    volume_profile,
    zones,
)
from liq_pipeline.symbols import load_registry

REGISTRY = load_registry()
BTC = REGISTRY.get("BTCUSDT")
ADA = REGISTRY.get("ADAUSDT")
T0 = np.datetime64("2024-12-15T00:00:00", "ns")
STEP = np.timedelta64(5, "m")


def synthetic_inputs(
    n: int,
    seed: int = 0,
    *,
    price: float = 50_000.0,
    vol: float = 0.002,
    profile: bool = True,
    taker: bool = False,
    oi0: float = 1_000.0,
    oi_vol: float = 20.0,
    rows_per_step: int = 12,
) -> ModelInputs:
    """A random-walk market: klines, a random-walk open interest and (optionally) a volume profile inside each
    step's range."""
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    open_ = np.concatenate([[price], close[:-1]])
    wick = np.abs(rng.normal(0.0, vol, n)) * close
    high = np.maximum(open_, close) + wick * rng.uniform(0, 1, n)
    low = np.minimum(open_, close) - wick * rng.uniform(0, 1, n)
    oi = np.maximum(oi0 + np.cumsum(rng.normal(0.0, oi_vol, n)), 1.0)
    kw = {}
    if profile:
        step = np.repeat(np.arange(n), rows_per_step)
        kw["profile_step"] = step
        kw["profile_price"] = rng.uniform(low[step], high[step])
        kw["profile_qty"] = rng.exponential(1.0, step.size)
    if taker:
        kw["taker_buy"] = rng.uniform(10, 100, n)
        kw["taker_sell"] = rng.uniform(10, 100, n)
    return ModelInputs(ts=T0 + np.arange(n) * STEP, open=open_, high=high, low=low, close=close, oi=oi, **kw)


def assert_invariants(result, inputs: ModelInputs) -> None:
    """The model's invariants: conservation in coins, the right side of price (a step that opened positions may
    leave its own new ones between its low and its close), the cap at open interest, no negative mass (heatmap kept
    from step 0)."""
    assert result.step_index[0] == 0
    for side, led in result.ledger.items():
        total = led["open"] + led["closed"] + led["liquidated"]
        assert abs(led["opened"] - total) <= 1e-9 * max(led["opened"], 1.0), (side, led)
        assert min(led.values()) >= 0.0
    assert result.ledger["long"]["open"] == pytest.approx(result.open_coins[0, -1], rel=1e-12, abs=1e-9)
    for t in range(inputs.n_steps):
        long_mass, short_mass = result.long_usd[t] > 0, result.short_usd[t] > 0
        assert not np.any(long_mass & (result.prices >= inputs.close[t])), f"long mass above the close, {t}"
        assert not np.any(short_mass & (result.prices <= inputs.close[t])), f"short mass below the close, {t}"
        if result.opened[t] == 0:
            assert not np.any(long_mass & (result.prices >= inputs.low[t])), f"long mass above the low, {t}"
            assert not np.any(short_mass & (result.prices <= inputs.high[t])), (
                f"short mass below the high, {t}"
            )
    oi = result.oi * (1 + 1e-9)
    coins = np.divide(1.0, result.prices, out=np.zeros_like(result.prices), where=result.prices > 0)
    assert np.all(result.long_usd @ coins <= oi) and np.all(result.short_usd @ coins <= oi)
    assert np.all(result.open_coins <= oi)
    assert np.all(result.long_usd >= 0) and np.all(result.short_usd >= 0)


# ---------------------------------------------------------------- margin formula, hand-computed


def test_btc_tiers_are_the_ones_the_hand_arithmetic_uses():
    assert representative_tier(BTC, 10_000) == BTC.tiers[0]
    assert (BTC.tiers[0].mmr, BTC.tiers[0].cum) == (0.004, 0.0)
    assert representative_tier(BTC, 100_000) == BTC.tiers[1]
    assert (BTC.tiers[1].mmr, BTC.tiers[1].cum) == (0.005, 50.0)


def test_liquidation_price_tier1_by_hand():
    tier1 = BTC.tiers[0]  # MMR 0.004, cum 0; E=100000, L=10, Q=0.1 coin (10k notional)
    # long:  (100000 * (1 - 1/10) - 0/0.1) / (1 - 0.004) = 90000 / 0.996 = 90361.4457831325...
    assert liquidation_price(100_000.0, 10, "long", tier1, 0.1) == pytest.approx(90361.4457831325, rel=1e-12)
    # short: (100000 * (1 + 1/10) + 0/0.1) / (1 + 0.004) = 110000 / 1.004 = 109561.752988047...
    assert liquidation_price(100_000.0, 10, "short", tier1, 0.1) == pytest.approx(109561.752988047, rel=1e-12)
    # long 100x: 100000 * 0.99 / 0.996 = 99000 / 0.996 = 99397.5903614457...
    assert liquidation_price(100_000.0, 100, "long", tier1, 0.1) == pytest.approx(99397.5903614457, rel=1e-12)


def test_liquidation_price_tier2_by_hand():
    tier2 = BTC.tiers[1]  # MMR 0.005, cum 50; E=100000, L=20, Q=1 coin (100k notional)
    # long:  (100000 * (1 - 1/20) - 50/1) / (1 - 0.005) = (95000 - 50) / 0.995 = 94950 / 0.995 = 95427.1356783919...
    assert liquidation_price(100_000.0, 20, "long", tier2, 1.0) == pytest.approx(95427.1356783919, rel=1e-12)
    # short: (100000 * (1 + 1/20) + 50/1) / (1 + 0.005) = (105000 + 50) / 1.005 = 105050 / 1.005 = 104527.363184079...
    assert liquidation_price(100_000.0, 20, "short", tier2, 1.0) == pytest.approx(104527.363184079, rel=1e-12)
    # cum/Q matters: Q = 0.5 coin -> long (95000 - 100) / 0.995 = 94900 / 0.995 = 95376.8844221105...
    assert liquidation_price(100_000.0, 20, "long", tier2, 0.5) == pytest.approx(95376.8844221105, rel=1e-12)


def test_liquidation_price_alt_tier2_and_vectorised():
    tier = representative_tier(ADA, 10_000)  # alt tier 2: MMR 0.01, cum 25
    assert (tier.mmr, tier.cum) == (0.01, 25.0)
    # E=1, L=10, 10k notional -> Q = 10000 coins, cum/Q = 0.0025
    # long:  (1 * 0.9 - 0.0025) / 0.99 = 0.8975 / 0.99 = 0.906565656...
    # short: (1 * 1.1 + 0.0025) / 1.01 = 1.1025 / 1.01 = 1.091584158...
    entries = np.array([1.0, 2.0])
    longs = liquidation_price_for_notional(entries, 10, "long", tier, 10_000.0)
    shorts = liquidation_price_for_notional(entries, 10, "short", tier, 10_000.0)
    # Q = notional / E, so cum/Q = cum * E / notional: the LP scales linearly with the entry.
    np.testing.assert_allclose(longs, [0.9065656565656566, 2 * 0.9065656565656566], rtol=1e-12)
    np.testing.assert_allclose(shorts, [1.0915841584158416, 2 * 1.0915841584158416], rtol=1e-12)
    with pytest.raises(ValueError, match="side"):
        liquidation_price(1.0, 10, "up", tier, 1.0)
    with pytest.raises(ValueError, match="qty"):
        liquidation_price(1.0, 10, "long", tier, 0.0)


# ---------------------------------------------------------------- config


def test_config_defaults_come_from_the_registry_and_serialise():
    cfg = ModelConfig.for_symbol(BTC)
    assert cfg.leverage == (5, 10, 25, 50, 100)
    assert cfg.leverage_weights == pytest.approx((0.15, 0.30, 0.25, 0.20, 0.10), abs=1e-15)
    assert (cfg.price_bin, cfg.lookback_days, cfg.step_minutes, cfg.imbalance_tilt) == (100.0, 14, 5, 0.0)
    assert json.loads(json.dumps(cfg.to_dict()))["leverage"] == [5, 10, 25, 50, 100]
    custom = ModelConfig.for_symbol(BTC, leverage=[10, 20], leverage_weights=[1, 3], price_bin=50)
    assert custom.leverage_weights == (0.25, 0.75) and custom.price_bin == 50.0
    mix = ModelConfig.for_symbol(
        BTC, leverage_weights=[1, 1, 1, 1, 0]
    )  # a new mix over the registry's leverages
    assert mix.leverage == BTC.leverage and mix.leverage_weights == (0.25, 0.25, 0.25, 0.25, 0.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"leverage": (10, 20), "leverage_weights": (0.5, -0.5)}, "finite and >= 0"),
        ({"leverage": (10, 20), "leverage_weights": (0.5,)}, "equal length"),
        ({"leverage": (10, 10), "leverage_weights": (0.5, 0.5)}, "repeat"),
        ({"leverage": (10, 20)}, "without leverage_weights"),
        ({"position_usd": 1_000_000.0}, "exceeds 75x"),
        ({"lookback_days": 0}, "lookback_days"),
        ({"leverage": (1, 10), "leverage_weights": (0.5, 0.5)}, ">= 2"),
        ({"step_minutes": 7}, "step_minutes"),
        ({"imbalance_tilt": -1.0}, "imbalance_tilt"),
        ({"price_bin": 0}, "price_bin"),
        ({"colour": "red"}, "unknown model parameters"),
    ],
)
def test_config_rejects_bad_values_with_clear_messages(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.for_symbol(BTC, **overrides)


def test_inputs_validation_and_missing_open_interest():
    good = synthetic_inputs(5, profile=False)
    with pytest.raises(ValueError, match="low <= open, close <= high"):
        ModelInputs(ts=good.ts, open=good.open, high=good.low - 1, low=good.low, close=good.close, oi=good.oi)
    with pytest.raises(ValueError, match="strictly increasing"):
        ModelInputs(
            ts=good.ts[::-1], open=good.open, high=good.high, low=good.low, close=good.close, oi=good.oi
        )
    with pytest.raises(ValueError, match="all three"):
        ModelInputs(
            ts=good.ts,
            open=good.open,
            high=good.high,
            low=good.low,
            close=good.close,
            oi=good.oi,
            profile_step=[0],
        )
    with pytest.raises(ValueError, match="15-minute grid"):
        run_model(BTC, ModelConfig.for_symbol(BTC, step_minutes=15), good)
    oi = ModelInputs(
        ts=good.ts,
        open=good.open,
        high=good.high,
        low=good.low,
        close=good.close,
        oi=[np.nan, 5, 0, 7, -1],
    ).oi
    # zero and negative readings are missing readings, not "everything closed"
    np.testing.assert_array_equal(np.isnan(oi), [True, False, True, False, True])


# ---------------------------------------------------------------- one step by hand


def _flat(n, price, oi, low=None, high=None, **kw):
    low = np.full(n, price) if low is None else np.asarray(low, dtype=float)
    high = np.full(n, price) if high is None else np.asarray(high, dtype=float)
    close = np.full(n, price)
    return ModelInputs(ts=T0 + np.arange(n) * STEP, open=close, high=high, low=low, close=close, oi=oi, **kw)


def _coins_by_price(result, row, side="long"):
    usd = (result.long_usd if side == "long" else result.short_usd)[row]
    return {p: u / p for p, u in zip(result.prices.tolist(), usd.tolist()) if u}


def test_opening_puts_each_leverage_at_its_liquidation_bin():
    # OI 100 -> 110 coins: 10 coins of longs and 10 of shorts, all entered at 100000 (the profile). The map values
    # coins at the bin's price; positions younger than a day count fully.
    inputs = _flat(
        2, 100_000.0, [100.0, 110.0], profile_step=[1, 1], profile_price=[100_000.0] * 2, profile_qty=[1, 2]
    )
    result = run_model(BTC, ModelConfig.for_symbol(BTC), inputs)
    # long LP = 100000 * (1 - 1/L) / 0.996: 5x 80321.3 -> bin 80300; 10x 90361.4 -> 90400; 25x 96385.5 -> 96400;
    # 50x 98393.6 -> 98400; 100x 99397.6 -> 99400. Coins = 10 * weight.
    expected_long = {80300.0: 1.5, 90400.0: 3.0, 96400.0: 2.5, 98400.0: 2.0, 99400.0: 1.0}
    assert _coins_by_price(result, 1) == pytest.approx(expected_long, rel=1e-12)
    assert result.long_usd[1][result.prices == 80_300.0][0] == pytest.approx(1.5 * 80_300.0, rel=1e-12)
    # short LP = 100000 * (1 + 1/L) / 1.004: 5x 119521.9 -> 119500; 10x 109561.8 -> 109600; 25x 103585.7 -> 103600;
    # 50x 101593.6 -> 101600; 100x 100597.6 -> 100600.
    expected_short = {119500.0: 1.5, 109600.0: 3.0, 103600.0: 2.5, 101600.0: 2.0, 100600.0: 1.0}
    assert _coins_by_price(result, 1, "short") == pytest.approx(expected_short, rel=1e-12)
    assert not result.long_usd[0].any() and result.events.size == 0
    assert result.ledger["long"]["opened"] == pytest.approx(10.0, rel=1e-12)


def _one_wide_step(close1: float, low2: float) -> ModelInputs:
    # step 1 trades 99000..100000 and opens 10 coins each side at 100000; step 2 opens nothing and reaches low2
    close = np.array([100_000.0, close1, close1])
    return ModelInputs(
        ts=T0 + np.arange(3) * STEP,
        open=[100_000.0] * 3,
        high=[100_000.0] * 3,
        low=[100_000.0, 99_000.0, min(low2, close1)],
        close=close,
        oi=[100.0, 110.0, 110.0],
        profile_step=[1],
        profile_price=[100_000.0],
        profile_qty=[1.0],
    )


def test_a_new_position_is_liquidated_in_its_own_step_only_when_the_close_is_through_its_level():
    # The 100x long (bin 99400) sits inside step 1's range. With the close at 100000 the low may have come before the
    # entry: it stays open, and step 2's low of 99000 liquidates it.
    result = run_model(BTC, ModelConfig.for_symbol(BTC), _one_wide_step(close1=100_000.0, low2=99_000.0))
    assert _coins_by_price(result, 1)[99_400.0] == pytest.approx(1.0, rel=1e-12)
    assert result.info["same_step_deferred_coins"] == pytest.approx([1.0, 0.0], rel=1e-12)
    assert result.events.dtype == EVENT_DTYPE and result.events.size == 1
    event = result.events[0]
    assert (event["ts"], event["side"], event["price"]) == (T0 + 2 * STEP, 0, 99_400.0)
    assert event["notional"] == pytest.approx(99_400.0, rel=1e-12)  # 1 coin at the bin's price
    # With the close at 99000 the price certainly fell through 99400 after the entry: liquidated at once.
    result = run_model(BTC, ModelConfig.for_symbol(BTC), _one_wide_step(close1=99_000.0, low2=99_000.0))
    first = result.events[result.events["ts"] == T0 + STEP]
    assert first["price"].tolist() == [99_400.0] and first["side"].tolist() == [0]
    assert 99_400.0 not in _coins_by_price(result, 1)
    assert result.ledger["long"]["liquidated"] == pytest.approx(1.0, rel=1e-12)
    assert_invariants(result, _one_wide_step(close1=99_000.0, low2=99_000.0))


def test_closing_is_relative_and_the_first_step_opens_nothing():
    # 10 coins opened at step 1, then OI 110 -> 105 (-4.5 %) closes 4.5 % of what is open on each side.
    inputs = _flat(3, 100_000.0, [100.0, 110.0, 105.0])
    result = run_model(BTC, ModelConfig.for_symbol(BTC), inputs)
    assert result.open_coins[0].tolist() == pytest.approx([0.0, 10.0, 10.0 * 105 / 110], rel=1e-12)
    np.testing.assert_allclose(result.long_usd[2], result.long_usd[1] * 105 / 110, rtol=1e-12)
    np.testing.assert_allclose(result.short_usd[2], result.short_usd[1] * 105 / 110, rtol=1e-12)
    assert result.ledger["short"]["closed"] == pytest.approx(10.0 * 5 / 110, rel=1e-12)


def test_a_large_fall_of_open_interest_closes_its_share_and_keeps_the_rest():
    # OI 100 -> 200 opens 100 coins; the fall to 100 (-50 %) halves them. Closing |dOI| coins outright would have
    # closed everything the model held. The next rise opens on top of what is left.
    inputs = _flat(4, 100_000.0, [100.0, 200.0, 100.0, 150.0])
    result = run_model(BTC, ModelConfig.for_symbol(BTC), inputs)
    assert result.open_coins[0].tolist() == pytest.approx([0.0, 100.0, 50.0, 100.0], rel=1e-12)
    assert _coins_by_price(result, 2)[90_400.0] == pytest.approx(0.30 * 50.0, rel=1e-12)


def test_a_price_move_alone_closes_nothing():
    # 5 coins opened at 100000, then the price halves with OI unchanged: every long level is run through, and the
    # shorts keep all 5 coins (the old dollar cap closed half of them).
    close = np.array([100_000.0, 100_000.0, 50_000.0])
    inputs = ModelInputs(
        ts=T0 + np.arange(3) * STEP, open=close, high=close, low=close, close=close, oi=[95.0, 100.0, 100.0]
    )
    result = run_model(BTC, ModelConfig.for_symbol(BTC), inputs)
    assert result.ledger["long"]["liquidated"] == pytest.approx(5.0, rel=1e-12)
    assert result.open_coins[1].tolist() == pytest.approx([0.0, 5.0, 5.0], rel=1e-12)
    assert result.ledger["short"]["closed"] == 0.0 and result.ledger["short"]["closed_by_cap"] == 0.0
    np.testing.assert_array_equal(result.short_usd[2], result.short_usd[1])


def test_a_zero_open_interest_reading_is_a_gap_not_a_wipe():
    base = run_model(BTC, ModelConfig.for_symbol(BTC), _flat(4, 100_000.0, [100.0, 110.0, 110.0, 110.0]))
    zero = run_model(BTC, ModelConfig.for_symbol(BTC), _flat(4, 100_000.0, [100.0, 110.0, 0.0, 110.0]))
    assert zero.open_coins[0].tolist() == pytest.approx([0.0, 10.0, 10.0, 10.0], rel=1e-12)
    assert zero.long_usd.tobytes() == base.long_usd.tobytes() and zero.events.size == 0
    assert zero.info["oi_missing_readings"] == 1


def test_short_gaps_are_interpolated_and_a_missing_day_opens_nothing_when_it_ends():
    short = [100.0, 110.0, *[np.nan] * 3, 150.0]
    result = run_model(BTC, ModelConfig.for_symbol(BTC), _flat(len(short), 100_000.0, short))
    # the 40 coins between the readings open evenly over the four steps that lead to 150
    assert result.opened.tolist() == pytest.approx([0.0, 10.0, 10.0, 10.0, 10.0, 10.0], rel=1e-12)
    day = [100.0, 110.0, *[np.nan] * 288, 150.0, 75.0]
    result = run_model(BTC, ModelConfig.for_symbol(BTC), _flat(len(day), 100_000.0, day))
    assert result.opened.sum() == pytest.approx(
        10.0, rel=1e-12
    )  # what opened during the missing day is unknown
    assert result.info["oi_long_gaps"] == 1 and result.info["oi_missing_readings"] == 288
    assert result.open_coins[0, -1] == pytest.approx(5.0, rel=1e-12)  # the fall 150 -> 75 still closes half


def test_lookback_changes_the_map_and_the_window_drops_older_steps():
    inputs = synthetic_inputs(14 * 288, seed=12, oi_vol=5.0)
    last_day = 13 * 288
    maps = {
        n: run_model(BTC, ModelConfig.for_symbol(BTC, lookback_days=n), inputs, keep_from=last_day)
        for n in (1, 2, 14)
    }
    end = {n: dict(zip(r.prices.tolist(), r.intensity()[-1].tolist())) for n, r in maps.items()}
    assert end[14] != pytest.approx(end[2], rel=0.05) and end[2] != pytest.approx(end[1], rel=0.05)
    assert sum(end[14].values()) > sum(end[1].values())
    # a 2-day lookback replays only the last two days, whatever it is given
    assert maps[2].info["dropped_steps"] == 12 * 288
    tail = inputs.steps(12 * 288)
    alone = run_model(BTC, ModelConfig.for_symbol(BTC, lookback_days=2), tail, keep_from=288)
    assert alone.long_usd.tobytes() == maps[2].long_usd.tobytes()


def test_the_map_at_a_time_is_the_same_whichever_days_replay_computes_it():
    # Days 1-3, lookback 2: day 2's partition replays days 1-2 and day 3's replays days 2-3 (from the open interest
    # at its start). At the end of day 2 both hold the same map, so day 2's last column and day 3's first differ by
    # one step only.
    inputs = synthetic_inputs(3 * 288, seed=21, oi_vol=5.0)
    cfg = ModelConfig.for_symbol(BTC, lookback_days=2)
    day2 = run_model(BTC, cfg, inputs.steps(0, 2 * 288), keep_from=288)
    day3 = run_model(BTC, cfg, inputs.steps(288), keep_from=287)  # from day 2's last step on
    a = dict(zip(day2.prices.tolist(), day2.intensity()[-1].tolist()))
    b = dict(zip(day3.prices.tolist(), day3.intensity()[0].tolist()))
    shared = {p: v for p, v in a.items() if v > 0}
    assert shared and {p: b.get(p, 0.0) for p in a if a[p] > 0} == pytest.approx(shared, rel=1e-9)
    assert {p: v for p, v in b.items() if v > 0}.keys() == shared.keys()


# ---------------------------------------------------------------- invariants on longer replays


@pytest.mark.parametrize(("symbol", "price"), [("BTCUSDT", 94_000.0), ("ADAUSDT", 0.9), ("DOGEUSDT", 0.32)])
def test_invariants_hold_over_a_two_day_replay(symbol, price):
    spec = REGISTRY.get(symbol)
    inputs = synthetic_inputs(576, seed=3, price=price, taker=True)
    result = run_model(spec, ModelConfig.for_symbol(spec), inputs)
    assert_invariants(result, inputs)
    assert result.ledger["long"]["liquidated"] > 0 and result.ledger["short"]["liquidated"] > 0
    # events hold the weighted coins at the bin's price: never more coins than the ledger liquidated
    for i, s in enumerate(("long", "short")):
        ev = result.events[result.events["side"] == i]
        assert 0 < (ev["notional"] / ev["price"]).sum() <= result.ledger[s]["liquidated"] * (1 + 1e-9)
    # bin centres are whole multiples of the bin
    k = result.prices / spec.price_bin
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)


def test_same_inputs_give_the_same_bytes():
    inputs = synthetic_inputs(400, seed=11, taker=True)
    cfg = ModelConfig.for_symbol(BTC, imbalance_tilt=0.5)
    a = run_model(BTC, cfg, inputs, keep_from=100)
    b = run_model(BTC, cfg, inputs, keep_from=100)
    for name in ("prices", "ts", "long_usd", "short_usd", "events", "open_long_usd", "open_short_usd"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert json.dumps(a.ledger) == json.dumps(b.ledger)


def test_keep_from_keeps_the_tail_and_agrees_with_the_full_run():
    inputs = synthetic_inputs(300, seed=5)
    cfg = ModelConfig.for_symbol(BTC)
    full = run_model(BTC, cfg, inputs)
    tail = run_model(BTC, cfg, inputs, keep_from=datetime(2024, 12, 15, 20, 0, tzinfo=UTC))
    assert tail.step_index[0] == 240 and tail.ts[0] == T0 + 240 * STEP
    assert tail.long_usd.tobytes() == full.long_usd[240:].tobytes()
    assert np.all(tail.events["ts"] >= tail.ts[0])
    assert tail.ledger == full.ledger
    rows = tail.heatmap_rows()
    assert rows["long_usd"].sum() + rows["short_usd"].sum() == pytest.approx(
        tail.intensity().sum(), rel=1e-12
    )


def test_profile_and_fallback_agree_when_all_volume_is_at_the_typical_price():
    inputs = synthetic_inputs(200, seed=2, profile=False)
    typical = (inputs.high + inputs.low + inputs.close) / 3
    with_profile = ModelInputs(
        ts=inputs.ts,
        open=inputs.open,
        high=inputs.high,
        low=inputs.low,
        close=inputs.close,
        oi=inputs.oi,
        profile_step=np.arange(200),
        profile_price=typical,
        profile_qty=np.ones(200),
    )
    cfg = ModelConfig.for_symbol(BTC)
    a, b = run_model(BTC, cfg, inputs), run_model(BTC, cfg, with_profile)
    np.testing.assert_allclose(a.long_usd, b.long_usd, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(a.short_usd, b.short_usd, rtol=1e-9, atol=1e-6)


def test_imbalance_tilt_moves_new_longs_to_higher_leverage_when_takers_buy():
    base = _flat(2, 100_000.0, [100.0, 110.0], taker_buy=[0, 90.0], taker_sell=[0, 10.0])
    plain = run_model(BTC, ModelConfig.for_symbol(BTC), base)
    tilted = run_model(BTC, ModelConfig.for_symbol(BTC, imbalance_tilt=1.0), base)
    at_100x_long = plain.prices == 99_400.0
    at_100x_short = plain.prices == 100_600.0
    assert tilted.long_usd[1][at_100x_long][0] > plain.long_usd[1][at_100x_long][0]
    assert tilted.short_usd[1][at_100x_short][0] < plain.short_usd[1][at_100x_short][0]
    coins = 1.0 / plain.prices
    assert tilted.long_usd[1] @ coins == pytest.approx(plain.long_usd[1] @ coins, rel=1e-12)


def test_volume_profile_buckets_trades_by_step_with_vwap():
    starts = T0 + np.arange(2) * STEP
    trade_ts = np.array(
        [T0, T0 + np.timedelta64(1, "m"), T0 + np.timedelta64(6, "m"), T0 + np.timedelta64(11, "m")]
    )
    step, price, qty = volume_profile(
        starts, trade_ts, [100.0, 110.0, 100.0, 999.0], [1.0, 3.0, 2.0, 5.0], price_bucket=25
    )
    # step 0: 1 @ 100 and 3 @ 110 share the bucket [100, 125): VWAP (100 + 330) / 4 = 107.5; the 11-minute trade is
    # after the last step and is dropped.
    assert step.tolist() == [0, 1] and price.tolist() == [107.5, 100.0] and qty.tolist() == [4.0, 2.0]


# ---------------------------------------------------------------- zones and levels


def test_zones_merge_neighbouring_bins_and_sit_on_the_right_side_of_price():
    prices = np.arange(100.0, 201.0)  # bin 1
    long_usd = np.zeros_like(prices)
    short_usd = np.zeros_like(prices)
    long_usd[prices == 120] = 50.0  # a single-bin long zone
    long_usd[(prices >= 140) & (prices <= 142)] = [30.0, 40.0, 20.0]  # three neighbours -> one zone of 90
    long_usd[prices == 130] = 1.0  # below 10 % of the largest bin: haze, not a zone
    long_usd[prices == 160] = 500.0  # "long" mass above price is ignored
    short_usd[(prices >= 160) & (prices <= 161)] = [10.0, 60.0]
    short_usd[prices == 180] = 100.0
    short_usd[prices == 110] = 999.0  # "short" mass below price is ignored
    rows = zones(prices, long_usd, short_usd, current_price=150.0, price_bin=1.0)
    longs = [r for r in rows if r["side"] == "long"]
    shorts = [r for r in rows if r["side"] == "short"]
    assert [
        (r["rank"], r["price_low"], r["price_high"], r["peak_price"], r["notional_usd"]) for r in longs
    ] == [
        (1, 140.0, 142.0, 141.0, 90.0),
        (2, 120.0, 120.0, 120.0, 50.0),
    ]
    assert [(r["rank"], r["price_low"], r["price_high"], r["notional_usd"]) for r in shorts] == [
        (1, 180.0, 180.0, 100.0),
        (2, 160.0, 161.0, 70.0),
    ]
    assert longs[0]["distance_pct"] == pytest.approx((150 - 142) / 150 * 100)
    assert shorts[1]["distance_pct"] == pytest.approx((160 - 150) / 150 * 100)
    assert all(r["price_high"] < 150 for r in longs) and all(r["price_low"] > 150 for r in shorts)
    # top=1 keeps the largest per side; gap_bins=1 would still not bridge 142 -> 120
    assert [r["notional_usd"] for r in zones(prices, long_usd, short_usd, 150.0, 1.0, top=1)] == [90.0, 100.0]
    # a threshold of 0 turns the haze bin into its own zone
    assert len(zones(prices, long_usd, short_usd, 150.0, 1.0, min_frac=0.0)) == 5


def test_hourly_levels_from_a_replay():
    inputs = synthetic_inputs(2 * 288, seed=8)
    result = run_model(BTC, ModelConfig.for_symbol(BTC), inputs, keep_from=288)
    rows = hourly_levels(result, top=5)
    stamps = sorted({r["as_of"] for r in rows})
    assert stamps[-1] == datetime(2024, 12, 17, tzinfo=UTC) and all(
        s.minute == 0 and s.second == 0 for s in stamps
    )
    assert len(stamps) == 24
    for r in rows:
        if r["side"] == "long":
            assert r["price_high"] < r["current_price"]
        else:
            assert r["price_low"] > r["current_price"]
        assert r["rank"] <= 5 and r["distance_pct"] > 0 and r["notional_usd"] > 0
    end = end_of_day_levels(result)
    assert end and {r["as_of"] for r in end} == {stamps[-1]}
    assert [r for r in rows if r["is_end"]] == [{**r, "is_end": True} for r in end if r["rank"] <= 5]


def test_heatmap_png_is_a_small_png():
    from PIL import Image

    inputs = synthetic_inputs(288, seed=4)
    result = run_model(BTC, ModelConfig.for_symbol(BTC), inputs)
    png = heatmap_png(result.ts, result.prices, result.intensity(), result.close, title="BTCUSDT")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png))
    assert image.size == (800, 400)
    # dark background with bright (yellow-ish) cells somewhere
    pixels = np.asarray(image.convert("RGB"), dtype=int)
    assert pixels.mean() < 90
    assert np.any((pixels[..., 0] > 200) & (pixels[..., 1] > 200) & (pixels[..., 2] < 120))
    with pytest.raises(ValueError, match="shapes"):
        heatmap_png(result.ts, result.prices, result.intensity().T, result.close)
