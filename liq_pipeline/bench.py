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
            lake.write(AGG_TRADES.table, spec.symbol, BENCH_DAY, ingest(mirror, AGG_TRADES, spec.symbol, BENCH_DAY).table)

        t_floor = _median_time(floor, args.repeat)
        t_unzip = _median_time(lambda: extract_csv(fetched, AGG_TRADES, spec.symbol, BENCH_DAY, root), args.repeat)
        t_ours = _median_time(ours, args.repeat)
    rows = args.trades
    print(f"DuckDB alone, CSV -> Parquet (floor): median {t_floor:.2f} s  {rows / t_floor / 1e6:.2f} M rows/s")
    print(f"agg_trades, zip -> verified -> lake:  median {t_ours:.2f} s  {rows / t_ours / 1e6:.2f} M rows/s")
    print(f"  of which unzip alone (single-threaded inflate, not in the floor): median {t_unzip:.2f} s")
    print(f"ratio to the floor: {t_ours / t_floor:.2f}x (target <= 1.5x; median of {args.repeat})")
    print(f"ratio to floor + unzip: {t_ours / (t_floor + t_unzip):.2f}x")
    return 0
