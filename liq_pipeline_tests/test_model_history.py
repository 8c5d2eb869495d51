"""The model on the sample market, through the tables the pipeline writes: history survives a fall of open
interest, the lookback matters, and day D's last column runs into day D+1's first without a seam."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from liq_pipeline import model_io, staleness
from liq_pipeline.api.sample_lake import write_symbol
from liq_pipeline.lake import Lake
from liq_pipeline.model import ModelConfig, run_model
from liq_pipeline.model_io import HEATMAP
from liq_pipeline.symbols import load_registry

BTC = load_registry().get("BTCUSDT")
DAYS = [date(2024, 12, 20) + timedelta(days=i) for i in range(9)]
LOOKBACK = 3
MODELLED = DAYS[LOOKBACK - 1 :]  # the days whose whole lookback is in the lake


@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory) -> Lake:
    root = tmp_path_factory.mktemp("history")
    write_symbol(root, BTC, DAYS, trades_per_day=3_000, with_trades=True, config={"lookback_days": LOOKBACK})
    return Lake.at(root)


def columns(lake: Lake, day: date) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(as_of times, prices, [time, price] USD) of one partition's heatmap, as the pipeline wrote it."""
    table = lake.read(HEATMAP, BTC.symbol, [day])
    as_of = table["as_of"].to_numpy()
    price = table["price"].to_numpy()
    usd = pc.add(table["long_usd"], table["short_usd"]).to_numpy()
    times, t_idx = np.unique(as_of, return_inverse=True)
    prices, p_idx = np.unique(price, return_inverse=True)
    grid = np.zeros((times.size, prices.size))
    grid[t_idx, p_idx] = usd
    return times, prices, grid


def on_prices(prices: np.ndarray, values: np.ndarray, target: np.ndarray) -> np.ndarray:
    out = np.zeros(target.size)
    idx = np.searchsorted(target, prices)
    out[idx] = values
    return out


def test_midnight_is_no_bigger_a_jump_than_an_ordinary_step(sample_lake):
    jumps, ordinary = [], []
    for day in MODELLED[:-1]:
        t0, p0, g0 = columns(sample_lake, day)
        t1, p1, g1 = columns(sample_lake, day + timedelta(days=1))
        assert t0[-1] == np.datetime64(day + timedelta(days=1)) and t1[0] - t0[-1] == np.timedelta64(5, "m")
        prices = np.union1d(p0, p1)
        last, first = on_prices(p0, g0[-1], prices), on_prices(p1, g1[0], prices)
        jumps.append(np.abs(first - last).sum() / last.sum())
        ordinary.append(np.mean(np.abs(np.diff(g1, axis=0)).sum(axis=1) / g1[:-1].sum(axis=1)))
    # The midnight step also carries the 23:55 -> 00:00 change of open interest, which day D cannot see (its
    # reading is the next day's), so it is about one to two ordinary steps; a seam would be many.
    assert 0 < np.mean(ordinary) < 0.05
    assert np.mean(jumps) <= 2 * np.mean(ordinary), (jumps, ordinary)


def test_day_d_and_day_d_plus_1_replays_hold_the_same_map_at_midnight(sample_lake):
    cfg = ModelConfig.for_symbol(BTC, lookback_days=LOOKBACK)
    for day in MODELLED[:-1]:
        nxt = day + timedelta(days=1)
        midnight = datetime.combine(nxt, datetime.min.time())
        ours = run_model(
            BTC, cfg, _loaded(sample_lake, cfg, day).inputs, keep_from=midnight - timedelta(minutes=5)
        )
        theirs = run_model(
            BTC, cfg, _loaded(sample_lake, cfg, nxt).inputs, keep_from=midnight - timedelta(minutes=5)
        )
        prices = np.union1d(ours.prices, theirs.prices)
        a = on_prices(ours.prices, ours.intensity()[0], prices)
        b = on_prices(theirs.prices, theirs.intensity()[0], prices)
        # Equal but for one step: day D+1's replay starts from its first day's midnight reading, day D's from the
        # 23:55 reading before it. That cohort weighs (N - (N - 1)) / (N - 1) = 1/2 at N = 3 (1/13 at the default 14).
        assert np.abs(a - b).sum() <= 5e-3 * a.sum(), day


def _loaded(lake: Lake, cfg: ModelConfig, day: date) -> model_io.LoadedInputs:
    days = [day - timedelta(days=i) for i in reversed(range(cfg.lookback_days))]
    slices = (lake.slice(t, BTC.symbol, days) for t in ("klines", "open_interest", "agg_trades"))
    return model_io.load_inputs(day, cfg, *slices)


def test_history_outlives_falls_of_open_interest_and_the_lookback_matters(sample_lake, tmp_path):
    day = DAYS[-1]
    oi = sample_lake.read("open_interest", BTC.symbol, DAYS[-LOOKBACK:])["open_interest"].to_numpy()
    falls = np.diff(oi) < 0
    assert falls.sum() > 50  # the sample's open interest falls often; the map never empties
    _, _, grid = columns(sample_lake, day)
    totals = grid.sum(axis=1)
    assert totals.min() > 0.2 * totals.max()
    # the same day with a 1-day lookback holds less, in other places
    write_symbol(
        tmp_path, BTC, DAYS[-2:], trades_per_day=3_000, with_trades=True, config={"lookback_days": 1}
    )
    _, p_short, g_short = columns(Lake.at(tmp_path), day)
    _, p_long, g_long = columns(sample_lake, day)
    prices = np.union1d(p_short, p_long)
    short_end, long_end = on_prices(p_short, g_short[-1], prices), on_prices(p_long, g_long[-1], prices)
    assert long_end.sum() > short_end.sum()
    assert np.abs(long_end / long_end.sum() - short_end / short_end.sum()).sum() > 0.1


def test_a_missing_metrics_day_is_a_gap_not_a_flat_line_and_a_jump(sample_lake, tmp_path):
    day = MODELLED[-1]
    gap_day = day - timedelta(days=1)
    cfg = ModelConfig.for_symbol(BTC, lookback_days=LOOKBACK)
    full = _loaded(sample_lake, cfg, day)
    days = [day - timedelta(days=i) for i in reversed(range(LOOKBACK))]
    holed = model_io.load_inputs(
        day,
        cfg,
        sample_lake.slice("klines", BTC.symbol, days),
        sample_lake.slice("open_interest", BTC.symbol, [d for d in days if d != gap_day]),
        sample_lake.slice("agg_trades", BTC.symbol, days),
    )
    ts = holed.inputs.ts.view("datetime64[ns]")
    in_gap = (ts >= np.datetime64(gap_day)) & (ts < np.datetime64(day))
    assert in_gap.sum() == 288 and np.isnan(holed.inputs.oi[in_gap]).all()
    assert not np.isnan(holed.inputs.oi[~in_gap][:-1]).any()
    result = run_model(BTC, cfg, holed.inputs)
    assert result.info["oi_long_gaps"] == 1
    # nothing opens during the missing day nor on the step after it (what opened meanwhile is unknown) ...
    after = int(np.flatnonzero(in_gap)[-1]) + 1
    assert result.opened[in_gap].sum() == 0 and result.opened[after] == 0
    # ... while with the day present those steps open positions
    complete = run_model(BTC, cfg, full.inputs)
    assert complete.opened[in_gap].sum() > 0


def test_each_days_volume_profile_is_computed_once_and_recomputed_when_its_trades_change(
    sample_lake, tmp_path
):
    import shutil

    import pyarrow.parquet as pq

    lake = Lake(root=Path(shutil.copytree(sample_lake.root, tmp_path / "lake")))
    day = MODELLED[-1]
    cfg = ModelConfig.for_symbol(BTC, lookback_days=LOOKBACK)
    cached = run_model(BTC, cfg, _loaded(lake, cfg, day).inputs)
    name = f"volume_profile_5m_{cfg.price_bin / 4:.10g}"
    profile_file = lake.cache().partition_file(name, BTC.symbol, day)
    stamp = profile_file.stat().st_mtime_ns
    again = run_model(BTC, cfg, _loaded(lake, cfg, day).inputs)
    assert profile_file.stat().st_mtime_ns == stamp  # read, not recomputed
    shutil.rmtree(lake.cache().root)  # a cache is only a cache: the same model without it
    fresh = run_model(BTC, cfg, _loaded(lake, cfg, day).inputs)
    assert cached.long_usd.tobytes() == again.long_usd.tobytes() == fresh.long_usd.tobytes()
    # trades re-ingested with other content: the day's profile follows them
    trades = lake.read("agg_trades", BTC.symbol, [day])
    half = trades.slice(0, trades.num_rows // 2)
    lake.write("agg_trades", BTC.symbol, day, staleness.with_fingerprint(half)[0])
    changed = run_model(BTC, cfg, _loaded(lake, cfg, day).inputs)
    counted = pq.read_table(profile_file)["n"].to_numpy().sum()
    assert counted == half.num_rows
    assert changed.long_usd.tobytes() != fresh.long_usd.tobytes()
