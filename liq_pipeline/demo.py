"""`liq demo`: the whole pipeline on the embedded synthetic sample, in one process, recorded in the instance."""

from __future__ import annotations

import time

from dagster import DagsterInstance

from liq_pipeline.lake import Lake
from liq_pipeline.partitions import partition_key
from liq_pipeline.sources.sample import SAMPLE_DAYS, SAMPLE_SYMBOLS

SUMMARY_TABLES = ["agg_trades", "open_interest", "klines", "funding_rate", "forced_liquidations"]


def run_demo(instance: DagsterInstance, symbols: list[str] | None = None, days: int | None = None) -> int:
    from liq_pipeline.definitions import defs  # loads the registry: keep `liq --help` fast

    symbols = symbols or list(SAMPLE_SYMBOLS)
    sample_days = SAMPLE_DAYS[-days:] if days else SAMPLE_DAYS
    lake = Lake.at()
    print("liq demo: the embedded SYNTHETIC sample market (LIQ_SOURCE=sample), not real Binance data.")
    print(f"  symbols {', '.join(symbols)}; days {sample_days[0]} .. {sample_days[-1]}; data in {lake.root.parent}")

    job = defs.get_job_def("daily_job")
    # Days in order, so each model day finds the raw days before it already in the lake.
    keys = [(day, symbol) for day in sample_days for symbol in symbols]
    for i, (day, symbol) in enumerate(keys, start=1):
        started = time.perf_counter()
        key = partition_key(symbol, day)
        result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        status = "ok" if result.success else "FAILED"
        print(f"  [{i}/{len(keys)}] {day}|{symbol}  {status}  {time.perf_counter() - started:.1f} s  run {result.run_id[:8]}")
        if not result.success:
            for event in result.all_events:
                if event.is_failure and event.event_specific_data is not None:
                    print(f"    {getattr(event.event_specific_data, 'error', event.message)}")
            return 1
    defs.get_job_def("warehouse_job").execute_in_process(instance=instance)

    print_summary(lake, symbols)
    print("\nOpen the Dagster UI on these runs:  uv run dagster dev   (then http://127.0.0.1:3000)")
    print(f"Query the warehouse:               duckdb {lake.warehouse_path}")
    return 0


def print_summary(lake: Lake, symbols: list[str]) -> None:
    print("\nRows per table and symbol:")
    print(f"  {'table':<22}" + "".join(f"{s:>12}" for s in symbols))
    for table in SUMMARY_TABLES:
        counts = [lake.row_count(table, symbol) for symbol in symbols]
        print(f"  {table:<22}" + "".join(f"{n:>12,}" for n in counts))
