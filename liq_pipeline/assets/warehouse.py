"""The warehouse: DuckDB views over the lake, so the seed's SQL runs as written."""

from dagster import MaterializeResult, asset

from liq_pipeline.resources import LakeResource


@asset(
    group_name="warehouse",
    pool="duckdb_warehouse",  # DuckDB allows one writer process; the pool has limit 1 (dagster.yaml)
    kinds={"duckdb"},
    description="Views over the lake in warehouse.duckdb: aggtrades_history, open_interest_history, "
    "klines_1m_history, klines_15m_history, ... The views glob the lake, so new partitions need no refresh.",
)
def warehouse_views(lake: LakeResource) -> MaterializeResult:
    the_lake = lake.get()
    views = the_lake.refresh_warehouse()
    return MaterializeResult(metadata={"path": str(the_lake.warehouse_path), "views": ", ".join(views)})
