"""Backfills through the daemon: every job runs its steps in the run's process, and `liq bench backfill` measures
the daemon's runs beside the same partitions in process."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from liq_pipeline.definitions import defs


def test_every_job_runs_its_steps_in_the_run_process():
    """A step per subprocess cost several times the step (each imported the project): the jobs, and the asset job
    behind backfills launched from the asset graph, run their steps in process."""
    jobs = [
        defs.resolve_job_def(name) for name in ("daily_job", "model_job", "validation_job", "warehouse_job")
    ]
    jobs.append(defs.resolve_implicit_global_asset_job_def())
    assert {job.name: job.executor_def.name for job in jobs} == {job.name: "in_process" for job in jobs}


def test_bench_backfill_prints_the_daemon_beside_in_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    done = subprocess.run(
        [sys.executable, "-m", "liq_pipeline.cli", "bench", "backfill", "--days", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = dict(re.findall(r"^  (.+?):\s+([0-9.]+)", done.stdout, flags=re.M))
    assert set(figures) == {
        "in process, `liq backfill` per symbol",
        "in process, warm (no process start)",
        "daemon, `dagster job backfill` to done",
        "daemon, first queued to last done",
    }, done.stdout
    assert all(float(v) > 0 for v in figures.values()), figures
    # A daemon run starts a process and imports the project: it cannot beat the warm in-process figure.
    assert float(figures["daemon, first queued to last done"]) > float(
        figures["in process, warm (no process start)"]
    )
    assert re.search(r"^ratio daemon / `liq backfill`: [0-9.]+ queued to done", done.stdout, flags=re.M)
    assert "1 days x 2 symbols = 2 partitions" in done.stdout
