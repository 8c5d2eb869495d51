"""The heatmap tiles (group `model`): per `date|symbol`, the states and candles the API's windows of 7 days and more
read, cut from that day's heatmap and klines. The logic is in `liq_pipeline.tiles`; this asset only wires it.

In group `model`, so `daily_job`, `model_job` (the stale-model and live sensors' job) and backfills rewrite the
tiles in the same run as the heatmap they are cut from; the automation condition is the model's, so a heatmap
re-materialized on its own is followed by its tiles."""

from dagster import AssetExecutionContext, AssetIn, AssetOut, MetadataValue, Output, multi_asset

from liq_pipeline import tiles
from liq_pipeline.automation import RECOMPUTE_WHEN_INPUTS_UPDATE
from liq_pipeline.lake import LakeSlice
from liq_pipeline.model_io import HEATMAP
from liq_pipeline.partitions import SYMBOL_DATE, split_key

_DESCRIPTIONS = {
    tiles.TILE_1H: "The heatmap's rows at whole-hour states (as_of = 01:00 .. 24:00): what the API's 7d, 14d and "
    "30d windows (steps of 1, 2 and 4 h) read instead of the 5-minute heatmap. Same cells, columns and order.",
    tiles.TILE_12H: "The heatmap's rows at the 12:00 and 24:00 states: what the API's 90d, 180d and 1y windows "
    "(steps of 12 h and 1 day) read.",
    tiles.CANDLES_1H: "The day's 1-minute klines aggregated per hour (OHLC, volumes, minutes): the coarse "
    "windows' candles.",
}


def _out(name: str) -> AssetOut:
    return AssetOut(
        io_manager_key="lake_io_manager",
        automation_condition=RECOMPUTE_WHEN_INPUTS_UPDATE,
        kinds={"parquet"},
        description=_DESCRIPTIONS[name],
        is_required=name != tiles.CANDLES_1H,  # a day without klines has no hourly candles
    )


@multi_asset(
    outs={name: _out(name) for name in tiles.TILE_TABLES},
    ins={HEATMAP: AssetIn(), "klines": AssetIn()},  # the same partition: identity mapping
    partitions_def=SYMBOL_DATE,
    group_name="model",
)
def heatmap_tiles(context: AssetExecutionContext, liquidation_heatmap: LakeSlice, klines: LakeSlice):
    symbol, day = split_key(context.partition_key)
    if not liquidation_heatmap.present:
        raise FileNotFoundError(
            f"no liquidation_heatmap partition {day}|{symbol} in the lake ({liquidation_heatmap.lake.root}); "
            "materialize liquidation_model for it first"
        )
    heat_file = liquidation_heatmap.files[0]
    klines_file = klines.files[0] if klines.present else None
    for name, table in tiles.build_tiles(heat_file, klines_file).items():
        info = tiles.tile_info(table.schema.metadata)
        yield Output(
            table,
            output_name=name,
            metadata={
                "dagster/row_count": table.num_rows,
                "source digest": info.get("digest", ""),
                "tile": MetadataValue.json(info),
            },
        )


TILE_ASSETS = [heatmap_tiles]
