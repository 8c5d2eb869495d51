"""Partitions: a static symbol dimension read from the registry, times a daily date dimension.

The symbol dimension is static on purpose: a dynamic one breaks the dagster-duckdb IO manager ("The instance is
not available to load partitions") and cannot be read without an instance. Keys look like `2024-12-28|ETHUSDT`.
"""

from __future__ import annotations

import warnings
from datetime import date

from dagster import (
    BetaWarning,
    DailyPartitionsDefinition,
    DimensionPartitionMapping,
    IdentityPartitionMapping,
    MultiPartitionKey,
    MultiPartitionMapping,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
    TimeWindowPartitionMapping,
)

from liq_pipeline.symbols import load_registry

_REGISTRY = load_registry()

SYMBOLS = StaticPartitionsDefinition(_REGISTRY.symbols)
# end_offset=1: today is a partition too, so live mode (`liq collect`) can materialize today's model as the day goes.
DAILY = DailyPartitionsDefinition(
    start_date=min(spec.first_date for spec in _REGISTRY.specs.values()).isoformat(),
    timezone="UTC",
    end_offset=1,
)
SYMBOL_DATE = MultiPartitionsDefinition({"date": DAILY, "symbol": SYMBOLS})


def partition_key(symbol: str, day: date) -> MultiPartitionKey:
    return MultiPartitionKey({"date": day.isoformat(), "symbol": symbol})


def split_key(key: str | MultiPartitionKey) -> tuple[str, date]:
    """`2024-12-28|ETHUSDT` -> ("ETHUSDT", date(2024, 12, 28))."""
    dims = (
        key.keys_by_dimension
        if isinstance(key, MultiPartitionKey)
        else dict(zip(("date", "symbol"), key.split("|")))
    )
    return dims["symbol"], date.fromisoformat(dims["date"])


def lookback_mapping(days: int, ahead: int = 0) -> MultiPartitionMapping:
    """The last `days` days of the same symbol (and `ahead` days after). Both dimensions are named: one left out
    would map to every symbol. Days outside the partitions (before the start, not yet ended) are allowed."""
    with warnings.catch_warnings():  # both classes are marked beta; they are the documented way to do this
        warnings.simplefilter("ignore", BetaWarning)
        dates = TimeWindowPartitionMapping(
            start_offset=-(days - 1), end_offset=ahead, allow_nonexistent_upstream_partitions=True
        )
        return MultiPartitionMapping(
            {
                "date": DimensionPartitionMapping("date", dates),
                "symbol": DimensionPartitionMapping("symbol", IdentityPartitionMapping()),
            }
        )
