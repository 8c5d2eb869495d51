"""Sensors: `coinglass_screenshot_sensor` starts `validation_job` for each new Coinglass screenshot dropped into a
folder (e.g. by N8N); `stale_model_sensor` recomputes model partitions whose raw inputs changed after them;
`partial_scores_sensor` rescores validation days scored before their next day's forced liquidations arrived;
`live_model_sensor` keeps today's model current while `liq collect` writes today's rows.

The folder is `screenshot_dir()`. Each `*.png` named `coinglass_{sym}_{model}_{timeframe}_{YYYYMMDD}_{HHMMSS}.png`
requests one run of the (symbol, capture day) partition. The cursor maps file name -> mtime_ns, so a file is handled
once, and again only when it is rewritten. Bad files are logged once and recorded in the cursor too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from PIL import Image

from liq_pipeline import staleness
from liq_pipeline.lake import Lake, column_max, local_dir
from liq_pipeline.live.partition import live_info
from liq_pipeline.model_io import HEATMAP
from liq_pipeline.partitions import DAILY, partition_key
from liq_pipeline.symbols import load_registry
from liq_pipeline.validation.daily import SCORES_TABLE, rescore_due
from liq_pipeline.validation.screenshot import parse_screenshot_name, symbol_for

if TYPE_CHECKING:
    from liq_pipeline.symbols import Registry


def screenshot_dir() -> Path:
    """`$LIQ_SCREENSHOT_DIR`, default `<LIQ_DATA_DIR or ./data>/screenshots`."""
    env = os.environ.get("LIQ_SCREENSHOT_DIR")
    return Path(env).resolve() if env else local_dir() / "screenshots"


@dataclass(frozen=True)
class Request:
    name: str  # file name
    symbol: str  # BTCUSDT
    day: date  # capture day, UTC
    run_key: str  # name@mtime_ns
    mtime_ns: int


def _check_image(path: Path) -> str | None:
    """None if PIL can read the file as an image, else a short reason. Cheap: no decoding of the pixels."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # PIL raises many types for a bad file
        return f"not a readable image ({type(exc).__name__}: {exc})"
    return None


def scan(
    folder: Path, cursor: dict[str, int], registry: Registry, latest_day: date | None = None
) -> tuple[list[Request], list[str], dict[str, int]]:
    """New or rewritten screenshots in `folder`: (requests, skip reasons "file: reason", new cursor).

    Files are taken in (mtime, name) order. Only `*.png` (any case), not hidden ones. A file whose (name, mtime_ns)
    is in the cursor is not looked at again, whether it was requested or skipped. A screenshot of a day after
    `latest_day` (the day's partition does not exist yet) is left out of the cursor and is taken on a later tick.
    """
    new_cursor = dict(cursor)
    requests: list[Request] = []
    reasons: list[str] = []
    files = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() != ".png":
            continue
        try:
            if not path.is_file():
                continue
            files.append((path.stat().st_mtime_ns, path.name, path))
        except OSError:  # removed between listing and stat
            continue
    for mtime_ns, name, path in sorted(files):
        if cursor.get(name) == mtime_ns:
            continue
        try:
            symbol = symbol_for(name, registry)
            day = parse_screenshot_name(name).captured_at.date()
        except ValueError as exc:
            reasons.append(f"{name}: {exc}")
            new_cursor[name] = mtime_ns
            continue
        if latest_day is not None and day > latest_day:
            continue  # retried each tick until the day's partition exists; nothing logged, nothing recorded
        bad = _check_image(path)
        if bad:
            reasons.append(f"{name}: {bad}")
            new_cursor[name] = mtime_ns
            continue
        requests.append(Request(name, symbol, day, f"{name}@{mtime_ns}", mtime_ns))
        new_cursor[name] = mtime_ns
    return requests, reasons, new_cursor


def _load_cursor(raw: str | None) -> dict[str, int]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _latest_day() -> date | None:
    """The last day that is over (yesterday, UTC). Today is a partition too (live mode), but its screenshots wait
    for the day's end like before: without a collector, today's model does not exist."""
    window = DAILY.get_last_partition_window()
    return window.start.date() - timedelta(days=1) if window else None


@sensor(
    name="coinglass_screenshot_sensor",
    job_name="validation_job",
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Watches LIQ_SCREENSHOT_DIR (default <LIQ_DATA_DIR>/screenshots) for Coinglass heatmap screenshots named "
        "coinglass_{sym}_{model}_{timeframe}_{YYYYMMDD}_{HHMMSS}.png and runs validation_job for the (capture day, "
        "symbol) partition of each new or rewritten file. Bad files are logged once and skipped."
    ),
)
def coinglass_screenshot_sensor(context: SensorEvaluationContext):
    folder = screenshot_dir()
    if not folder.is_dir():
        return SkipReason(
            f"Screenshot folder {folder} does not exist; create it or set LIQ_SCREENSHOT_DIR to the folder "
            "the screenshots are saved in."
        )
    requests, reasons, new_cursor = scan(folder, _load_cursor(context.cursor), load_registry(), _latest_day())
    for reason in reasons:
        context.log.warning(f"coinglass_screenshot_sensor: skipping {reason}")
    run_requests = [
        RunRequest(
            run_key=req.run_key,
            partition_key=partition_key(req.symbol, req.day),
            tags={"liq/screenshot": req.name},
        )
        for req in requests
    ]
    context.update_cursor(json.dumps(new_cursor, sort_keys=True))
    return run_requests


# --- stale model partitions ------------------------------------------------------------------------------------

# The launchpad parameters of the model (`ModelParams`): a recompute uses those the stale partition was built with.
_MODEL_PARAMS = (
    "leverage",
    "leverage_weights",
    "lookback_days",
    "position_usd",
    "price_bin",
    "imbalance_tilt",
    "step_minutes",
)


def recompute_request(stale: staleness.Stale) -> RunRequest:
    params = {k: v for k, v in stale.config.items() if k in _MODEL_PARAMS and v is not None}
    return RunRequest(
        run_key=stale.run_key,
        partition_key=partition_key(stale.symbol, stale.day),
        run_config={"ops": {"liquidation_model": {"config": params}}},
        tags={"liq/stale": "; ".join(stale.reasons)[:200]},
    )


def stale_evaluation(stale: staleness.Stale) -> AssetCheckEvaluation:
    """`fresh_against_inputs` failed, recorded the moment the sensor sees it (no run needed to show it)."""
    return AssetCheckEvaluation(
        asset_key=AssetKey(HEATMAP),
        check_name="fresh_against_inputs",
        passed=False,
        severity=AssetCheckSeverity.ERROR,
        partition=str(partition_key(stale.symbol, stale.day)),
        description="stale: " + "; ".join(stale.reasons),
        metadata={"run key": stale.run_key},
    )


def _load_seen(raw: str | None) -> set[str]:
    try:
        data = json.loads(raw) if raw else []
    except ValueError:
        return set()
    return {str(k) for k in data} if isinstance(data, list) else set()


@sensor(
    name="stale_model_sensor",
    job_name="model_job",
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Finds model partitions built from raw partitions that have changed since (rewritten with other content, "
        "arrived or removed within the lookback), marks their fresh_against_inputs check failed and requests one "
        "model_job run each. The run key holds the input fingerprints, so a recompute that fails is not requested "
        "again until an input changes."
    ),
)
def stale_model_sensor(context: SensorEvaluationContext):
    # Live days (`liq collect` writes their inputs every few seconds) are live_model_sensor's.
    stale = [s for s in staleness.stale_partitions(Lake.at(), load_registry().symbols) if not s.live]
    new, seen = staleness.plan(stale, _load_seen(context.cursor))
    for s in new:
        context.log.info(f"stale_model_sensor: {s.day}|{s.symbol} is stale: {'; '.join(s.reasons)}")
    cursor = json.dumps(sorted(seen))
    if not new:
        return SensorResult(skip_reason=f"{len(stale)} stale model partitions, none new", cursor=cursor)
    return SensorResult(
        run_requests=[recompute_request(s) for s in new],
        asset_events=[stale_evaluation(s) for s in new],
        cursor=cursor,
    )


# --- live mode ---------------------------------------------------------------------------------------------------


def live_scan(
    lake: Lake, symbols: list[str], cursor: dict[str, int], today: date, step_minutes: int = 5
) -> tuple[list[RunRequest], dict[str, int]]:
    """Model runs due for the live days (today and yesterday, whose last minutes `liq collect` may still be
    committing): one per `date|symbol` whose live klines now end a model step later than at its last request.
    The cursor maps `date|symbol` to that step end (ms); the run key holds it, so each step is asked for once."""
    step_ms = step_minutes * 60_000
    requests, new_cursor = [], {}
    for day in (today - timedelta(days=1), today):
        for symbol in symbols:
            key = f"{day}|{symbol}"
            info = live_info(lake.partition_file("klines", symbol, day))
            if (
                info is None
                or not info.live
                or info.rows == 0
                or not lake.exists("open_interest", symbol, day)
            ):
                continue
            newest = column_max(lake.partition_file("klines", symbol, day), "open_time")  # from the footer
            bar_end = int(newest.replace(tzinfo=UTC).timestamp() * 1000) + 60_000
            step_end = bar_end - bar_end % step_ms
            new_cursor[key] = max(step_end, cursor.get(key, 0))
            if step_end > cursor.get(key, 0):
                until = datetime.fromtimestamp(step_end / 1000, UTC).strftime("%H:%M")
                requests.append(
                    RunRequest(
                        run_key=f"live {key} to {until}",
                        partition_key=partition_key(symbol, day),
                        tags={"liq/live": f"collected until {until} UTC"},
                    )
                )
    return requests, new_cursor


@sensor(
    name="live_model_sensor",
    job_name="model_job",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Live mode: while `liq collect` writes today's rows, runs model_job for today's partition of each collected "
        "symbol every time its klines complete a new 5-minute step (and for yesterday's last steps after "
        "midnight). Does nothing when no collector runs."
    ),
)
def live_model_sensor(context: SensorEvaluationContext):
    today = datetime.now(UTC).date()
    requests, new_cursor = live_scan(Lake.at(), load_registry().symbols, _load_cursor(context.cursor), today)
    context.update_cursor(json.dumps(new_cursor, sort_keys=True))
    return requests or SkipReason("no live partition has a new model step (is `liq collect` running?)")


def rescore_scan(lake: Lake) -> list[RunRequest]:
    """One `validation_job` request per stored validation_scores partition that is partial while the lake now knows
    its forced liquidations further. The run key holds how far, so each new horizon is scored once."""
    requests = []
    for symbol, days in lake.symbol_dates(SCORES_TABLE).items():
        for day in days:
            known = rescore_due(lake, symbol, day)
            if known is not None:
                requests.append(
                    RunRequest(
                        run_key=f"rescore {day}|{symbol} to {known.isoformat()}",
                        partition_key=partition_key(symbol, day),
                        tags={"liq/rescore": f"forced liquidations now known to {known.isoformat()}"},
                    )
                )
    return requests


@sensor(
    name="partial_scores_sensor",
    job_name="validation_job",
    minimum_interval_seconds=600,
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Rescores validation_scores partitions that were scored before the next day's forced liquidations were "
        "ingested (their backtests cover less than 24 h), once the lake has them."
    ),
)
def partial_scores_sensor(context: SensorEvaluationContext):
    requests = rescore_scan(Lake.at())
    return requests or SkipReason("no partial validation day has new forced liquidations")
