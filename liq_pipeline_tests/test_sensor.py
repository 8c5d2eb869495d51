"""The screenshot sensor: one run per new or rewritten screenshot, bad files skipped once, a missing folder explained."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context
from PIL import Image

from liq_pipeline.sensors import coinglass_screenshot_sensor, scan, screenshot_dir
from liq_pipeline.symbols import load_registry

BTC = "coinglass_btc_m1_24hour_20241228_120000.png"
ETH = "coinglass_eth_m1_24hour_20241228_120000.png"


def _png(path: Path, mtime: int | None = None) -> Path:
    Image.new("RGB", (8, 8), (40, 0, 80)).save(path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _evaluate(cursor: str | None = None):
    """(run requests, other results, cursor after) of one sensor evaluation."""
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(cursor=cursor, instance=instance)
        result = coinglass_screenshot_sensor(context)
        items = [result] if isinstance(result, SkipReason) else list(result or [])
        runs = [r for r in items if isinstance(r, RunRequest)]
        return runs, [r for r in items if not isinstance(r, RunRequest)], context.cursor


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LIQ_SCREENSHOT_DIR", str(tmp_path))
    return tmp_path


def test_new_screenshots_request_runs_once(folder):
    _png(folder / BTC, 1_735_387_200)
    _png(folder / ETH, 1_735_387_260)
    runs, _, cursor = _evaluate()
    assert [str(r.partition_key) for r in runs] == ["2024-12-28|BTCUSDT", "2024-12-28|ETHUSDT"]
    assert [r.run_key.split("@")[0] for r in runs] == [BTC, ETH]
    assert [r.tags["liq/screenshot"] for r in runs] == [BTC, ETH]
    assert set(json.loads(cursor)) == {BTC, ETH}

    again, _, cursor2 = _evaluate(cursor)
    assert again == []
    assert json.loads(cursor2) == json.loads(cursor)


def test_rewritten_screenshot_is_requested_again(folder):
    _png(folder / BTC, 1_735_387_200)
    _png(folder / ETH, 1_735_387_260)
    first, _, cursor = _evaluate()
    _png(folder / BTC, 1_735_390_000)  # rewritten later
    runs, _, _ = _evaluate(cursor)
    assert [r.run_key for r in runs] == [f"{BTC}@{1_735_390_000 * 10**9}"]
    assert runs[0].run_key not in {r.run_key for r in first}


def test_bad_files_are_skipped_once_with_reasons(folder):
    bad_name, unknown, unreadable = (
        "screenshot.png",
        "coinglass_zzz_m1_24hour_20241228_120000.png",
        "coinglass_btc_m1_24hour_20241228_130000.png",
    )
    _png(folder / bad_name)
    _png(folder / unknown)
    (folder / unreadable).write_text("this is not a png\n")
    _png(folder / ".coinglass_btc_m1_24hour_20241228_140000.png")  # hidden/temporary: ignored
    (folder / "notes.txt").write_text("ignored\n")

    requests, reasons, cursor = scan(folder, {}, load_registry())
    assert requests == []
    assert sorted(r.split(":")[0] for r in reasons) == sorted([bad_name, unknown, unreadable])
    assert set(cursor) == {bad_name, unknown, unreadable}
    assert scan(folder, cursor, load_registry())[:2] == ([], [])  # not reported again

    runs, _, sensor_cursor = _evaluate()  # the sensor does not raise either
    assert runs == []
    assert _evaluate(sensor_cursor)[0] == []


def test_scan_orders_by_mtime_and_defers_days_without_a_partition(folder):
    _png(folder / BTC, 1_735_387_300)
    _png(folder / ETH, 1_735_387_200)
    requests, reasons, cursor = scan(folder, {}, load_registry())
    assert [(r.name, r.symbol, r.day) for r in requests] == [
        (ETH, "ETHUSDT", date(2024, 12, 28)),
        (BTC, "BTCUSDT", date(2024, 12, 28)),
    ]
    assert reasons == []
    # a screenshot of a day whose partition does not exist yet waits, unrecorded
    assert scan(folder, {}, load_registry(), latest_day=date(2024, 12, 27)) == ([], [], {})


def test_missing_folder_is_a_skip_reason(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.setenv("LIQ_SCREENSHOT_DIR", str(missing))
    assert screenshot_dir() == missing.resolve()
    runs, others, _ = _evaluate()
    assert runs == []
    assert len(others) == 1 and isinstance(others[0], SkipReason)
    assert str(missing) in others[0].skip_message and "LIQ_SCREENSHOT_DIR" in others[0].skip_message


def test_default_folder_is_under_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("LIQ_SCREENSHOT_DIR", raising=False)
    monkeypatch.setenv("LIQ_DATA_DIR", str(tmp_path))
    assert screenshot_dir() == tmp_path.resolve() / "screenshots"
