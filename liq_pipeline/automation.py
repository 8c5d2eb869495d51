"""Declarative automation: a model or validation partition that exists is recomputed when one of its inputs is
materialized again after it (a raw day that arrived late, a re-ingested file), through Dagster's automation
conditions and its `default_automation_condition_sensor`.

`AutomationCondition.eager()` is the base, less two of its parts: it only looks at the latest day (we want the
days that read a late one, whatever their date), and it waits until no input is missing (a model day's lookback
reaches days before the data begins, which are never there). `~missing()` keeps it to partitions already built:
new days come from the schedule and backfills, which know which days exist.
"""

from dagster import AutomationCondition

RECOMPUTE_WHEN_INPUTS_UPDATE = (
    AutomationCondition.eager()
    .without(AutomationCondition.in_latest_time_window())
    .without(~AutomationCondition.any_deps_missing())
    & ~AutomationCondition.missing()
).with_label("recompute when an input day updates")
