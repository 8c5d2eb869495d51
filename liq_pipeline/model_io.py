"""Between the lake and the model: read a symbol's lookback into `ModelInputs`, turn a `ModelResult` into tables.

Plain functions over `LakeSlice`s and Arrow tables, so the Dagster assets stay thin and the bench and tests can
call the same code. DuckDB does the heavy reading (1-minute klines to steps, millions of trades to a volume
profile) straight from the Parquet files; the engine only ever sees numpy arrays.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import date, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from liq_pipeline.lake import OHLC_SQL, LakeSlice, uri
from liq_pipeline.model import ModelConfig, ModelInputs, ModelResult, hourly_levels, run_model
from liq_pipeline.model.engine import ENTRY_SUBBINS
from liq_pipeline.symbols import SymbolSpec

# Parquet schema metadata: the parameters that produced a model table (read by the API)
# The model's three lake tables, written together by one replay.
HEATMAP, LEVELS, EVENTS = "liquidation_heatmap", "liquidation_levels", "predicted_liquidations"
MODEL_TABLES = (HEATMAP, LEVELS, EVENTS)
CONFIG_KEY = b"liq_model_config"
SOURCE_KEY = (
    b"liq_source_fingerprint"  # a cached volume profile: the agg_trades partition it was computed from
)
LEVEL_COLUMNS = [
    "as_of",
    "side",
    "rank",
    "price_low",
    "price_high",
    "peak_price",
    "notional_usd",
    "distance_pct",
    "current_price",
    "is_end",
]


class MissingInputError(RuntimeError):
    """The partition's own day is missing from a raw table: the model cannot run for it."""


@dataclass
class LoadedInputs:
    inputs: ModelInputs
    day_start: datetime  # UTC, naive: the first step kept in the output
    days_used: list[date]
    days_missing: dict[str, list[date]]  # table -> lookback days absent from the lake (skipped)
    n_trades: int
    seconds: dict[str, float] = field(default_factory=dict)


def _files(s: LakeSlice) -> list[str]:
    return [uri(p) for p in s.files]


def load_inputs(
    day: date, config: ModelConfig, klines: LakeSlice, open_interest: LakeSlice, agg_trades: LakeSlice | None
) -> LoadedInputs:
    """The last `config.lookback_days` days up to `day` of one symbol, aggregated to the model's step.

    Lookback days missing from the lake are skipped and reported; the partition's own day must exist in klines and
    open_interest, else `MissingInputError` names the raw partition to materialize. Without aggTrades for a step the
    engine falls back to the kline typical price.
    """
    n = config.lookback_days
    klines, open_interest = klines.last(n), open_interest.last(n)
    for s in (klines, open_interest):
        if day not in s.present:
            raise MissingInputError(
                f"raw partition {day}|{s.symbol} of {s.table} is not in the lake ({s.lake.root / s.table}); "
                f"materialize {s.table} for {day}|{s.symbol} first"
            )
    trades = agg_trades.last(n) if agg_trades is not None else None
    step_us = config.step_minutes * 60 * 1_000_000
    seconds: dict[str, float] = {}
    con = klines.lake.connect()
    try:
        started = time.perf_counter()
        bars = con.execute(
            f"""
            SELECT epoch_us(open_time) // {step_us} AS step,
                   {OHLC_SQL},
                   sum(taker_buy_volume) AS buy, sum(volume) - sum(taker_buy_volume) AS sell,
                   epoch_us(max(open_time)) AS last_bar
            FROM read_parquet(?) GROUP BY step ORDER BY step
            """,
            [_files(klines)],
        ).fetchnumpy()
        bars = _without_unfinished_step(bars, step_us)
        steps = bars["step"].astype(np.int64)
        # Open interest at the end of each step: the last reading at or before it, if at most one step old. An
        # older one is a gap (NaN) the engine bridges, never a flat line over a missing metrics day. A step that
        # ends at midnight takes the last reading before it: the midnight reading is the next day's (its file's
        # first row), and day D's replay must see the same inputs as day D+1's, or their maps would differ there.
        oi = con.execute(
            "SELECT epoch_us(ts) AS t, open_interest FROM read_parquet(?) ORDER BY ts",
            [_files(open_interest)],
        ).fetchnumpy()
        ends = (steps + 1) * step_us
        midnight = ends % (86_400 * 1_000_000) == 0
        at = np.searchsorted(oi["t"], ends, side="right") - 1 - (midnight & np.isin(ends, oi["t"]))
        fresh = (at >= 0) & (oi["t"][np.clip(at, 0, None)] >= ends - step_us)
        oi_at_end = np.where(fresh, oi["open_interest"][np.clip(at, 0, None)], np.nan)
        # The reading at the window's start lets its first step open what it added.
        start = int(np.searchsorted(oi["t"], steps[0] * step_us, side="left"))
        exact = start < oi["t"].size and oi["t"][start] == steps[0] * step_us
        oi_start = float(oi["open_interest"][start]) if exact else None
        seconds["klines+oi"] = time.perf_counter() - started

        profile: dict[str, np.ndarray] = {}
        n_trades = 0
        if trades is not None and trades.present:
            started = time.perf_counter()
            prof = volume_profile_days(con, trades, config.step_minutes, config.price_bin / ENTRY_SUBBINS)
            n_trades = int(prof["n"].sum())
            index = np.searchsorted(steps, prof["step"])
            known = (index < steps.size) & (steps[np.clip(index, 0, steps.size - 1)] == prof["step"])
            profile = {
                "profile_step": index[known],
                "profile_price": prof["vwap"][known],
                "profile_qty": prof["qty"][known],
            }
            seconds["volume profile"] = time.perf_counter() - started
    finally:
        con.close()

    inputs = ModelInputs(
        ts=(steps * step_us * 1000).astype("datetime64[ns]"),
        open=bars["open"],
        high=bars["high"],
        low=bars["low"],
        close=bars["close"],
        oi=oi_at_end,
        oi_start=oi_start,
        taker_buy=bars["buy"],
        taker_sell=bars["sell"],
        **profile,
    )
    missing = {
        s.table: list(s.missing) for s in (klines, open_interest, trades) if s is not None and s.missing
    }
    return LoadedInputs(
        inputs=inputs,
        day_start=datetime.combine(day, datetime.min.time()),
        days_used=list(klines.present),
        days_missing=missing,
        n_trades=n_trades,
        seconds=seconds,
    )


def _without_unfinished_step(bars: dict[str, np.ndarray], step_us: int) -> dict[str, np.ndarray]:
    """Drop the last step when its bars stop before its end: a live day (`liq collect`) ends inside a step, and a
    state stamped with that step's end would claim minutes nobody has seen. An archive day ends on a whole step."""
    steps = bars["step"]
    if steps.size and bars["last_bar"][-1] + 60_000_000 < (steps[-1] + 1) * step_us:
        return {k: v[:-1] for k, v in bars.items()}
    return bars


PROFILE_COLUMNS = ("step", "vwap", "qty", "n")


def volume_profile_days(
    con: duckdb.DuckDBPyConnection, trades: LakeSlice, step_minutes: int, bucket: float
) -> dict[str, np.ndarray]:
    """The volume profile of the slice's days: one row per (step, price bucket) with its VWAP, quantity and trade
    count, ordered by step then VWAP. ``step`` counts steps since the epoch.

    A day's profile depends only on that day's trades, and every partition of the next ``lookback_days`` reads it, so
    each day's is computed once and cached beside the lake (`Lake.cache`), keyed by the agg_trades partition's
    fingerprint: a re-ingested day is recomputed."""
    from liq_pipeline import staleness  # staleness imports this module's table names

    step_us = step_minutes * 60 * 1_000_000
    cache = trades.lake.cache()
    name = f"volume_profile_{step_minutes}m_{bucket:.10g}"
    parts = []
    for day in trades.present:
        fingerprint = staleness.partition_fingerprint(trades.lake, trades.table, trades.symbol, day)
        path = cache.partition_file(name, trades.symbol, day)
        if (
            path.exists()
            and (pq.read_schema(uri(path)).metadata or {}).get(SOURCE_KEY) == fingerprint.encode()
        ):
            parts.append(pq.read_table(uri(path)))
            continue
        table = con.sql(
            f"""
            SELECT epoch_us(ts) // {step_us} AS step, sum(price * quantity) / sum(quantity) AS vwap,
                   sum(quantity) AS qty, count(*) AS n
            FROM read_parquet($file) GROUP BY step, floor(price / {bucket}) ORDER BY step, vwap
            """,
            params={"file": uri(trades.lake.partition_file(trades.table, trades.symbol, day))},
        ).to_arrow_table()
        table = table.replace_schema_metadata({SOURCE_KEY: fingerprint.encode()})
        cache.write(name, trades.symbol, day, table)
        parts.append(table)
    merged = pa.concat_tables(parts) if parts else None
    return {c: (merged[c].to_numpy() if merged else np.zeros(0)) for c in PROFILE_COLUMNS}


def run_day(spec: SymbolSpec, config: ModelConfig, loaded: LoadedInputs) -> ModelResult:
    """Replay the whole lookback, keep the partition's day."""
    return run_model(spec, config, loaded.inputs, keep_from=np.datetime64(loaded.day_start, "ns"))


def _meta(config: ModelConfig) -> dict[bytes, bytes]:
    return {CONFIG_KEY: json.dumps(config.to_dict(), sort_keys=True).encode()}


def _timestamps(values: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values).astype("datetime64[us]"), pa.timestamp("us"))


def heatmap_table(result: ModelResult) -> pa.Table:
    """One row per (step, price bin) with mass. `ts` is the step's start, `as_of` = ts + step the time of the state
    the row holds (after the step's candle). Empty cells are left out: a step whose state is empty has no row."""
    rows = result.heatmap_rows()
    step = np.timedelta64(result.config.step_ns, "ns")
    table = pa.table(
        {
            "ts": _timestamps(rows["ts"]),
            "as_of": _timestamps(rows["ts"] + step),
            "price": pa.array(rows["price"], pa.float64()),
            "long_usd": pa.array(rows["long_usd"], pa.float64()),
            "short_usd": pa.array(rows["short_usd"], pa.float64()),
        }
    )
    return table.replace_schema_metadata(_meta(result.config))


def levels_table(result: ModelResult, top: int = 10) -> pa.Table:
    """The strongest zones of the state at each hour and at the end of the day (`is_end`), ranked per side.
    `as_of` is the state's time (the end of the step it follows), `current_price` that step's close."""
    rows = hourly_levels(result, top)
    cols: dict[str, list] = {c: [r[c] for r in rows] for c in LEVEL_COLUMNS}
    cols["as_of"] = [t.replace(tzinfo=None) for t in cols["as_of"]]
    schema = pa.schema(
        [
            ("as_of", pa.timestamp("us")),
            ("side", pa.string()),
            ("rank", pa.int32()),
            ("price_low", pa.float64()),
            ("price_high", pa.float64()),
            ("peak_price", pa.float64()),
            ("notional_usd", pa.float64()),
            ("distance_pct", pa.float64()),
            ("current_price", pa.float64()),
            ("is_end", pa.bool_()),
        ],
        metadata=_meta(result.config),
    )
    return pa.table(cols, schema=schema)


def events_table(result: ModelResult) -> pa.Table:
    """Predicted liquidations: when price ran through a level, the notional the model says was liquidated. `ts` is
    the start of the step whose candle crossed the level, `as_of` = ts + step the first state without it."""
    ev = result.events
    step = np.timedelta64(result.config.step_ns, "ns")
    return pa.table(
        {
            "ts": _timestamps(ev["ts"]),
            "as_of": _timestamps(ev["ts"] + step),
            "side": pa.array(np.where(ev["side"] == 0, "long", "short"), pa.string()),
            "price": pa.array(ev["price"], pa.float64()),
            "notional_usd": pa.array(ev["notional"], pa.float64()),
        }
    ).replace_schema_metadata(_meta(result.config))


def invariant_failures(result: ModelResult, inputs: ModelInputs, rel_tol: float = 1e-9) -> list[str]:
    """The model's invariants on one replay (conservation in coins, no level inside its step's range but the step's own
    new ones, coins held <= open interest); an empty list means they hold."""
    problems = []
    for side, ledger in result.ledger.items():
        total = ledger["open"] + ledger["closed"] + ledger["liquidated"]
        if abs(ledger["opened"] - total) > rel_tol * max(ledger["opened"], 1.0):
            problems.append(
                f"{side}: opened {ledger['opened']:.6g} != open + closed + liquidated {total:.6g}"
            )
    # After a step no long mass sits at or above its close, nor at or above its low unless the step opened
    # positions (a new position the low may have preceded stays open: the engine's same-step rule); shorts mirrored.
    idx = result.step_index
    opened = (result.opened[idx - int(result.info.get("dropped_steps", 0))] > 0)[:, None]
    px = result.prices[None, :]
    long_bad = (result.long_usd > 0) & (
        (px >= inputs.close[idx, None]) | ((px >= inputs.low[idx, None]) & ~opened)
    )
    short_bad = (result.short_usd > 0) & (
        (px <= inputs.close[idx, None]) | ((px <= inputs.high[idx, None]) & ~opened)
    )
    if long_bad.any():
        problems.append(f"{int(long_bad.sum())} long cells inside their step's range")
    if short_bad.any():
        problems.append(f"{int(short_bad.sum())} short cells inside their step's range")
    cap = result.oi_usd * (1 + rel_tol)
    for name, series in (("long", result.open_long_usd), ("short", result.open_short_usd)):
        over = series > cap
        if over.any():
            problems.append(f"open {name} notional above open-interest notional at {int(over.sum())} steps")
    return problems
