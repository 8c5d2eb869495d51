"""Which model partitions are stale: built from raw partitions that have changed since.

A model partition for day D reads the raw tables `klines`, `open_interest` and `agg_trades` of its symbol over
D-n+1 .. D (n = its `lookback_days`). Each raw partition carries a fingerprint of its content in its Parquet schema
metadata; each model table records the fingerprints of the raw partitions it read. A model partition is stale when
that record no longer matches the lake: an input was rewritten with other content, a lookback day arrived or
vanished, or its three tables were written by different runs. Rewriting a raw partition with the same content
changes nothing. Files written before fingerprints existed are compared by modification time instead.

Plain functions over the lake (footers only, no data read); the sensor and the check in Dagster wrap them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from liq_pipeline.lake import Lake, uri
from liq_pipeline.model.config import DEFAULT_LOOKBACK_DAYS, MAX_LOOKBACK_DAYS
from liq_pipeline.model_io import CONFIG_KEY, MODEL_TABLES
from liq_pipeline.sources.archive import LIVE_SOURCE, SOURCE_KEY

FINGERPRINT_KEY = b"liq_fingerprint"  # raw partition: hash of its content
INPUTS_KEY = b"liq_model_inputs"  # model table: {"lookback_days": n, "inputs": {table: {day: fingerprint}}}
MODEL_INPUTS = ("klines", "open_interest", "agg_trades")


def table_fingerprint(table: pa.Table) -> str:
    """A hash of a raw table's content: its columns' values, in order. `symbol` and `date` are the partition key,
    not content. The same rows parsed from another copy of a file give the same fingerprint."""
    h = hashlib.sha256()
    for name in table.column_names:
        if name in ("symbol", "date"):
            continue
        column = table[name]
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        h.update(f"{name}:{column.type}:{len(column)}".encode())
        numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        if (numeric or pa.types.is_boolean(column.type)) and column.null_count == 0:
            h.update(np.ascontiguousarray(column.to_numpy()).tobytes())
        else:  # text, or values with nulls: small columns in practice
            h.update(repr(column.to_pylist()).encode())
    return h.hexdigest()[:32]


def with_fingerprint(table: pa.Table) -> tuple[pa.Table, str]:
    """The table with its fingerprint in its schema metadata (the Parquet file keeps it), and the fingerprint."""
    fingerprint = table_fingerprint(table)
    metadata = {**(table.schema.metadata or {}), FINGERPRINT_KEY: fingerprint.encode()}
    return table.replace_schema_metadata(metadata), fingerprint


def _schema_metadata(path: Path) -> dict[bytes, bytes]:
    return pq.read_schema(uri(path)).metadata or {}


def partition_fingerprint(
    lake: Lake, table: str, symbol: str, day: date, cache: dict | None = None
) -> str | None:
    """The fingerprint of a raw partition, None if it is not in the lake. A file written before fingerprints
    existed is identified by its size and modification time. `cache` (path -> fingerprint) serves one scan."""
    path = lake.partition_file(table, symbol, day)
    if cache is not None:
        if path not in cache:
            cache[path] = partition_fingerprint(lake, table, symbol, day)
        return cache[path]
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    stored = _schema_metadata(path).get(FINGERPRINT_KEY)
    return stored.decode() if stored else f"file:{stat.st_size}:{stat.st_mtime_ns}"


def window(day: date, lookback_days: int) -> list[date]:
    return [day - timedelta(days=i) for i in range(lookback_days - 1, -1, -1)]


def current_inputs(
    lake: Lake, symbol: str, day: date, lookback_days: int, cache: dict | None = None
) -> dict[str, dict[str, str]]:
    """table -> {day: fingerprint} for the raw partitions a model run for (symbol, day) reads now."""
    out: dict[str, dict[str, str]] = {}
    for table in MODEL_INPUTS:
        days = window(day, lookback_days)
        found = {d.isoformat(): partition_fingerprint(lake, table, symbol, d, cache) for d in days}
        out[table] = {d: fp for d, fp in found.items() if fp is not None}
    return out


def record_inputs(lake: Lake, symbol: str, day: date, lookback_days: int) -> dict:
    """What a model run stores with its tables. Take it BEFORE reading the inputs: a raw write in between then
    shows as stale (recomputed), never as fresh."""
    return {"lookback_days": lookback_days, "inputs": current_inputs(lake, symbol, day, lookback_days)}


def stamp(table: pa.Table, record: dict) -> pa.Table:
    """A model table with the record of its inputs in its schema metadata."""
    metadata = {**(table.schema.metadata or {}), INPUTS_KEY: json.dumps(record, sort_keys=True).encode()}
    return table.replace_schema_metadata(metadata)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Stale:
    """A model partition whose inputs changed after it was built."""

    symbol: str
    day: date
    reasons: tuple[str, ...]
    recorded: str  # digest of what the model read
    current: str  # digest of what is in the lake now
    config: dict  # the model parameters it was built with (to rebuild it the same way)
    live: bool = (
        False  # the day's own inputs are live partitions, still being collected (`live_model_sensor`)
    )

    @property
    def run_key(self) -> str:
        """Unique per (partition, from, to): a recompute that fails is not requested again until an input changes."""
        return f"stale:{self.day}|{self.symbol}:{self.recorded}->{self.current}"


def _compare(recorded: dict[str, dict[str, str]], now: dict[str, dict[str, str]]) -> list[str]:
    reasons = []
    for table in MODEL_INPUTS:
        before, after = recorded.get(table, {}), now.get(table, {})
        for d in sorted(set(before) | set(after)):
            if d not in before:
                reasons.append(f"{table} {d} arrived after the model was built")
            elif d not in after:
                reasons.append(f"{table} {d} is no longer in the lake")
            elif before[d] != after[d]:
                reasons.append(f"{table} {d} was rewritten with other content")
    return reasons


def _config(metadata: dict[bytes, bytes]) -> dict:
    raw = metadata.get(CONFIG_KEY)
    return json.loads(raw) if raw else {}


def check_partition(lake: Lake, symbol: str, day: date, cache: dict | None = None) -> Stale | None:
    """None if the model partition (symbol, day) is fresh or not built; else why it is stale."""
    heat_path = lake.partition_file(MODEL_TABLES[0], symbol, day)
    if not heat_path.exists():
        return None
    metadata = _schema_metadata(heat_path)
    config = _config(metadata)
    raw_record = metadata.get(INPUTS_KEY)
    if raw_record is None:
        return _check_by_mtime(lake, symbol, day, heat_path, config)
    record = json.loads(raw_record)
    now = current_inputs(lake, symbol, day, int(record["lookback_days"]), cache)
    reasons = _compare(record["inputs"], now)
    for table in MODEL_TABLES[1:]:
        path = lake.partition_file(table, symbol, day)
        if not path.exists():
            reasons.append(f"{table} is missing beside the heatmap")
        elif _schema_metadata(path).get(INPUTS_KEY) != raw_record:
            reasons.append(f"{table} was written by another run than the heatmap")
    if not reasons:
        return None
    return Stale(
        symbol, day, tuple(reasons), _digest(record), _digest(now), config, is_live(lake, symbol, day)
    )


def is_live(lake: Lake, symbol: str, day: date) -> bool:
    """Whether any of the day's model inputs is a live partition (written by `liq collect`, not the archive)."""
    return any(
        _schema_metadata(path).get(SOURCE_KEY) == LIVE_SOURCE.encode()
        for path in (lake.partition_file(t, symbol, day) for t in MODEL_INPUTS)
        if path.exists()
    )


def _check_by_mtime(lake: Lake, symbol: str, day: date, heat_path: Path, config: dict) -> Stale | None:
    """A model partition written before input records existed: stale if an input file is newer than it."""
    built = heat_path.stat().st_mtime_ns
    n = int(config.get("lookback_days") or DEFAULT_LOOKBACK_DAYS)
    reasons = []
    for table in MODEL_INPUTS:
        for d in window(day, n):
            path = lake.partition_file(table, symbol, d)
            if path.exists() and path.stat().st_mtime_ns > built:
                reasons.append(f"{table} {d} was written after the model")
    if not reasons:
        return None
    return Stale(
        symbol, day, tuple(reasons), f"mtime{built}", _digest(current_inputs(lake, symbol, day, n)), config
    )


def stale_partitions(lake: Lake, symbols: list[str] | None = None) -> list[Stale]:
    """Every stale model partition in the lake, by symbol then day. Each raw footer is read once."""
    out, cache = [], {}
    for symbol, days in sorted(lake.symbol_dates(MODEL_TABLES[0]).items()):
        if symbols is not None and symbol not in symbols:
            continue
        out += [s for s in (check_partition(lake, symbol, d, cache) for d in days) if s is not None]
    return out


def made_stale(lake: Lake, table: str, symbol: str, day: date, fingerprint: str) -> list[date]:
    """The model days of `symbol` that read raw partition (table, day) with other content than `fingerprint`
    (or did not find it): what writing it makes stale."""
    if table not in MODEL_INPUTS:
        return []
    out = []
    for model_day in (day + timedelta(days=i) for i in range(MAX_LOOKBACK_DAYS)):
        path = lake.partition_file(MODEL_TABLES[0], symbol, model_day)
        if not path.exists():
            continue
        metadata = _schema_metadata(path)
        raw_record = metadata.get(INPUTS_KEY)
        if raw_record is None:  # written before input records: reads every day of its window
            n = int(_config(metadata).get("lookback_days") or DEFAULT_LOOKBACK_DAYS)
            stale = day in window(model_day, n)
        else:
            record = json.loads(raw_record)
            stale = day in window(model_day, int(record["lookback_days"])) and (
                record["inputs"].get(table, {}).get(day.isoformat()) != fingerprint
            )
        if stale:
            out.append(model_day)
    return out


def plan(stale: list[Stale], seen: set[str]) -> tuple[list[Stale], set[str]]:
    """The stale partitions not yet acted on (their run key is not in `seen`), and the new set to remember: the
    keys of the partitions stale now (a partition that became fresh is forgotten, so the cursor stays small)."""
    return [s for s in stale if s.run_key not in seen], {s.run_key for s in stale}
