"""Model assets (group `model`): one replay per `date|symbol` writes the heatmap, the levels and the predicted
liquidations. The logic is in `liq_pipeline.model` (numpy) and `liq_pipeline.model_io` (lake <-> arrays)."""

import base64
import time

import numpy as np
import pyarrow.compute as pc
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    Config,
    MetadataValue,
    Output,
    multi_asset,
)
from pydantic import Field

from liq_pipeline import checks, model_io, staleness
from liq_pipeline.automation import RECOMPUTE_WHEN_INPUTS_UPDATE
from liq_pipeline.lake import Lake, LakeSlice
from liq_pipeline.model import ModelConfig, heatmap_png
from liq_pipeline.model.config import DEFAULT_LOOKBACK_DAYS, DEFAULT_POSITION_USD, MAX_LOOKBACK_DAYS
from liq_pipeline.model_io import EVENTS, HEATMAP, LEVELS
from liq_pipeline.partitions import SYMBOL_DATE, lookback_mapping, split_key
from liq_pipeline.resources import LakeResource
from liq_pipeline.symbols import load_registry
from liq_pipeline.validation import calibration


class ModelParams(Config):
    """The model's parameters, editable in the launchpad. Empty or zero means the registry's value."""

    leverage: list[int] = Field(
        default=[], description="Leverages, e.g. [5, 10, 25, 50, 100]; empty = registry"
    )
    leverage_weights: list[float] = Field(default=[], description="Share of new positions per leverage")
    lookback_days: int = Field(
        default=DEFAULT_LOOKBACK_DAYS, description=f"Days replayed, 1..{MAX_LOOKBACK_DAYS}"
    )
    position_usd: float = Field(
        default=DEFAULT_POSITION_USD, description="Representative position (margin tier)"
    )
    price_bin: float = Field(default=0.0, description="Heatmap price bin; 0 = registry")
    imbalance_tilt: float = Field(
        default=0.0, description="Taker-imbalance tilt of the leverage mix; 0 = off"
    )
    step_minutes: int = Field(default=5, description="Replay step; 5 = the open-interest resolution")
    use_calibration: bool = Field(
        default=True,
        description="Use the symbol's fitted mix, position and lookback (model_calibration / liq calibrate) where "
        "they beat the defaults on held-out screenshots; a value set here still wins",
    )

    def for_symbol(self, symbol: str, lake: Lake | None = None) -> ModelConfig:
        if not 1 <= self.lookback_days <= MAX_LOOKBACK_DAYS:
            raise ValueError(f"lookback_days must be 1..{MAX_LOOKBACK_DAYS}, got {self.lookback_days}")
        overrides = {
            "lookback_days": self.lookback_days,
            "position_usd": self.position_usd,
            "imbalance_tilt": self.imbalance_tilt,
            "step_minutes": self.step_minutes,
            "price_bin": self.price_bin or None,
        }
        if self.leverage_weights:
            overrides["leverage_weights"] = tuple(self.leverage_weights)
        if self.leverage:
            overrides["leverage"] = tuple(self.leverage)
        if self.use_calibration:  # a field left at its default takes the fitted value, if any
            fields = type(self).model_fields
            chosen = {k for k in overrides if getattr(self, k) != fields[k].default}
            overrides = calibration.with_fitted(symbol, overrides, chosen, lake)
        return ModelConfig.for_symbol(load_registry().get(symbol), **overrides)


# The partition mapping is fixed at definition time, so it reaches back the most days a run may ask for; each run
# then keeps its own `lookback_days` of them. It names both dimensions: one left out would read every symbol.
_LOOKBACK = lookback_mapping(MAX_LOOKBACK_DAYS)


def _check(asset: str, name: str, description: str) -> AssetCheckSpec:
    return checks.check_spec(name, asset, description)


@multi_asset(
    outs={
        HEATMAP: AssetOut(
            io_manager_key="lake_io_manager",
            automation_condition=RECOMPUTE_WHEN_INPUTS_UPDATE,
            kinds={"parquet", "numpy"},
            description="Open positions per 5-minute step and liquidation-price bin, longs and shorts apart, in USD "
            "at the bin's price and weighted by age over the lookback: "
            "the Coinglass-style heatmap. A row holds the state at `as_of` = `ts` + step, after the candle of the step "
            "that starts at `ts`. Only non-empty cells are written.",
        ),
        LEVELS: AssetOut(
            io_manager_key="lake_io_manager",
            automation_condition=RECOMPUTE_WHEN_INPUTS_UPDATE,
            kinds={"parquet"},
            description="The strongest liquidation zones (neighbouring bins merged) at each hour and at the end "
            "of the day (`is_end`), ranked per side, with their distance from the price then.",
        ),
        EVENTS: AssetOut(
            io_manager_key="lake_io_manager",
            automation_condition=RECOMPUTE_WHEN_INPUTS_UPDATE,
            kinds={"parquet"},
            description="The model's liquidation events: where price ran through a level during the day.",
        ),
    },
    ins={
        "klines": AssetIn(partition_mapping=_LOOKBACK),
        "open_interest": AssetIn(partition_mapping=_LOOKBACK),
        "agg_trades": AssetIn(partition_mapping=_LOOKBACK),
    },
    partitions_def=SYMBOL_DATE,
    group_name="model",
    check_specs=[
        _check(
            HEATMAP,
            "invariants",
            "Conservation in coins, no level inside the step's range (but the step's own new ones), coins held <= OI",
        ),
        _check(HEATMAP, "not_empty_when_oi_moved", "The heatmap has mass when open interest changed"),
    ],
)
def liquidation_model(
    context: AssetExecutionContext,
    config: ModelParams,
    lake: LakeResource,
    klines: LakeSlice,
    open_interest: LakeSlice,
    agg_trades: LakeSlice,
):
    symbol, day = split_key(context.partition_key)
    spec = load_registry().get(symbol)
    cfg = config.for_symbol(symbol, klines.lake)
    # Which raw partitions this run reads, taken before reading them: stored with the tables for staleness.
    inputs_record = staleness.record_inputs(klines.lake, symbol, day, cfg.lookback_days)
    loaded = model_io.load_inputs(day, cfg, klines, open_interest, agg_trades)
    started = time.perf_counter()
    result = model_io.run_day(spec, cfg, loaded)
    model_s = time.perf_counter() - started

    heat = model_io.heatmap_table(result)
    levels = model_io.levels_table(result)
    events = model_io.events_table(result)
    heat, levels, events = (staleness.stamp(t, inputs_record) for t in (heat, levels, events))
    common = {
        "model config": MetadataValue.json(cfg.to_dict()),
        "lookback days used": len(loaded.days_used),
        "lookback days missing (skipped)": MetadataValue.json(
            {table: [d.isoformat() for d in days] for table, days in loaded.days_missing.items()}
        ),
        "model seconds": round(model_s, 3),
    }
    png = heatmap_png(result.ts_end, result.prices, result.intensity(), result.close, title=f"{symbol} {day}")
    preview_path = lake.get().local / "previews" / symbol / f"{day}.png"
    preview_path.parent.mkdir(parents=True, exist_ok=True)
    preview_path.write_bytes(png)
    end = levels.filter(pc.field("is_end"))
    yield Output(
        heat,
        output_name=HEATMAP,
        metadata={
            **common,
            "dagster/row_count": heat.num_rows,
            "preview": MetadataValue.md(
                f"![{symbol} {day}](data:image/png;base64,{base64.b64encode(png).decode()})"
            ),
            "preview file": MetadataValue.path(str(preview_path)),
            "open long USD (end of day)": round(float(result.open_long_usd[-1]), 0),
            "open short USD (end of day)": round(float(result.open_short_usd[-1]), 0),
            "steps replayed": result.n_steps,
            "trades in volume profile": loaded.n_trades,
            "input seconds": MetadataValue.json({k: round(v, 3) for k, v in loaded.seconds.items()}),
        },
    )
    yield Output(
        levels,
        output_name=LEVELS,
        metadata={
            **common,
            "dagster/row_count": levels.num_rows,
            "top levels (end of day)": MetadataValue.md(_levels_markdown(end)),
        },
    )
    yield Output(
        events,
        output_name=EVENTS,
        metadata={
            **common,
            "dagster/row_count": events.num_rows,
            "predicted long liquidations USD": round(_side_sum(events, "long"), 0),
            "predicted short liquidations USD": round(_side_sum(events, "short"), 0),
        },
    )

    problems = model_io.invariant_failures(result, loaded.inputs)
    yield AssetCheckResult(
        asset_key=AssetKey(HEATMAP),
        check_name="invariants",
        passed=not problems,
        description="; ".join(problems) or "all hold",
        metadata={"ledger": MetadataValue.json(result.ledger)},
    )
    oi = loaded.inputs.oi
    oi_moved = bool(np.nanmax(oi) > np.nanmin(oi)) if np.isfinite(oi).any() else False
    yield AssetCheckResult(
        asset_key=AssetKey(HEATMAP),
        check_name="not_empty_when_oi_moved",
        passed=heat.num_rows > 0 or not oi_moved,
        description=f"{heat.num_rows} cells; open interest {'moved' if oi_moved else 'did not move'}",
    )


def _side_sum(events, side: str) -> float:
    return float(pc.sum(events.filter(pc.field("side") == side)["notional_usd"]).as_py() or 0.0)


def _levels_markdown(end) -> str:
    if end.num_rows == 0:
        return "no zones"
    df = end.select(["side", "rank", "price_low", "price_high", "notional_usd", "distance_pct"]).to_pandas()
    df = df.sort_values(["side", "rank"]).groupby("side").head(5)
    df["notional_usd"] = df["notional_usd"].map(lambda v: f"{v / 1e6:,.2f}M")
    df["distance_pct"] = df["distance_pct"].map(lambda v: f"{v:+.2f}%")
    return df.to_markdown(index=False)


MODEL_ASSETS = [liquidation_model]
