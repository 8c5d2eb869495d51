"""The BTC vs ETH validation report over every scored day in the lake (`liq validate-report` and asset metadata).

It leads with the scores of what the model claims (predicted liquidated USD hour by hour, and model mass at the
prices liquidations reached), each beside a baseline that knows only the price path and its observation count; then
the Coinglass scores and precision@k. The days each symbol covers are listed, and forced liquidations are counted
once each: the hourly backtests' 24-hour windows overlap, so the sum of their counts would count one order up to 24
times."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from liq_pipeline.lake import Lake
from liq_pipeline.validation.scores import NA, relative_delta_pct, summarise

SCORES_TABLE = "validation_scores"
SYMBOLS = ("BTCUSDT", "ETHUSDT")
# metric column, label, its baseline's column (None: no baseline)
SCORE_ROWS = (
    ("hit_rate", "hit_rate (Coinglass levels we match)", None),
    ("precision", "precision (our zones Coinglass shows)", None),
    ("rank_correlation", "rank correlation of profiles", None),
    ("precision_at_k", "precision@k (zones that saw forced liquidations)", "baseline_precision_at_k"),
    ("recall", "recall (liquidated USD in our zones)", "baseline_recall"),
)
# What the model claims: metric column, label, its baseline's column (None: no baseline), observations
CLAIM_ROWS = (
    ("corr_long", "hourly correlation, longs (predicted vs forced USD)", "baseline_corr_long", "hours_long"),
    (
        "corr_short",
        "hourly correlation, shorts (predicted vs forced USD)",
        "baseline_corr_short",
        "hours_short",
    ),
    ("usd_ratio_long", "predicted / forced USD, longs", None, "hours_long"),
    ("usd_ratio_short", "predicted / forced USD, shorts", None, "hours_short"),
    (
        "reached_recall",
        "reached-price recall (USD where the map had mass)",
        "baseline_reached_recall",
        "maps",
    ),
    ("mass_coverage", "share of the reached range with map mass", None, "maps"),
)
CLAIMS_NOTE = (
    "hourly correlation: Pearson, over each day's hours, of the USD the model says was liquidated "
    "(predicted_liquidations) and the forced liquidations' USD, per side; days are averaged weighted by their hours. "
    "Its baseline knows only the price path: each hour's move against the side ((open - low) / open for longs, "
    "(high - open) / open for shorts). predicted / forced USD: ratio of the totals (1.0 = the right volume). "
    "reached-price recall: of the USD liquidated in the 24 h after each hourly map (as far as known), the share at prices where the "
    "map had mass of the same side within 0.25 %; its baseline is the share of the range price reached that the "
    "map's mass of each side covers, i.e. what a map as wide, placed without knowing where liquidations fall, "
    "would catch. The model adds information only where a score beats its baseline."
)
PRECISION_NOTE = (
    "precision@k measures something narrower: the share of our k strongest zones that a forced liquidation of "
    "their side touched within 24 h. It punishes zones far from price (rarely reached in a day, yet where 5x-10x "
    "positions sit), so zones spread near price can beat a good map on it."
)
COUNT_ROWS = (
    ("n_screenshots", "screenshots"),
    ("n_backtests", "hourly backtests"),
    ("distinct_liquidations", "forced liquidations (distinct)"),
)


def comparison_jsonl(lake: Lake) -> Path:
    """The seed's per-screenshot file: one JSON object per screenshot with symbol, captured_at and hit_rate."""
    return lake.local / "validation" / "price_level_comparison.jsonl"


def all_scores(lake: Lake, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every partition of validation_scores in the lake; `extra` (a partition being written) replaces its own."""
    frames = []
    for symbol, days in lake.symbol_dates(SCORES_TABLE).items():
        # Days differ in columns (a day without screenshots has no hit-rate columns): concatenate in pandas.
        frames += [lake.read(SCORES_TABLE, symbol, [day]).to_pandas() for day in days]
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if extra is not None and len(extra):
        if len(df):
            same = (df["symbol"] == extra["symbol"].iloc[0]) & (df["date"] == extra["date"].iloc[0])
            df = df[~same]
        df = pd.concat([df, extra], ignore_index=True)
    return df


def _naive_utc(values: pd.Series) -> pd.Series:
    """Timestamps as naive UTC, the lake's convention, whether they come aware or not."""
    ts = pd.to_datetime(values)
    return ts.dt.tz_convert("UTC").dt.tz_localize(None) if ts.dt.tz is not None else ts


def backtest_windows(scores: pd.DataFrame) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The union of the backtests' scored windows `(ts, horizon_end]`, as disjoint intervals in time order."""
    if scores.empty or not {"kind", "horizon_end"} <= set(scores.columns):
        return []  # scores written before backtests recorded their horizon: nothing to count
    bt = scores[(scores["kind"] == "backtest") & scores["horizon_end"].notna()]
    merged: list[list[pd.Timestamp]] = []
    for start, end in sorted(zip(_naive_utc(bt["ts"]), _naive_utc(bt["horizon_end"]), strict=True)):
        if end <= start:
            continue  # nothing known after the snapshot: nothing scored
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def distinct_liquidations(
    lake: Lake, symbol: str, windows: Sequence[tuple[pd.Timestamp, pd.Timestamp]]
) -> int:
    """How many forced liquidation orders of `symbol` in the lake fall in any of `windows` (each counted once)."""
    if not windows:
        return 0
    first, last = windows[0][0].date(), windows[-1][1].date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    present = [d for d in days if lake.exists("forced_liquidations", symbol, d)]
    if not present:
        return 0
    ts = _naive_utc(
        lake.read("forced_liquidations", symbol, present, columns=["ts"]).column("ts").to_pandas()
    )
    hit = np.zeros(len(ts), dtype=bool)
    for start, end in windows:
        hit |= ((ts > start) & (ts <= end)).to_numpy()
    return int(hit.sum())


def day_ranges(days: Sequence[date]) -> str:
    """`2024-12-26 .. 2024-12-28, 2024-12-30`: consecutive days as one range."""
    runs: list[list[date]] = []
    for d in sorted(set(days)):
        if runs and d - runs[-1][1] == timedelta(days=1):
            runs[-1][1] = d
        else:
            runs.append([d, d])
    return ", ".join(str(a) if a == b else f"{a} .. {b}" for a, b in runs)


def coverage_line(scores: pd.DataFrame, symbol: str) -> str:
    """Which days a symbol's scores cover, and how many of its backtests reach their full 24 hours."""
    mine = scores[scores["symbol"] == symbol] if len(scores) else scores
    if mine.empty:
        return f"- {symbol}: no scored day"
    days = [pd.Timestamp(d).date() for d in mine["date"].unique()]
    bt = mine[mine["kind"] == "backtest"]
    complete = int(bt["complete"].astype(bool).sum()) if len(bt) and "complete" in bt.columns else 0
    return (
        f"- {symbol}: {day_ranges(days)} ({len(days)} day{'s' * (len(days) != 1)}); "
        f"{complete} of {len(bt)} backtests cover their full 24 h"
    )


def _fmt(value, count: bool = False) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return NA
    return f"{int(round(value)):,}" if count else f"{value:.3f}"


def _delta(a, b) -> str:
    d = relative_delta_pct(a, b)
    if d is None:
        return NA if _fmt(a) == NA or _fmt(b) == NA else "n/a (mean is 0)"
    return f"{d:.1f} %"


def _observations(rec: dict, kind: str) -> str:
    """The count a claim score was computed from, as the report shows it."""
    if kind == "maps":
        n = rec.get("n_reached_maps")
        return NA if not n else f"{int(n):,} maps"
    side = kind.removeprefix("hours_")
    hours, orders = rec.get("n_hours"), rec.get(f"n_liquidations_{side}")
    return NA if not hours else f"{int(hours):,} h, {int(orders or 0):,} orders"


def claims_table(summary: pd.DataFrame, symbols: Sequence[str] = SYMBOLS) -> str:
    """Markdown: the scores of what the model claims, each symbol's score with its baseline and observations."""
    recs = {r["symbol"]: r for r in summary.to_dict("records")} if len(summary) else {}
    a, b = (recs.get(s, {}) for s in symbols)
    lines = [
        f"| score | {symbols[0]} | baseline | observations | {symbols[1]} | baseline | observations |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for col, label, base, obs in CLAIM_ROWS:
        cells = []
        for rec in (a, b):
            cells += [
                _fmt(rec.get(col)),
                "—" if base is None else _fmt(rec.get(base)),
                _observations(rec, obs),
            ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_table(summary: pd.DataFrame, symbols: Sequence[str] = SYMBOLS) -> str:
    """Markdown: one line per metric, each symbol's score with its baseline beside it, and their delta in %."""
    recs = {r["symbol"]: r for r in summary.to_dict("records")} if len(summary) else {}
    a, b = (recs.get(s, {}) for s in symbols)
    lines = [
        f"| metric | {symbols[0]} | baseline | {symbols[1]} | baseline | delta % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for col, label, base in SCORE_ROWS:
        ba, bb = ("—", "—") if base is None else (_fmt(a.get(base)), _fmt(b.get(base)))
        lines.append(
            f"| {label} | {_fmt(a.get(col))} | {ba} | {_fmt(b.get(col))} | {bb} | {_delta(a.get(col), b.get(col))} |"
        )
    for col, label in COUNT_ROWS:
        va, vb = a.get(col), b.get(col)
        lines.append(f"| {label} | {_fmt(va, True)} | | {_fmt(vb, True)} | | {_delta(va, vb)} |")
    return "\n".join(lines)


def validation_report(lake: Lake, extra: pd.DataFrame | None = None, symbols: Sequence[str] = SYMBOLS) -> str:
    df = all_scores(lake, extra)
    summary = summarise(df)
    if len(summary):
        summary["distinct_liquidations"] = [
            distinct_liquidations(lake, s, backtest_windows(df[df["symbol"] == s])) for s in summary["symbol"]
        ]
    coverage = "\n".join(coverage_line(df, s) for s in symbols)
    return (
        f"Validation, {symbols[0]} vs {symbols[1]}. Days scored:\n{coverage}\n\n"
        f"What the model claims, against forced liquidations:\n\n{claims_table(summary, symbols)}\n\n"
        f"{CLAIMS_NOTE}\n\nCoinglass screenshots and zones:\n\n{report_table(summary, symbols)}\n\n"
        f"{PRECISION_NOTE} Its baseline, and recall's: equally wide zones spread over the range price travelled in "
        "the 24 h before. Forced liquidations are the distinct orders inside the backtests' 24-hour windows. "
        "delta % = |a - b| / mean(a, b) x 100. Scores are averaged weighted by their observation counts. Target: "
        "hit_rate > 0.60.\n"
    )


def validate_report_cli(data_dir: str | None = None) -> int:
    print(validation_report(Lake.at(data_dir)))
    return 0
