"""`liq demo`: the whole pipeline on the embedded synthetic sample, in one process, recorded in the instance."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

from dagster import DagsterEvent, DagsterInstance
from dagster._utils.error import SerializableErrorInfo

from liq_pipeline.lake import Lake
from liq_pipeline.partitions import partition_key
from liq_pipeline.sources.sample import SAMPLE_DAYS, SAMPLE_SYMBOLS

# The console shows one line per partition; every event is still in the instance for the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SUMMARY_TABLES = ["agg_trades", "open_interest", "klines", "funding_rate", "forced_liquidations"]


def run_demo(instance: DagsterInstance, symbols: list[str] | None = None, days: int | None = None) -> int:
    symbols = symbols or list(SAMPLE_SYMBOLS)
    sample_days = list(SAMPLE_DAYS[-days:] if days else SAMPLE_DAYS)
    lake = Lake.at()
    print("liq demo: the embedded SYNTHETIC sample market (LIQ_SOURCE=sample), not real Binance data.")
    print(
        f"  symbols {', '.join(symbols)}; days {sample_days[0]} .. {sample_days[-1]}; data in {lake.root.parent}"
    )
    from liq_pipeline.sensors import screenshot_dir

    # The demo drops its screenshots here after the days are built: make the folder now, as N8N's would exist.
    screenshot_dir().mkdir(parents=True, exist_ok=True)
    if not run_partitions(instance, symbols, sample_days):
        return 1
    print_summary(lake, symbols)
    print_levels(lake, symbols)
    if not run_screenshot_sensor(instance, lake, symbols, sample_days):
        return 1
    print("\nOpen the Dagster UI on these runs:  uv run dagster dev   (then http://127.0.0.1:3000)")
    print('Query the warehouse:               uv run liq sql "SELECT COUNT(*) FROM aggtrades_history"')
    print(
        f"Calibrate to the screenshots:      uv run liq calibrate {symbols[0]} --start {sample_days[0]} --end {sample_days[-1]}"
    )
    return 0


def run_partitions(instance: DagsterInstance, symbols: list[str], days: list[date]) -> bool:
    """Materialize `daily_job` for every (day, symbol) in this process, days in order so each model day finds
    the raw days before it in the lake, then refresh the warehouse views. Prints one line per partition."""
    from liq_pipeline.definitions import defs  # loads the registry: keep `liq --help` fast

    job = defs.resolve_job_def("daily_job")
    keys = [(day, symbol) for day in days for symbol in symbols]
    for i, (day, symbol) in enumerate(keys, start=1):
        started = time.perf_counter()
        result = job.execute_in_process(
            partition_key=partition_key(symbol, day),
            instance=instance,
            raise_on_error=False,
            run_config=QUIET,
        )
        status = "ok" if result.success else "FAILED"
        print(
            f"  [{i}/{len(keys)}] {day}|{symbol}  {status}  {time.perf_counter() - started:.1f} s  run {result.run_id[:8]}"
        )
        if not result.success:
            for event in result.get_step_failure_events() or [result.get_run_failure_event()]:
                print(f"    {event.step_key or 'run'}: {failure_text(event)}")
            return False
    defs.resolve_job_def("warehouse_job").execute_in_process(instance=instance, run_config=QUIET)
    return True


def user_error(error: SerializableErrorInfo | None) -> SerializableErrorInfo | None:
    """The error our code raised, under Dagster's wrappers: a step failure is a DagsterExecutionStepExecutionError
    ("Error occurred while executing op ...") whose cause is the exception that says what went wrong."""
    while (
        error is not None and (error.cls_name or "").startswith("Dagster") and (error.cause or error.context)
    ):
        error = error.cause or error.context
    return error


def failure_text(event: DagsterEvent) -> str:
    """One line for a failed step or run: the user error as `ArchiveError: <its message>`."""
    error = user_error(getattr(event.event_specific_data, "error", None))
    if error is None:
        return (event.message or "failed").strip()
    text = error.message.strip()
    qualified, sep, rest = text.partition(": ")
    if sep and error.cls_name and qualified.endswith(error.cls_name):
        text = f"{error.cls_name}: {rest}"  # drop the module path of the class
    return text


def print_summary(lake: Lake, symbols: list[str]) -> None:
    print("\nRows per table and symbol:")
    print(f"  {'table':<22}" + "".join(f"{s:>12}" for s in symbols))
    for table in SUMMARY_TABLES:
        counts = [lake.row_count(table, symbol) for symbol in symbols]
        print(f"  {table:<22}" + "".join(f"{n:>12,}" for n in counts))


def print_levels(lake: Lake, symbols: list[str], top: int = 5) -> None:
    """The strongest long and short zones at the end of each symbol's newest modelled day."""
    for symbol in symbols:
        days = lake.symbol_dates("liquidation_levels").get(symbol)
        if not days:
            print(f"\n{symbol}: no liquidation levels yet")
            continue
        df = lake.read("liquidation_levels", symbol, [days[-1]]).to_pandas()
        end = df[df["is_end"]]
        if end.empty:
            print(f"\n{symbol}: no zones at the end of {days[-1]}")
            continue
        price = end["current_price"].iloc[0]
        print(
            f"\n{symbol} liquidation zones at {end['as_of'].iloc[0]:%Y-%m-%d %H:%M} UTC (price {price:,.2f}), model estimate:"
        )
        for side in ("long", "short"):
            rows = end[end["side"] == side].sort_values("rank").head(top)
            for r in rows.itertuples():
                print(
                    f"  {side:<5} #{r.rank}  {r.price_low:>12,.2f} .. {r.price_high:<12,.2f}"
                    f" {r.notional_usd / 1e6:>9,.2f}M USD  {r.distance_pct:5.2f}% {'below' if side == 'long' else 'above'}"
                )


def run_screenshot_sensor(
    instance: DagsterInstance, lake: Lake, symbols: list[str], days: list[date]
) -> bool:
    """Drop one Coinglass-style screenshot per symbol and day (12:00 UTC) into the screenshot folder, as N8N would,
    evaluate the sensor once and run what it requests, then print the BTC vs ETH report. A capture a day is what
    `liq calibrate` needs to fit on the earlier days and score on the last."""
    from dagster import build_sensor_context

    from liq_pipeline.sensors import coinglass_screenshot_sensor, rescore_scan, screenshot_dir
    from liq_pipeline.validation.report import comparison_jsonl, validation_report
    from liq_pipeline.validation.sample_screenshots import write_sample_screenshot

    folder = screenshot_dir()
    print(f"\nScreenshots (a peer model drawn Coinglass-style; see README) into {folder}:")
    for day in days:
        at = datetime.combine(day, datetime.min.time(), UTC).replace(hour=12)
        for symbol in symbols:
            print(f"  {write_sample_screenshot(lake, folder, symbol, at).name}")
    screenshots = coinglass_screenshot_sensor(build_sensor_context(instance=instance)) or []
    if not run_requests(instance, "coinglass_screenshot_sensor", screenshots):
        return False
    # Each day was scored before the next day's forced liquidations existed: rescore those days as the sensor would.
    print("\nRescoring the days scored before their next day's forced liquidations (partial_scores_sensor):")
    rescore = rescore_scan(lake)
    if not rescore:
        print("  none: the screenshot runs above scored those days after their next day arrived")
    if not run_requests(instance, "partial_scores_sensor", rescore):
        return False
    print(f"\n{validation_report(lake)}")
    print(f"Per-screenshot hit rates: {comparison_jsonl(lake)}")
    return True


def run_requests(instance: DagsterInstance, sensor: str, requests: list) -> bool:
    """Run a sensor's `validation_job` requests in this process, one line each; False at the first failure."""
    from liq_pipeline.definitions import defs

    job = defs.resolve_job_def("validation_job")
    for request in requests:
        result = job.execute_in_process(
            partition_key=request.partition_key,
            tags=request.tags,
            instance=instance,
            raise_on_error=False,
            run_config=QUIET,
        )
        status = "ok" if result.success else "FAILED"
        print(f"  {sensor} -> run {result.run_id[:8]} for {request.partition_key}: {status}")
        if not result.success:
            return False
    return True
