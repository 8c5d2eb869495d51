"""Jobs: what the schedule, the demo and a backfill run."""

from dagster import AssetSelection, define_asset_job

from liq_pipeline.partitions import SYMBOL_DATE

# Everything partitioned by date|symbol: the raw tables and what the model builds from them.
daily_job = define_asset_job(
    "daily_job",
    selection=AssetSelection.groups("raw", "model"),
    partitions_def=SYMBOL_DATE,
    description="One symbol-day: download, parse and model. Backfill it per symbol from the UI.",
)

warehouse_job = define_asset_job("warehouse_job", selection=AssetSelection.groups("warehouse"))
