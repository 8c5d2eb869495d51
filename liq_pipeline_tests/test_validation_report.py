"""The validation report counts each forced liquidation once, says which days each symbol covers, and puts the
baseline beside each score."""

from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pytest
from dagster import materialize

from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.partitions import partition_key
from liq_pipeline.validation.report import SCORES_TABLE, validation_report
from liq_pipeline.validation.scores import summarise

from .conftest import FIXTURE_DAYS, FIXTURE_SYMBOLS, local_resources

FORCED = next(a for a in RAW_ASSETS if a.key.path[-1] == "forced_liquidations")


@pytest.fixture
def liquidations(mirror, lake, monkeypatch):
    """The sample's forced liquidations of both symbols over the fixture days, ingested into the test's lake."""
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    for symbol in FIXTURE_SYMBOLS:
        for day in FIXTURE_DAYS:
            result = materialize(
                [FORCED],
                partition_key=partition_key(symbol, day),
                resources=local_resources(),
            )
            assert result.success
    return lake


def _ts(lake, symbol) -> list[pd.Timestamp]:
    table = lake.read("forced_liquidations", symbol, FIXTURE_DAYS, columns=["ts"])
    return list(pd.to_datetime(table.column("ts").to_pylist()))


def _backtests(lake, symbol, day, hours, horizon_hours=24):
    """Hourly backtest rows over `hours` of `day`, each counting the orders of its own window as the scorer does."""
    times = _ts(lake, symbol)
    rows = []
    for h in hours:
        start = pd.Timestamp(day) + pd.Timedelta(hours=h)
        end = start + pd.Timedelta(hours=horizon_hours)
        rows.append(
            {
                "symbol": symbol,
                "date": day,
                "kind": "backtest",
                "ts": start,
                "file": None,
                "precision_at_k": 0.2 + h / 100,
                "n_zones": 10,
                "baseline_precision_at_k": 0.5,
                "n_baseline_zones": 10,
                "recall": 0.3,
                "baseline_recall": 0.1,
                "liquidated_usd": 1e6,
                "n_liquidations": sum(start < t <= end for t in times),
                "horizon_end": end,
                "complete": True,
            }
        )
    return pd.DataFrame(rows)


def _line(report: str, label: str) -> list[str]:
    line = next(row for row in report.splitlines() if row.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_overlapping_hourly_windows_count_each_liquidation_once(liquidations):
    lake, day = liquidations, FIXTURE_DAYS[0]
    for symbol in FIXTURE_SYMBOLS:
        lake.write(SCORES_TABLE, symbol, day, _backtests_table(lake, symbol, day, range(24)))
    report = validation_report(lake)

    cells = _line(report, "forced liquidations (distinct)")
    for symbol, cell in zip(FIXTURE_SYMBOLS, (cells[1], cells[3]), strict=True):
        start, end = pd.Timestamp(day), pd.Timestamp(day) + pd.Timedelta(hours=47)
        expected = sum(start < t <= end for t in _ts(lake, symbol))
        summed = int(_backtests(lake, symbol, day, range(24))["n_liquidations"].sum())
        assert (
            expected > 0 and summed > 2 * expected
        )  # the windows overlap: a sum would count orders many times
        assert int(cell.replace(",", "")) == expected


def test_a_gap_between_windows_is_not_counted(liquidations):
    """Two 1-hour windows six hours apart: the orders between them are in neither."""
    lake, day, symbol = liquidations, FIXTURE_DAYS[1], "ETHUSDT"
    lake.write(SCORES_TABLE, symbol, day, _backtests_table(lake, symbol, day, [0, 6], horizon_hours=1))
    windows = [
        (pd.Timestamp(day) + timedelta(hours=h), pd.Timestamp(day) + timedelta(hours=h + 1)) for h in (0, 6)
    ]
    expected = sum(any(a < t <= b for a, b in windows) for t in _ts(lake, symbol))
    everything = sum(windows[0][0] < t <= windows[1][1] for t in _ts(lake, symbol))
    assert 0 < expected < everything
    cells = _line(validation_report(lake), "forced liquidations (distinct)")
    assert int(cells[3].replace(",", "")) == expected


def test_days_covered_and_the_baseline_beside_each_score(liquidations):
    lake = liquidations
    first, second = FIXTURE_DAYS
    third = second + timedelta(days=2)  # not consecutive: listed apart
    frames = {
        ("BTCUSDT", first): _backtests(lake, "BTCUSDT", first, range(3)),
        ("BTCUSDT", third): _backtests(lake, "BTCUSDT", third, range(2)),
        ("ETHUSDT", second): _backtests(lake, "ETHUSDT", second, range(4)),
    }
    for (symbol, day), df in frames.items():
        lake.write(SCORES_TABLE, symbol, day, _as_table(df))
    report = validation_report(lake)

    assert f"- BTCUSDT: {first}, {third} (2 days)" in report
    assert f"- ETHUSDT: {second} (1 day)" in report
    summary = summarise(pd.concat(frames.values(), ignore_index=True)).set_index("symbol")
    cells = _line(report, "precision@k")
    assert cells[1:5] == [
        f"{summary.loc['BTCUSDT', 'precision_at_k']:.3f}",
        f"{summary.loc['BTCUSDT', 'baseline_precision_at_k']:.3f}",
        f"{summary.loc['ETHUSDT', 'precision_at_k']:.3f}",
        f"{summary.loc['ETHUSDT', 'baseline_precision_at_k']:.3f}",
    ]
    assert _line(report, "recall")[1:5] == ["0.300", "0.100", "0.300", "0.100"]
    assert _line(report, "hourly backtests")[1] == "5" and _line(report, "hourly backtests")[3] == "4"


def _as_table(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


def _backtests_table(lake, symbol, day, hours, horizon_hours=24):
    return _as_table(_backtests(lake, symbol, day, hours, horizon_hours))
