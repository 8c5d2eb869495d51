"""The asset checks fail on bad data and pass on good, as plain functions and through Dagster, and a failing
blocking check keeps the model from running in the same run. Day boundaries are UTC in any time zone."""

import csv
import hashlib
import io
import time
import zipfile
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dagster import materialize

from liq_pipeline import quality
from liq_pipeline.assets.model import MODEL_ASSETS
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.checks import MODEL_CHECKS, RAW_CHECKS
from liq_pipeline.formats import FORMATS
from liq_pipeline.partitions import partition_key
from liq_pipeline.resources import ArchiveSource, LakeIOManager, LakeResource
from liq_pipeline.staleness import MODEL_INPUTS

from .conftest import FIXTURE_DAYS

DAY = FIXTURE_DAYS[-1]
SYMBOL = "BTCUSDT"


# --- helpers shared by the guard and staleness tests: edit an archive file of the mirror in place ------------


def zip_path(mirror, table: str, symbol: str = SYMBOL, day: date = DAY):
    return mirror / FORMATS[table].relpath(symbol, day)


def read_rows(mirror, table: str, symbol: str = SYMBOL, day: date = DAY) -> tuple[str, list[list[str]]]:
    with zipfile.ZipFile(zip_path(mirror, table, symbol, day)) as zf:
        member = zf.namelist()[0]
        return member, list(csv.reader(io.StringIO(zf.read(member).decode())))


def write_rows(mirror, table: str, rows: list[list[str]], symbol: str = SYMBOL, day: date = DAY) -> None:
    """Replace a zip's CSV (named as the archive names it for this symbol and day) and its .CHECKSUM."""
    path = zip_path(mirror, table, symbol, day)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{path.name[: -len('.zip')]}.csv", out.getvalue())
    path.with_name(path.name + ".CHECKSUM").write_text(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    )


def edit_rows(mirror, table: str, transform, symbol: str = SYMBOL, day: date = DAY) -> None:
    _, rows = read_rows(mirror, table, symbol, day)
    write_rows(mirror, table, rows[:1] + transform(rows[1:]), symbol, day)  # the fixtures have a header row


def resources(data_dir) -> dict:
    return {
        "lake_io_manager": LakeIOManager(data_dir=str(data_dir)),
        "lake": LakeResource(data_dir=str(data_dir)),
        "archive": ArchiveSource(source="local"),
    }


def run(data_dir, selection=None, symbol: str = SYMBOL, day: date = DAY, **kw):
    """Raw tables, their checks, the model and its check for one partition, like `daily_job` (without validation)."""
    return materialize(
        [*RAW_ASSETS, *MODEL_ASSETS, *RAW_CHECKS, *MODEL_CHECKS],
        selection=selection,
        partition_key=partition_key(symbol, day),
        resources=resources(data_dir),
        raise_on_error=False,
        **kw,
    )


def evaluations(result) -> dict[str, object]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def model_ran(result) -> bool:
    return "liquidation_model" in {e.step_key for e in result.get_step_success_events()}


@pytest.fixture
def local(mirror, monkeypatch):
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    return mirror


@pytest.fixture(scope="module")
def clean(sample_mirror, tmp_path_factory):
    """The raw tables of one clean fixture day, as the pipeline writes them to the lake."""
    data = tmp_path_factory.mktemp("clean")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIQ_ARCHIVE_ROOT", str(sample_mirror))
        result = materialize(
            RAW_ASSETS,
            partition_key=partition_key(SYMBOL, DAY),
            resources=resources(data),
            raise_on_error=False,
        )
    assert result.success
    from liq_pipeline.lake import Lake

    lake = Lake.at(data)
    return {t: lake.read(t, SYMBOL, [DAY]) for t in MODEL_INPUTS}


# --- the rules as plain functions ----------------------------------------------------------------------------


def _drop_between(table: pa.Table, column: str, start: str, end: str) -> pa.Table:
    ts = table[column].cast(pa.timestamp("us"))
    lo, hi = (pa.scalar(datetime.fromisoformat(t), pa.timestamp("us")) for t in (start, end))
    return table.filter(pc.or_(pc.less(ts, lo), pc.greater_equal(ts, hi)))


def _set(table: pa.Table, column: str, row: int, value: float) -> pa.Table:
    values = table[column].to_numpy().copy()
    values[row] = value
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values))


def test_oi_continuity_fails_on_a_gap_or_a_zero_reading(clean):
    oi = clean["open_interest"]
    good = quality.oi_continuity(oi, DAY)
    assert good.passed and good.metadata["max_gap_minutes"] == 5, good.detail

    gap = quality.oi_continuity(_drop_between(oi, "ts", f"{DAY}T10:00", f"{DAY}T10:20"), DAY)
    assert not gap.passed and gap.severity == "ERROR"
    # 09:55 is the last reading before the hole.
    assert f"no reading for 0:25:00 from {DAY} 09:55:00" in gap.detail
    ten_minutes = quality.oi_continuity(_drop_between(oi, "ts", f"{DAY}T10:00", f"{DAY}T10:05"), DAY)
    assert ten_minutes.passed  # one missing reading is a 10-minute stretch: within the limit

    # The last hole runs to midnight UTC.
    late_end = quality.oi_continuity(
        _drop_between(oi, "ts", f"{DAY}T23:40", f"{DAY + timedelta(days=1)}"), DAY
    )
    assert not late_end.passed and f"from {DAY} 23:35:00" in late_end.detail

    zero = quality.oi_continuity(_set(oi, "open_interest", 100, 0.0), DAY)
    assert not zero.passed and zero.metadata["bad_readings"] == 1
    assert f"the first at {DAY} 08:20:00" in zero.detail  # row 100 of a 5-minute series
    negative = quality.oi_continuity(_set(oi, "open_interest_value", 5, -1.0), DAY)
    assert not negative.passed and negative.metadata["bad_readings"] == 1

    assert not quality.oi_continuity(oi.slice(0, 0), DAY).passed  # no reading at all


def test_trades_inside_klines_catches_one_trade_outside_its_minute(clean):
    trades, klines = clean["agg_trades"], clean["klines"]
    good = quality.trades_inside_klines(trades, klines, DAY)
    assert good.passed and good.metadata["trades_outside"] == 0 and good.metadata["trades_without_bar"] == 0

    # One trade a hair above its own minute's high, though well inside the day's range: only a per-minute test sees it.
    i = trades.num_rows // 2
    minute = trades["ts"].cast(pa.timestamp("us"))[i].value // 60_000_000 * 60_000_000
    opens = klines["open_time"].cast(pa.timestamp("us")).cast(pa.int64())
    high = klines.filter(pc.equal(opens, minute))["high"][0].as_py()
    assert high < pc.max(klines["high"]).as_py()
    bad = quality.trades_inside_klines(_set(trades, "price", i, high * 1.0005), klines, DAY)
    assert not bad.passed and bad.metadata["trades_outside"] == 1 and bad.severity == "ERROR"
    assert bad.metadata["worst_excess_pct"] == pytest.approx(0.05, rel=1e-3)

    no_klines = quality.trades_inside_klines(trades, None, DAY)
    assert not no_klines.passed and no_klines.severity == "WARN"


def test_coverage_warns_when_a_table_misses_hours(clean):
    k, oi, t = clean["klines"], clean["open_interest"], clean["agg_trades"]
    good = quality.coverage(k, oi, t, DAY)
    assert good.passed, good.detail
    assert good.metadata == {"klines_rows": 1440, "open_interest_rows": 288, "agg_trades_rows": t.num_rows}

    hole = quality.coverage(_drop_between(k, "open_time", f"{DAY}T05:00", f"{DAY}T06:00"), oi, t, DAY)
    assert not hole.passed and hole.severity == "WARN"
    assert (
        "klines has 1380 of 1440 rows" in hole.detail and "klines has no rows in hours 05 UTC" in hole.detail
    )

    cut = quality.coverage(k, oi, _drop_between(t, "ts", f"{DAY}T23:00", f"{DAY + timedelta(days=1)}"), DAY)
    assert (
        not cut.passed
        and "agg_trades has no rows in hours 23" in cut.detail
        and "agg_trades span only" in cut.detail
    )

    missing = quality.coverage(k, None, t, DAY)
    assert not missing.passed and f"no open_interest partition for {DAY}" in missing.detail


def test_day_boundaries_are_utc_in_any_time_zone(clean, monkeypatch):
    try:
        for zone in ("America/New_York", "Asia/Tokyo"):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            assert quality.day_start_us(DAY) == int(np.datetime64(DAY, "us").astype(np.int64))
            assert quality.oi_continuity(clean["open_interest"], DAY).passed
            assert quality.trades_inside_klines(clean["agg_trades"], clean["klines"], DAY).passed
            assert quality.coverage(clean["klines"], clean["open_interest"], clean["agg_trades"], DAY).passed
    finally:
        monkeypatch.undo()
        time.tzset()


# --- through Dagster ----------------------------------------------------------------------------------------


def test_every_check_passes_on_a_clean_day_and_the_model_runs(local, tmp_path):
    result = run(tmp_path)
    assert result.success
    checks = evaluations(result)
    assert set(checks) == {
        "oi_continuity",
        "inside_klines",
        "coverage",
        "fresh_against_inputs",
        "invariants",
        "not_empty_when_oi_moved",
    }
    assert all(e.passed for e in checks.values()), {
        n: e.description for n, e in checks.items() if not e.passed
    }
    assert all(e.partition == f"{DAY}|{SYMBOL}" for e in checks.values())  # one result per date|symbol
    assert model_ran(result)


def test_an_open_interest_gap_blocks_the_model(local, tmp_path):
    edit_rows(
        local, "open_interest", lambda rows: [r for r in rows if " 10:0" not in r[0] and " 10:1" not in r[0]]
    )
    result = run(tmp_path)
    check = evaluations(result)["oi_continuity"]
    assert not check.passed and "no reading for 0:25:00" in check.description
    assert not model_ran(result) and not result.success
    assert not (tmp_path / "lake" / "liquidation_heatmap").exists()


def test_a_trade_outside_its_kline_blocks_the_model(local, tmp_path):
    _, bars = read_rows(local, "klines")
    highs = {int(r[0]): float(r[2]) for r in bars[1:]}  # open_time -> high

    def bump(rows):
        # The middle trade moves 0.1 % above its minute's high: inside the day's range, outside the minute's.
        row = rows[len(rows) // 2]
        row[1] = f"{highs[int(row[5]) // 60_000 * 60_000] * 1.001:.1f}"
        return rows

    edit_rows(local, "agg_trades", bump)
    result = run(tmp_path)
    check = evaluations(result)["inside_klines"]
    assert not check.passed and check.metadata["trades_outside"].value == 1, check.description
    # The other tables are fine: this check is what blocked.
    assert evaluations(result)["oi_continuity"].passed
    assert not model_ran(result) and not (tmp_path / "lake" / "liquidation_heatmap").exists()


def test_missing_hours_warn_without_blocking(local, tmp_path):
    edit_rows(
        local,
        "klines",
        lambda rows: [r for r in rows if not (5 * 3600_000 <= int(r[0]) % 86_400_000 < 6 * 3600_000)],
    )
    result = run(tmp_path)
    check = evaluations(result)["coverage"]
    assert not check.passed and check.severity.value == "WARN"
    assert "klines has no rows in hours 05 UTC" in check.description
    assert model_ran(result) and result.success  # a warning, not a stop
