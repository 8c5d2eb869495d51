"""Live partitions: today's rows from Binance's streams, in the lake's own tables, and how readers tell them apart.

A live partition is an ordinary lake partition (same path, columns and types as the archive's ingest) whose Parquet
metadata says `liq_source = live` and records when the stream that fed it was connected (`liq_live_coverage`: a
JSON list of `[start_ms, end_ms]` intervals inside the partition's day). The collector commits a chunk by rewriting
the partition whole through `Lake.write` (temporary file, then `os.replace`): a reader sees the partition before or
after the chunk, never half of it, and a restart reads it back and goes on from its newest row without duplicates.

The archive is the truth: a partition that the archive's ingest wrote is never touched by the collector
(`ArchiveOwnedError`), and the archive's file replaces a live partition when the day is published.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from liq_pipeline import staleness
from liq_pipeline.formats import FORMATS
from liq_pipeline.formats.binance import sort_unique
from liq_pipeline.lake import Lake, column_max, uri
from liq_pipeline.sources.archive import LIVE_SOURCE, SOURCE_KEY, empty_table

COVERAGE_KEY = b"liq_live_coverage"
Interval = tuple[int, int]  # [start_ms, end_ms) UTC


class ArchiveOwnedError(RuntimeError):
    """The partition holds the archive's rows: live rows must not replace them."""


def day_of(ms: int) -> date:
    """The UTC day of a time in ms since the epoch."""
    return date(1970, 1, 1) + timedelta(days=ms // 86_400_000)


def day_bounds_ms(day: date) -> Interval:
    start = int(datetime.combine(day, time(), UTC).timestamp() * 1000)
    return start, start + 86_400_000


def merge_intervals(intervals: list[Interval], join_ms: int = 0) -> list[Interval]:
    """Sorted, non-overlapping intervals; two that are at most `join_ms` apart become one."""
    out: list[list[int]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1] + join_ms:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


@dataclass(frozen=True)
class LiveInfo:
    """What a partition's footer says about its liveness (nothing is read but the footer)."""

    live: bool
    coverage: list[Interval]  # empty unless live
    rows: int


def live_info(path: Path) -> LiveInfo | None:
    """None when the partition does not exist."""
    if not path.exists():
        return None
    meta = pq.read_schema(uri(path)).metadata or {}
    live = meta.get(SOURCE_KEY) == LIVE_SOURCE.encode()
    coverage = [tuple(x) for x in json.loads(meta.get(COVERAGE_KEY, b"[]"))] if live else []
    return LiveInfo(live, coverage, pq.ParquetFile(uri(path)).metadata.num_rows)


def covered_until(coverage: list[Interval], day: date, max_gap_ms: int = 60_000) -> datetime | None:
    """Until when a live partition of `day` saw everything from the day's start: the end of the coverage that
    starts within `max_gap_ms` of midnight and has no gap longer than that. None if it starts later (the collector
    was not running at midnight). Naive UTC, like the lake's timestamps."""
    start, _ = day_bounds_ms(day)
    spans = merge_intervals(coverage, join_ms=max_gap_ms)
    if not spans or spans[0][0] > start + max_gap_ms:
        return None
    return datetime.fromtimestamp(spans[0][1] / 1000, UTC).replace(tzinfo=None)


class LivePartition:
    """One `table|symbol|day` partition being collected: the rows committed so far (read back from the lake on
    start), the rows waiting for the next commit, and the stream's coverage."""

    def __init__(self, lake: Lake, table: str, symbol: str, day: date):
        self.lake, self.table, self.symbol, self.day = lake, table, symbol, day
        self.fmt = FORMATS[table]
        self.path = lake.partition_file(table, symbol, day)
        info = live_info(self.path)
        if info is not None and not info.live:
            raise ArchiveOwnedError(
                f"{table} {day}|{symbol} already holds the archive's rows ({self.path}); live rows are not "
                "written over the archive"
            )
        self.schema = empty_table(
            self.fmt, symbol, day
        ).schema  # Parquet gives the dictionary column back as string
        self.committed: pa.Table | None = pq.read_table(uri(self.path)).cast(self.schema) if info else None
        self.coverage: list[Interval] = list(info.coverage) if info else []
        self.pending: list[pa.Table] = []
        self.dirty = False  # rows or coverage not yet committed

    def _archive_owned(self, path: Path) -> None:
        """Run under the partition's lock by `Lake.write`: refuse if the archive's ingest replaced it meanwhile."""
        info = live_info(path)
        if info is not None and not info.live:
            raise ArchiveOwnedError(
                f"{self.table} {self.day}|{self.symbol}: the archive's file replaced the live partition; its rows "
                "are the truth and stay"
            )

    def add(self, rows: pa.Table) -> None:
        if rows.num_rows:
            self.pending.append(rows)
            self.dirty = True

    def cover(self, start_ms: int, end_ms: int) -> None:
        """Record that the stream feeding this table was connected over [start_ms, end_ms), clipped to the day."""
        lo, hi = day_bounds_ms(self.day)
        start, end = max(start_ms, lo), min(end_ms, hi)
        if end > start:
            coverage = merge_intervals([*self.coverage, (start, end)])
            self.dirty |= coverage != self.coverage
            self.coverage = coverage

    def commit(self) -> int:
        """Write committed + pending rows as the partition, sorted by key and without repeats, in one atomic
        replace. Returns the rows added. A partition without rows is written too once it has coverage: the stream
        was connected and nothing happened (no forced liquidation is a fact). Refuses (ArchiveOwnedError) if the
        archive's file has replaced the partition since it was read."""
        if not self.dirty:
            return 0
        parts = ([self.committed] if self.committed is not None else []) + [
            t.cast(self.schema) for t in self.pending
        ]
        # DuckDB's DISTINCT (forced liquidations have no id) gives the dictionary column back as string too
        merged = sort_unique(pa.concat_tables([self.schema.empty_table(), *parts]), self.fmt.key).cast(
            self.schema
        )
        before = self.committed.num_rows if self.committed is not None else 0
        metadata = {
            SOURCE_KEY: LIVE_SOURCE.encode(),
            COVERAGE_KEY: json.dumps([list(x) for x in self.coverage]).encode(),
        }
        table, _ = staleness.with_fingerprint(merged.replace_schema_metadata(metadata))
        self.lake.write(self.table, self.symbol, self.day, table, unless=self._archive_owned)
        self.committed, self.pending, self.dirty = table, [], False
        return table.num_rows - before


def newest_live_rows(lake: Lake, symbols: list[str], now: datetime | None = None) -> dict[str, dict]:
    """Per symbol, the newest live row of today's (and yesterday's) partitions and its age: what `/health` shows.
    Symbols without a live partition on those days are left out."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    out: dict[str, dict] = {}
    for symbol in symbols:
        for day in (now.date(), now.date() - timedelta(days=1)):
            newest = None
            for table in ("agg_trades", "klines", "open_interest", "forced_liquidations"):
                path = lake.partition_file(table, symbol, day)
                info = live_info(path)
                if info is None or not info.live or info.rows == 0:
                    continue
                t = column_max(path, "open_time" if table == "klines" else "ts")  # from the footer
                newest = max(newest, t) if newest else t
            if newest is not None:
                out[symbol] = {"newest": newest, "age_seconds": round((now - newest).total_seconds(), 1)}
                break
    return out
