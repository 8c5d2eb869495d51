"""Raw assets: one per Binance archive format, partitioned `date|symbol`, written to the lake by the IO manager."""

from collections.abc import Iterator
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, AssetsDefinition, MetadataValue, Output, asset

from liq_pipeline import checks, quality, staleness
from liq_pipeline.formats import FORMATS, ArchiveFormat
from liq_pipeline.lake import Lake
from liq_pipeline.live import handover
from liq_pipeline.live.partition import LiveInfo
from liq_pipeline.partitions import SYMBOL_DATE, split_key
from liq_pipeline.resources import ArchiveSource, LakeResource
from liq_pipeline.sources.archive import Ingested, ingest

_DESCRIPTIONS = {
    "agg_trades": "Aggregated trades (aggTrades daily files): every taker trade, sorted by agg_trade_id.",
    "open_interest": "Open interest every 5 minutes (metrics daily files), in contracts and USD.",
    "klines": "1-minute candles (klines/1m daily files).",
    "funding_rate": "Funding rates (fundingRate monthly files), the partition's day only.",
    "forced_liquidations": (
        "Real forced liquidation orders (liquidationSnapshot daily files, published up to 2024-03-31); "
        "side is the position liquidated. Empty, with the reason in metadata, for days without a file; a live "
        "partition written by liq collect is kept instead, the only record of those days."
    ),
}


def ingest_metadata(result: Ingested) -> dict:
    table = result.table
    meta: dict = {"dagster/row_count": table.num_rows}
    if result.fetched:
        meta["source"] = (
            MetadataValue.url(result.fetched.origin)
            if "://" in result.fetched.origin
            else MetadataValue.path(result.fetched.origin)
        )
        meta["sha256"] = result.fetched.sha256 or "n/a"
        meta["checksum verified"] = result.fetched.verified
    if result.note:
        meta["note"] = result.note
    if result.dropped_other_day:  # e.g. the next day's 00:00 row that ends a daily metrics file
        meta["rows of another day dropped"] = result.dropped_other_day
    ts_col = "open_time" if "open_time" in table.column_names else "ts"
    if table.num_rows:
        meta["time range"] = f"{pc.min(table[ts_col]).as_py()} .. {pc.max(table[ts_col]).as_py()}"
        price_col = (
            "close" if "close" in table.column_names else "price" if "price" in table.column_names else None
        )
        if price_col:
            meta["price range"] = (
                f"{pc.min(table[price_col]).as_py():g} .. {pc.max(table[price_col]).as_py():g}"
            )
        meta["preview"] = MetadataValue.md(
            table.slice(0, 5).drop_columns(["symbol"]).to_pandas().to_markdown(index=False)
        )
    return meta


class LakeGuardError(RuntimeError):
    """A file that parses but cannot be this symbol-day's data, given what the lake already holds."""


def guard_against_lake(lake: Lake, fmt: ArchiveFormat, symbol: str, day: date, result: Ingested) -> None:
    """Refuse, before anything is written, a file that would replace a full partition with no rows, or whose
    prices are far outside the same symbol-day's other tables in the lake (another symbol's file)."""
    if result.fetched is None:  # no file: the source says why the day is empty (result.note)
        return
    origin = result.fetched.origin
    problem = quality.empty_over_full(lake, fmt.table, symbol, day, result.table, origin) or (
        quality.lake_price_conflict(lake, fmt.table, symbol, day, result.table, origin)
    )
    if problem:
        raise LakeGuardError(problem)


def lake_metadata(
    lake: Lake, fmt: ArchiveFormat, symbol: str, day: date, result: Ingested, fingerprint: str
) -> dict:
    """What this write does to the lake: its content fingerprint, the model partitions it makes stale, and a
    word when the day has no rows."""
    meta: dict = {"fingerprint": fingerprint}
    if result.table.num_rows == 0 and result.fetched is not None:
        meta["empty"] = f"{result.fetched.origin} has no rows: {symbol} has no {fmt.table} rows on {day}"
    if fmt.table in staleness.MODEL_INPUTS:
        stale = staleness.made_stale(lake, fmt.table, symbol, day, fingerprint)
        meta["model partitions made stale"] = MetadataValue.json([f"{d}|{symbol}" for d in stale])
    return meta


def as_metadata(entries: dict) -> dict:
    """Plain values as Dagster metadata: lists and dicts become JSON, the rest stays as is."""
    return {k: MetadataValue.json(v) if isinstance(v, list | dict) else v for k, v in entries.items()}


def keep_live(
    lake: Lake, fmt: ArchiveFormat, symbol: str, day: date, result: Ingested, live: pa.Table, info: LiveInfo
) -> Iterator:
    """The archive has no file for a day the collector wrote (forced liquidations after 2024-03-31): the live rows
    are the only record, so they stay. Nothing is written (the output is None): rewriting the same rows would only
    race a collector still committing to today's partition."""
    fingerprint = staleness.partition_fingerprint(lake, fmt.table, symbol, day) or ""
    metadata = {
        "dagster/row_count": live.num_rows,
        **({"note": result.note} if result.note else {}),
        **as_metadata(handover.kept(fmt.kind, live, info.coverage, day)),
        "path": str(lake.partition_file(fmt.table, symbol, day)),
        "fingerprint": fingerprint,
    }
    yield Output(None, metadata=metadata)
    yield from checks.run_raw_checks(fmt.table, live, day)


def build_raw_asset(fmt: ArchiveFormat) -> AssetsDefinition:
    @asset(
        name=fmt.table,
        group_name="raw",
        partitions_def=SYMBOL_DATE,
        io_manager_key="lake_io_manager",
        description=_DESCRIPTIONS[fmt.table],
        check_specs=checks.raw_check_specs(fmt.table),
        kinds={"parquet"},
        metadata={"archive file, e.g.": fmt.relpath("ETHUSDT", date(2024, 12, 28))},
    )
    def _raw(context: AssetExecutionContext, archive: ArchiveSource, lake: LakeResource):
        symbol, day = split_key(context.partition_key)
        result = ingest(archive.get(), fmt, symbol, day)
        the_lake = lake.get()
        # Raises before the output exists, so the IO manager writes nothing and the previous partition stays.
        guard_against_lake(the_lake, fmt, symbol, day, result)
        live = handover.read_live(the_lake, fmt.table, symbol, day)  # before the archive's rows replace it
        if live is not None and result.fetched is None:
            yield from keep_live(the_lake, fmt, symbol, day, result, *live)
            return
        table, fingerprint = staleness.with_fingerprint(result.table)
        metadata = {
            **ingest_metadata(result),
            **lake_metadata(the_lake, fmt, symbol, day, result, fingerprint),
        }
        if live is not None:
            metadata.update(as_metadata(handover.compare(fmt.table, live[0], table, live[1].coverage, day)))
        yield Output(table, metadata=metadata)
        yield from checks.run_raw_checks(fmt.table, table, day)

    return _raw


RAW_ASSETS: list[AssetsDefinition] = [build_raw_asset(fmt) for fmt in FORMATS.values()]
