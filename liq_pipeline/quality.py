"""Data-quality rules for the raw tables, as plain functions over Arrow tables (the Dagster checks wrap them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Verdict:
    passed: bool
    detail: str
    metadata: dict = field(default_factory=dict)


def _ts(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table[column].combine_chunks().cast(pa.timestamp("us")).cast(pa.int64()))


def max_gap(table: pa.Table, column: str, day: date, limit: timedelta) -> Verdict:
    """The longest stretch of the day with no row, counting from midnight and up to the next midnight."""
    start = int(datetime.combine(day, time()).timestamp() * 1e6)
    edges = np.concatenate(([start], np.sort(_ts(table, column)), [start + 86_400_000_000]))
    gap = timedelta(microseconds=int(np.diff(edges).max()))
    return Verdict(gap <= limit, f"longest gap {gap} (limit {limit})", {"max_gap_seconds": gap.total_seconds()})


def inside_day(table: pa.Table, column: str, day: date) -> Verdict:
    if table.num_rows == 0:
        return Verdict(True, "no rows")
    ts = _ts(table, column)
    start = int(datetime.combine(day, time()).timestamp() * 1e6)
    outside = int(((ts < start) | (ts >= start + 86_400_000_000)).sum())
    return Verdict(outside == 0, f"{outside} rows outside {day}", {"rows_outside": outside})


def unique(table: pa.Table, column: str) -> Verdict:
    n_unique = pc.count_distinct(table[column]).as_py() if table.num_rows else 0
    dupes = table.num_rows - n_unique
    return Verdict(dupes == 0, f"{dupes} duplicate {column} values", {"duplicates": dupes})


def positive(table: pa.Table, columns: list[str]) -> Verdict:
    bad = sum(int(pc.sum(pc.less_equal(table[c], 0)).as_py() or 0) for c in columns) if table.num_rows else 0
    return Verdict(bad == 0 and table.num_rows > 0, f"{bad} non-positive values in {columns}", {"non_positive": bad})
