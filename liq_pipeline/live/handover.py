"""The hand-over from live rows to the archive's file: what the live collector saw against what the archive holds.

When the archive publishes a day, the raw asset's ingest replaces the live partition with the archive's rows (the
archive is the truth). Before it does, these functions compare the two tables so that the materialization says how
good the live day was: the trades, bars and readings the stream missed, rows that differ, and the liquidations that
the stream, which sends at most one per symbol per second, could not show. Plain functions over Arrow tables;
the raw assets wrap them in metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from liq_pipeline.lake import Lake, uri
from liq_pipeline.live.partition import Interval, LiveInfo, day_bounds_ms, live_info, merge_intervals
from liq_pipeline.sources.archive import LIQUIDATION_SNAPSHOT_LAST_DAY

REPLACED = "replaced live rows (collected by liq collect) with the archive's file"
LIQUIDATIONS_EXPECTED = (
    "fewer live than archived is expected: the archive keeps every liquidation, the stream sends at most one per "
    "symbol per second"
)
FIRST_RANGES = 5  # how many missing ranges the metadata lists
# Prices and sizes parsed from the same decimal text are equal; the tolerance only absorbs rounding noise.
REL_TOL = 1e-9
OHLCV = ("open", "high", "low", "close", "volume")


def read_live(lake: Lake, table: str, symbol: str, day: date) -> tuple[pa.Table, LiveInfo] | None:
    """The live partition's rows and footer info, or None when the partition is absent or holds the archive's rows.
    Read before the archive's file is written over it: afterwards the live rows are gone."""
    path = lake.partition_file(table, symbol, day)
    info = live_info(path)
    if info is None or not info.live:
        return None
    return pq.read_table(uri(path)), info


def compare(table: str, live: pa.Table, archive: pa.Table, coverage: list[Interval], day: date) -> dict:
    """Live rows against the archive's rows of the same partition, as flat, readable metadata entries (values are
    numbers, text, or lists for JSON)."""
    out: dict = {
        "live handover": REPLACED,
        "live rows": live.num_rows,
        "archive rows": archive.num_rows,
        **coverage_entries(coverage, day),
    }
    by_table = {
        "agg_trades": compare_trades,
        "klines": compare_klines,
        "open_interest": compare_open_interest,
        "forced_liquidations": compare_liquidations,
    }
    if table in by_table:
        out.update(by_table[table](live, archive))
    return out


def coverage_entries(coverage: list[Interval], day: date) -> dict:
    """How much of the UTC day the stream was connected: hours, and the intervals as HH:MM:SS text."""
    start, end = day_bounds_ms(day)
    spans = [
        (max(s, start), min(e, end)) for s, e in merge_intervals(coverage) if min(e, end) > max(s, start)
    ]
    return {
        "live coverage hours": round(sum(e - s for s, e in spans) / 3_600_000, 3),
        "live coverage (UTC)": [[_hms(s, start), _hms(e, start)] for s, e in spans],
    }


def _hms(ms: int, day_start: int) -> str:
    return "24:00:00" if ms - day_start >= 86_400_000 else _clock(ms)


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


def _keys(table: pa.Table, column: str) -> np.ndarray:
    """A key column as int64 (timestamps as ms), for matching rows across the two tables."""
    values = table[column].combine_chunks()
    if pa.types.is_timestamp(values.type):
        values = pc.divide(values.cast(pa.timestamp("us")).cast(pa.int64()), 1000)
    return np.asarray(values.cast(pa.int64()), dtype=np.int64)


def _same(a: pa.ChunkedArray, b: pa.ChunkedArray) -> np.ndarray:
    """Row-wise equality of two aligned columns: floats to REL_TOL, everything else exactly."""
    if pa.types.is_floating(a.type):
        x = a.to_numpy(zero_copy_only=False).astype(float)
        y = b.to_numpy(zero_copy_only=False).astype(float)
        return np.isclose(x, y, rtol=REL_TOL, atol=0.0) | (np.isnan(x) & np.isnan(y))
    if pa.types.is_timestamp(a.type):
        a, b = a.cast(pa.timestamp("us")), b.cast(pa.timestamp("us"))
    return np.asarray(pc.equal(a, b).fill_null(False), dtype=bool)


@dataclass(frozen=True)
class KeyedDiff:
    """Two tables matched on a unique key."""

    archive_keys: np.ndarray  # the archive's keys, in its order
    missing: np.ndarray  # bool over archive_keys: no live row with that key
    live_only: int  # live keys the archive lacks
    differing: int  # matched rows that differ in a compared column
    live_index: np.ndarray  # matched rows: their positions in the live table ...
    archive_index: np.ndarray  # ... and in the archive's

    def missing_ranges(self, limit: int = FIRST_RANGES) -> list[tuple[int, int]]:
        """The first `limit` runs of consecutive archive rows missing live, as (first key, last key)."""
        k = self.archive_keys
        return [(int(k[s]), int(k[e])) for s, e in runs(np.flatnonzero(self.missing))[:limit]]


def keyed_diff(live: pa.Table, archive: pa.Table, key: str, columns: list[str]) -> KeyedDiff:
    """Match rows by a key unique in each table (an aggTrade id, a bar's or reading's time) and compare `columns`."""
    live_keys, arch_keys = _keys(live, key), _keys(archive, key)
    common, li, ai = np.intersect1d(live_keys, arch_keys, assume_unique=True, return_indices=True)
    differ = np.zeros(len(common), dtype=bool)
    for column in columns:
        differ |= ~_same(live[column].take(li), archive[column].take(ai))
    missing = ~np.isin(arch_keys, live_keys, assume_unique=True)
    return KeyedDiff(arch_keys, missing, int(len(live_keys) - len(common)), int(differ.sum()), li, ai)


def runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive positions as (first, last) pairs: [3, 4, 5, 9] -> [(3, 5), (9, 9)]."""
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1)
    starts = np.concatenate(([positions[0]], positions[breaks + 1]))
    ends = np.concatenate((positions[breaks], [positions[-1]]))
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def compare_trades(live: pa.Table, archive: pa.Table) -> dict:
    """Trade ids the stream missed (reconnect gaps), ids only live had (should be 0), and same-id rows that differ."""
    columns = [c for c in archive.column_names if c not in ("symbol", "date", "agg_trade_id")]
    d = keyed_diff(live, archive, "agg_trade_id", columns)
    return {
        "trades missing live": int(d.missing.sum()),
        "trade id gaps live": len(runs(np.flatnonzero(d.missing))),
        "trade id ranges missing live": [list(r) for r in d.missing_ranges()],
        "trades live only (should be 0)": d.live_only,
        "trades differing": d.differing,
    }


def compare_klines(live: pa.Table, archive: pa.Table) -> dict:
    """1-minute bars the stream did not deliver, bars only live had, and bars whose OHLCV differ."""
    d = keyed_diff(live, archive, "open_time", list(OHLCV))
    return {
        "bars missing live": int(d.missing.sum()),
        "bar times missing live (UTC)": [[_clock(s), _clock(e)] for s, e in d.missing_ranges()],
        "bars live only": d.live_only,
        "bars differing (OHLCV)": d.differing,
    }


def compare_open_interest(live: pa.Table, archive: pa.Table) -> dict:
    """Readings at the same 5-minute timestamps (how many, and their largest relative difference), the archive's
    readings with no live one, and live readings at other times (polled between the 5-minute marks)."""
    d = keyed_diff(live, archive, "ts", [])
    li, ai = d.live_index, d.archive_index
    out = {
        "readings compared": int(li.size),
        "readings missing live": int(d.missing.sum()),
        "readings live only": d.live_only,
    }
    for column, label in (("open_interest", "contracts"), ("open_interest_value", "USD value")):
        x = live[column].take(li).to_numpy(zero_copy_only=False).astype(float)
        y = archive[column].take(ai).to_numpy(zero_copy_only=False).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(x - y) / np.abs(y)
        rel = rel[np.isfinite(rel)]
        out[f"max relative difference ({label})"] = float(rel.max()) if rel.size else 0.0
    return out


def _ts_side(table: pa.Table) -> np.ndarray:
    """(ms, side) of each liquidation as one int64: 2 * ms + 1 for a long."""
    long = np.asarray(pc.equal(table["side"], "long").fill_null(False), dtype=np.int64)
    return _keys(table, "ts") * 2 + long


def compare_liquidations(live: pa.Table, archive: pa.Table) -> dict:
    """Counts and USD notional each side, and how many archived liquidations have a live one at the same ms and
    side. The stream shows at most one per second, so live < archive is the normal case, not a fault."""
    live_keys, arch_keys = _ts_side(live), _ts_side(archive)

    def usd(t: pa.Table) -> float:
        return round(float(pc.sum(t["notional_usd"]).as_py() or 0.0), 2)

    return {
        "liquidations live": live.num_rows,
        "liquidations archived": archive.num_rows,
        "notional live USD": usd(live),
        "notional archived USD": usd(archive),
        "archived with a live one at the same ms and side": int(np.isin(arch_keys, live_keys).sum()),
        "live without an archived one (should be 0)": int((~np.isin(live_keys, arch_keys)).sum()),
        "liquidations live vs archived": LIQUIDATIONS_EXPECTED,
    }


def kept(kind: str, live: pa.Table, coverage: list[Interval], day: date) -> dict:
    """Metadata of a run that keeps the live partition because the archive has no file for the day (forced
    liquidations after the archive's last liquidationSnapshot: the live rows are the only record of them)."""
    if kind == "liquidationSnapshot" and day > LIQUIDATION_SNAPSHOT_LAST_DAY:
        why = f"kept the live rows: the archive publishes no liquidationSnapshot after {LIQUIDATION_SNAPSHOT_LAST_DAY}"
    else:
        why = f"kept the live rows: the archive has no {kind} file for {day}"
    return {
        "live handover": why,
        "live rows": live.num_rows,
        **coverage_entries(coverage, day),
    }
