"""The BTC vs ETH validation report over every scored day in the lake (`liq validate-report` and asset metadata)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from liq_pipeline.lake import Lake
from liq_pipeline.validation.scores import report_markdown, summarise

SCORES_TABLE = "validation_scores"


def comparison_jsonl(lake: Lake) -> Path:
    """The seed's per-screenshot file: one JSON object per screenshot with symbol, captured_at and hit_rate."""
    return lake.root.parent / "validation" / "price_level_comparison.jsonl"


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


def validation_report(lake: Lake, extra: pd.DataFrame | None = None) -> str:
    df = all_scores(lake, extra)
    days = sorted(set(df["date"])) if len(df) else []
    span = f"{days[0]} .. {days[-1]}" if days else "no scored days yet"
    return f"Validation over {span}\n\n" + report_markdown(summarise(df))


def validate_report_cli(data_dir: str | None = None) -> int:
    print(validation_report(Lake.at(data_dir)))
    return 0
