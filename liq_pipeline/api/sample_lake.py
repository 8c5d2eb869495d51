"""A lake written by the pipeline's own code, for the API's tests and its benchmark.

The embedded sample market's archive files (`sources.sample.write_day`) go through the real ingest
(`sources.archive.ingest` over a `LocalMirror`) into the lake's raw tables, and the model's own functions
(`model_io.load_inputs`, `run_day`, `heatmap_table`, `levels_table`, `events_table`) write the model tables, as the
`liquidation_model` asset does, stamped with the record of their inputs (`staleness.record_inputs`); then
`tiles.write_tiles` cuts the tiles, as the `heatmap_tiles` asset does. So the API is tested and timed on exactly the
tables and the time convention the pipeline produces: there is no second writer that could drift from it. The
market is synthetic, not exchange data.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from liq_pipeline import model_io, staleness, tiles
from liq_pipeline.formats import FORMATS
from liq_pipeline.lake import Lake
from liq_pipeline.model import ModelConfig
from liq_pipeline.sources import sample
from liq_pipeline.sources.archive import SampleArchive, ingest
from liq_pipeline.symbols import Registry, SymbolSpec, load_registry

# 2,000 trades a day keep the 1-minute klines alive (they are aggregated from the trades) at a fraction of the
# default's cost; the model reads klines and open interest, and aggTrades only with `with_trades`.
DEFAULT_TRADES_PER_DAY = 2_000


def ingest_day(
    lake: Lake, mirror: SampleArchive, spec: SymbolSpec, day: date, tables: Iterable[str], trades: int
) -> None:
    """Write the sample archive files of (symbol, day) into the mirror and ingest `tables` from them into the lake."""
    sample.write_day(mirror.mirror.root, spec, day, trades_per_day=trades)
    for table in tables:
        lake.write(table, spec.symbol, day, ingest(mirror, FORMATS[table], spec.symbol, day).table)


def model_day(
    lake: Lake, spec: SymbolSpec, config: ModelConfig, day: date, with_trades: bool = False
) -> None:
    """What the `liquidation_model` and `heatmap_tiles` assets do for one partition: record the inputs, read the
    lookback, replay, write the three tables with the record, then cut and write the tiles."""
    lookback = [day - timedelta(days=i) for i in reversed(range(config.lookback_days))]
    record = staleness.record_inputs(lake, spec.symbol, day, config.lookback_days)
    trades = lake.slice("agg_trades", spec.symbol, lookback) if with_trades else None
    loaded = model_io.load_inputs(
        day,
        config,
        lake.slice("klines", spec.symbol, lookback),
        lake.slice("open_interest", spec.symbol, lookback),
        trades,
    )
    result = model_io.run_day(spec, config, loaded)
    tables = (model_io.heatmap_table(result), model_io.levels_table(result), model_io.events_table(result))
    for name, table in zip(model_io.MODEL_TABLES, tables):
        lake.write(name, spec.symbol, day, staleness.stamp(table, record))
    tiles.write_tiles(lake, spec.symbol, day)


def write_symbol(
    data_dir: Path | str,
    spec: SymbolSpec,
    days: list[date],
    trades_per_day: int = DEFAULT_TRADES_PER_DAY,
    with_trades: bool = False,
    config: dict[str, Any] | None = None,
) -> dict[str, float]:
    """One symbol's raw and model partitions over `days` (ascending); seconds per phase."""
    lake = Lake.at(data_dir)
    mirror = SampleArchive(lake.local / "sample_archive")
    raw = ("klines", "open_interest", "agg_trades") if with_trades else ("klines", "open_interest")
    started = time.perf_counter()
    for day in days:
        ingest_day(lake, mirror, spec, day, raw, trades_per_day)
    ingested = time.perf_counter()
    cfg = ModelConfig.for_symbol(spec, **(config or {}))
    for day in days:
        model_day(lake, spec, cfg, day, with_trades)
    return {"archive + ingest": ingested - started, "model": time.perf_counter() - ingested}


def write_sample_lake(
    data_dir: Path | str,
    symbols: Iterable[str],
    days: Iterable[date],
    *,
    trades_per_day: int = DEFAULT_TRADES_PER_DAY,
    with_trades: bool = False,
    registry: Registry | None = None,
    **config: Any,
) -> dict[str, float]:
    """Raw and model tables of `symbols` over `days` in the lake at `data_dir` (archive files under
    `data_dir/sample_archive`). `config` overrides the model's registry defaults (e.g. `lookback_days=3`).
    Lookback days before the first of `days` are not written, so the first day's replay starts empty, as a first
    backfilled day does. Returns the seconds spent per phase, summed over symbols."""
    registry = registry or load_registry()
    days = sorted(days)
    phases = [
        write_symbol(data_dir, registry.get(s), days, trades_per_day, with_trades, config) for s in symbols
    ]
    return {k: sum(p[k] for p in phases) for k in ("archive + ingest", "model")}
