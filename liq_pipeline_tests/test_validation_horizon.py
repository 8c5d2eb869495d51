"""The forced-liquidation backtest says which horizon it covered: scored on what is in the lake, partial until the
next day arrives, complete after, the same on every re-run with the same inputs."""

from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
from dagster import materialize

from liq_pipeline.assets.model import MODEL_ASSETS
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.assets.validation import VALIDATION_ASSETS
from liq_pipeline.lake import Lake
from liq_pipeline.partitions import partition_key
from liq_pipeline.sensors import rescore_scan
from liq_pipeline.validation.daily import (
    SCORES_TABLE,
    ground_truth_end,
    horizon_status,
    rescore_due,
    score_day,
)

from .conftest import FIXTURE_DAYS

D = date(2024, 3, 10)
NEXT = D + timedelta(days=1)
T = pd.Timestamp(D)
H = pd.Timedelta(hours=1)
SNAPSHOTS = [T + H, T + 12 * H, T + 24 * H]
# Columns of the backtest that do not depend on the liquidations, and those that count them.
ZONE_COLUMNS = ["ts", "n_zones", "n_baseline_zones", "zone_width", "baseline_width", "k", "price_bin"]


def _levels(day: date) -> pd.DataFrame:
    rows = []
    for t in SNAPSHOTS:
        t += pd.Timestamp(day) - T
        for side, lo, hi, usd in (("long", 95.0, 96.0, 1e6), ("short", 104.0, 105.0, 2e6)):
            rows.append(
                {
                    "as_of": t,
                    "side": side,
                    "rank": 1,
                    "price_low": lo,
                    "price_high": hi,
                    "peak_price": lo,
                    "notional_usd": usd,
                    "distance_pct": 4.0,
                    "current_price": 100.0,
                    "is_end": t.hour == 0,
                }
            )
    return pd.DataFrame(rows)


def _klines(day: date) -> pd.DataFrame:
    start = pd.Timestamp(day)
    times = pd.date_range(start - 24 * H, start + 24 * H, freq="min", inclusive="left")
    return pd.DataFrame({"open_time": times, "low": 90.0, "high": 110.0, "close": 100.0})


LIQUIDATIONS = pd.DataFrame(
    {
        "ts": [T + 2 * H, T + 23 * H, T + 30 * H, T + 37 * H],
        "side": ["long", "short", "long", "short"],
        "price": [95.5, 104.5, 95.2, 104.2],
        "notional_usd": [1000.0, 1000.0, 5000.0, 3000.0],
    }
)
LIQUIDATIONS["date"] = LIQUIDATIONS["ts"].dt.date


def _score(liquidations: pd.DataFrame | None, rows: dict, day: date = D) -> pd.DataFrame:
    return _score_day(liquidations, rows, day)[0]


def _score_day(liquidations: pd.DataFrame | None, rows: dict, day: date) -> tuple:
    """score_day on the module's synthetic levels and klines: (scores, screenshot rows, notes)."""
    return score_day(
        _missing_folder(),
        "BTCUSDT",
        day,
        set(),
        heat=pd.DataFrame(columns=["as_of"]),
        klines=_klines(day),
        levels=_levels(day),
        liquidations=liquidations,
        price_bin=0.1,
        truth=rows,
    )


def _missing_folder() -> Path:
    return Path("/nonexistent-screenshots")  # no screenshots: only the backtest is scored


def test_ground_truth_reaches_the_end_of_the_consecutive_days_in_the_lake():
    assert ground_truth_end(D, {}) is None
    assert ground_truth_end(D, {NEXT: 5}) is None  # the day itself is missing
    assert ground_truth_end(D, {D: 5}) == pd.Timestamp(NEXT)
    assert ground_truth_end(D, {D: 5, NEXT: 2}) == pd.Timestamp(D + timedelta(days=2))
    assert ground_truth_end(D, {D: 0}) == pd.Timestamp(NEXT)  # a quiet day inside the archive is ground truth
    end = date(2024, 3, 31)
    assert ground_truth_end(end, {end: 7, date(2024, 4, 1): 0}) == pd.Timestamp(date(2024, 4, 1))
    assert ground_truth_end(date(2024, 5, 1), {date(2024, 5, 1): 0}) is None  # after the archive's end


def test_without_the_next_day_the_backtest_is_partial_with_the_horizon_it_covered():
    df = _score(LIQUIDATIONS[LIQUIDATIONS["date"] == D], {D: 2})
    bt = df[df["kind"] == "backtest"].set_index("ts")
    assert list(bt.index) == SNAPSHOTS
    assert not bt["complete"].any()
    assert (bt["horizon_end"] == pd.Timestamp(NEXT)).all()
    assert list(bt["n_liquidations"]) == [2, 1, 0]  # (01:00, 24:00], (12:00, 24:00], nothing after midnight
    assert pd.isna(bt.loc[SNAPSHOTS[-1], "precision_at_k"])
    assert horizon_status(df, D, {D: 2}).startswith("partial: 3 of 3 backtests cover less than 24 h")
    assert f"re-materialize after {NEXT}'s forced_liquidations is ingested" in horizon_status(df, D, {D: 2})


def test_after_the_next_day_arrives_the_score_is_complete_and_differs_only_where_the_horizon_grew():
    partial = _score(LIQUIDATIONS[LIQUIDATIONS["date"] == D], {D: 2})
    complete = _score(LIQUIDATIONS, {D: 2, NEXT: 2})
    p = partial[partial["kind"] == "backtest"].set_index("ts", drop=False)
    c = complete[complete["kind"] == "backtest"].set_index("ts", drop=False)
    assert c["complete"].all() and (c["horizon_end"] == c["ts"] + 24 * H).all()
    assert horizon_status(complete, D, {D: 2, NEXT: 2}).startswith("complete")
    pd.testing.assert_frame_equal(p[ZONE_COLUMNS], c[ZONE_COLUMNS])
    assert list(c["n_liquidations"]) == [2, 2, 2]
    assert (c["n_liquidations"] >= p["n_liquidations"]).all()
    # 01:00: the horizon grew by one hour holding no liquidation, so its scores are unchanged.
    score_cols = ["precision_at_k", "recall", "n_liquidations", "liquidated_usd", "n_zones_hit"]
    assert c.loc[SNAPSHOTS[0], score_cols].tolist() == p.loc[SNAPSHOTS[0], score_cols].tolist()
    assert c.loc[SNAPSHOTS[1], "liquidated_usd"] == 6000.0 != p.loc[SNAPSHOTS[1], "liquidated_usd"]


def test_the_same_inputs_give_the_same_scores():
    for liq, rows in ((LIQUIDATIONS[LIQUIDATIONS["date"] == D], {D: 2}), (LIQUIDATIONS, {D: 2, NEXT: 2})):
        pd.testing.assert_frame_equal(_score(liq, rows), _score(liq.copy(), dict(rows)))


def test_a_day_after_the_archive_end_stays_null_with_its_reason():
    day = date(2024, 5, 1)
    df, _, notes = _score_day(None, {day: 0}, day)
    assert any("up to 2024-03-31 only" in n for n in notes)
    bt = df[df["kind"] == "backtest"]
    assert bt["precision_at_k"].isna().all() and bt["recall"].isna().all() and not bt["complete"].any()


def _write_liquidations(lake: Lake, day: date, frame: pd.DataFrame) -> None:
    lake.write("forced_liquidations", "BTCUSDT", day, pa.Table.from_pandas(frame, preserve_index=False))


def test_rescore_due_when_the_next_day_arrives_and_not_after(tmp_path):
    lake = Lake.at(tmp_path)
    today = LIQUIDATIONS[LIQUIDATIONS["date"] == D]
    _write_liquidations(lake, D, today)
    assert not rescore_due(lake, "BTCUSDT", D)  # nothing stored yet
    lake.write(SCORES_TABLE, "BTCUSDT", D, pa.Table.from_pandas(_score(today, {D: 2}), preserve_index=False))
    assert not rescore_due(lake, "BTCUSDT", D)  # partial, but the lake knows nothing more
    _write_liquidations(lake, NEXT, LIQUIDATIONS[LIQUIDATIONS["date"] == NEXT])
    assert rescore_due(lake, "BTCUSDT", D) == pd.Timestamp(NEXT + timedelta(days=1))  # known through D+1
    lake.write(
        SCORES_TABLE,
        "BTCUSDT",
        D,
        pa.Table.from_pandas(_score(LIQUIDATIONS, {D: 2, NEXT: 2}), preserve_index=False),
    )
    assert not rescore_due(lake, "BTCUSDT", D)


def test_the_archive_last_day_is_partial_for_good_and_never_due(tmp_path):
    lake, last, after = Lake.at(tmp_path), date(2024, 3, 31), date(2024, 4, 1)
    frame = LIQUIDATIONS.assign(ts=LIQUIDATIONS["ts"] + (pd.Timestamp(last) - T))
    frame["date"] = frame["ts"].dt.date
    _write_liquidations(lake, last, frame[frame["date"] == last])
    df = _score(frame[frame["date"] == last], {last: 2}, day=last)
    lake.write(SCORES_TABLE, "BTCUSDT", last, pa.Table.from_pandas(df, preserve_index=False))
    _write_liquidations(lake, after, frame.iloc[:0])  # the archive's end: an empty partition
    assert not rescore_due(lake, "BTCUSDT", last)
    assert "final: 2024-04-01 has no forced liquidations" in horizon_status(df, last, {last: 2, after: 0})


# --- through Dagster, on the sample mirror -------------------------------------------------------------------------


def _materialize(resources, selection, day):
    result = materialize(
        [*RAW_ASSETS, *MODEL_ASSETS, *VALIDATION_ASSETS],
        selection=selection,
        partition_key=partition_key("ETHUSDT", day),
        resources=resources,
        raise_on_error=False,
    )
    assert result.success
    return result


def test_validation_scores_partial_then_complete_through_dagster(resources, tmp_path):
    day, nxt = FIXTURE_DAYS
    lake = Lake.at(tmp_path)
    _materialize(resources, [*RAW_ASSETS, *MODEL_ASSETS], day)
    first = _materialize(resources, VALIDATION_ASSETS, day)
    horizon = first.asset_materializations_for_node("validation_scores")[0].metadata["backtest horizon"].value
    assert horizon.startswith("partial:") and f"re-materialize after {nxt}'s forced_liquidations" in horizon
    partial = lake.read(SCORES_TABLE, "ETHUSDT", [day])
    bt = partial.to_pandas().query("kind == 'backtest'")
    assert len(bt) > 0 and not bt["complete"].any() and (bt["horizon_end"] == pd.Timestamp(nxt)).all()

    _materialize(resources, VALIDATION_ASSETS, day)  # the same inputs: the same partition
    assert lake.read(SCORES_TABLE, "ETHUSDT", [day]).equals(partial)
    assert not rescore_due(lake, "ETHUSDT", day)

    assert rescore_scan(lake) == []
    _materialize(resources, RAW_ASSETS, nxt)
    assert rescore_due(lake, "ETHUSDT", day) == pd.Timestamp(nxt + timedelta(days=1))
    (request,) = rescore_scan(lake)  # what partial_scores_sensor asks for: this partition, once per horizon
    assert request.partition_key == partition_key("ETHUSDT", day)
    assert request.run_key == f"rescore {day}|ETHUSDT to {pd.Timestamp(nxt + timedelta(days=1)).isoformat()}"
    again = _materialize(resources, VALIDATION_ASSETS, day)
    horizon = again.asset_materializations_for_node("validation_scores")[0].metadata["backtest horizon"].value
    assert horizon.startswith("complete")
    full = lake.read(SCORES_TABLE, "ETHUSDT", [day]).to_pandas().query("kind == 'backtest'")
    assert full["complete"].all() and (full["horizon_end"] == full["ts"] + 24 * H).all()
    assert rescore_scan(lake) == []
    pd.testing.assert_frame_equal(
        full[ZONE_COLUMNS].reset_index(drop=True), bt[ZONE_COLUMNS].reset_index(drop=True)
    )
    assert (full["n_liquidations"].to_numpy() >= bt["n_liquidations"].to_numpy()).all()
    assert full["n_liquidations"].sum() > bt["n_liquidations"].sum()
    assert not rescore_due(lake, "ETHUSDT", day)
