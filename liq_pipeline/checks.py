"""Asset checks. Specs are declared on the assets (so they run per partition with the materialization); the
rules themselves are plain functions in `quality.py`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import pyarrow as pa
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec

from liq_pipeline import quality

# table -> [(check name, description, severity, rule)]. Gaps only warn: the exchange does have outages.
_RAW_RULES = {
    "agg_trades": [
        ("no_gaps", "No stretch over 15 minutes without a trade", "WARN",
         lambda t, d: quality.max_gap(t, "ts", d, timedelta(minutes=15))),
        ("inside_day", "Every trade time is inside the partition's day", "ERROR",
         lambda t, d: quality.inside_day(t, "ts", d)),
        ("unique_ids", "No duplicate agg_trade_id", "ERROR", lambda t, d: quality.unique(t, "agg_trade_id")),
    ],
    "open_interest": [
        ("no_gaps", "No stretch over 15 minutes without an open-interest row", "WARN",
         lambda t, d: quality.max_gap(t, "ts", d, timedelta(minutes=15))),
        ("inside_day", "Every row is inside the partition's day", "ERROR", lambda t, d: quality.inside_day(t, "ts", d)),
        ("unique_ts", "One row per timestamp", "ERROR", lambda t, d: quality.unique(t, "ts")),
        ("positive", "Open interest and its value are positive", "ERROR",
         lambda t, d: quality.positive(t, ["open_interest", "open_interest_value"])),
    ],
    "klines": [
        ("no_gaps", "No missing 1-minute bar", "WARN",
         lambda t, d: quality.max_gap(t, "open_time", d, timedelta(minutes=1))),
        ("inside_day", "Every bar opens inside the partition's day", "ERROR",
         lambda t, d: quality.inside_day(t, "open_time", d)),
        ("unique_open_time", "One bar per minute", "ERROR", lambda t, d: quality.unique(t, "open_time")),
    ],
    "funding_rate": [
        ("inside_day", "Every funding time is inside the partition's day", "ERROR",
         lambda t, d: quality.inside_day(t, "ts", d)),
        ("unique_ts", "One funding rate per timestamp", "ERROR", lambda t, d: quality.unique(t, "ts")),
    ],
    "forced_liquidations": [
        ("inside_day", "Every liquidation is inside the partition's day", "ERROR",
         lambda t, d: quality.inside_day(t, "ts", d)),
    ],
}


def raw_check_specs(table: str, asset_key: str) -> list[AssetCheckSpec]:
    return [AssetCheckSpec(name, asset=asset_key, description=desc) for name, desc, _, _ in _RAW_RULES[table]]


def run_raw_checks(table: str, data: pa.Table, day: date) -> Iterator[AssetCheckResult]:
    for name, _, severity, rule in _RAW_RULES[table]:
        verdict = rule(data, day)
        yield AssetCheckResult(
            check_name=name,
            passed=verdict.passed,
            severity=AssetCheckSeverity[severity],
            description=verdict.detail,
            metadata=verdict.metadata,
        )
