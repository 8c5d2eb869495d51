"""The README's backfill and materialize commands, run as written against a temporary instance.

The README marks the block with `<!-- tested by liq_pipeline_tests/test_readme_commands.py -->` on the line before
its opening fence. The block runs under bash in a folder laid out like the repository (its dagster.yaml and
workspace.yaml), with a daemon up as `dagster dev` would have it, LIQ_SOURCE=sample and a temporary LIQ_DATA_DIR.
`uv run` resolves to this project (UV_PROJECT) without syncing it.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from liq_pipeline import bench
from liq_pipeline.lake import Lake
from liq_pipeline.partitions import split_key

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MARKER = "<!-- tested by liq_pipeline_tests/test_readme_commands.py -->"
PARTITION = re.compile(r"\d{4}-\d{2}-\d{2}\|[A-Z0-9]+")


def readme_block(readme: str, marker: str = MARKER) -> str:
    """The fenced block right after the marker line."""
    lines = readme.splitlines()
    assert marker in lines, f"README.md has no line {marker!r} before its commands"
    start = lines.index(marker) + 1
    assert lines[start].startswith("```"), f"README.md: the line after {marker} must open a code block"
    end = lines.index("```", start + 1)
    return "\n".join(lines[start + 1 : end])


def commands(block: str) -> list[str]:
    """Shell commands of the block, continuation lines joined."""
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def test_workspace_names_the_location_as_dagster_dev_does():
    """Runs record their code location; a daemon of `dagster dev` (pyproject) and one of `-w workspace.yaml`
    must both find it, or every queued run fails 'Location ... does not exist in workspace'."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    assert [w["python_module"].get("location_name") for w in workspace] == [pyproject["code_location_name"]]
    assert workspace[0]["python_module"]["module_name"] == pyproject["module_name"]


def test_the_readme_block_holds_a_backfill_and_a_materialize():
    cmds = commands(readme_block(README.read_text()))
    assert any("dagster job backfill" in c for c in cmds), cmds
    assert any("dagster asset materialize" in c for c in cmds), cmds
    assert all(PARTITION.search(c) for c in cmds if "dagster job backfill" in c or "asset materialize" in c)


def test_readme_backfill_and_materialize_commands_land_in_the_lake(tmp_path):
    block = readme_block(README.read_text())
    cmds = commands(block)
    backfilled = {k for c in cmds if "dagster job backfill" in c for k in PARTITION.findall(c)}
    materialized = {k for c in cmds if "dagster asset materialize" in c for k in PARTITION.findall(c)}
    folder = bench.project_folder(tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}  # the block sets it, as a user does
    env |= {
        "LIQ_SOURCE": "sample",
        "LIQ_DATA_DIR": str(tmp_path / "data"),
        "UV_PROJECT": str(REPO),
        "UV_NO_SYNC": "1",
    }
    daemon = bench.start_daemon(folder, {**env, "DAGSTER_HOME": str(folder)}, tmp_path / "daemon.log")
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        records = bench.wait_for_backfill_runs(folder, len(backfilled), timeout=180)
    finally:
        bench.stop_group(daemon)
    runs = [r.dagster_run for r in records]
    assert {r.tags["dagster/partition"] for r in runs} == backfilled
    assert all(r.is_success for r in runs), [(r.tags["dagster/partition"], r.status) for r in runs]
    assert {r.remote_job_origin.location_name for r in runs} == {"liq_pipeline"}
    lake = Lake.at(tmp_path / "data")
    for key in backfilled | materialized:
        symbol, day = split_key(key)
        assert day in lake.symbol_dates("klines").get(symbol, []), f"{key}: no klines in the lake"
    for key in backfilled:
        symbol, day = split_key(key)
        assert day in lake.symbol_dates("liquidation_heatmap").get(symbol, []), f"{key}: no model"
    # Everything went to the block's instance, inside the temporary folder.
    assert (folder / ".dagster_home" / "storage").is_dir()
