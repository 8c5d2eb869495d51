"""Asset checks on what can really be wrong with a symbol-day's data, beyond what parsing already guarantees
(rows inside the day, sorted, without repeats). The rules are plain functions in `quality.py` and `staleness.py`.

| check | on | what | blocking |
|---|---|---|---|
| `oi_continuity` | open_interest | a reading at least every 15 minutes, none zero/negative/missing | yes |
| `inside_klines` | agg_trades | every trade inside the low..high of its minute's kline | yes |
| `coverage` | klines | klines, open interest and trades each cover the whole day | no (warns) |
| `fresh_against_inputs` | liquidation_heatmap | the raw partitions it read are still those in the lake | yes |

A blocking check that fails stops the model assets downstream in the same run. Checks across tables read the
other tables of the same `date|symbol` from the lake, through the IO manager (identity partition mapping).
"""

import warnings
from collections.abc import Iterator
from datetime import date

import pyarrow as pa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetIn,
    MetadataValue,
    PreviewWarning,
    asset_check,
)

from liq_pipeline import quality, staleness
from liq_pipeline.lake import LakeSlice
from liq_pipeline.model_io import HEATMAP
from liq_pipeline.partitions import SYMBOL_DATE, split_key
from liq_pipeline.resources import LakeResource

# Per-partition check results (partitions_def on a check) are marked preview in Dagster 1.13; they are what lets
# each date|symbol keep its own result, so use them and silence that one notice.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=PreviewWarning
)


def check_spec(name: str, asset: str, description: str, blocking: bool = False) -> AssetCheckSpec:
    """A check declared on an asset and run in its step, with one result per date|symbol partition."""
    return AssetCheckSpec(
        name, asset=asset, description=description, blocking=blocking, partitions_def=SYMBOL_DATE
    )


def result(verdict: quality.Verdict, **kw) -> AssetCheckResult:
    return AssetCheckResult(
        passed=verdict.passed,
        severity=AssetCheckSeverity[verdict.severity],
        description=verdict.detail,
        metadata=verdict.metadata,
        **kw,
    )


# --- checks on one raw table, run in the asset's own step with the data in hand ----------------------------

_OI_CONTINUITY = check_spec(
    "oi_continuity",
    "open_interest",
    "A reading at least every 15 minutes of the UTC day, and none zero, negative or missing. Blocking: the model "
    "would take a hole for positions closed.",
    blocking=True,
)


def raw_check_specs(table: str) -> list[AssetCheckSpec]:
    return [_OI_CONTINUITY] if table == "open_interest" else []


def run_raw_checks(table: str, data: pa.Table, day: date) -> Iterator[AssetCheckResult]:
    if table == "open_interest":
        yield result(quality.oi_continuity(data, day), check_name=_OI_CONTINUITY.name)


# --- checks across tables: separate steps that run once every table they read has been written -------------


def _read(s: LakeSlice, columns: list[str]) -> pa.Table | None:
    return s.read(columns) if s.present else None


@asset_check(
    asset="agg_trades",
    name="inside_klines",
    blocking=True,
    partitions_def=SYMBOL_DATE,
    additional_ins={"klines": AssetIn()},
    description="Every trade's price is inside the low..high of the 1-minute kline it falls in. Blocking: one "
    "outside means the trades or the klines are not this market's.",
)
def inside_klines(
    context: AssetCheckExecutionContext, agg_trades: LakeSlice, klines: LakeSlice
) -> AssetCheckResult:
    _, day = split_key(context.partition_key)
    trades = _read(agg_trades, ["ts", "price"])
    if trades is None:
        return result(quality.Verdict(False, f"no agg_trades partition for {day}", severity="WARN"))
    return result(quality.trades_inside_klines(trades, _read(klines, ["open_time", "low", "high"]), day))


@asset_check(
    asset="klines",
    name="coverage",
    blocking=False,
    partitions_def=SYMBOL_DATE,
    additional_ins={"open_interest": AssetIn(), "agg_trades": AssetIn()},
    description="Klines (1440 bars), open interest (288 readings) and trades each cover every hour of the UTC day. "
    "Warns only: the model skips missing steps, and an exchange outage is real.",
)
def coverage(
    context: AssetCheckExecutionContext, klines: LakeSlice, open_interest: LakeSlice, agg_trades: LakeSlice
) -> AssetCheckResult:
    _, day = split_key(context.partition_key)
    return result(
        quality.coverage(
            _read(klines, ["open_time"]), _read(open_interest, ["ts"]), _read(agg_trades, ["ts"]), day
        )
    )


RAW_CHECKS = [inside_klines, coverage]


# --- the model --------------------------------------------------------------------------------------------


def freshness_verdict(stale: staleness.Stale | None, built: bool) -> quality.Verdict:
    if not built:
        return quality.Verdict(False, "the model partition is not in the lake", severity="WARN")
    if stale is None:
        return quality.Verdict(True, "built from the raw partitions now in the lake")
    if stale.live:  # the collector writes the day's inputs every few seconds: they always moved on
        return quality.Verdict(
            True,
            f"live day, still being collected ({'; '.join(stale.reasons)}); live_model_sensor recomputes it as "
            "rows arrive",
        )
    return quality.Verdict(
        False,
        f"stale: {'; '.join(stale.reasons)}",
        {"reasons": MetadataValue.json(list(stale.reasons)), "run key": stale.run_key},
    )


@asset_check(
    asset=HEATMAP,
    name="fresh_against_inputs",
    blocking=True,
    partitions_def=SYMBOL_DATE,
    description="The klines, open interest and trades this model partition read over its lookback are still those "
    "in the lake: none rewritten with other content, arrived or removed since. `stale_model_sensor` recomputes "
    "stale partitions.",
)
def fresh_against_inputs(context: AssetCheckExecutionContext, lake: LakeResource) -> AssetCheckResult:
    symbol, day = split_key(context.partition_key)
    the_lake = lake.get()
    built = the_lake.exists(HEATMAP, symbol, day)
    return result(freshness_verdict(staleness.check_partition(the_lake, symbol, day), built))


MODEL_CHECKS = [fresh_against_inputs]
