"""Schedules: yesterday's partitions, once the archive has published them."""

from datetime import timedelta

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from liq_pipeline.jobs import daily_job
from liq_pipeline.partitions import partition_key
from liq_pipeline.symbols import load_registry


@schedule(cron_schedule="30 2 * * *", job=daily_job, execution_timezone="UTC")
def daily_schedule(context: ScheduleEvaluationContext):
    """At 02:30 UTC, after the archive publishes (about 02:00), one run per symbol for yesterday."""
    day = (context.scheduled_execution_time - timedelta(days=1)).date()
    specs = [spec for spec in load_registry().specs.values() if spec.covers(day)]
    if not specs:
        yield SkipReason(f"no registry symbol trades on {day}")
    for spec in specs:
        yield RunRequest(run_key=f"{day}|{spec.symbol}", partition_key=partition_key(spec.symbol, day))
