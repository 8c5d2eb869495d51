"""The Dagster code location: assets, checks, jobs, schedules, sensors and resources."""

import os

from dagster import Definitions, ExecutorDefinition, in_process_executor

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


def chosen_executor() -> ExecutorDefinition:
    """`LIQ_EXECUTOR`: `in_process` (default; small steps, and a subprocess per step cost more than the step, see
    jobs.py), or `celery` for the distributed deployment (deploy/): each step goes to a Celery worker through the
    broker `LIQ_CELERY_BROKER`, its result back through `LIQ_CELERY_BACKEND`. The same definitions either way."""
    choice = os.environ.get("LIQ_EXECUTOR") or "in_process"
    if choice == "in_process":
        return in_process_executor
    if choice == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {"broker": {"env": "LIQ_CELERY_BROKER"}, "backend": {"env": "LIQ_CELERY_BACKEND"}}, name="celery"
        )
    raise ValueError(f"LIQ_EXECUTOR={choice!r} is not an executor of liq_pipeline: use in_process or celery")


defs = Definitions(
    executor=chosen_executor(),
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
