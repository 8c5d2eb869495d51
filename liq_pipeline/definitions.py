"""The Dagster code location: assets, checks, jobs, schedules, sensors and resources."""

from dagster import Definitions, in_process_executor

from liq_pipeline.assets.model import MODEL_ASSETS
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.assets.tiles import TILE_ASSETS
from liq_pipeline.assets.validation import CALIBRATION_ASSETS, VALIDATION_ASSETS
from liq_pipeline.assets.warehouse import warehouse_views
from liq_pipeline.checks import MODEL_CHECKS, RAW_CHECKS
from liq_pipeline.jobs import daily_job, model_job, validation_job, warehouse_job
from liq_pipeline.resources import ArchiveSource, LakeIOManager, LakeResource, WarehouseResource
from liq_pipeline.schedules import daily_schedule
from liq_pipeline.sensors import (
    coinglass_screenshot_sensor,
    live_model_sensor,
    partial_scores_sensor,
    stale_model_sensor,
)

defs = Definitions(
    executor=in_process_executor,  # small steps: a subprocess per step cost more than the step (see jobs.py)
    assets=[
        *RAW_ASSETS,
        *MODEL_ASSETS,
        *TILE_ASSETS,
        *VALIDATION_ASSETS,
        *CALIBRATION_ASSETS,
        warehouse_views,
    ],
    asset_checks=[*RAW_CHECKS, *MODEL_CHECKS],
    jobs=[daily_job, model_job, validation_job, warehouse_job],
    sensors=[coinglass_screenshot_sensor, stale_model_sensor, partial_scores_sensor, live_model_sensor],
    schedules=[daily_schedule],
    resources={
        "lake_io_manager": LakeIOManager(),
        "lake": LakeResource(),
        "archive": ArchiveSource(),
        "warehouse": WarehouseResource(),  # dagster-duckdb, on $LIQ_DATA_DIR/warehouse.duckdb
    },
)
