"""One symbol-day of validation as plain functions over DataFrames: the screenshots of that day, their scores
against our heatmap, and the backtest of our hourly zones against real forced liquidations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, timedelta
from pathlib import Path

import pandas as pd

from liq_pipeline.validation.scores import backtest_scores, coinglass_scores
from liq_pipeline.validation.screenshot import (
    NotAHeatmapError,
    ScreenshotName,
    ScreenshotReading,
    parse_screenshot_name,
    read_screenshot,
)

LEVEL_COLUMNS = ["captured_at", "file", "model", "timeframe", "price", "intensity", "usd", "rank"]


@dataclass
class Screenshot:
    path: Path
    name: ScreenshotName
    reading: ScreenshotReading


def read_day(folder: Path, symbol: str, day: date) -> tuple[list[Screenshot], list[str]]:
    """Every readable screenshot of `symbol` captured on `day` in `folder`, and why the others were skipped."""
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
            shots.append(Screenshot(path, name, read_screenshot(path)))
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
    """Each screenshot against our heatmap column that holds at its capture time (the last step ended by then)."""
    out = []
    for s in shots:
        when = pd.Timestamp(s.name.captured_at.astimezone(UTC).replace(tzinfo=None))
        base = {"kind": "coinglass", "ts": when, "file": s.path.name}
        steps = heat.loc[heat["ts"] + step <= when, "ts"]
        price = _close_at(klines, when)
        if steps.empty or price is None:
            out.append({**base, "reason": "no heatmap step or price at the capture time"})
            continue
        col = heat[heat["ts"] == steps.max()]
        scores = coinglass_scores(
            s.reading.levels, s.reading.profile, col["price"].to_numpy(), col["long_usd"].to_numpy(),
            col["short_usd"].to_numpy(), price, price_bin, price_range=s.reading.price_range,
        )
        out.append({**base, **scores})
    return out


def backtest(levels: pd.DataFrame, klines: pd.DataFrame, liquidations: pd.DataFrame, price_bin: float) -> list[dict]:
    """Our zones at each hour of the day against the real forced liquidations of the next 24 hours, beside a naive
    baseline of equally wide zones spread over the range price travelled in the 24 hours before."""
    out = []
    for ts, zones in levels.groupby("ts", sort=True):
        window = klines[(klines["open_time"] >= ts - pd.Timedelta(hours=24)) & (klines["open_time"] < ts)]
        if window.empty:
            continue
        scores = backtest_scores(
            zones.to_dict("records"), liquidations, t0=ts, price_bin=price_bin,
            price_range=(float(window["low"].min()), float(window["high"].max())),
            current_price=float(zones["current_price"].iloc[0]),
        )
        out.append({"kind": "backtest", "ts": ts, "file": None, **scores})
    return out


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
) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """The day's scores table, the per-screenshot rows (for the JSONL), and what could not be scored and why.

    `files` are the screenshots `coinglass_levels` read for this partition; they are read again here for their
    full intensity profiles, which that table does not keep.
    """
    shots = [s for s in read_day(folder, symbol, day)[0] if s.path.name in files]
    rows = screenshot_scores(shots, heat, klines, price_bin, step)
    notes = []
    if not shots:
        notes.append("no Coinglass screenshot for this day: no hit rate")
    if liquidations is None or not len(liquidations):
        notes.append("no forced liquidations for this day (the archive ends 2024-03-31): no backtest")
    else:
        rows += backtest(levels, klines, liquidations, price_bin)
    return scores_frame(rows, symbol, day), [r for r in rows if r["kind"] == "coinglass"], notes


def scores_frame(rows: list[dict], symbol: str, day: date) -> pd.DataFrame:
    """The partition's scores as a table: one row per screenshot (`kind` coinglass) and per hourly backtest
    (`kind` backtest). Nested values (per-score reasons) are dropped; a score with no observations is null."""
    flat = [{k: v for k, v in r.items() if not isinstance(v, list | dict | tuple)} for r in rows]
    df = pd.DataFrame(flat, columns=None if flat else ["kind", "ts", "file", "reason"])
    for col in df.columns:
        if col in ("kind", "file", "reason", "ts") or df[col].dtype != object:
            continue
        try:
            df[col] = pd.to_numeric(df[col])
        except (TypeError, ValueError):
            df[col] = df[col].map(lambda v: None if v is None else str(v))
    df["ts"] = pd.to_datetime(df["ts"])
    df.insert(0, "symbol", symbol)
    df.insert(1, "date", day)
    return df
