"""Output a user can trust: a normal `liq demo` prints no WARNING line, and a missing screenshot folder is
reported once per process, not once per partition."""

import logging
import os
import subprocess
import sys

from dagster import DagsterInstance, materialize

from liq_pipeline.assets.validation import coinglass_levels
from liq_pipeline.partitions import partition_key
from liq_pipeline.resources import LakeIOManager, LakeResource

from .conftest import FIXTURE_DAYS


def _warnings(instance: DagsterInstance, run_id: str) -> list[str]:
    return [
        e.user_message
        for e in instance.all_logs(run_id)
        if e.level == logging.WARNING and "does not exist" in e.user_message
    ]


def test_a_missing_screenshot_folder_is_warned_once_per_process(lake, tmp_path, monkeypatch):
    missing = tmp_path / "no_such_folder"
    monkeypatch.setenv("LIQ_SCREENSHOT_DIR", str(missing))
    warned = []
    with DagsterInstance.ephemeral() as instance:
        for day in FIXTURE_DAYS:
            result = materialize(
                [coinglass_levels],
                partition_key=partition_key("ETHUSDT", day),
                resources={"lake_io_manager": LakeIOManager(), "lake": LakeResource()},
                instance=instance,
            )
            assert result.success
            meta = result.asset_materializations_for_node("coinglass_levels")[0].metadata
            assert meta["folder exists"].value is False  # every partition records it
            warned.append(_warnings(instance, result.run_id))
    assert len(warned[0]) == 1 and str(missing) in warned[0][0] and "LIQ_SCREENSHOT_DIR" in warned[0][0]
    assert warned[1] == []


def test_liq_demo_prints_no_warning_and_counts_liquidations_once(tmp_path):
    env = {
        **os.environ,
        "LIQ_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "LIQ_SCREENSHOT_DIR": "",
    }
    (tmp_path / "home").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "liq_pipeline.cli", "demo", "--days", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "WARNING" not in output, [line for line in output.splitlines() if "WARNING" in line]
    assert "partial:" not in output
    line = next(row for row in done.stdout.splitlines() if row.startswith("| forced liquidations (distinct)"))
    cells = [c.strip().replace(",", "") for c in line.strip("|").split("|")]
    total = subprocess.run(
        [sys.executable, "-m", "liq_pipeline.cli", "sql",
         "SELECT COUNT(*) FILTER (symbol = 'BTCUSDT'), COUNT(*) FILTER (symbol = 'ETHUSDT') "
         "FROM forced_liquidations_history"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    counts = [int(c.replace(",", "")) for c in total.stdout.splitlines()[3].strip("|").split("|")]
    for shown, in_lake in zip((int(cells[1]), int(cells[3])), counts, strict=True):
        assert 0 < shown <= in_lake  # distinct orders: never more than the lake holds
