"""Declarative automation: a model day built before a day of its lookback arrived is requested again when that day
is materialized; model days not built yet, other symbols and days that read nothing new are not."""

from __future__ import annotations

from datetime import timedelta

import pytest
from dagster import AssetKey, DagsterInstance, Definitions, evaluate_automation_conditions, materialize

from liq_pipeline.assets.model import MODEL_ASSETS
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.assets.validation import VALIDATION_ASSETS
from liq_pipeline.model_io import HEATMAP
from liq_pipeline.partitions import partition_key

from .conftest import FIXTURE_DAYS, local_resources

EARLY, LATE_READER = FIXTURE_DAYS  # the fixture's two consecutive days
ASSETS = [*RAW_ASSETS, *MODEL_ASSETS, *VALIDATION_ASSETS]


@pytest.fixture
def instance(mirror, lake, monkeypatch):
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    with DagsterInstance.ephemeral() as instance:
        yield instance


def run(instance, selection, symbol, day):
    result = materialize(
        ASSETS,
        selection=selection,
        partition_key=partition_key(symbol, day),
        instance=instance,
        resources=local_resources(),
    )
    assert result.success


def requested(result, key: str) -> set[str]:
    return {str(k) for k in result.get_requested_partitions(AssetKey(key))}


def test_a_late_raw_day_requests_the_model_days_that_read_it(instance):
    # Day 2 is built first, for both symbols, while day 1 (inside its lookback) is not in the lake yet.
    for symbol in ("BTCUSDT", "ETHUSDT"):
        run(instance, [*RAW_ASSETS, *MODEL_ASSETS], symbol, LATE_READER)
    first = evaluate_automation_conditions(
        defs=Definitions(assets=ASSETS, resources=local_resources()), instance=instance
    )
    assert first.total_requested == 0  # everything built is up to date

    run(instance, RAW_ASSETS, "BTCUSDT", EARLY)  # day 1 of BTCUSDT arrives late
    second = evaluate_automation_conditions(
        defs=Definitions(assets=ASSETS, resources=local_resources()), instance=instance, cursor=first.cursor
    )
    late = str(partition_key("BTCUSDT", LATE_READER))
    assert requested(second, HEATMAP) == {late}  # not day 1 (never built), not ETHUSDT, not the days after
    assert requested(second, "liquidation_levels") == {late}
    assert not requested(second, "validation_scores")  # never built: the sensor and backfills make new days

    run(instance, MODEL_ASSETS, "BTCUSDT", LATE_READER)  # what the sensor launches
    third = evaluate_automation_conditions(
        defs=Definitions(assets=ASSETS, resources=local_resources()), instance=instance, cursor=second.cursor
    )
    assert third.total_requested == 0  # handled: not asked again
    assert LATE_READER - EARLY == timedelta(days=1)
