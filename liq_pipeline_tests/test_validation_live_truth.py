"""After 2024-03-31 the backtest's ground truth is what the live collector recorded from `!forceOrder@arr`, and only
over the time its stream was connected: a whole day when the recording is seamless from midnight, up to the first
gap otherwise, nothing when it started after midnight. An empty live day recorded whole is a day without
liquidations; an empty archive placeholder after the archive's end is no truth at all.

The lake is the pipeline's own: the sample market's archive files through the real ingest (klines, agg_trades,
open_interest), the model's own functions for the model tables, and forced_liquidations written by `LivePartition`
(the collector's writer) from forceOrder `o` payloads decoded by `formats.stream`. validation_scores runs through
Dagster as in production."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
from dagster import materialize

from liq_pipeline.api.sample_lake import ingest_day, model_day
from liq_pipeline.assets.model import MODEL_ASSETS
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.assets.validation import VALIDATION_ASSETS
from liq_pipeline.formats import FORMATS, stream
from liq_pipeline.lake import Lake
from liq_pipeline.live.partition import LivePartition, day_bounds_ms, live_info
from liq_pipeline.model import ModelConfig
from liq_pipeline.partitions import partition_key
from liq_pipeline.resources import ArchiveSource, LakeIOManager, LakeResource
from liq_pipeline.sources import sample
from liq_pipeline.sources.archive import LocalMirror, SampleArchive, ingest
from liq_pipeline.symbols import load_registry
from liq_pipeline.validation.daily import (
    SCORES_TABLE,
    ground_truth_end,
    known_part,
    rescore_due,
    truth_days,
)

SYMBOL = "BTCUSDT"
D = date(2024, 6, 10)  # after the archive's last liquidationSnapshot day (2024-03-31)
NEXT = D + timedelta(days=1)
TRADES = 2_000
H = pd.Timedelta(hours=1)
HOUR_MS = 3_600_000
NOON = pd.Timestamp(D) + 12 * H


@pytest.fixture(scope="module")
def base_lake(tmp_path_factory) -> Path:
    """Raw tables of D-1 and D through the real ingest and D's model tables: no forced liquidations yet."""
    data = tmp_path_factory.mktemp("live_truth")
    lake, spec = Lake.at(data), load_registry().get(SYMBOL)
    mirror = SampleArchive(lake.root.parent / "sample_archive")
    for day in (D - timedelta(days=1), D):
        ingest_day(lake, mirror, spec, day, ("klines", "open_interest", "agg_trades"), TRADES)
    model_day(lake, spec, ModelConfig.for_symbol(spec), D)
    return data


@pytest.fixture
def data(base_lake, tmp_path, monkeypatch) -> Path:
    """A private copy of the base lake; no screenshot folder, so only the forced-liquidation scores are made."""
    monkeypatch.setenv("LIQ_SCREENSHOT_DIR", str(tmp_path / "no-screenshots"))
    return Path(shutil.copytree(base_lake, tmp_path / "data"))


def orders(day: date) -> list[dict]:
    """forceOrder `o` objects, as the stream sends them (strings for decimals, one message per order), for the
    sample market's liquidations of `day` (the archive file writes each row twice; the stream sends it once)."""
    liq = sample.market_day(load_registry().get(SYMBOL), day, TRADES).liquidations.drop_duplicates()
    return [
        {
            "s": SYMBOL,
            "S": r.side,
            "o": r.order_type,
            "f": r.time_in_force,
            "q": str(r.original_quantity),
            "p": str(r.price),
            "ap": str(r.average_price),
            "X": r.order_status,
            "l": str(r.last_fill_quantity),
            "z": str(r.accumulated_fill_quantity),
            "T": int(r.time),
        }
        for r in liq.itertuples()
    ]


def expected(day: date) -> pd.DataFrame:
    """The same orders as positions and USD, computed here without the decoder: what the scores must count."""
    o = pd.DataFrame(orders(day))
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(o["T"], unit="ms"),
            "side": o["S"].map({"SELL": "long", "BUY": "short"}),
            "usd": o["ap"].astype(float) * o["z"].astype(float),
        }
    )


def record(data: Path, day: date, coverage: list[tuple[int, int]], keep=lambda ms: True) -> LivePartition:
    """What the collector does for `day`: forceOrder messages received while connected (`keep` drops those sent
    while it was not), decoded, committed with the stream's coverage (offsets in ms from the day's midnight). With
    no message at all, the commit writes an empty partition carrying the coverage."""
    part = LivePartition(Lake.at(data), "forced_liquidations", SYMBOL, day)
    start, _ = day_bounds_ms(day)
    received = [o for o in orders(day) if keep(o["T"] - start)]
    part.add(stream.forced_liquidations(received, SYMBOL, day))
    for s, e in coverage:
        part.cover(start + s, start + e)
    part.commit()
    return part


FULL = [(0, 24 * HOUR_MS)]


def validate(data: Path) -> tuple[pd.DataFrame, dict]:
    """validation_scores of D through Dagster: the stored partition and the materialization's metadata."""
    result = materialize(
        [*RAW_ASSETS, *MODEL_ASSETS, *VALIDATION_ASSETS],
        selection=VALIDATION_ASSETS,
        partition_key=partition_key(SYMBOL, D),
        resources={
            "lake_io_manager": LakeIOManager(data_dir=str(data)),
            "lake": LakeResource(data_dir=str(data)),
            "archive": ArchiveSource(source="sample"),
        },
        raise_on_error=False,
    )
    assert result.success
    meta = result.asset_materializations_for_node("validation_scores")[0].metadata
    df = Lake.at(data).read(SCORES_TABLE, SYMBOL, [D]).to_pandas()
    return df, {k: v.value for k, v in meta.items()}


def backtests(df: pd.DataFrame) -> pd.DataFrame:
    bt = df[df["kind"] == "backtest"].set_index("ts", drop=False)
    assert len(bt) >= 24  # the model's hourly zones over the day
    return bt


def counted(truth: pd.DataFrame, after: pd.Timestamp, until: pd.Timestamp) -> pd.DataFrame:
    return truth[(truth["ts"] > after) & (truth["ts"] <= until)]


def test_a_day_recorded_whole_is_scored_on_its_liquidations_over_the_complete_horizon(data):
    record(data, D, FULL)
    record(data, NEXT, FULL)
    df, meta = validate(data)
    bt, truth = backtests(df), pd.concat([expected(D), expected(NEXT)])
    assert bt["complete"].all() and (bt["horizon_end"] == bt["ts"] + 24 * H).all()
    assert meta["backtest horizon"].startswith("complete")
    for ts, row in bt.iterrows():  # each snapshot against exactly the recorded orders of its 24 hours
        window = counted(truth, ts, ts + 24 * H)
        assert row["n_liquidations"] == len(window) > 0
        assert row["liquidated_usd"] == pytest.approx(window["usd"].sum())
    assert (bt["recall"] > 0).any() and (bt["precision_at_k"] > 0).any()
    (hourly,) = df[df["kind"] == "hourly_usd"].itertuples()
    day_truth = expected(D)
    assert hourly.complete and hourly.n_hours == 24 and hourly.horizon_end == pd.Timestamp(NEXT)
    for side in ("long", "short"):
        usd = day_truth.loc[day_truth["side"] == side, "usd"].sum()
        assert getattr(hourly, f"actual_usd_{side}") == pytest.approx(usd) and usd > 0
    assert not any("forced liquidations" in n for n in meta["nothing to score"])


def test_a_recording_that_starts_at_six_gives_the_day_no_truth_and_says_why(data):
    record(data, D, [(6 * HOUR_MS, 24 * HOUR_MS)], keep=lambda ms: ms >= 6 * HOUR_MS)
    record(data, NEXT, FULL)
    assert live_info(Lake.at(data).partition_file("forced_liquidations", SYMBOL, D)).rows > 0
    df, meta = validate(data)
    bt = backtests(df)
    # The partition holds 18 hours of orders, yet none is compared: the horizon from midnight is not known.
    assert not bt["complete"].any() and (bt["horizon_end"] == bt["ts"]).all()
    assert (
        (bt["n_liquidations"] == 0).all() and bt["precision_at_k"].isna().all() and bt["recall"].isna().all()
    )
    assert (df["kind"] == "hourly_usd").sum() == 0
    assert (
        f"forced liquidations for {D} were recorded live only from 06:00; the backtest needs the whole horizon "
        "from midnight"
    ) in meta["nothing to score"]
    assert "for none of the horizon" in meta["backtest horizon"] and "final:" in meta["backtest horizon"]


def test_a_ten_minute_hole_at_noon_ends_the_horizon_at_noon(data):
    hole = (12 * HOUR_MS, 12 * HOUR_MS + 600_000)
    record(data, D, [(0, hole[0]), (hole[1], 24 * HOUR_MS)], keep=lambda ms: not hole[0] <= ms < hole[1])
    record(data, NEXT, FULL)
    df, meta = validate(data)
    bt, truth = backtests(df), expected(D)
    before, after = bt[bt["ts"] < NOON], bt[bt["ts"] >= NOON]
    assert len(before) and len(after) and not bt["complete"].any()
    assert (before["horizon_end"] == NOON).all() and (after["horizon_end"] == after["ts"]).all()
    assert (after["n_liquidations"] == 0).all()
    for ts, row in before.iterrows():
        assert row["n_liquidations"] == len(counted(truth, ts, NOON))
    # The rows recorded after the hole are in the partition and inside the first snapshot's 24 hours, but only
    # those before noon are compared.
    first = before.index[0]
    assert len(counted(truth, NOON, first + 24 * H)) > 0
    assert bt.loc[first, "n_liquidations"] == len(counted(truth, first, NOON)) > 0
    (hourly,) = df[df["kind"] == "hourly_usd"].itertuples()
    assert hourly.n_hours == 12 and hourly.horizon_end == NOON and not hourly.complete
    horizon = meta["backtest horizon"]
    assert f"known up to {NOON}" in horizon and "final:" in horizon and "only until 12:00" in horizon
    assert rescore_due(Lake.at(data), SYMBOL, D) is None  # the hole is not filled by anything later
    stored = Lake.at(data).read("forced_liquidations", SYMBOL, [D]).to_pandas()
    cut = known_part(stored, NOON)
    assert len(cut) == (truth["ts"] < NOON).sum() < len(stored) and cut["ts"].max() < NOON


def test_a_live_day_is_rescored_when_the_collector_records_further(data):
    half = 12 * HOUR_MS + 30 * 60_000  # the collector has recorded until 12:30 so far
    part = record(data, D, [(0, half)], keep=lambda ms: ms < half)
    df, meta = validate(data)
    lake, at = Lake.at(data), pd.Timestamp(D) + pd.Timedelta(milliseconds=half)
    bt = backtests(df)
    # Each snapshot before 12:30 is scored up to 12:30, the later ones on nothing.
    assert (bt["horizon_end"] == bt["ts"].clip(lower=at)).all()
    assert (bt["horizon_end"] == at).sum() == (bt["ts"] <= at).sum() > 0
    (hourly,) = df[df["kind"] == "hourly_usd"].itertuples()
    assert hourly.horizon_end == NOON and hourly.n_hours == 12  # 12:00-13:00 is not known whole
    assert "rescored when the collector records further" in meta["backtest horizon"]
    assert rescore_due(lake, SYMBOL, D) is None
    start, _ = day_bounds_ms(D)  # the same collector records on until midnight
    part.add(stream.forced_liquidations([o for o in orders(D) if o["T"] - start >= half], SYMBOL, D))
    part.cover(start + half, start + 24 * HOUR_MS)
    part.commit()
    assert live_info(part.path).rows == len(orders(D))
    assert rescore_due(lake, SYMBOL, D) == pd.Timestamp(NEXT)
    df, meta = validate(data)
    bt = backtests(df)
    assert (bt["horizon_end"] == pd.Timestamp(NEXT)).all()  # every snapshot now reaches D's recorded end
    assert f"re-materialize after {NEXT}'s forced_liquidations is ingested" in meta["backtest horizon"]
    assert rescore_due(lake, SYMBOL, D) is None


def test_an_empty_live_day_recorded_whole_is_truth_an_empty_archive_placeholder_is_not(data, tmp_path):
    record(data, D, FULL, keep=lambda ms: False)
    record(data, NEXT, FULL, keep=lambda ms: False)
    lake = Lake.at(data)
    assert {
        d: (t.rows, t.live)
        for d, t in truth_days(lake.slice("forced_liquidations", SYMBOL, [D, NEXT])).items()
    } == {
        D: (0, True),
        NEXT: (0, True),
    }
    df, meta = validate(data)
    bt = backtests(df)
    assert bt["complete"].all() and (bt["horizon_end"] == bt["ts"] + 24 * H).all()
    assert (bt["n_liquidations"] == 0).all() and (bt["liquidated_usd"] == 0).all()
    (hourly,) = df[df["kind"] == "hourly_usd"].itertuples()
    assert hourly.complete and hourly.n_hours == 24 and hourly.actual_usd_long == hourly.actual_usd_short == 0

    # The archive's own placeholder for D (no liquidationSnapshot file after 2024-03-31) instead: no truth.
    write_placeholder(lake, tmp_path / "mirror")
    # An archive day and a live day read together (the same column types).
    assert lake.read("forced_liquidations", SYMBOL, [D, NEXT]).num_rows == 0
    df, meta = validate(data)
    bt = backtests(df)
    assert not bt["complete"].any() and (bt["horizon_end"] == bt["ts"]).all()
    assert (bt["n_liquidations"] == 0).all() and (df["kind"] == "hourly_usd").sum() == 0
    assert any("up to 2024-03-31 only" in n for n in meta["nothing to score"])


def write_placeholder(lake: Lake, mirror: Path) -> None:
    """What the forced_liquidations asset writes for D: the archive has no liquidationSnapshot file after
    2024-03-31, so the real ingest over a mirror without it gives an empty partition with the reason."""
    sample.write_day(mirror, load_registry().get(SYMBOL), D, trades_per_day=TRADES)
    (mirror / FORMATS["forced_liquidations"].relpath(SYMBOL, D)).unlink()
    placeholder = ingest(LocalMirror(mirror), FORMATS["forced_liquidations"], SYMBOL, D)
    assert placeholder.table.num_rows == 0 and "up to 2024-03-31 only" in placeholder.note
    lake.write("forced_liquidations", SYMBOL, D, placeholder.table)
    assert not live_info(lake.partition_file("forced_liquidations", SYMBOL, D)).live


def test_the_truth_of_a_live_day_is_its_recording_seamless_from_midnight(data):
    """From the partitions `LivePartition` writes: how far each recording vouches, and the chain over days."""
    lake, minute = Lake.at(data), 60_000

    def truth(day: date, coverage) -> pd.Timestamp | None:
        lake.partition_file("forced_liquidations", SYMBOL, day).unlink(missing_ok=True)  # a new recording
        record(data, day, coverage)
        return truth_days(lake.slice("forced_liquidations", SYMBOL, [day]))[day].covered_until

    assert truth(D, FULL) == pd.Timestamp(NEXT)
    # Ending 30 s before midnight is within the gap allowed; 2 minutes is not.
    assert truth(D, [(0, 24 * HOUR_MS - minute // 2)]) == pd.Timestamp(NEXT)
    assert truth(D, [(0, 24 * HOUR_MS - 2 * minute)]) == pd.Timestamp(NEXT) - 2 * pd.Timedelta(minutes=1)
    assert truth(D, [(0, 12 * HOUR_MS), (12 * HOUR_MS + 10 * minute, 24 * HOUR_MS)]) == NOON
    assert truth(D, [(minute // 2, 24 * HOUR_MS)]) == pd.Timestamp(NEXT)  # started 30 s after midnight
    assert truth(D, [(6 * HOUR_MS, 24 * HOUR_MS)]) is None
    assert truth(D, FULL) == pd.Timestamp(NEXT)
    record(data, NEXT, [(0, 6 * HOUR_MS)], keep=lambda ms: ms < 6 * HOUR_MS)
    days = truth_days(lake.slice("forced_liquidations", SYMBOL, [D, NEXT]))
    assert ground_truth_end(D, days) == pd.Timestamp(NEXT) + 6 * H  # the whole of D, then NEXT until 06:00
    assert ground_truth_end(NEXT, days) == pd.Timestamp(NEXT) + 6 * H
