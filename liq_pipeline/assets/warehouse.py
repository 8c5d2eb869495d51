"""The warehouse: DuckDB views over the lake, so the seed's SQL runs as written."""

from dagster import MaterializeResult, asset
from dagster_duckdb import DuckDBResource

from liq_pipeline.resources import LakeResource


@asset(
    group_name="warehouse",
    pool="duckdb_warehouse",  # DuckDB allows one writer process; the pool has limit 1 (dagster.yaml)
    kinds={"duckdb"},
    description="Views over the lake in warehouse.duckdb: aggtrades_history, open_interest_history, "
    "klines_1m_history, klines_15m_history, ... The views glob the lake, so new partitions need no refresh.",
)
def warehouse_views(lake: LakeResource, warehouse: DuckDBResource) -> MaterializeResult:
    """`warehouse` is the definitions' `WarehouseResource` (a `DuckDBResource` on $LIQ_DATA_DIR/warehouse.duckdb)."""
    the_lake = lake.get()
    with warehouse.get_connection() as con:
        views = the_lake.refresh_warehouse(con)
        database = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
        path = database.fetchone()[0]
    return MaterializeResult(metadata={"path": str(path), "views": ", ".join(views)})
