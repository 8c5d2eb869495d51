"""The liquidation model: pure numpy, no Dagster, DuckDB or pandas.

- `ModelConfig` (config): parameters, resolved per symbol from the registry.
- `liquidation_price` (margin): Binance's isolated-margin formula.
- `ModelInputs`, `run_model`, `ModelResult` (engine): the step-by-step replay on a fixed liquidation-price grid.
- `zones`, `levels_at`, `hourly_levels`, `end_of_day_levels` (levels): ranked zones from heatmap columns.
- `heatmap_png` (preview): a small Coinglass-style PNG (matplotlib imported on first use).
"""

from liq_pipeline.model.config import ModelConfig
from liq_pipeline.model.engine import EVENT_DTYPE, ModelInputs, ModelResult, run_model, volume_profile
from liq_pipeline.model.levels import end_of_day_levels, hourly_levels, levels_at, snapshot_rows, zones
from liq_pipeline.model.margin import (
    LONG,
    SHORT,
    liquidation_price,
    liquidation_price_for_notional,
    representative_tier,
)
from liq_pipeline.model.preview import heatmap_png

__all__ = [
    "EVENT_DTYPE",
    "LONG",
    "SHORT",
    "ModelConfig",
    "ModelInputs",
    "ModelResult",
    "end_of_day_levels",
    "heatmap_png",
    "hourly_levels",
    "levels_at",
    "liquidation_price",
    "liquidation_price_for_notional",
    "representative_tier",
    "run_model",
    "snapshot_rows",
    "volume_profile",
    "zones",
]
