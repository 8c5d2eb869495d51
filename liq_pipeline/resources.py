"""Dagster resources: where the lake is, where archive files come from, the warehouse file, and the IO manager
that joins them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import pandas as pd
import pyarrow as pa
from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, OutputContext
from dagster_duckdb import DuckDBResource
from pydantic import Field

from liq_pipeline.lake import Lake, LakeSlice
from liq_pipeline.partitions import split_key
from liq_pipeline.sources.archive import Source, get_source


class LakeResource(ConfigurableResource):
    """The data lake. `data_dir` empty means `$LIQ_DATA_DIR` (default `./data`), read at run time."""

    data_dir: str = ""

    def get(self) -> Lake:
        return Lake.at(self.data_dir or None)


class ArchiveSource(ConfigurableResource):
    """Where raw files come from. `source` empty means `$LIQ_SOURCE` (default `sample`)."""

    source: str = ""

    def get(self) -> Source:
        return get_source(self.source or None)


class WarehouseResource(DuckDBResource):
    """dagster-duckdb's resource on the warehouse file. `database` empty means `$LIQ_DATA_DIR/warehouse.duckdb`,
    read at run time like the lake's own path, so a test or a second data folder needs no other configuration.
    Connections come from `DuckDBResource.get_connection` (it retries while another process holds the lock)."""

    database: str = Field(default="", description="DuckDB file; empty: $LIQ_DATA_DIR/warehouse.duckdb")

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.database:
            with super().get_connection() as con:
                yield con
            return
        path = Lake.at().warehouse_path
        path.parent.mkdir(parents=True, exist_ok=True)
        resolved = DuckDBResource(database=str(path), connection_config=self.connection_config)
        with resolved.get_connection() as con:
            yield Lake.at().register(con)


class LakeIOManager(ConfigurableIOManager):
    """Writes each asset partition as one atomic Parquet file; hands downstream assets lazy `LakeSlice`s.

    Inputs are resolved from the partition mapping's upstream keys, so a model asset sees exactly the days and
    the symbol its `MultiPartitionMapping` names, and nothing else.
    """

    data_dir: str = ""

    def _lake(self) -> Lake:
        return Lake.at(self.data_dir or None)

    def handle_output(self, context: OutputContext, obj: pa.Table | pd.DataFrame | None) -> None:
        if obj is None:
            return
        table = obj if isinstance(obj, pa.Table) else pa.Table.from_pandas(obj, preserve_index=False)
        symbol, day = split_key(context.partition_key)
        path = self._lake().write(context.asset_key.path[-1], symbol, day, table)
        context.add_output_metadata({"path": str(path)})

    def load_input(self, context: InputContext) -> LakeSlice:
        keys = [split_key(k) for k in context.asset_partition_keys]
        symbols = {s for s, _ in keys}
        if len(symbols) != 1:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: an input must cover one symbol, got {sorted(symbols)}; "
                "check the partition mapping names the symbol dimension"
            )
        return self._lake().slice(context.asset_key.path[-1], symbols.pop(), [d for _, d in keys])
