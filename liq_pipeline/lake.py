"""The data lake: one Parquet file per table partition, written atomically, and the DuckDB warehouse views.

Layout: `$LIQ_DATA_DIR/lake/<table>/symbol=<S>/date=<YYYY-MM-DD>/part-0.parquet`. `$LIQ_DATA_DIR` is a folder, or
`s3://bucket/prefix` for S3-compatible object storage (endpoint and keys from the usual AWS_* variables): the lake's
paths are then `upath` paths that exist, stat and glob like local ones, pyarrow reads their `uri()` natively, and
DuckDB reads them through the filesystem `Lake.connect` registers. Each partition is one object, written whole by one
PUT, so a reader sees the old object or the new one and a failed run leaves the old one. What belongs to one machine
(the warehouse file, downloads, screenshots) stays in a local folder (`local_dir`).

A partition is one file replaced with `os.replace`, which is atomic on POSIX: a reader or a crash sees the old file
or the new one, never half of either; re-materializing replaces instead of appending, so there are no duplicates;
and different partitions never touch the same path, so processes can write in parallel. A write killed before
its `os.replace` (kill -9, power loss) leaves only a hidden temporary file, removed by the next write of that
partition (`exclusive_folder`).
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TypeAlias

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

PART_FILE = "part-0.parquet"
TMP_GLOB = f".{PART_FILE}.*.tmp"  # what `Lake.write` writes before renaming it over the partition
ROW_GROUP_ROWS = 1_000_000  # a day's partition is one row group, except in the tables below
# Tables read a few states at a time (the API reads a day's heatmap at one off-the-hour time): one row group per
# hour of this timestamp column, so a reader pruning row groups by their statistics reads 1/24 of the file.
HOURLY_ROW_GROUPS = {"liquidation_heatmap": "as_of"}
_HOUR_US = 3_600_000_000

# The OHLC of 1-minute klines grouped into a coarser bucket (GROUP BY the bucket): the one aggregation the
# warehouse's 15-minute view, the model's steps, the API's candles and the hourly candle tiles all use.
OHLC_SQL = (
    "arg_min(open, open_time) AS open, max(high) AS high, min(low) AS low, arg_max(close, open_time) AS close"
)

# Warehouse view name -> SQL over the lake. `{lake}` is replaced by the lake root. The seed's queries run verbatim.
_VIEWS = {
    "aggtrades_history": "SELECT * FROM read_parquet('{lake}/agg_trades/*/*/*.parquet')",
    "open_interest_history": "SELECT * FROM read_parquet('{lake}/open_interest/*/*/*.parquet')",
    "klines_1m_history": "SELECT * FROM read_parquet('{lake}/klines/*/*/*.parquet')",
    "funding_rate_history": "SELECT * FROM read_parquet('{lake}/funding_rate/*/*/*.parquet')",
    "forced_liquidations_history": "SELECT * FROM read_parquet('{lake}/forced_liquidations/*/*/*.parquet')",
    "liquidation_heatmap_history": "SELECT * FROM read_parquet('{lake}/liquidation_heatmap/*/*/*.parquet')",
    "liquidation_levels_history": "SELECT * FROM read_parquet('{lake}/liquidation_levels/*/*/*.parquet')",
    "predicted_liquidations_history": "SELECT * FROM read_parquet('{lake}/predicted_liquidations/*/*/*.parquet')",
    "klines_15m_history": """
        SELECT symbol, CAST(time_bucket(INTERVAL 15 MINUTE, open_time) AS DATE) AS date,
               time_bucket(INTERVAL 15 MINUTE, open_time) AS open_time,
               {ohlc}, sum(volume) AS volume, sum(quote_volume) AS quote_volume,
               sum(trade_count) AS trade_count, sum(taker_buy_volume) AS taker_buy_volume,
               sum(taker_buy_quote_volume) AS taker_buy_quote_volume
        FROM read_parquet('{lake}/klines/*/*/*.parquet')
        GROUP BY ALL""",
}
_VIEW_TABLE = {
    "aggtrades_history": "agg_trades",
    "open_interest_history": "open_interest",
    "klines_1m_history": "klines",
    "klines_15m_history": "klines",
    "funding_rate_history": "funding_rate",
    "forced_liquidations_history": "forced_liquidations",
    "liquidation_heatmap_history": "liquidation_heatmap",
    "liquidation_levels_history": "liquidation_levels",
    "predicted_liquidations_history": "predicted_liquidations",
}


# A local path, or an object in S3-compatible storage (`upath`'s S3Path, which is not a pathlib.Path).
LakePath: TypeAlias = Path | UPath


def location(spec: str | os.PathLike | UPath) -> LakePath:
    """A folder as `$LIQ_DATA_DIR` names it: `s3://bucket/prefix` or a local path (made absolute)."""
    if isinstance(spec, UPath) and not isinstance(spec, Path):
        return spec
    text = os.fspath(spec)
    if "://" in text:
        # No listing cache: another process's new partition must show up on the next look.
        return UPath(text.rstrip("/"), use_listings_cache=False)
    return Path(text).resolve()


def is_remote(path: LakePath) -> bool:
    return not isinstance(path, Path)


def uri(path: LakePath) -> str:
    """A lake path as pyarrow and DuckDB take it: a local path, or an `s3://` URI."""
    return str(path)


def data_dir() -> LakePath:
    """`$LIQ_DATA_DIR`, default `./data`: the one place every path of the project starts from."""
    return location(os.environ.get("LIQ_DATA_DIR") or "data")


def local_dir(shared: LakePath | None = None) -> Path:
    """The folder for what belongs to one machine: the warehouse file, the archive's downloads, the screenshot inbox,
    previews and the validation ledger. The data folder (`shared`, default `$LIQ_DATA_DIR`) when that is local, else
    `$LIQ_LOCAL_DIR` (default ./data)."""
    shared = data_dir() if shared is None else shared
    if not is_remote(shared):
        return shared
    return Path(os.environ.get("LIQ_LOCAL_DIR") or "data").resolve()


def column_max(path: LakePath, column: str) -> datetime | None:
    """The largest value of a column of one Parquet file, from its row-group statistics (no data read; the data
    when a row group lacks them). Timestamps come back naive UTC, like the lake's."""
    md = pq.ParquetFile(uri(path)).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    if column not in names:
        return None
    col = names.index(column)
    best = None
    for rg in range(md.num_row_groups):
        stats = md.row_group(rg).column(col).statistics
        if stats is None or not stats.has_min_max:
            best = None
            break
        best = stats.max if best is None else max(best, stats.max)
    if best is None:
        best = pq.read_table(uri(path), columns=[column])[column].to_pylist()
        best = max((v for v in best if v is not None), default=None)
    if isinstance(best, datetime) and best.tzinfo is not None:
        best = best.replace(tzinfo=None) - best.utcoffset()
    return best


_PER_US = {"s": 1_000_000, "ms": 1_000, "us": 1}


def as_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column of numbers as a numpy array of its own, timestamps as int64 µs, copied from the Arrow buffers.
    pyarrow's `to_numpy` imports pandas on first use, about 50 MB more resident in every API process for nothing
    it needs; a column with nulls, or of another type, still goes through it."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    kind = column.type
    dtype = None
    if pa.types.is_timestamp(kind):
        dtype = np.dtype(np.int64)
    elif pa.types.is_floating(kind) or pa.types.is_integer(kind):
        letter = "f" if pa.types.is_floating(kind) else "u" if pa.types.is_unsigned_integer(kind) else "i"
        dtype = np.dtype(f"{letter}{kind.bit_width // 8}")
    if dtype is None or any(c.null_count for c in chunks):
        if pa.types.is_timestamp(kind):
            column = column.cast(pa.timestamp("us")).cast(pa.int64())
        return np.array(column.to_numpy())
    parts = [np.frombuffer(c.buffers()[1], dtype, len(c), c.offset * dtype.itemsize) for c in chunks]
    out = np.concatenate(parts) if parts else np.zeros(0, dtype)
    if pa.types.is_timestamp(kind):
        out = out // 1_000 if kind.unit == "ns" else out * _PER_US[kind.unit]
    return out


def hour_runs(data: pa.Table, column: str) -> list[pa.Table]:
    """The table cut where the hour of `column` changes ((H, H + 1 h] is one hour: the state at a whole hour ends
    its hour), in row order: a table sorted by `column` gives one slice per hour."""
    if not data.num_rows or column not in data.column_names:
        return [data]
    hour = (as_numpy(data[column]) - 1) // _HOUR_US
    cuts = [0, *(np.flatnonzero(hour[1:] != hour[:-1]) + 1).tolist(), data.num_rows]
    return [data.slice(a, b - a) for a, b in zip(cuts[:-1], cuts[1:])]


def _write_parquet(data: pa.Table, path: Path | pa.NativeFile, hourly_column: str | None) -> None:
    """zstd Parquet; row groups of ROW_GROUP_ROWS, or one per hour of `hourly_column` (HOURLY_ROW_GROUPS)."""
    if hourly_column is None:
        pq.write_table(data, path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        return
    with pq.ParquetWriter(path, data.schema, compression="zstd") as writer:
        for run in hour_runs(data, hourly_column):
            writer.write_table(run, row_group_size=ROW_GROUP_ROWS)


@contextmanager
def exclusive_folder(folder: Path, orphans: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` while writing into it, after deleting the files matching `orphans`.

    Every writer of the folder takes this lock (flock on the directory; the kernel drops it when a process dies,
    even by kill -9), so a temporary file found while holding it belongs to a writer that is gone: delete it.
    A second writer of the same folder waits for the first instead of racing it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for orphan in folder.glob(orphans):
            orphan.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class Lake:
    root: LakePath = field(default_factory=lambda: data_dir() / "lake")

    @classmethod
    def at(cls, data_dir_path: LakePath | str | None = None) -> Lake:
        base = location(data_dir_path) if data_dir_path else data_dir()
        return cls(root=base / "lake")

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    @property
    def local(self) -> Path:
        """This machine's folder beside the lake (`local_dir`): the lake's own parent when that is local."""
        return local_dir(self.root.parent)

    @property
    def warehouse_path(self) -> Path:
        return self.local / "warehouse.duckdb"

    def connect(self, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
        """A DuckDB connection that can read this lake's paths (`uri`): for an S3 lake, with the lake's filesystem
        registered on it (DuckDB's httpfs extension is not needed, nor installable offline)."""
        con = duckdb.connect(database)
        self.register(con)
        return con

    def register(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """Let a connection made elsewhere (dagster-duckdb's) read an S3 lake; nothing to do for a local one."""
        if self.remote and not con.filesystem_is_registered("s3"):
            con.register_filesystem(self.root.fs)
        return con

    def calibration_file(self, symbol: str) -> LakePath:
        """A symbol's fitted model parameters (`liq calibrate`, `model_calibration`), read by the model."""
        return self.root.parent / "calibration" / f"{symbol}.json"

    def cache(self) -> Lake:
        """Derived per-day tables that are cheaper to keep than to recompute (the model's volume profiles), laid out
        like the lake under `$LIQ_DATA_DIR/cache`. Safe to delete: they are rebuilt on the next read."""
        return Lake(root=self.root.parent / "cache")

    def partition_file(self, table: str, symbol: str, day: date) -> LakePath:
        return self.root / table / f"symbol={symbol}" / f"date={day.isoformat()}" / PART_FILE

    def exists(self, table: str, symbol: str, day: date) -> bool:
        return self.partition_file(table, symbol, day).exists()

    def write(
        self, table: str, symbol: str, day: date, data: pa.Table, unless: Callable[[Path], None] | None = None
    ) -> LakePath:
        """Write one partition atomically: a temporary file beside the target, then `os.replace` over it.
        Temporary files left by a killed write of this partition are deleted first. `unless(target)` runs under the
        partition's lock before anything is written and may raise to refuse the write (the live collector never
        writes over a partition the archive's ingest has just replaced). On S3 the file is built in memory and
        sent as one object (S3 has no rename; a PUT is atomic), and `unless` runs without a lock."""
        target = self.partition_file(table, symbol, day)
        if self.remote:
            if unless is not None:
                unless(target)
            sink = pa.BufferOutputStream()
            _write_parquet(data, sink, HOURLY_ROW_GROUPS.get(table))
            target.fs.pipe_file(target.path, sink.getvalue().to_pybytes())
            return target
        tmp = target.with_name(f".{PART_FILE}.{uuid.uuid4().hex}.tmp")
        with exclusive_folder(target.parent, TMP_GLOB):
            if unless is not None:
                unless(target)
            try:
                _write_parquet(data, tmp, HOURLY_ROW_GROUPS.get(table))
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        return target

    def files(self, table: str, symbol: str, days: Iterable[date]) -> tuple[list[LakePath], list[date]]:
        """The partition files that exist for these days, and the days that are missing."""
        present, missing = [], []
        for day in days:
            path = self.partition_file(table, symbol, day)
            (present if path.exists() else missing).append(path if path.exists() else day)
        return present, missing

    def read(
        self, table: str, symbol: str, days: Iterable[date], columns: list[str] | None = None
    ) -> pa.Table:
        """Read the partitions that exist, in day order, as one Arrow table (empty if none exist)."""
        files, _ = self.files(table, symbol, sorted(days))
        if not files:
            return pa.table({})
        return pa.concat_tables(pq.read_table(uri(f), columns=columns, partitioning=None) for f in files)

    def symbol_dates(self, table: str) -> dict[str, list[date]]:
        """Which dates each symbol has in a table: a directory listing, no data read."""
        out: dict[str, list[date]] = {}
        base = self.root / table
        if not base.exists():
            return out
        for sym_dir in sorted(base.glob("symbol=*")):
            days = sorted(date.fromisoformat(f.parent.name[5:]) for f in sym_dir.glob(f"date=*/{PART_FILE}"))
            if days:
                out[sym_dir.name[7:]] = days
        return out

    def slice(self, table: str, symbol: str, days: Iterable[date]) -> LakeSlice:
        days = sorted(days)
        files, missing = self.files(table, symbol, days)
        return LakeSlice(
            self, table, symbol, tuple(days), tuple(d for d in days if d not in missing), tuple(missing)
        )

    def partition_rows(self, table: str, symbol: str, day: date) -> int | None:
        """Rows of one partition from its Parquet footer (no data read); None when it does not exist."""
        path = self.partition_file(table, symbol, day)
        return pq.ParquetFile(uri(path)).metadata.num_rows if path.exists() else None

    def row_count(self, table: str, symbol: str) -> int:
        """Rows of one symbol's table, from the Parquet footers (no data read)."""
        files = (self.root / table / f"symbol={symbol}").glob(f"date=*/{PART_FILE}")
        return sum(pq.ParquetFile(uri(f)).metadata.num_rows for f in files)

    # --- the warehouse ---------------------------------------------------------------------------------------

    def refresh_warehouse(self, con: duckdb.DuckDBPyConnection | None = None) -> list[str]:
        """(Re)create the warehouse views over every table that has data, on `con` (the `warehouse_views` asset
        passes dagster-duckdb's connection; None opens the warehouse file here). Returns the views created.

        Only this function writes to the warehouse file; Dagster runs it in a pool of size 1 because DuckDB
        allows one writer process. The views glob the lake, so new partitions show up without a refresh.
        """
        if con is None:
            with self._connect_writer() as own:
                return self.refresh_warehouse(own)
        created = []
        for view, sql in self.view_sql().items():
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {sql}")
            created.append(view)
        for view in _VIEWS.keys() - set(created):
            con.execute(f"DROP VIEW IF EXISTS {view}")
        return created

    def view_sql(self) -> dict[str, str]:
        """The warehouse's views, name -> SQL over this lake, for the tables that have at least one partition."""
        return {
            view: sql.format(lake=uri(self.root), ohlc=OHLC_SQL)
            for view, sql in _VIEWS.items()
            if any((self.root / _VIEW_TABLE[view]).glob(f"*/*/{PART_FILE}"))
        }

    def _connect_writer(self, wait_s: float = 60.0) -> duckdb.DuckDBPyConnection:
        """Open the warehouse for writing outside Dagster. Another writer (two `liq backfill` processes) may hold
        the file lock for the instant of its refresh, so wait for it rather than fail."""
        self.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self.connect(str(self.warehouse_path))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def connect_readonly(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the same views: reads the lake, never takes the warehouse lock."""
        con = self.connect()
        for view, sql in self.view_sql().items():
            con.execute(f"CREATE VIEW {view} AS {sql}")
        return con


@dataclass(frozen=True)
class LakeSlice:
    """A lazy reference to some days of one symbol's table: what a downstream asset receives as an input.

    Nothing is read until `read()`, so an asset can look at which days exist before paying for the data.
    """

    lake: Lake
    table: str
    symbol: str
    days: tuple[date, ...]  # requested, ascending
    present: tuple[date, ...]
    missing: tuple[date, ...]

    def last(self, n: int) -> LakeSlice:
        """The same slice cut to its last `n` requested days."""
        keep = set(self.days[-n:])
        return LakeSlice(
            self.lake,
            self.table,
            self.symbol,
            tuple(d for d in self.days if d in keep),
            tuple(d for d in self.present if d in keep),
            tuple(d for d in self.missing if d in keep),
        )

    @property
    def files(self) -> list[LakePath]:
        return [self.lake.partition_file(self.table, self.symbol, d) for d in self.present]

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return self.lake.read(self.table, self.symbol, self.present, columns)

    def rows_by_day(self) -> dict[date, int]:
        """Rows of each present day, from the Parquet footers."""
        return {d: self.lake.partition_rows(self.table, self.symbol, d) or 0 for d in self.present}
