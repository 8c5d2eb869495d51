"""Partitions run in parallel processes and both land; a symbol added only to a registry file runs through the
whole pipeline with no code change (the seed's litmus test)."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from liq_pipeline.lake import Lake
from liq_pipeline.sources.sample import SAMPLE_DAYS

from .conftest import FIXTURE_DAYS

REPO = Path(__file__).resolve().parents[1]


def test_two_symbols_backfilled_by_parallel_processes_both_land(mirror, tmp_path):
    """Two OS processes write the same lake, instance and warehouse at once, as two backfills would."""
    day = FIXTURE_DAYS[-1].isoformat()
    env = {
        **os.environ,
        "LIQ_SOURCE": "local",
        "LIQ_ARCHIVE_ROOT": str(mirror),
        "LIQ_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    (tmp_path / "home").mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "liq_pipeline.cli", "backfill", symbol, "--start", day, "--end", day],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for symbol in ("BTCUSDT", "ETHUSDT")
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    lake = Lake.at(tmp_path / "data")
    for symbol in ("BTCUSDT", "ETHUSDT"):
        for table in ("agg_trades", "open_interest", "klines"):
            assert lake.symbol_dates(table).get(symbol) == [FIXTURE_DAYS[-1]], (table, symbol)
    with lake.connect_readonly() as con:
        rows = dict(con.execute("SELECT symbol, COUNT(*) FROM klines_1m_history GROUP BY symbol").fetchall())
    assert rows == {"BTCUSDT": 1440, "ETHUSDT": 1440}
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        partitions = {
            r.tags.get("dagster/partition") for r in instance.get_runs() if r.job_name == "daily_job"
        }
    assert partitions == {f"{day}|BTCUSDT", f"{day}|ETHUSDT"}


def test_a_symbol_added_only_to_the_registry_runs_through_the_pipeline(tmp_path, monkeypatch, avax_registry):
    registry = avax_registry
    shutil.copy(REPO / "dagster.yaml", tmp_path)  # the shipped instance settings, as `dagster dev` reads them
    env = {
        **os.environ,
        "LIQ_SYMBOLS_FILE": str(registry),
        "LIQ_DATA_DIR": str(tmp_path / "data"),
        "LIQ_SOURCE": "sample",
    }
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run(
        [sys.executable, "-m", "liq_pipeline.cli", "demo", "--symbols", "AVAXUSDT", "--days", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lake = Lake.at(tmp_path / "data")
    for table in ("agg_trades", "open_interest", "klines", "funding_rate"):
        assert lake.row_count(table, "AVAXUSDT") > 0, table
    assert "AVAXUSDT" in done.stdout
    # The runs are in the persistent instance that `dagster dev`, started from the same folder, opens.
    monkeypatch.chdir(tmp_path)  # dagster.yaml's relative paths resolve against the working folder
    with tempfile.TemporaryDirectory(dir=tmp_path) as dev_home:
        ref = InstanceRef.from_dir(dev_home, config_dir=str(tmp_path))
        with DagsterInstance.from_ref(ref) as instance:
            runs = instance.get_runs()
    assert {r.tags.get("dagster/partition") for r in runs if r.job_name == "daily_job"} == {
        f"{d}|AVAXUSDT" for d in SAMPLE_DAYS[-2:]
    }
    assert all(r.is_success for r in runs)
