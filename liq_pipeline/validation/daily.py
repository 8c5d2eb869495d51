"""One symbol-day of validation as plain functions over DataFrames: the screenshots of that day, their scores
against our heatmap, and the backtest of our hourly zones against real forced liquidations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from pathlib import Path

import pandas as pd

from liq_pipeline.lake import Lake
from liq_pipeline.sources.archive import LIQUIDATION_SNAPSHOT_LAST_DAY
from liq_pipeline.validation.scores import (
    DEFAULT_HORIZON_HOURS,
    backtest_scores,
    coinglass_scores,
    hourly_liquidation_scores,
    reached_price_recall,
)
from liq_pipeline.validation.screenshot import (
    NotAHeatmapError,
    ScreenshotName,
    ScreenshotReading,
    UnreliableReadingError,
    cross_check,
    parse_screenshot_name,
    read_screenshot,
)

LEVEL_COLUMNS = ["captured_at", "file", "model", "timeframe", "price", "intensity", "usd", "rank"]
SCORES_TABLE = "validation_scores"
HORIZON = pd.Timedelta(hours=DEFAULT_HORIZON_HOURS)


@dataclass
class Screenshot:
    path: Path
    name: ScreenshotName
    reading: ScreenshotReading


def read_day(
    folder: Path, symbol: str, day: date, klines: pd.DataFrame | None = None
) -> tuple[list[Screenshot], list[str]]:
    """Every readable screenshot of `symbol` captured on `day` in `folder`, and why the others were skipped.

    With `klines` (the day's and the previous day's 1m klines), a screenshot whose price axis disagrees with the
    prices traded over its chart's window is skipped too (`cross_check`); one with no klines there is kept."""
    shots, skipped = [], []
    if not folder.is_dir():
        return shots, [f"{folder}: screenshot folder does not exist (set LIQ_SCREENSHOT_DIR)"]
    for path in sorted(folder.glob("*.png")):
        try:
            name = parse_screenshot_name(path.name)
        except ValueError:
            continue  # not a Coinglass capture name: not ours to judge here (the sensor logs it)
        if name.symbol != symbol or name.captured_at.date() != day:
            continue
        try:
            reading = read_screenshot(path)
            if klines is not None:
                cross_check(reading, name, klines)
            shots.append(Screenshot(path, name, reading))
        except UnreliableReadingError as exc:
            skipped.append(str(exc))  # names the file already
        except NotAHeatmapError as exc:
            skipped.append(f"{path.name}: {exc}")
    return shots, skipped


def levels_frame(shots: list[Screenshot]) -> pd.DataFrame:
    rows = [
        {
            "captured_at": s.name.captured_at.replace(tzinfo=None),
            "file": s.path.name,
            "model": s.name.model,
            "timeframe": s.name.timeframe,
            "price": lv.price,
            "intensity": lv.intensity,
            "usd": lv.usd,
            "rank": rank,
        }
        for s in shots
        for rank, lv in enumerate(s.reading.levels, start=1)
    ]
    df = pd.DataFrame(rows, columns=LEVEL_COLUMNS)
    return df.astype({"price": float, "intensity": float, "usd": float, "rank": "int32"})


def _close_at(klines: pd.DataFrame, when: pd.Timestamp) -> float | None:
    before = klines[klines["open_time"] < when]
    return float(before["close"].iloc[-1]) if len(before) else None


def screenshot_scores(
    shots: list[Screenshot], heat: pd.DataFrame, klines: pd.DataFrame, price_bin: float, step: timedelta
) -> list[dict]:
    """Each screenshot against our state at its capture time: the last step ended by then, on the model's step
    grid (`as_of` is a multiple of `step`). The model writes only non-empty cells, so that state may have no rows:
    it is then empty, not the last state that had rows."""
    out = []
    first = heat["as_of"].min() if len(heat) else None
    for s in shots:
        when = pd.Timestamp(s.name.captured_at.astimezone(UTC).replace(tzinfo=None))
        base = {"kind": "coinglass", "ts": when, "file": s.path.name}
        as_of = when.floor(step)
        price = _close_at(klines, when)
        if first is None or as_of < first or price is None:
            out.append({**base, "reason": "no heatmap step or price at the capture time"})
            continue
        col = heat[heat["as_of"] == as_of]
        scores = coinglass_scores(
            s.reading.levels,
            s.reading.profile,
            col["price"].to_numpy(),
            col["long_usd"].to_numpy(),
            col["short_usd"].to_numpy(),
            price,
            price_bin,
            price_range=s.reading.price_range,
        )
        out.append({**base, **scores})
    return out


def backtest(
    levels: pd.DataFrame,
    klines: pd.DataFrame,
    liquidations: pd.DataFrame | None,
    price_bin: float,
    known_until: pd.Timestamp | None,
    heat: pd.DataFrame | None = None,
) -> list[dict]:
    """Our zones at each hour of the day against the real forced liquidations of the next 24 hours, beside a naive
    baseline of equally wide zones spread over the range price travelled in the 24 hours before. With `heat`, each
    row also carries `reached_scores`: the whole map at that hour against the prices liquidations reached.

    Forced liquidations are known up to `known_until` (None: not at all, see `ground_truth_end`). A snapshot whose
    24 hours run past it is scored on the part that is known: `horizon_end` is the end of the window actually
    scored, `complete` says whether it is the full 24 hours. So a score depends only on what is in the lake, and a
    re-run after the next day arrives gives the complete one."""
    out = []
    for ts, zones in levels.groupby("as_of", sort=True):
        window = klines[(klines["open_time"] >= ts - pd.Timedelta(hours=24)) & (klines["open_time"] < ts)]
        if window.empty:
            continue
        full = ts + HORIZON
        end = ts if known_until is None else min(max(known_until, ts), full)
        scores = backtest_scores(
            zones.to_dict("records"),
            liquidations,
            t0=ts,
            price_bin=price_bin,
            horizon_hours=(end - ts) / pd.Timedelta(hours=1),
            price_range=(float(window["low"].min()), float(window["high"].max())),
            current_price=float(zones["current_price"].iloc[0]),
        )
        row = {
            "kind": "backtest",
            "ts": ts,
            "file": None,
            **scores,
            "horizon_end": end,
            "complete": end >= full,
        }
        if heat is not None:
            row.update(reached_scores(heat, ts, end, klines, liquidations, price_bin, row["reason"]))
        out.append(row)
    return out


def reached_scores(
    heat: pd.DataFrame,
    ts: pd.Timestamp,
    end: pd.Timestamp,
    klines: pd.DataFrame,
    liquidations: pd.DataFrame | None,
    price_bin: float,
    reason: str | None,
) -> dict:
    """`reached_price_recall` of the map at `ts` (the last state at or before it) against the liquidations in
    (ts, end], as backtest columns; the range reached is the klines' low..high in the window, as far as known."""
    states = heat[heat["as_of"] <= ts]
    col = states[states["as_of"] == states["as_of"].max()] if len(states) else states
    window = klines[(klines["open_time"] >= ts) & (klines["open_time"] < end)]
    reach = (float(window["low"].min()), float(window["high"].max())) if len(window) else None
    # No state at or before ts (or none with mass): an empty map, which catches nothing.
    cells = [col[c].to_numpy() if len(col) else [] for c in ("price", "long_usd", "short_usd")]
    r = reached_price_recall(
        *cells,
        liquidations,
        price_bin=price_bin,
        after=ts,
        until=end,
        price_range=reach,
    )
    why = "; ".join(f"reached_{k}: {v}" for k, v in r["reasons"].items())
    return {
        "reached_recall": r["recall"],
        "baseline_reached_recall": r["baseline_recall"],
        "mass_coverage": r["mass_coverage"],
        "n_reached_liquidations": r["n_liquidations"],
        "reached_usd": r["liquidated_usd"],
        "reason": "; ".join(x for x in (reason, why) if x) or None,
    }


def hourly_row(
    predicted: pd.DataFrame,
    liquidations: pd.DataFrame | None,
    klines: pd.DataFrame,
    day: date,
    known_until: pd.Timestamp,
) -> dict:
    """The day's `hourly_liquidation_scores` as one row (`kind` hourly_usd) over the hours whose forced
    liquidations are known."""
    start, full = pd.Timestamp(day), pd.Timestamp(day + timedelta(days=1))
    end = min(known_until, full)
    scores = hourly_liquidation_scores(predicted, liquidations, klines, start, end)
    return {
        "kind": "hourly_usd",
        "ts": start,
        "file": None,
        **scores,
        "horizon_end": end,
        "complete": end >= full,
    }


def ground_truth_end(day: date, rows_by_day: Mapping[date, int]) -> pd.Timestamp | None:
    """Until when forced liquidations after the start of `day` are known: the end of the last of the consecutive
    days from `day` whose forced_liquidations partition is in the lake (`rows_by_day`: rows per present day). None
    when `day` itself has none. An empty partition after the archive's end is no ground truth (the archive has no
    file for that day), not a day without liquidations."""
    end, d = None, day
    while d in rows_by_day and (rows_by_day[d] > 0 or d <= LIQUIDATION_SNAPSHOT_LAST_DAY):
        d += timedelta(days=1)
        end = pd.Timestamp(d)
    return end


def horizon_status(scores: pd.DataFrame, day: date, rows_by_day: Mapping[date, int]) -> str:
    """One line for the asset's metadata: whether every backtest covers its 24 hours and, if not, what to wait for."""
    backtests = scores[scores["kind"] == "backtest"] if len(scores) else scores
    if backtests.empty:
        return "no backtest"
    short = backtests[~backtests["complete"].astype(bool)]
    if short.empty:
        return f"complete: each of the {len(backtests)} backtests covers the 24 h after its snapshot"
    known = ground_truth_end(day, rows_by_day)
    first_missing = known.date() if known is not None else day
    head = (
        f"partial: {len(short)} of {len(backtests)} backtests cover less than 24 h (forced liquidations known "
        f"{'up to ' + str(known) if known is not None else 'for none of the horizon'})"
    )
    end = f"the archive publishes USDT-M forced liquidations up to {LIQUIDATION_SNAPSHOT_LAST_DAY} only"
    if first_missing in rows_by_day:  # present but empty after the archive's end: nothing more will come
        return f"{head}; final: {first_missing} has no forced liquidations ({end})"
    return f"{head}; re-materialize after {first_missing}'s forced_liquidations is ingested"


def rescore_due(lake: Lake, symbol: str, day: date) -> pd.Timestamp | None:
    """Until when forced liquidations are now known, if the stored validation_scores partition of `symbol` on `day`
    is partial and the lake knows further than it was scored with (typically: the next day's partition arrived);
    None when nothing is due. A sensor re-materializes the partitions that answer a time; a re-scored partition
    then answers None."""
    if not lake.exists(SCORES_TABLE, symbol, day):
        return None
    stored = lake.read(SCORES_TABLE, symbol, [day]).to_pandas()
    if "complete" not in stored.columns:
        return None
    short = stored[(stored["kind"] == "backtest") & ~stored["complete"].astype(bool)]
    if short.empty:
        return None
    truth = lake.slice("forced_liquidations", symbol, [day, day + timedelta(days=1)]).rows_by_day()
    known = ground_truth_end(day, truth)
    return known if known is not None and bool((short["horizon_end"] < known).any()) else None


def score_day(
    folder: Path,
    symbol: str,
    day: date,
    files: set[str],
    heat: pd.DataFrame,
    klines: pd.DataFrame,
    levels: pd.DataFrame,
    liquidations: pd.DataFrame | None,
    price_bin: float,
    step: timedelta = timedelta(minutes=5),
    liquidation_rows: Mapping[date, int] | None = None,
    predicted: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """The day's scores table, the per-screenshot rows (for the JSONL), and what could not be scored and why.

    `files` are the screenshots `coinglass_levels` read for this partition; they are read again here for their
    full intensity profiles, which that table does not keep. `liquidation_rows`: rows of each forced_liquidations
    partition present among the day and the next (default: counted from `liquidations`' `date` column); it says
    how far the backtest's ground truth reaches (`ground_truth_end`). `predicted`: the model's
    predicted_liquidations of the day, scored hour by hour against the forced ones (one `hourly_usd` row).
    """
    shots = [s for s in read_day(folder, symbol, day, klines)[0] if s.path.name in files]
    rows = screenshot_scores(shots, heat, klines, price_bin, step)
    notes = []
    if not shots:
        notes.append("no Coinglass screenshot for this day: no hit rate")
    if liquidation_rows is None:
        liquidation_rows = _rows_by_day(liquidations)
    known_until = ground_truth_end(day, liquidation_rows)
    if known_until is None:
        notes.append(
            f"no forced liquidations for {day}: "
            + (
                f"the archive publishes USDT-M forced liquidations up to {LIQUIDATION_SNAPSHOT_LAST_DAY} only"
                if day in liquidation_rows
                else "its forced_liquidations partition is not in the lake yet"
            )
        )
    if levels.empty:
        notes.append(f"no liquidation_levels for {day}: no backtest")
    else:
        rows += backtest(levels, klines, liquidations, price_bin, known_until, heat)
    if predicted is None:
        notes.append(f"no predicted_liquidations for {day}: no hourly correlation")
    elif known_until is not None:
        rows.append(hourly_row(predicted, liquidations, klines, day, known_until))
    for r in rows:
        r.setdefault("horizon_end", None)  # a screenshot's score does not depend on what comes after it
        r.setdefault("complete", True)
    return scores_frame(rows, symbol, day), [r for r in rows if r["kind"] == "coinglass"], notes


def _rows_by_day(liquidations: pd.DataFrame | None) -> dict[date, int]:
    if liquidations is None or "date" not in liquidations.columns:
        return {}
    return {pd.Timestamp(d).date(): int(n) for d, n in liquidations["date"].value_counts().items()}


def scores_frame(rows: list[dict], symbol: str, day: date) -> pd.DataFrame:
    """The partition's scores as a table: one row per screenshot (`kind` coinglass), per hourly backtest
    (`kind` backtest) and one for the day's predicted against forced USD hour by hour (`kind` hourly_usd). Nested values (per-score reasons) are dropped; a score with no observations is null."""
    flat = [{k: v for k, v in r.items() if not isinstance(v, list | dict | tuple)} for r in rows]
    df = pd.DataFrame(
        flat, columns=None if flat else ["kind", "ts", "file", "reason", "horizon_end", "complete"]
    )
    for col in df.columns:
        if col in ("kind", "file", "reason", "ts", "horizon_end", "complete") or df[col].dtype != object:
            continue
        try:
            df[col] = pd.to_numeric(df[col])
        except (TypeError, ValueError):
            df[col] = df[col].map(lambda v: None if v is None else str(v))
    df["ts"] = pd.to_datetime(df["ts"])
    df["horizon_end"] = pd.to_datetime(df["horizon_end"])
    df["complete"] = df["complete"].astype(bool)
    df.insert(0, "symbol", symbol)
    df.insert(1, "date", day)
    return df
