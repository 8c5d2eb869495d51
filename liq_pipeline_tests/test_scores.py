"""Validation scores on small hand-made arrays whose answers are worked out by hand in each test."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from liq_pipeline.validation.scores import (
    NA,
    append_jsonl,
    backtest_scores,
    coinglass_scores,
    comparison_record,
    dedupe_jsonl,
    naive_zones,
    rank_average,
    read_jsonl,
    relative_delta_pct,
    report_markdown,
    resample_mass,
    spearman,
    step_at,
    summarise,
    upsert_jsonl,
)
from liq_pipeline.validation.screenshot import Level, Profile

# ---------------------------------------------------------------------------------------------------------------------
# A heatmap column: bins 100..199 (bin 1), price 150.
#   long zones:  [120, 122] (3 x 10 = 30 USD), [135, 135] (5 USD)
#   short zones: [170, 171] (2 x 8 = 16 USD), [185, 185] (3 USD)
# tolerance = max(0.5 % x 150 = 0.75, bin 1) = 1.0

PRICES = np.arange(100.0, 200.0)
CURRENT = 150.0
BIN = 1.0


def _column():
    lng, sht = np.zeros_like(PRICES), np.zeros_like(PRICES)
    lng[(PRICES >= 120) & (PRICES <= 122)] = 10.0
    lng[PRICES == 135] = 5.0
    sht[(PRICES >= 170) & (PRICES <= 171)] = 8.0
    sht[PRICES == 185] = 3.0
    return lng, sht


def _score(levels, profile=None, **kw):
    lng, sht = _column()
    return coinglass_scores(levels, profile, PRICES, lng, sht, CURRENT, BIN, **kw)


def _levels(*pairs):
    return [Level(price=p, intensity=i, usd=None) for p, i in pairs]


def test_perfect_match_hit_rate_and_precision_are_one():
    s = _score(_levels((121.0, 1.0), (135.0, 0.8), (170.5, 0.6), (185.0, 0.3)))
    assert s["tolerance"] == 1.0
    assert s["n_coinglass_levels"] == 4 and s["n_our_zones"] == 4
    assert s["hit_rate"] == 1.0
    assert s["precision"] == 1.0
    assert s["n_hits"] == 4 and s["n_matched_zones"] == 4


def test_shifted_beyond_tolerance_scores_zero():
    # each level 4-5 away from the nearest zone interval, tolerance 1
    s = _score(_levels((126.0, 1.0), (140.0, 0.8), (176.0, 0.6), (190.0, 0.3)))
    assert s["hit_rate"] == 0.0
    assert s["precision"] == 0.0
    assert s["reason"] is None or "hit_rate" not in s["reason"]


def test_partial_match_and_precision_differ():
    # 121 inside [120,122]; 122.9 is 0.9 from it (within 1); 160 is 10 from everything.
    # hit_rate 2/3; only 1 of our 4 zones is matched -> precision 1/4.
    s = _score(_levels((121.0, 1.0), (122.9, 0.7), (160.0, 0.5)))
    assert s["hit_rate"] == pytest.approx(2 / 3)
    assert s["precision"] == pytest.approx(1 / 4)
    assert (s["n_hits"], s["n_matched_zones"]) == (2, 1)


def test_tolerance_boundary_and_percent():
    # 124 is 2.0 from [120,122]: outside tolerance 1, inside tolerance 2 % x 150 = 3
    assert _score(_levels((124.0, 1.0)))["hit_rate"] == 0.0
    s = _score(_levels((124.0, 1.0)), tolerance_pct=2.0)
    assert s["tolerance"] == pytest.approx(3.0)
    assert s["hit_rate"] == 1.0
    # 123 is exactly 1.0 away: within (<=)
    assert _score(_levels((123.0, 1.0)))["hit_rate"] == 1.0


def test_top_keeps_strongest_on_both_sides():
    # top=2: our zones are long [120,122] (30 USD) and short [170,171] (16 USD); Coinglass' 2 strongest are 121 and
    # 185 (the weak 170.5 level is dropped) -> hit_rate 1/2, precision 1/2.
    s = _score(_levels((121.0, 1.0), (170.5, 0.2), (185.0, 0.9)), top=2)
    assert s["n_our_zones"] == 2 and s["n_coinglass_levels"] == 2
    assert s["hit_rate"] == 0.5
    assert s["precision"] == 0.5


def test_visible_range_restricts_our_zones():
    # visible 140..199: the long zones at 120-122 and 135 are off screen
    prof = Profile(prices=np.arange(140.0, 200.0), intensity=np.zeros(60))
    s = _score(_levels((170.0, 1.0)), prof)
    assert (s["visible_low"], s["visible_high"]) == (139.5, 199.5)
    assert s["n_our_zones"] == 2  # the two short zones
    assert s["precision"] == 0.5 and s["hit_rate"] == 1.0


def test_no_coinglass_levels_gives_none_with_reason():
    s = _score([])
    assert s["n_coinglass_levels"] == 0
    assert s["hit_rate"] is None and s["precision"] is None
    assert "no Coinglass levels" in s["reason"]
    assert "hit_rate" in s["reasons"]


def test_no_zones_of_ours_is_a_real_miss():
    z = np.zeros_like(PRICES)
    prof = Profile(prices=PRICES.copy(), intensity=np.linspace(0, 1, PRICES.size))
    s = coinglass_scores(_levels((121.0, 1.0)), prof, PRICES, z, z, CURRENT, BIN)
    assert s["hit_rate"] == 0.0 and s["n_our_zones"] == 0
    assert s["precision"] is None and "no zones" in s["reasons"]["precision"]
    # our mass is constant (all 0): the correlation is undefined, not 0
    assert s["rank_correlation"] is None and s["n_profile_points"] == PRICES.size
    assert "constant" in s["reasons"]["rank_correlation"]


def test_spearman_hand_computed():
    # d = (-1, 1, -1, 1, 0), sum d^2 = 4 -> 1 - 6*4 / (5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # ties: ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4): cov 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert rank_average([1, 2, 2, 3]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1], [1]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_rank_correlation_through_coinglass_scores():
    # profile rows = our bins 100..104, our mass (long + short) = 1..5
    prices = np.arange(100.0, 105.0)
    lng, sht = np.array([1.0, 2, 3, 0, 0]), np.array([0.0, 0, 0, 4, 5])
    hand = Profile(prices=prices, intensity=np.array([0.2, 0.1, 0.4, 0.3, 0.5]))
    s = coinglass_scores([], hand, prices, lng, sht, 103.5, 1.0)
    assert s["n_profile_points"] == 5
    assert s["rank_correlation"] == pytest.approx(0.8)
    same = Profile(prices=prices, intensity=(lng + sht) / 5)
    assert coinglass_scores([], same, prices, lng, sht, 103.5, 1.0)["rank_correlation"] == pytest.approx(1.0)
    # rows twice as fine as our bins, same picture: 1 (with ties averaged)
    fine = np.arange(99.75, 104.5, 0.5)
    step = np.repeat(lng + sht, 2) / 5
    s = coinglass_scores([], Profile(prices=fine, intensity=step), prices, lng, sht, 103.5, 1.0)
    assert s["n_profile_points"] == 10 and s["rank_correlation"] == pytest.approx(1.0)


def test_rank_correlation_leaves_out_rows_outside_our_grid():
    prices = np.arange(100.0, 105.0)
    mass = np.arange(1.0, 6.0)
    prof = Profile(prices=np.arange(95.0, 110.0), intensity=np.arange(15.0))
    s = coinglass_scores([], prof, prices, mass, np.zeros(5), 200.0, 1.0)
    assert s["n_profile_points"] == 5 and s["rank_correlation"] == pytest.approx(1.0)
    off = Profile(prices=np.arange(300.0, 310.0), intensity=np.arange(10.0))
    s = coinglass_scores([], off, prices, mass, np.zeros(5), 200.0, 1.0)
    assert s["n_profile_points"] == 0 and s["rank_correlation"] is None
    assert "does not cover" in s["reasons"]["rank_correlation"]


def test_resample_mass_is_exact():
    c, m = np.array([100.0, 101.0]), np.array([2.0, 4.0])
    dens, cov = resample_mass(c, m, 1.0, [99.75, 100.25, 100.75, 101.25])
    assert dens.tolist() == pytest.approx([2.0, 2.0, 4.0, 4.0]) and cov.all()
    # coarse rows: cells [99.5, 101.5] and [101.5, 103.5] -> mass 6 and 0 over width 2
    dens, cov = resample_mass(c, m, 1.0, [100.5, 102.5])
    assert dens.tolist() == pytest.approx([3.0, 0.0])
    assert cov.tolist() == [True, False]


def test_step_at_picks_step_at_or_before():
    ends = np.array(["2024-12-28T11:00", "2024-12-28T12:00", "2024-12-28T13:00"], dtype="datetime64[ns]")
    assert step_at(ends, datetime(2024, 12, 28, 12, 0, tzinfo=UTC)) == 1
    assert step_at(ends, datetime(2024, 12, 28, 12, 59, tzinfo=UTC)) == 1
    assert step_at(ends, datetime(2024, 12, 28, 10, 0)) is None


# ---------------------------------------------------------------------------------------------------------------------
# Forced liquidations

T0 = datetime(2024, 1, 1)
ZONES = [
    {"side": "long", "rank": 1, "price_low": 90.0, "price_high": 92.0, "notional_usd": 100.0, "ts": T0},
    {"side": "short", "rank": 1, "price_low": 110.0, "price_high": 111.0, "notional_usd": 80.0, "ts": T0},
    {"side": "long", "rank": 2, "price_low": 80.0, "price_high": 80.0, "notional_usd": 50.0, "ts": T0},
    {"side": "short", "rank": 2, "price_low": 130.0, "price_high": 130.0, "notional_usd": 10.0, "ts": T0},
]


def _liqs(tz=None):
    h = lambda n: pd.Timestamp(T0 + timedelta(hours=n), tz=tz)  # noqa: E731
    return pd.DataFrame(
        [
            (h(1), "long", 91.0, 1000.0),  # inside long [90, 92]
            (h(2), "short", 92.4, 500.0),  # price in the long zone but a short liquidated: not counted
            (h(3), "short", 111.5, 300.0),  # on the edge of short [110, 111] widened by 0.5
            (h(4), "long", 100.8, 1000.0),  # no zone of ours (the baseline's long zone at 100 +- 1)
            (h(5), "long", 60.0, 200.0),  # nobody's zone
            (h(25), "long", 80.0, 700.0),  # after the 24 h horizon
            (h(0), "long", 80.0, 50.0),  # at t0: the window is (t0, t0 + 24 h]
        ],
        columns=["ts", "side", "price", "notional_usd"],
    )


def test_backtest_precision_and_recall_hand_computed():
    s = backtest_scores(ZONES, _liqs(), price_bin=1.0, k=3)
    # top 3 by notional: long 90-92 (hit), short 110-111 (hit), long 80 (its liquidation is after the horizon)
    assert s["n_zones"] == 3 and s["n_zones_hit"] == 2
    assert s["precision_at_k"] == pytest.approx(2 / 3)
    # window: 1000 + 500 + 300 + 1000 + 200 = 3000 USD in 5 orders; caught 1000 + 300
    assert s["n_liquidations"] == 5 and s["liquidated_usd"] == 3000.0
    assert s["recall"] == pytest.approx(1300 / 3000)
    assert s["t0"] == "2024-01-01T00:00:00+00:00" and s["window_end"] == "2024-01-02T00:00:00+00:00"
    # k = 4 adds the short zone at 130, never hit
    assert backtest_scores(ZONES, _liqs(), price_bin=1.0, k=4)["precision_at_k"] == pytest.approx(2 / 4)


def test_backtest_wrong_side_and_widening_and_horizon():
    # without the half-bin widening the 111.5 short is outside [110, 111]
    s = backtest_scores(ZONES, _liqs(), price_bin=0.0, k=3)
    assert s["precision_at_k"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1000 / 3000)
    # a wider horizon brings in the long at 80 (hour 25): zone 80 is hit
    s = backtest_scores(ZONES, _liqs(), price_bin=1.0, k=3, horizon_hours=26)
    assert s["precision_at_k"] == 1.0 and s["recall"] == pytest.approx(2000 / 3700)
    # only the wrong-side liquidation in the window: nothing caught
    only = _liqs().iloc[[1]]
    s = backtest_scores(ZONES, only, price_bin=1.0, k=3)
    assert s["precision_at_k"] == 0.0 and s["recall"] == 0.0 and s["n_liquidations"] == 1


def test_backtest_timezone_aware_liquidations_and_t0():
    a = backtest_scores(ZONES, _liqs(), price_bin=1.0, k=3)
    b = backtest_scores(ZONES, _liqs(tz="UTC"), price_bin=1.0, k=3, t0=T0.replace(tzinfo=UTC))
    c = backtest_scores(
        ZONES, _liqs(), price_bin=1.0, k=3, t0=datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    )
    for key in ("precision_at_k", "recall", "n_liquidations"):
        assert a[key] == b[key] == c[key]


def test_backtest_baseline_same_width():
    s = backtest_scores(ZONES, _liqs(), price_bin=1.0, k=3, price_range=(60.0, 140.0), current_price=101.0)
    # our width: 2 + 1 + 0 = 3; baseline: 3 zones of width 1 centred at 73.33, 100 (long), 126.67 (short)
    assert s["zone_width"] == pytest.approx(3.0) and s["baseline_width"] == pytest.approx(3.0)
    assert s["n_baseline_zones"] == 3
    # 100.8 is inside [99.5, 100.5] widened by 0.5 -> 1 zone of 3 hit; 1000 of 3000 USD
    assert s["baseline_precision_at_k"] == pytest.approx(1 / 3)
    assert s["baseline_recall"] == pytest.approx(1000 / 3000)
    no_base = backtest_scores(ZONES, _liqs(), price_bin=1.0, k=3)
    assert (
        no_base["baseline_precision_at_k"] is None and "price_range" in no_base["reasons"]["baseline_recall"]
    )


def test_naive_zones_uniform_split_and_width():
    rows = naive_zones(60.0, 140.0, 101.0, 4, 8.0)
    centres = [r["peak_price"] for r in rows]
    assert centres == pytest.approx([70.0, 90.0, 110.0, 130.0])
    assert [r["side"] for r in rows] == ["long", "long", "short", "short"]
    assert sum(r["price_high"] - r["price_low"] for r in rows) == pytest.approx(8.0)
    assert all(r["price_high"] - r["price_low"] == pytest.approx(2.0) for r in rows)
    assert [r["rank"] for r in rows] == [2, 1, 1, 2]  # nearest the price first
    assert naive_zones(100.0, 100.0, 100.0, 3, 1.0) == [] and naive_zones(90.0, 110.0, 100.0, 0, 1.0) == []


def test_backtest_nothing_to_score_is_none():
    late = _liqs().iloc[[5]]  # only the liquidation after the horizon
    s = backtest_scores(ZONES, late, price_bin=1.0, price_range=(60.0, 140.0), current_price=101.0)
    assert s["n_liquidations"] == 0 and s["liquidated_usd"] == 0.0
    assert s["precision_at_k"] is None and s["recall"] is None and s["baseline_recall"] is None
    assert "no forced liquidations" in s["reason"]
    s = backtest_scores([], _liqs(), t0=T0, price_bin=1.0)
    assert s["n_zones"] == 0 and s["precision_at_k"] is None and "no zones" in s["reasons"]["recall"]
    with pytest.raises(ValueError, match="t0"):
        backtest_scores([], _liqs())
    bad = _liqs().assign(side="SELL")
    with pytest.raises(ValueError, match="long"):
        backtest_scores(ZONES, bad, price_bin=1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Records


def test_comparison_record_fields():
    s = _score(_levels((121.0, 1.0), (160.0, 0.5)))
    when = datetime(2024, 12, 28, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    rec = comparison_record("BTCUSDT", when, "/x/coinglass_btc_m1_24hour_20241228_120000.png", s)
    assert rec["symbol"] == "BTCUSDT"
    assert rec["captured_at"] == "2024-12-28T12:00:00+00:00"
    assert rec["file"] == "coinglass_btc_m1_24hour_20241228_120000.png"
    assert rec["hit_rate"] == 0.5 and rec["n_coinglass_levels"] == 2
    json.dumps(rec)  # JSON-safe


def test_jsonl_rerun_does_not_duplicate(tmp_path):
    path = tmp_path / "deep" / "dir" / "comparisons.jsonl"
    recs = [
        comparison_record("BTCUSDT", datetime(2024, 12, 28, 12), "a.png", {"hit_rate": 0.5}),
        comparison_record("ETHUSDT", datetime(2024, 12, 28, 12), "b.png", {"hit_rate": 0.25}),
    ]
    assert upsert_jsonl(path, recs) == 2
    assert upsert_jsonl(path, recs) == 2  # re-materialised
    changed = comparison_record("BTCUSDT", datetime(2024, 12, 28, 12), "a.png", {"hit_rate": 0.75})
    upsert_jsonl(path, [changed])
    got = read_jsonl(path)
    assert len(path.read_text().splitlines()) == 2
    assert [(r["symbol"], r["hit_rate"]) for r in got] == [("BTCUSDT", 0.75), ("ETHUSDT", 0.25)]
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


def test_append_then_dedupe(tmp_path):
    path = tmp_path / "new" / "c.jsonl"
    rec = comparison_record("BTCUSDT", datetime(2024, 12, 28, 12), "a.png", {"hit_rate": float("nan")})
    assert append_jsonl(path, [rec]) == 1
    append_jsonl(path, [{**rec, "hit_rate": 0.9}])
    assert len(path.read_text().splitlines()) == 2
    assert json.loads(path.read_text().splitlines()[0])["hit_rate"] is None  # NaN written as null
    assert dedupe_jsonl(path) == 1
    assert read_jsonl(path) == [{**rec, "hit_rate": 0.9}]
    assert dedupe_jsonl(path) == 0
    assert dedupe_jsonl(tmp_path / "missing.jsonl") == 0


# ---------------------------------------------------------------------------------------------------------------------
# Summary and report


def test_summarise_weights_by_observations():
    rows = [
        {"symbol": "BTCUSDT", "hit_rate": 1.0, "n_coinglass_levels": 2, "precision": 0.5, "n_our_zones": 4},
        {"symbol": "BTCUSDT", "hit_rate": 0.0, "n_coinglass_levels": 8, "precision": 1.0, "n_our_zones": 1},
        {"symbol": "BTCUSDT", "hit_rate": None, "n_coinglass_levels": 0, "precision": None, "n_our_zones": 3},
        {
            "symbol": "BTCUSDT",
            "precision_at_k": 0.5,
            "n_zones": 10,
            "recall": 0.2,
            "liquidated_usd": 100.0,
            "n_liquidations": 7,
        },  # fmt: skip
        {
            "symbol": "BTCUSDT",
            "precision_at_k": 1.0,
            "n_zones": 10,
            "recall": 0.6,
            "liquidated_usd": 300.0,
            "n_liquidations": 3,
        },  # fmt: skip
        {"symbol": "ETHUSDT", "hit_rate": 0.5, "n_coinglass_levels": 4},
    ]
    df = summarise(rows).set_index("symbol")
    btc, eth = df.loc["BTCUSDT"], df.loc["ETHUSDT"]
    assert btc["hit_rate"] == pytest.approx(0.2)  # (1 x 2 + 0 x 8) / 10
    assert btc["precision"] == pytest.approx(3 / 5)  # (0.5 x 4 + 1 x 1) / 5
    assert btc["precision_at_k"] == pytest.approx(0.75)
    assert btc["recall"] == pytest.approx((0.2 * 100 + 0.6 * 300) / 400)  # pooled USD share
    assert btc["n_screenshots"] == 3 and btc["n_backtests"] == 2 and btc["n_liquidations"] == 10
    assert btc["n_coinglass_levels"] == 10 and btc["n_our_zones"] == 8
    assert eth["n_screenshots"] == 1 and eth["n_liquidations"] == 0
    assert math.isnan(eth["recall"]) and math.isnan(eth["precision"])
    assert summarise([]).empty


def test_report_shows_delta_and_na():
    rows = [
        {
            "symbol": "BTCUSDT",
            "hit_rate": 0.6,
            "n_coinglass_levels": 10,
            "precision_at_k": 0.5,
            "n_zones": 10,
            "recall": 0.3,
            "liquidated_usd": 5.0,
            "n_liquidations": 4,
        },  # fmt: skip
        {"symbol": "ETHUSDT", "hit_rate": 0.4, "n_coinglass_levels": 5},
    ]
    md = report_markdown(summarise(rows))
    lines = md.splitlines()
    assert lines[0] == "| metric | BTCUSDT | ETHUSDT | delta % |"
    hit = next(ln for ln in lines if ln.startswith("| hit_rate"))
    assert hit.endswith("| 0.600 | 0.400 | 40.0 % |")  # |0.6 - 0.4| / 0.5 x 100
    rec = next(ln for ln in lines if ln.startswith("| recall"))
    assert rec == f"| recall (liquidated USD in our zones) | 0.300 | {NA} | {NA} |"
    shots = next(ln for ln in lines if ln.startswith("| screenshots"))
    assert shots == "| screenshots | 1 | 1 | 0.0 % |"
    assert "n/a (no observations)" in next(ln for ln in lines if ln.startswith("| baseline recall"))
    # a symbol with no rows at all
    only_btc = report_markdown(pd.DataFrame([{"symbol": "BTCUSDT", "hit_rate": 0.6}]))
    assert f"| 0.600 | {NA} | {NA} |" in only_btc
    assert relative_delta_pct(1.0, 3.0) == pytest.approx(100.0)
    assert relative_delta_pct(None, 3.0) is None and relative_delta_pct(0.0, 0.0) == 0.0
