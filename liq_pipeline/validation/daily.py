"""One symbol-day of validation as plain functions over DataFrames: the screenshots of that day, their scores
against our heatmap, and the backtest of our hourly zones against real forced liquidations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from pathlib import Path

import pandas as pd

from liq_pipeline.lake import Lake, LakeSlice
from liq_pipeline.live.partition import LiveInfo, covered_until, live_info
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
    """The day's `hourly_liquidation_scores` as one row (`kind` hourly_usd) over the whole hours whose forced
    liquidations are known."""
    start, full = pd.Timestamp(day), pd.Timestamp(day + timedelta(days=1))
    # A live recording may stop mid-hour: that hour is not known whole.
    end = min(known_until, full).floor("h")
    scores = hourly_liquidation_scores(predicted, liquidations, klines, start, end)
    return {
        "kind": "hourly_usd",
        "ts": start,
        "file": None,
        **scores,
        "horizon_end": end,
        "complete": end >= full,
    }


# A live recording that starts or pauses within this of a boundary is taken as seamless (`covered_until`'s rule).
LIVE_GAP_MS = 60_000
ARCHIVE_END_NOTE = (
    f"the archive publishes USDT-M forced liquidations up to {LIQUIDATION_SNAPSHOT_LAST_DAY} only"
)


@dataclass(frozen=True)
class TruthDay:
    """What one day's forced_liquidations partition can vouch for as ground truth.

    An archive partition (`live` False) is a whole day, empty or not, except an empty placeholder after the
    archive's end (no file exists: not a day without liquidations). A live partition holds only what the collector
    saw while its forceOrder stream was connected, so it vouches from midnight until `covered_until` (None: the
    recording did not start at midnight). `recorded_from` / `recorded_until`: the first and last recorded times,
    which say why the truth stops where it does."""

    rows: int
    live: bool = False
    covered_until: pd.Timestamp | None = None
    recorded_from: pd.Timestamp | None = None
    recorded_until: pd.Timestamp | None = None

    def end(self, day: date) -> pd.Timestamp | None:
        """Until when this partition of `day` is truth from midnight; None when it is none."""
        if not self.live:
            keep = self.rows > 0 or day <= LIQUIDATION_SNAPSHOT_LAST_DAY
            return pd.Timestamp(day + timedelta(days=1)) if keep else None
        return self.covered_until


def truth_days(forced: LakeSlice) -> dict[date, TruthDay]:
    """The `TruthDay` of each present day of a forced_liquidations slice, from the Parquet footers only."""
    out = {}
    for day, path in zip(forced.present, forced.files, strict=True):
        info = live_info(path)
        if info is None:  # replaced or deleted since the slice was taken: as if missing
            continue
        out[day] = _live_truth(day, info) if info.live else TruthDay(info.rows)
    return out


def _live_truth(day: date, info: LiveInfo) -> TruthDay:
    """A live partition's truth: covered from midnight until `covered_until`; a recording that reaches within
    `LIVE_GAP_MS` of the next midnight reaches it (the collector's coverage is cut at the day's end)."""
    midnight = pd.Timestamp(day + timedelta(days=1))
    until = covered_until(info.coverage, day, max_gap_ms=LIVE_GAP_MS)
    end = None if until is None else pd.Timestamp(until)
    if end is not None and end >= midnight - pd.Timedelta(milliseconds=LIVE_GAP_MS):
        end = midnight
    spans = sorted(info.coverage)
    first = pd.Timestamp(spans[0][0], unit="ms") if spans else None
    last = pd.Timestamp(max(e for _, e in spans), unit="ms") if spans else None
    return TruthDay(info.rows, live=True, covered_until=end, recorded_from=first, recorded_until=last)


def _as_truth(value: int | TruthDay) -> TruthDay:
    """Row counts (the archive-only form callers and tests pass) as archive `TruthDay`s."""
    return value if isinstance(value, TruthDay) else TruthDay(int(value))


def truth_horizon(day: date, truth: Mapping[date, int | TruthDay]) -> tuple[pd.Timestamp | None, date]:
    """How far forced liquidations after the start of `day` are known, and the day where that stops: the days from
    `day` whose partitions each vouch for their whole day chain on; the first that does not (missing, an archive
    placeholder, a live recording that is not seamless to midnight) ends the horizon where its own truth ends."""
    end, d = None, day
    while d in truth:
        reach = _as_truth(truth[d]).end(d)
        if reach is None:
            break
        end = reach
        d += timedelta(days=1)
        if reach < pd.Timestamp(d):
            return end, d - timedelta(days=1)
    return end, d


def ground_truth_end(day: date, truth: Mapping[date, int | TruthDay]) -> pd.Timestamp | None:
    """Until when forced liquidations after the start of `day` are known (`truth_horizon`); None when `day` itself
    gives none. `truth`: a `TruthDay` per present day (`truth_days`), or its row count for archive partitions."""
    return truth_horizon(day, truth)[0]


def why_truth_stops(stop: date, truth: Mapping[date, int | TruthDay]) -> tuple[str, bool]:
    """Why forced liquidations are not known past some time of `stop`, and whether that is final (nothing the
    lake can receive later would extend it: the stream cannot be replayed, the archive will not publish)."""
    if stop not in truth:
        return f"{stop}'s forced_liquidations partition is not in the lake yet", False
    t = _as_truth(truth[stop])
    if not t.live:
        return f"{stop} has no forced liquidations ({ARCHIVE_END_NOTE})", True
    if t.covered_until is None:
        since = f"only from {t.recorded_from:%H:%M}" if t.recorded_from is not None else "for none of the day"
        return (
            f"forced liquidations for {stop} were recorded live {since}; "
            "the backtest needs the whole horizon from midnight",
            True,
        )
    head = (
        f"forced liquidations for {stop} were recorded live without a gap only until {t.covered_until:%H:%M}"
    )
    if t.recorded_until is not None and t.recorded_until > t.covered_until:
        return f"{head} (the stream then missed some: it cannot be replayed)", True
    return head, False


def horizon_status(scores: pd.DataFrame, day: date, truth: Mapping[date, int | TruthDay]) -> str:
    """One line for the asset's metadata: whether every backtest covers its 24 hours and, if not, what to wait for."""
    backtests = scores[scores["kind"] == "backtest"] if len(scores) else scores
    if backtests.empty:
        return "no backtest"
    short = backtests[~backtests["complete"].astype(bool)]
    if short.empty:
        return f"complete: each of the {len(backtests)} backtests covers the 24 h after its snapshot"
    known, stop = truth_horizon(day, truth)
    head = (
        f"partial: {len(short)} of {len(backtests)} backtests cover less than 24 h (forced liquidations known "
        f"{'up to ' + str(known) if known is not None else 'for none of the horizon'})"
    )
    why, final = why_truth_stops(stop, truth)
    if final:
        return f"{head}; final: {why}"
    if stop in truth:  # a live recording still short of its day's end: rescored when it records more
        return f"{head}; {why} so far: rescored when the collector records further"
    return f"{head}; re-materialize after {stop}'s forced_liquidations is ingested"


def rescore_due(lake: Lake, symbol: str, day: date) -> pd.Timestamp | None:
    """Until when forced liquidations are now known, if the stored validation_scores partition of `symbol` on `day`
    is partial and the lake knows further than it was scored with (the next day's partition arrived, the collector
    recorded more of a live day, the archive replaced a live partition); None when nothing is due. A sensor
    re-materializes the partitions that answer a time; a re-scored partition then answers None."""
    if not lake.exists(SCORES_TABLE, symbol, day):
        return None
    stored = lake.read(SCORES_TABLE, symbol, [day]).to_pandas()
    if "complete" not in stored.columns:
        return None
    short = stored[(stored["kind"] == "backtest") & ~stored["complete"].astype(bool)]
    if short.empty:
        return None
    truth = truth_days(lake.slice("forced_liquidations", symbol, [day, day + timedelta(days=1)]))
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
    truth: Mapping[date, int | TruthDay] | None = None,
    predicted: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """The day's scores table, the per-screenshot rows (for the JSONL), and what could not be scored and why.

    `files` are the screenshots `coinglass_levels` read for this partition; they are read again here for their
    full intensity profiles, which that table does not keep. `truth`: the `TruthDay` (or, for archive partitions,
    the row count) of each forced_liquidations partition present among the day and the next (`truth_days`;
    default: archive days counted from `liquidations`' `date` column); it
    says how far the backtest's ground truth reaches (`ground_truth_end`), and `liquidations` are cut there, so rows
    a live partition holds after a gap in its recording are never compared. `predicted`: the model's
    predicted_liquidations of the day, scored hour by hour against the forced ones (one `hourly_usd` row).
    """
    shots = [s for s in read_day(folder, symbol, day, klines)[0] if s.path.name in files]
    rows = screenshot_scores(shots, heat, klines, price_bin, step)
    notes = []
    if not shots:
        notes.append("no Coinglass screenshot for this day: no hit rate")
    truth = truth if truth is not None else _rows_by_day(liquidations)
    known_until = ground_truth_end(day, truth)
    liquidations = known_part(liquidations, known_until)
    if known_until is None:
        notes.append(no_truth_note(day, truth))
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


def known_part(liquidations: pd.DataFrame | None, known_until: pd.Timestamp | None) -> pd.DataFrame | None:
    """The forced liquidations before `known_until` (none when nothing is known): a live partition may hold rows
    recorded after a gap in its stream, which must not be compared as if the gap had none."""
    if liquidations is None or "ts" not in liquidations.columns:
        return liquidations
    if known_until is None:
        return liquidations.iloc[:0]
    return liquidations[pd.to_datetime(liquidations["ts"]) < known_until]


def no_truth_note(day: date, truth: Mapping[date, int | TruthDay]) -> str:
    """Why the day has no ground truth at all, for the asset's `nothing to score`."""
    if day in truth and _as_truth(truth[day]).live:
        return why_truth_stops(day, truth)[0]
    return f"no forced liquidations for {day}: " + (
        ARCHIVE_END_NOTE if day in truth else "its forced_liquidations partition is not in the lake yet"
    )


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
