"""`liq bench ...`: scripts that print speed figures. Not timed tests: machines are shared and noisy, so each
figure is a median over repeats, printed beside the floor or target it should be read against."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb

from liq_pipeline.formats import AGG_TRADES
from liq_pipeline.lake import Lake
from liq_pipeline.sources import sample
from liq_pipeline.sources.archive import LocalMirror, extract_csv, ingest
from liq_pipeline.symbols import load_registry

BENCH_DAY = date(2024, 12, 28)


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_ingest(args: argparse.Namespace) -> int:
    """A full-size aggTrades day: our zip -> lake path against DuckDB's own CSV -> Parquet as the floor."""
    spec = load_registry().get("BTCUSDT")
    with tempfile.TemporaryDirectory(prefix="liq-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        sample.write_day(root / "mirror", spec, BENCH_DAY, trades_per_day=args.trades)
        print(f"generated a {args.trades:,}-trade BTCUSDT day in {time.perf_counter() - started:.1f} s")
        mirror = LocalMirror(root / "mirror")
        fetched = mirror.fetch(AGG_TRADES, spec.symbol, BENCH_DAY)
        csv_path = extract_csv(fetched, AGG_TRADES, spec.symbol, BENCH_DAY, root)
        print(f"zip {fetched.path.stat().st_size / 1e6:.0f} MB, csv {csv_path.stat().st_size / 1e6:.0f} MB")

        def floor():
            with duckdb.connect() as con:
                con.execute(
                    f"COPY (SELECT * FROM read_csv('{csv_path}')) TO '{root / 'floor.parquet'}' "
                    "(FORMAT parquet, COMPRESSION zstd)"
                )

        lake = Lake(root / "lake")

        def ours():
            lake.write(
                AGG_TRADES.table,
                spec.symbol,
                BENCH_DAY,
                ingest(mirror, AGG_TRADES, spec.symbol, BENCH_DAY).table,
            )

        t_floor = _median_time(floor, args.repeat)
        t_unzip = _median_time(
            lambda: extract_csv(fetched, AGG_TRADES, spec.symbol, BENCH_DAY, root), args.repeat
        )
        t_ours = _median_time(ours, args.repeat)
    rows = args.trades
    print(
        f"DuckDB alone, CSV -> Parquet (floor): median {t_floor:.2f} s  {rows / t_floor / 1e6:.2f} M rows/s"
    )
    print(f"agg_trades, zip -> verified -> lake:  median {t_ours:.2f} s  {rows / t_ours / 1e6:.2f} M rows/s")
    print(f"  of which unzip alone (single-threaded inflate, not in the floor): median {t_unzip:.2f} s")
    print(f"ratio to the floor: {t_ours / t_floor:.2f}x (target <= 1.5x; median of {args.repeat})")
    print(f"ratio to floor + unzip: {t_ours / (t_floor + t_unzip):.2f}x")
    return 0


def bench_model(args: argparse.Namespace) -> int:
    """One BTCUSDT symbol-day with a 14-day lookback of full-size sample days, aggTrades included."""
    from datetime import timedelta

    from liq_pipeline import model_io
    from liq_pipeline.formats import FORMATS
    from liq_pipeline.model import ModelConfig

    spec = load_registry().get("BTCUSDT")
    cfg = ModelConfig.for_symbol(spec)
    days = [BENCH_DAY - timedelta(days=i) for i in range(cfg.lookback_days - 1, -1, -1)]
    with tempfile.TemporaryDirectory(prefix="liq-bench-") as tmp:
        root = Path(tmp)
        mirror, lake = LocalMirror(root / "mirror"), Lake(root / "lake")
        started = time.perf_counter()
        for day in days:
            sample.write_day(root / "mirror", spec, day, trades_per_day=args.trades)
            for table in ("agg_trades", "klines", "open_interest"):
                fmt = FORMATS[table]
                lake.write(table, spec.symbol, day, ingest(mirror, fmt, spec.symbol, day).table)
        print(f"prepared {len(days)} days x {args.trades:,} trades in {time.perf_counter() - started:.0f} s")
        slices = {t: lake.slice(t, spec.symbol, days) for t in ("klines", "open_interest", "agg_trades")}

        def load():
            return model_io.load_inputs(
                BENCH_DAY, cfg, slices["klines"], slices["open_interest"], slices["agg_trades"]
            )

        loaded = load()
        t_load = _median_time(load, args.repeat)
        t_model = _median_time(lambda: model_io.run_day(spec, cfg, loaded), args.repeat)
        result = model_io.run_day(spec, cfg, loaded)
        t_tables = _median_time(
            lambda: (
                model_io.heatmap_table(result),
                model_io.levels_table(result),
                model_io.events_table(result),
            ),
            args.repeat,
        )
    steps = result.n_steps
    print(
        f"lookback {cfg.lookback_days} days, {steps:,} steps, {result.prices.size:,} price bins x "
        f"{len(cfg.leverage)} leverages x 2 sides, {loaded.n_trades:,} trades in the volume profile"
    )
    print(
        f"model (run_model):             median {t_model:.3f} s per symbol-day  {steps / t_model:,.0f} steps/s"
        "  (target < 1 s)"
    )
    print(f"inputs (DuckDB: bars, OI, volume profile of {len(days)} days): median {t_load:.3f} s")
    print(f"output tables (heatmap, levels, events):   median {t_tables:.3f} s")
    print(f"total per symbol-day: {t_model + t_load + t_tables:.2f} s (median of {args.repeat})")
    return 0
