"""The Dagster code location: assets, checks, jobs, schedules, sensors and resources."""

from dagster import Definitions

from liq_pipeline.assets.model import MODEL_ASSETS
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.assets.warehouse import warehouse_views
from liq_pipeline.jobs import daily_job, warehouse_job
from liq_pipeline.resources import ArchiveSource, LakeIOManager, LakeResource
from liq_pipeline.schedules import daily_schedule

defs = Definitions(
    assets=[*RAW_ASSETS, *MODEL_ASSETS, warehouse_views],
    jobs=[daily_job, warehouse_job],
    schedules=[daily_schedule],
    resources={
        "lake_io_manager": LakeIOManager(),
        "lake": LakeResource(),
        "archive": ArchiveSource(),
    },
)
