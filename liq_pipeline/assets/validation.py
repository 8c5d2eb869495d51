"""Validation assets (group `validation`): Coinglass screenshots of a day read into levels, and the day's scores
against them and against real forced liquidations. The logic is in `liq_pipeline.validation`."""

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetIn,
    Config,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from liq_pipeline.automation import RECOMPUTE_WHEN_INPUTS_UPDATE
from liq_pipeline.lake import LakeSlice
from liq_pipeline.partitions import SYMBOL_DATE, SYMBOLS, lookback_mapping, split_key
from liq_pipeline.resources import LakeResource
from liq_pipeline.sensors import screenshot_dir
from liq_pipeline.symbols import load_registry
from liq_pipeline.validation import calibration, daily
from liq_pipeline.validation.report import comparison_jsonl, validation_report
from liq_pipeline.validation.scores import comparison_record, upsert_jsonl

# The day and the next one: a zone at 23:00 is judged on the liquidations of the following 24 hours.
_DAY_AND_NEXT = lookback_mapping(1, ahead=1)
# The day and the one before: the baseline of a zone at 01:00 spans the range price travelled in the 24 h before.
_DAY_AND_PREVIOUS = lookback_mapping(2)


# Screenshot folders already reported missing by this process: a backfill of many days says it once.
_MISSING_FOLDERS_NOTED: set[Path] = set()


def note_missing_folder(context: AssetExecutionContext, folder: Path) -> None:
    """Warn once per process that the screenshot folder is missing; later partitions log it at debug level."""
    message = (
        f"screenshot folder {folder} does not exist: no Coinglass levels. Create it or set LIQ_SCREENSHOT_DIR "
        "to the folder your N8N workflow writes to (not needed for the forced-liquidation backtest)"
    )
    if folder in _MISSING_FOLDERS_NOTED:
        context.log.debug(message)
        return
    _MISSING_FOLDERS_NOTED.add(folder)
    context.log.warning(message)


@asset(
    group_name="validation",
    partitions_def=SYMBOL_DATE,
    io_manager_key="lake_io_manager",
    kinds={"parquet", "ocr"},
    description="Levels read off every Coinglass screenshot of the day and symbol in LIQ_SCREENSHOT_DIR. A "
    "screenshot whose reading is unreliable (price labels cut, digits that disagree, an axis the klines in the lake "
    "never traded) is skipped with its one-line reason in the `skipped` metadata, never turned into levels.",
)
def coinglass_levels(context: AssetExecutionContext, lake: LakeResource):
    symbol, day = split_key(context.partition_key)
    folder = screenshot_dir()
    # The klines in the lake, if any, cross-check each screenshot's price axis; a refused one is skipped.
    kl = lake.get().slice("klines", symbol, [day - timedelta(days=1), day])
    klines = kl.read(["open_time", "low", "high"]).to_pandas() if kl.present and folder.is_dir() else None
    shots, skipped = daily.read_day(folder, symbol, day, klines)
    if not folder.is_dir():
        note_missing_folder(context, folder)  # the metadata says it on every partition; the log once
    else:
        for reason in skipped:
            context.log.warning(f"skipped {reason}")
    df = daily.levels_frame(shots)
    return Output(
        pa.Table.from_pandas(df, preserve_index=False),
        metadata={
            "dagster/row_count": len(df),
            "screenshots": MetadataValue.json([s.path.name for s in shots]),
            "skipped": MetadataValue.json(skipped),
            "folder": MetadataValue.path(str(folder)),
            "folder exists": folder.is_dir(),
        },
    )


@asset(
    group_name="validation",
    partitions_def=SYMBOL_DATE,
    io_manager_key="lake_io_manager",
    automation_condition=RECOMPUTE_WHEN_INPUTS_UPDATE,
    ins={
        "coinglass_levels": AssetIn(),
        "liquidation_heatmap": AssetIn(),
        "liquidation_levels": AssetIn(),
        "predicted_liquidations": AssetIn(),
        "klines": AssetIn(partition_mapping=_DAY_AND_PREVIOUS),
        "forced_liquidations": AssetIn(partition_mapping=_DAY_AND_NEXT),
    },
    description="Predicted against forced liquidated USD hour by hour (correlation, ratio of totals) and the "
    "share of liquidated USD at prices where the map had mass, each beside a price-path baseline; hit rate, "
    "precision and rank correlation against each Coinglass screenshot; precision@k and "
    "recall of the hourly zones against real forced liquidations of the next 24 h, beside a naive baseline. A "
    "backtest scores the liquidations in the lake: before the next day is ingested it is partial (complete=False, "
    "horizon_end says how far it reaches); re-materialize it after the next day's forced_liquidations arrive. After "
    "2024-03-31 the truth is the live collector's forceOrder recording, only from midnight as far as it was "
    "recorded without a gap; a day whose recording starts later has no backtest truth.",
)
def validation_scores(
    context: AssetExecutionContext,
    lake: LakeResource,
    coinglass_levels: LakeSlice,
    liquidation_heatmap: LakeSlice,
    liquidation_levels: LakeSlice,
    predicted_liquidations: LakeSlice,
    klines: LakeSlice,
    forced_liquidations: LakeSlice,
):
    symbol, day = split_key(context.partition_key)
    files = (
        set(coinglass_levels.read(["file"]).column("file").to_pylist()) if coinglass_levels.present else set()
    )
    truth = daily.truth_days(
        forced_liquidations
    )  # archive days whole, live days as far as they were recorded
    df, shot_rows, notes = daily.score_day(
        screenshot_dir(),
        symbol,
        day,
        files,
        heat=liquidation_heatmap.read().to_pandas(),
        klines=klines.read().to_pandas(),
        levels=liquidation_levels.read().to_pandas(),
        liquidations=forced_liquidations.read().to_pandas() if forced_liquidations.present else None,
        price_bin=load_registry().get(symbol).price_bin,
        truth=truth,
        predicted=predicted_liquidations.read().to_pandas() if predicted_liquidations.present else None,
    )
    horizon = daily.horizon_status(df, day, truth)
    if horizon.startswith("partial"):
        # Expected until D+1 arrives or a live day is recorded further (partial_scores_sensor rescores it).
        context.log.info(f"{context.partition_key}: {horizon}")
    upsert_jsonl(
        comparison_jsonl(lake.get()), [comparison_record(symbol, r["ts"], r["file"], r) for r in shot_rows]
    )
    return Output(
        pa.Table.from_pandas(df, preserve_index=False),
        metadata={
            "dagster/row_count": len(df),
            "screenshots scored": len(shot_rows),
            "backtest snapshots": int((df["kind"] == "backtest").sum()) if len(df) else 0,
            "backtest horizon": horizon,
            "nothing to score": MetadataValue.json(notes),
            "report (all days, BTC vs ETH)": MetadataValue.md(validation_report(lake.get(), extra=df)),
        },
    )


class CalibrationWindow(Config):
    """The screenshots a calibration fits and scores: captured from `start` to `end` (UTC days, inclusive)."""

    start: str = Field(default="", description="First capture day, YYYY-MM-DD; empty = 7 days up to end")
    end: str = Field(
        default="", description="Last capture day, YYYY-MM-DD; empty = the newest screenshot's day"
    )


@asset(
    group_name="validation",
    partitions_def=SYMBOLS,
    kinds={"json", "ocr"},
    description="The model's leverage mix, position size and lookback fitted to the Coinglass screenshots of a "
    "window (run config; default the 7 days up to the newest screenshot): fitted on the earlier screenshots, scored "
    "with the defaults on the later ones. Written to <data dir>/calibration/<SYMBOL>.json; the model uses it when it "
    "beats the defaults there (run config still overrides). Reads the lake's raw tables and LIQ_SCREENSHOT_DIR.",
)
def model_calibration(
    context: AssetExecutionContext, config: CalibrationWindow, lake: LakeResource
) -> MaterializeResult:
    symbol, folder = context.partition_key, screenshot_dir()
    start, end = calibration.window(folder, symbol, config.start, config.end)
    result = calibration.calibrate(symbol, start, end, folder, lake.get())
    path = calibration.save(lake.get(), result)
    context.log.info(calibration.format_result(result))
    return MaterializeResult(
        metadata={
            "window": f"{start} .. {end}",
            "params": MetadataValue.json(result.params),
            "holdout": MetadataValue.json(result.holdout),
            "default holdout": MetadataValue.json(result.default_holdout),
            "train": MetadataValue.json(result.train),
            "beats defaults (used by the model)": result.beats_defaults,
            "screenshots (train / holdout)": f"{result.n_train} / {result.n_holdout}",
            "trials": result.trials,
            "seconds": result.seconds,
            "file": MetadataValue.path(str(path)),
        }
    )


VALIDATION_ASSETS = [coinglass_levels, validation_scores]
# Partitioned by symbol, not date|symbol: kept apart so a run of the daily assets never selects it.
CALIBRATION_ASSETS = [model_calibration]
