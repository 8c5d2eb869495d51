"""Jobs: what the schedule, the demo and a backfill run.

Every job runs its steps in the run's own process (`executor=in_process_executor` in definitions.py, which also
covers the asset backfills launched from the UI): a symbol-day's steps take seconds, and the default multiprocess
executor started a Python process per step that imported the whole project first, several times the step's work.
"""

from dagster import AssetSelection, define_asset_job

# Everything partitioned by date|symbol: the raw tables and what the model builds from them.
daily_job = define_asset_job(
    "daily_job",
    # model_calibration is per symbol over a window of days, not per symbol-day: materialized on its own.
    selection=AssetSelection.groups("raw", "model", "validation")
    - AssetSelection.assets("model_calibration"),
    description="One symbol-day: download, parse and model. Backfill it per symbol from the UI.",
)

# What the stale-model and live sensors run: the model of one partition and its tiles (`heatmap_tiles`, group model),
# from the raw tables already in the lake.
model_job = define_asset_job(
    "model_job",
    selection=AssetSelection.groups("model"),
    description="Recompute the model of one symbol-day from the lake (no download), e.g. after its inputs changed.",
)

# What the screenshot sensor runs for the partition of each new screenshot.
validation_job = define_asset_job(
    "validation_job",
    selection=AssetSelection.assets("coinglass_levels", "validation_scores"),
    description="Read the day's Coinglass screenshots and score the model against them and forced liquidations.",
)

warehouse_job = define_asset_job("warehouse_job", selection=AssetSelection.groups("warehouse"))
