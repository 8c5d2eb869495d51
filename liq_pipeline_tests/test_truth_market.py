"""The model against a market whose true positions are known (`sources.positions`): individual leveraged positions
open in long/short pairs, close after their own holding time or are liquidated at their own liquidation price. Its
archive files are served over HTTP on 127.0.0.1 and ingested by the pipeline's own source and parsers; the model
runs on that lake with `model_io.load_inputs` + `run_day`, as the asset does.

What this proves: the model's map is closer to the true one than a flat profile and than a static
py-liquidation-map-style map, at every 2 hours of three days; and its predicted liquidations follow the true forced
liquidations hour by hour, clearly better than a baseline that knows only the price path. The market's hidden rules
differ from the model's defaults (another leverage mix, sizes across margin tiers, closing by age rather than in
proportion), so the model is not handed the answer; and a replay that carries no history (a 1-day lookback) fails
the same checks. The thresholds are the measured values with margin (the numbers are in the assertion messages)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from liq_pipeline import model_io
from liq_pipeline.formats import FORMATS
from liq_pipeline.lake import Lake
from liq_pipeline.model import ModelConfig, ModelResult
from liq_pipeline.sources import positions
from liq_pipeline.sources.archive import BinanceArchive, ingest
from liq_pipeline.symbols import load_registry
from liq_pipeline.validation.scores import hourly_liquidation_scores

from .conftest import ArchiveServer

SYMBOL = "BTCUSDT"
DAYS = [date(2024, 12, 23) + timedelta(days=i) for i in range(7)]
LOOKBACK = 5
SCORED = DAYS[-3:]  # each replays LOOKBACK days of the written archive
TABLES = ("klines", "open_interest", "agg_trades", "forced_liquidations")
EVERY = 24  # steps between compared snapshots: 2 hours of 5-minute steps


@dataclass
class Run:
    market: positions.TruthMarket
    lake: Lake
    config: ModelConfig
    results: dict[date, ModelResult]
    events: pd.DataFrame
    amnesic: dict[date, ModelResult]  # the same model with a 1-day lookback: no history carried into the day


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> Run:
    spec = load_registry().get(SYMBOL)
    market = positions.simulate(spec, DAYS)
    root = tmp_path_factory.mktemp("truth")
    positions.write_truth_archive(root / "mirror", market)
    lake = Lake.at(root / "data")
    server = ArchiveServer(root / "mirror")
    try:
        source = BinanceArchive(server.url, root / "cache", retries=0)
        for day in DAYS:
            for table in TABLES:
                lake.write(table, SYMBOL, day, ingest(source, FORMATS[table], SYMBOL, day).table)
    finally:
        server.close()
    config = ModelConfig.for_symbol(spec, lookback_days=LOOKBACK)
    results, amnesic = {}, {}
    for day in SCORED:
        for out, cfg in ((results, config), (amnesic, ModelConfig.for_symbol(spec, lookback_days=1))):
            window = [day - timedelta(days=i) for i in reversed(range(cfg.lookback_days))]
            slices = [lake.slice(t, SYMBOL, window) for t in ("klines", "open_interest", "agg_trades")]
            out[day] = model_io.run_day(spec, cfg, model_io.load_inputs(day, cfg, *slices))
    return Run(market, lake, config, results, _events(results), amnesic)


def _events(results: dict[date, ModelResult]) -> pd.DataFrame:
    return pd.concat([model_io.events_table(r).to_pandas() for r in results.values()], ignore_index=True)


def test_the_archive_carries_the_true_market(truth):
    """What the model reads is the truth: the lake's open interest is the true one at every 5-minute mark, and its
    forced liquidations are the true liquidations (to the archive's tick and lot rounding)."""
    oi = truth.lake.slice("open_interest", SYMBOL, DAYS).read().to_pandas()
    assert len(oi) == 288 * len(DAYS)
    marks = oi["ts"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    np.testing.assert_allclose(oi["open_interest"], truth.market.open_interest(marks), atol=6e-4)
    assert oi["open_interest"].min() > 0

    lake_liq = truth.lake.slice("forced_liquidations", SYMBOL, DAYS).read().to_pandas()
    true_liq = truth.market.liquidations(pd.Timestamp(DAYS[0]), pd.Timestamp(DAYS[-1] + timedelta(days=1)))
    assert len(lake_liq) == len(true_liq) > 100  # the archive's doubled rows are gone, none lost
    for side in ("long", "short"):
        got, want = lake_liq[lake_liq["side"] == side], true_liq[true_liq["side"] == side]
        assert len(got) == len(want) > 10
        assert got["notional_usd"].sum() == pytest.approx(want["notional_usd"].sum(), rel=1e-4)
    # Each one is on the archived price path: its minute's kline reached its price (to a tick).
    kl = truth.lake.slice("klines", SYMBOL, DAYS).read().to_pandas().set_index("open_time")
    bar = kl.loc[lake_liq["ts"].dt.floor("min")]
    long = (lake_liq["side"] == "long").to_numpy()
    assert np.all(bar["low"].to_numpy()[long] <= lake_liq["price"].to_numpy()[long] + 0.1)
    assert np.all(bar["high"].to_numpy()[~long] >= lake_liq["price"].to_numpy()[~long] - 0.1)


def _static(run: Run, result: ModelResult, at: np.datetime64) -> positions.TrueMap:
    """The static baseline at `at` from the same trades the model read (its lookback up to `at`)."""
    day = pd.Timestamp(at - np.timedelta64(1, "ns")).date()
    window = [day - timedelta(days=i) for i in reversed(range(LOOKBACK))]
    trades = run.lake.slice("agg_trades", SYMBOL, window).read().to_pandas()
    trades = trades[trades["ts"].to_numpy() < at]
    return positions.static_liquidation_map(
        run.market.spec,
        result.prices,
        trades["price"].to_numpy(),
        trades["quantity"].to_numpy(),
        ~trades["is_buyer_maker"].to_numpy(),
        run.config.leverage,
        run.config.leverage_weights,
        run.config.position_usd,
    )


def map_distances(
    run: Run, results: dict[date, ModelResult] | None = None, shift_pct: float = 0.0
) -> dict[str, np.ndarray]:
    """`profile_distance` of the model, flat and static maps to the true map, per side, every 2 hours of the scored
    days, over ±10 % of price in 0.5 % buckets. ``results`` default to the run's; ``shift_pct`` moves the model's map
    (a deliberately wrong model)."""
    out: dict[str, list[float]] = {"model": [], "flat": [], "static": []}
    for result in (results or run.results).values():
        for i in range(EVERY - 1, result.ts.size, EVERY):
            at, price = result.ts_end[i], float(result.close[i])
            true = run.market.true_map(at, result.prices)
            static = _static(run, result, at)
            pool = max(1, round(0.005 * price / result.price_bin))
            shift = round(shift_pct / 100 * price / result.price_bin)
            for mask, model, t, s in zip(
                positions.visible_window(result.prices, price),
                (result.long_usd[i], result.short_usd[i]),
                (true.long_usd, true.short_usd),
                (static.long_usd, static.short_usd),
                strict=True,
            ):
                out["model"].append(positions.profile_distance(np.roll(model, shift), t, mask, pool))
                out["flat"].append(positions.profile_distance(np.ones_like(t), t, mask, pool))
                out["static"].append(positions.profile_distance(s, t, mask, pool))
    return {k: np.array(v) for k, v in out.items()}


def test_the_model_map_is_closer_to_the_truth_than_flat_and_static_maps(truth):
    d = map_distances(truth)
    model, flat, static = (float(d[k].mean()) for k in ("model", "flat", "static"))
    wins = float(np.mean(d["model"] < d["static"]))
    numbers = f"mean L1 model {model:.3f}, flat {flat:.3f}, static {static:.3f}; model < static in {wins:.0%}"
    assert d["model"].size == 2 * 12 * len(SCORED)
    # Measured (seed 0): model 0.378, flat 0.500, static 0.521; the model nearer than the static map in 90 % of
    # snapshots (seeds 1-3: model 0.35-0.37, flat 0.48-0.54, static 0.48-0.51, 83-93 %).
    assert model < 0.9 * flat, numbers
    assert model < 0.9 * static, numbers
    assert wins > 0.7, numbers


def test_a_shifted_map_loses_to_the_flat_profile(truth):
    """The distance can tell a wrong map: the same map moved by 3 % of price is further from the truth than the flat
    profile, so the win above is about where the levels are, not about having levels at all."""
    d = map_distances(truth, shift_pct=3.0)
    assert d["model"].mean() > d["flat"].mean(), (
        f"shifted {d['model'].mean():.3f}, flat {d['flat'].mean():.3f}"
    )


def _hourly(run: Run, events: pd.DataFrame) -> dict:
    start, end = pd.Timestamp(SCORED[0]), pd.Timestamp(SCORED[-1] + timedelta(days=1))
    actual = run.lake.slice("forced_liquidations", SYMBOL, SCORED).read().to_pandas()
    klines = run.lake.slice("klines", SYMBOL, SCORED).read().to_pandas()
    return hourly_liquidation_scores(events, actual, klines, start, end)


def test_predicted_liquidations_follow_the_true_ones_hour_by_hour(truth):
    s = _hourly(truth, truth.events)
    numbers = ", ".join(
        f"{k} {s[k]:.3f}" for k in ("corr_long", "corr_short", "baseline_corr_long", "baseline_corr_short")
    )
    numbers += f", usd_ratio_long {s['usd_ratio_long']:.2f}, usd_ratio_short {s['usd_ratio_short']:.2f}"
    assert s["n_hours"] == 24 * len(SCORED)
    # Measured (seed 0; seeds 1-3 within 0.04): corr 0.98 longs, 0.97 shorts against the price-move baseline's
    # 0.82 and 0.71; predicted / true USD 0.67 longs, 0.59 shorts. Liquidations here are caused by price moves
    # alone, so the baseline is strong: the model must still beat it clearly.
    assert s["corr_long"] > 0.85, numbers
    assert s["corr_short"] > 0.8, numbers
    for side in ("long", "short"):
        assert s[f"corr_{side}"] > s[f"baseline_corr_{side}"] + 0.08, numbers
        assert 0.25 < s[f"usd_ratio_{side}"] < 2.0, numbers  # the right order of magnitude


def test_predictions_shifted_in_time_lose_the_correlation(truth):
    """The hourly score can tell a wrong model: the same predictions six hours late correlate far less."""
    late = truth.events.assign(ts=truth.events["ts"] + pd.Timedelta(hours=6))
    s, on_time = _hourly(truth, late), _hourly(truth, truth.events)
    for side in ("long", "short"):
        assert (s[f"corr_{side}"] or 0.0) < on_time[f"corr_{side}"] - 0.4, (side, s[f"corr_{side}"])


def test_a_model_without_history_fails_both_checks(truth):
    """The failure these checks exist for: a replay that carries no history into the day (a 1-day lookback, what a
    wiped state amounts to) is further from the true map than the flat profile, and its hourly liquidations do not
    beat the price-move baseline."""
    d = map_distances(truth, truth.amnesic)
    model, flat = float(d["model"].mean()), float(d["flat"].mean())
    assert not model < 0.9 * flat, (
        f"1-day lookback: model {model:.3f}, flat {flat:.3f}"
    )  # measured 0.76 vs 0.49
    s = _hourly(truth, _events(truth.amnesic))
    assert any(s[f"corr_{x}"] <= s[f"baseline_corr_{x}"] + 0.08 for x in ("long", "short")), s
