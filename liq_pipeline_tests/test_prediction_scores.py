"""The scores of what the model claims: predicted liquidated USD against forced liquidations hour by hour, and model
mass at the prices liquidations reached, each beside a baseline that knows only the price path. Hand-worked frames
first, then a lake written by the pipeline."""

import numpy as np
import pandas as pd
import pytest
from dagster import materialize

from liq_pipeline.assets.model import MODEL_ASSETS
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.assets.validation import VALIDATION_ASSETS
from liq_pipeline.lake import Lake
from liq_pipeline.partitions import partition_key
from liq_pipeline.validation.report import SCORES_TABLE, validation_report
from liq_pipeline.validation.scores import hourly_liquidation_scores, reached_price_recall, summarise

from .conftest import FIXTURE_DAYS

T = pd.Timestamp("2024-03-10")
H = pd.Timedelta(hours=1)
M = pd.Timedelta(minutes=1)

# Three hours of 1m klines. Per hour: the first minute's open, the lowest low, the highest high.
#   hour 0: open 100, low 98,  high 101   -> long move 0.02,  short move 0.01
#   hour 1: open 200, low 199, high 208   -> long move 0.005, short move 0.04
#   hour 2: open 50,  low 48.5, high 50.25 -> long move 0.03,  short move 0.005
# A later minute opens at its high - 0.1 (not the hour's open) and the rows come unsorted.
HOURS = [(100.0, 98.0, 101.0), (200.0, 199.0, 208.0), (50.0, 48.5, 50.25)]
LONG_MOVES = [0.02, 0.005, 0.03]
SHORT_MOVES = [0.01, 0.04, 0.005]


def _klines() -> pd.DataFrame:
    rows = []
    for h, (open_, low, high) in enumerate(HOURS):
        t = T + h * H
        rows.append({"open_time": t, "open": open_, "high": open_, "low": open_, "close": open_})
        rows.append({"open_time": t + 30 * M, "open": high - 0.1, "high": high, "low": low, "close": open_})
    return pd.DataFrame(rows[::-1])


def _liquidations(usd_long, usd_short, order_sides: bool = False) -> pd.DataFrame:
    """One order per side and hour at minute 10 (and a second long one at minute 40 in hour 1)."""
    long_, short = ("SELL", "BUY") if order_sides else ("long", "short")
    rows = []
    for h, (a, b) in enumerate(zip(usd_long, usd_short, strict=True)):
        t = T + h * H + 10 * M
        if h == 1:  # split the hour's long USD in two orders: the hour's sum is what counts
            rows += [(t, long_, 90.0, a / 4), (t + 30 * M, long_, 90.0, 3 * a / 4)]
        else:
            rows.append((t, long_, 90.0, a))
        rows.append((t, short, 110.0, b))
    return pd.DataFrame(rows, columns=["ts", "side", "price", "notional_usd"])


ACTUAL_LONG, ACTUAL_SHORT = [20.0, 5.0, 40.0], [7.0, 3.0, 11.0]


def test_a_prediction_proportional_to_the_forced_liquidations_has_corr_1_and_ratio_the_factor():
    actual = _liquidations(ACTUAL_LONG, ACTUAL_SHORT)
    predicted = _liquidations([3 * x for x in ACTUAL_LONG], [0.5 * x for x in ACTUAL_SHORT])
    s = hourly_liquidation_scores(predicted, actual, _klines(), T, T + 3 * H)
    assert s["n_hours"] == 3
    assert s["corr_long"] == pytest.approx(1.0) and s["corr_short"] == pytest.approx(1.0)
    assert s["usd_ratio_long"] == pytest.approx(3.0) and s["usd_ratio_short"] == pytest.approx(0.5)
    assert s["n_liquidations_long"] == 4 and s["n_liquidations_short"] == 3
    assert s["actual_usd_long"] == pytest.approx(sum(ACTUAL_LONG))
    assert s["reason"] is None


def test_an_anti_correlated_prediction_scores_negative():
    actual = _liquidations(ACTUAL_LONG, ACTUAL_SHORT)
    predicted = _liquidations([50 - x for x in ACTUAL_LONG], [1.0, 9.0, 0.5])
    s = hourly_liquidation_scores(predicted, actual, _klines(), T, T + 3 * H)
    assert s["corr_long"] == pytest.approx(-1.0)  # 50 - x: perfectly anti-correlated
    assert s["corr_short"] == pytest.approx(np.corrcoef([1.0, 9.0, 0.5], ACTUAL_SHORT)[0, 1])
    assert s["corr_short"] < -0.5


def test_the_price_path_baseline_is_each_hours_move_against_the_side():
    actual = _liquidations(ACTUAL_LONG, ACTUAL_SHORT)
    s = hourly_liquidation_scores(actual, actual, _klines(), T, T + 3 * H)
    assert s["baseline_corr_long"] == pytest.approx(np.corrcoef(LONG_MOVES, ACTUAL_LONG)[0, 1])
    assert s["baseline_corr_short"] == pytest.approx(np.corrcoef(SHORT_MOVES, ACTUAL_SHORT)[0, 1])
    # the hand-worked moves disagree with the forced USD enough that the two baselines differ in sign
    assert s["baseline_corr_long"] > 0.5 and s["baseline_corr_short"] < 0


def test_a_sell_order_is_a_long_liquidated():
    as_orders = _liquidations(ACTUAL_LONG, ACTUAL_SHORT, order_sides=True)
    as_positions = _liquidations(ACTUAL_LONG, ACTUAL_SHORT)
    predicted = _liquidations([2 * x for x in ACTUAL_LONG], [1.0, 2.0, 3.0])
    a = hourly_liquidation_scores(predicted, as_orders, _klines(), T, T + 3 * H)
    b = hourly_liquidation_scores(predicted, as_positions, _klines(), T, T + 3 * H)
    assert a["n_liquidations_long"] == 4 and a["actual_usd_long"] == pytest.approx(sum(ACTUAL_LONG))
    assert {k: a[k] for k in a if k != "reasons"} == {k: b[k] for k in b if k != "reasons"}
    with pytest.raises(ValueError, match="'SELL'/'BUY'"):
        hourly_liquidation_scores(predicted, as_orders.assign(side="up"), _klines(), T, T + 3 * H)


def test_only_the_hours_of_the_window_with_klines_count():
    actual = _liquidations(ACTUAL_LONG, ACTUAL_SHORT)
    s = hourly_liquidation_scores(actual, actual, _klines(), T + 30 * M, T + 3 * H)
    assert s["n_hours"] == 2  # starts at the next whole hour
    assert s["actual_usd_long"] == pytest.approx(sum(ACTUAL_LONG[1:]))
    gap = _klines()
    gap = gap[(gap["open_time"] < T + H) | (gap["open_time"] >= T + 2 * H)]
    s = hourly_liquidation_scores(actual, actual, gap, T, T + 3 * H)
    assert s["n_hours"] == 2 and s["n_liquidations_long"] == 2  # hour 1 has no klines: left out


def test_what_cannot_be_scored_is_none_with_a_reason():
    actual = _liquidations(ACTUAL_LONG, ACTUAL_SHORT)
    none = actual.iloc[0:0]
    s = hourly_liquidation_scores(actual, none, _klines(), T, T + 3 * H)
    assert s["n_hours"] == 3 and s["n_liquidations_long"] == 0
    for key in ("corr_long", "corr_short", "usd_ratio_long", "baseline_corr_short"):
        assert s[key] is None, key
    assert "the same every hour" in s["reasons"]["corr_long"]
    assert "no forced long liquidations" in s["reasons"]["usd_ratio_long"]

    flat = hourly_liquidation_scores(none, actual, _klines(), T, T + 3 * H)  # the model predicted nothing
    assert flat["corr_long"] is None and flat["usd_ratio_long"] == 0.0
    assert "long series is the same every hour" in flat["reasons"]["corr_long"]

    one = hourly_liquidation_scores(actual, actual, _klines(), T, T + H)
    assert one["n_hours"] == 1 and one["corr_long"] is None and "needs 2" in one["reasons"]["corr_long"]
    assert one["usd_ratio_long"] == pytest.approx(1.0)

    empty = hourly_liquidation_scores(actual, actual, None, T, T + 3 * H)
    assert empty["n_hours"] == 0 and empty["corr_short"] is None and empty["baseline_corr_long"] is None


# --- reached-price recall ---------------------------------------------------------------------------------------
# Bins of 1 from 90 to 110. Long mass at 95 and 96, short mass at 105. Band 1 % (of the bin's price), half a bin.
#   long mass covers [95 x 0.99 - 0.5, 96 x 1.01 + 0.5] = [93.55, 97.46]  (width 3.91)
#   short mass covers [105 x 0.99 - 0.5, 105 x 1.01 + 0.5] = [103.45, 106.55] (width 3.1)
PRICES = np.arange(90.0, 111.0)
LONG = np.where(np.isin(PRICES, [95.0, 96.0]), 1000.0, 0.0)
SHORT = np.where(PRICES == 105.0, 500.0, 0.0)
LONG_WIDTH, SHORT_WIDTH = 96 * 1.01 + 0.5 - (95 * 0.99 - 0.5), 3.1


def _orders(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ts", "side", "price", "notional_usd"])


def test_reached_recall_is_the_usd_share_with_mass_of_its_side_nearby():
    actual = _orders(
        [
            (T + 1 * H, "SELL", 97.0, 300.0),  # a long inside the long band: caught
            (T + 2 * H, "SELL", 100.0, 100.0),  # a long where the map has no mass: missed
            (T + 3 * H, "long", 105.0, 600.0),  # a long at short mass only: the wrong side, missed
            (T - 1 * H, "long", 96.0, 5000.0),  # before the map's time: not scored
        ]
    )
    r = reached_price_recall(
        PRICES, LONG, SHORT, actual, band_pct=1.0, price_bin=1.0, after=T, price_range=(90.0, 110.0)
    )
    assert r["n_liquidations"] == 3 and r["liquidated_usd"] == pytest.approx(1000.0)
    assert r["recall"] == pytest.approx(300.0 / 1000.0)
    # every liquidation is a long: the baseline is the share of the 20-wide range the long mass covers
    assert r["baseline_recall"] == pytest.approx(LONG_WIDTH / 20.0)
    assert r["mass_coverage"] == pytest.approx((LONG_WIDTH + SHORT_WIDTH) / 20.0)
    assert (r["range_low"], r["range_high"]) == (90.0, 110.0)


def test_the_baseline_weights_each_sides_coverage_by_its_usd_and_the_range_holds_every_liquidation():
    actual = _orders([(T + H, "BUY", 104.5, 200.0), (T + H, "SELL", 92.0, 600.0)])
    r = reached_price_recall(
        PRICES, LONG, SHORT, actual, band_pct=1.0, price_bin=1.0, price_range=(94.0, 106.0)
    )
    low = 92.0 * 0.99  # the range is widened to the lowest liquidation's band
    width = 106.0 - low
    assert r["range_low"] == pytest.approx(low) and r["range_high"] == 106.0
    assert r["recall"] == pytest.approx(200.0 / 800.0)  # the short is caught, the long at 92 is not
    long_cov = LONG_WIDTH / width
    short_cov = (106.0 - 103.45) / width  # the short mass reaches past the range's top: clipped
    assert r["baseline_recall"] == pytest.approx((600.0 * long_cov + 200.0 * short_cov) / 800.0)


def test_a_flat_map_catches_everything_and_so_does_its_baseline():
    actual = _orders([(T + H, "SELL", 91.3, 10.0), (T + H, "BUY", 108.8, 30.0)])
    ones = np.ones(PRICES.size)
    r = reached_price_recall(PRICES, ones, ones, actual, price_bin=1.0, price_range=(90.0, 110.0))
    assert r["recall"] == 1.0 and r["baseline_recall"] == pytest.approx(1.0) and r["mass_coverage"] == 1.0


def test_reached_recall_without_liquidations_is_none():
    r = reached_price_recall(PRICES, LONG, SHORT, _orders([]), price_bin=1.0, price_range=(90.0, 110.0))
    assert r["recall"] is None and r["baseline_recall"] is None and r["n_liquidations"] == 0
    assert "no forced liquidations" in r["reasons"]["recall"]
    assert r["mass_coverage"] is not None and 0 < r["mass_coverage"] < 1
    r = reached_price_recall(PRICES, LONG, SHORT, None)
    assert r["mass_coverage"] is None and "price_range" in r["reasons"]["mass_coverage"]


def test_summary_pools_the_ratio_of_totals_and_weights_correlations_by_hours():
    rows = [
        {
            "symbol": "BTCUSDT",
            "corr_long": 0.9,
            "n_hours": 24,
            "predicted_usd_long": 30.0,
            "actual_usd_long": 100.0,
        },
        {
            "symbol": "BTCUSDT",
            "corr_long": 0.3,
            "n_hours": 12,
            "predicted_usd_long": 90.0,
            "actual_usd_long": 50.0,
        },
        {
            "symbol": "BTCUSDT",
            "corr_long": None,
            "n_hours": 0,
            "predicted_usd_long": 0.0,
            "actual_usd_long": 0.0,
        },
    ]
    s = summarise(rows).set_index("symbol").loc["BTCUSDT"]
    assert s["corr_long"] == pytest.approx((0.9 * 24 + 0.3 * 12) / 36)
    assert s["usd_ratio_long"] == pytest.approx(120.0 / 150.0)  # not the mean of 0.3 and 1.8
    assert s["n_hours"] == 36 and np.isnan(s["usd_ratio_short"])


# --- a lake written by the pipeline --------------------------------------------------------------------------------


def _materialize(resources, selection, symbol, day):
    result = materialize(
        [*RAW_ASSETS, *MODEL_ASSETS, *VALIDATION_ASSETS],
        selection=selection,
        partition_key=partition_key(symbol, day),
        resources=resources,
        raise_on_error=False,
    )
    assert result.success


def test_validation_scores_carry_the_claim_scores_and_the_report_leads_with_them(resources, tmp_path):
    day, nxt = FIXTURE_DAYS
    symbol = "ETHUSDT"
    lake = Lake.at(tmp_path)
    _materialize(resources, RAW_ASSETS, symbol, nxt)
    _materialize(resources, [*RAW_ASSETS, *MODEL_ASSETS], symbol, day)
    _materialize(resources, VALIDATION_ASSETS, symbol, day)
    scores = lake.read(SCORES_TABLE, symbol, [day]).to_pandas()

    (hourly,) = scores[scores["kind"] == "hourly_usd"].to_dict("records")
    assert hourly["n_hours"] == 24 and hourly["complete"]
    forced = lake.read("forced_liquidations", symbol, [day]).to_pandas()
    predicted = lake.read("predicted_liquidations", symbol, [day]).to_pandas()
    for side in ("long", "short"):
        assert hourly[f"n_liquidations_{side}"] == (forced["side"] == side).sum() > 0
        truth = forced.loc[forced["side"] == side, "notional_usd"].sum()
        assert hourly[f"actual_usd_{side}"] == pytest.approx(truth)
        ours = predicted.loc[predicted["side"] == side, "notional_usd"].sum()
        assert hourly[f"usd_ratio_{side}"] == pytest.approx(ours / truth)
        for key in (f"corr_{side}", f"baseline_corr_{side}"):
            assert -1.0 <= hourly[key] <= 1.0, key

    backtests = scores[scores["kind"] == "backtest"]
    assert len(backtests) > 0 and (backtests["n_reached_liquidations"] > 0).all()
    for key in ("reached_recall", "baseline_reached_recall", "mass_coverage"):
        assert backtests[key].between(0.0, 1.0).all(), key
    assert backtests["reached_usd"].to_numpy() == pytest.approx(backtests["liquidated_usd"].to_numpy())

    report = validation_report(lake)
    claims, coinglass = report.index("What the model claims"), report.index("Coinglass screenshots")
    assert claims < report.index("| score |") < coinglass < report.index("| precision@k")
    line = next(ln for ln in report.splitlines() if ln.startswith("| hourly correlation, longs"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4:7] == [
        f"{hourly['corr_long']:.3f}",
        f"{hourly['baseline_corr_long']:.3f}",
        f"24 h, {int(hourly['n_liquidations_long']):,} orders",
    ]
    assert "punishes zones far from price" in report
