"""The `liq` command: demo, backfill, collect, stack, serve, screenshot-levels, calibrate, sql, validate-report, bench."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from pathlib import Path


def instance():
    """The Dagster instance of `$DAGSTER_HOME/dagster.yaml`; with DAGSTER_HOME unset, this folder's dagster.yaml,
    as `export DAGSTER_HOME=$PWD` gives the dagster CLI, so demo and backfill runs show up in `dagster dev`."""
    import fcntl

    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd()).resolve()
    if not os.environ.get("DAGSTER_HOME") and not (home / "dagster.yaml").is_file():
        raise SystemExit(
            f"no dagster.yaml in {home} and DAGSTER_HOME is unset: run liq from the liq_pipeline folder "
            "(where dagster.yaml is), or export DAGSTER_HOME=<a folder for your own Dagster instance>"
        )
    home.mkdir(parents=True, exist_ok=True)
    # Two `liq backfill` processes started together would both create the sqlite schema and one would fail.
    fd = os.open(home, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    finally:
        os.close(fd)  # releases the lock


def cmd_demo(args: argparse.Namespace) -> int:
    from liq_pipeline.demo import run_demo

    with instance() as inst:
        return run_demo(inst, symbols=args.symbols, days=args.days)


def cmd_backfill(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from liq_pipeline.demo import run_partitions
    from liq_pipeline.symbols import validate_symbol

    spec = validate_symbol(args.symbol)
    if args.end < args.start:
        raise SystemExit(f"--end {args.end} is before --start {args.start}")
    days = [args.start + timedelta(days=i) for i in range((args.end - args.start).days + 1)]
    days = [d for d in days if spec.covers(d)] or days
    with instance() as inst:
        return 0 if run_partitions(inst, [spec.symbol], days) else 1


def cmd_bench(args: argparse.Namespace) -> int:
    if args.days is None:
        args.days = 30 if args.what == "api" else 3
    if args.what == "api":
        from liq_pipeline.api.bench import bench_api_command

        return bench_api_command(args)
    if args.what == "live":
        from liq_pipeline.live.bench import bench_live

        return bench_live(args)
    from liq_pipeline import bench

    benches = {"ingest": bench.bench_ingest, "model": bench.bench_model, "backfill": bench.bench_backfill}
    return benches[args.what](args)


def cmd_serve(args: argparse.Namespace) -> int:
    """uvicorn over the app factory `create_app()`, which reads `$LIQ_DATA_DIR` (`api.server.serve`: several
    workers are processes of their own, spawned with this environment)."""
    from liq_pipeline.api.server import serve
    from liq_pipeline.lake import location

    if args.data_dir is not None:
        os.environ["LIQ_DATA_DIR"] = str(location(args.data_dir))  # a folder made absolute, or s3://…
    return serve(args.host, args.port, args.workers, args.log_level)


def cmd_stack(args: argparse.Namespace) -> int:
    from liq_pipeline.stack import run_foreground

    return run_foreground(args.dir)


def cmd_validate_report(args: argparse.Namespace) -> int:
    from liq_pipeline.validation.report import validate_report_cli

    return validate_report_cli()


def cmd_sql(args: argparse.Namespace) -> int:
    """Run one query on the warehouse's views and print the result as a table. The views are opened on an
    in-memory connection over the lake (`Lake.connect_readonly`), so this never waits for, or blocks, a writer."""
    import duckdb
    from tabulate import tabulate

    from liq_pipeline.lake import Lake

    lake = Lake.at()
    with lake.connect_readonly() as con:
        try:
            cursor = con.execute(args.query)
            if cursor.description is None:  # a statement without a result (SET, CREATE ...): nothing to print
                return 0
            columns, rows = [d[0] for d in cursor.description], cursor.fetchmany(args.max_rows + 1)
        except duckdb.Error as exc:
            print(f"liq sql: {str(exc).splitlines()[0]}", file=sys.stderr)
            if not lake.view_sql():
                print(f"The lake {lake.root} has no data yet: run `uv run liq demo` first.", file=sys.stderr)
            else:
                print(f"Views: {', '.join(lake.view_sql())}", file=sys.stderr)
            return 1
    print(tabulate(rows[: args.max_rows], headers=columns, tablefmt="psql", floatfmt=",.10g", intfmt=","))
    if len(rows) > args.max_rows:
        print(f"(first {args.max_rows} rows shown: add a LIMIT or --max-rows N)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from liq_pipeline.validation.calibration import calibrate_cli

    return calibrate_cli(
        args.symbol,
        args.start,
        args.end,
        data_dir=args.data_dir,
        screenshots=args.screenshots,
        as_json=args.json,
        save_result=args.save,
        lookbacks=args.lookbacks,
    )


def cmd_screenshot_levels(args: argparse.Namespace) -> int:
    from liq_pipeline.validation.screenshot import screenshot_levels_cli

    return screenshot_levels_cli(args.file, args.json, symbol=args.symbol, data_dir=args.data_dir)


def cmd_collect(args: argparse.Namespace) -> int:
    import logging

    from liq_pipeline.live.collector import collect
    from liq_pipeline.symbols import load_registry

    registry = load_registry()
    symbols = [s.strip().upper() for s in args.symbols.split(",")] if args.symbols else registry.symbols
    unknown = [s for s in symbols if s not in registry.symbols]
    if unknown:
        raise SystemExit(
            f"liq collect: {', '.join(unknown)} not in the symbol registry ({', '.join(registry.symbols)}); "
            "add it to the registry first"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per REST request is noise
    collect(symbols, commit_seconds=args.commit_seconds)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="liq", description="Liquidation heatmaps for Binance USDT-M perpetuals."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the pipeline on the embedded synthetic sample, end to end")
    demo.add_argument("--symbols", nargs="+", default=None, help="default: BTCUSDT ETHUSDT")
    demo.add_argument("--days", type=int, default=None, help="how many sample days (default: all)")
    demo.set_defaults(func=cmd_demo)

    backfill = sub.add_parser(
        "backfill",
        help="materialize one symbol over a date range, day by day, in this process (uses LIQ_SOURCE)",
    )
    backfill.add_argument("symbol")
    backfill.add_argument("--start", type=date.fromisoformat, required=True, help="YYYY-MM-DD")
    backfill.add_argument("--end", type=date.fromisoformat, required=True, help="YYYY-MM-DD, inclusive")
    backfill.set_defaults(func=cmd_backfill)

    collect = sub.add_parser(
        "collect",
        help="live mode: today's rows from Binance's public streams into the lake, until SIGTERM or Ctrl-C",
    )
    collect.add_argument(
        "--symbols",
        default=None,
        help="comma-separated, e.g. BTCUSDT,ETHUSDT (default: every registry symbol)",
    )
    collect.add_argument(
        "--commit-seconds",
        dest="commit_seconds",
        type=float,
        default=15.0,
        help="how often rows are committed",
    )
    collect.set_defaults(func=cmd_collect)

    stack = sub.add_parser(
        "stack",
        help="PostgreSQL, Redis and an S3 server on 127.0.0.1, for trying the distributed deployment on one machine; "
        "prints their environment as export lines and runs until Ctrl-C",
    )
    stack.add_argument("--dir", type=Path, required=True, help="folder for the services' data and logs")
    stack.set_defaults(func=cmd_stack)

    serve = sub.add_parser("serve", help="the read-only heatmap API and page (FastAPI + uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--data-dir",
        dest="data_dir",
        default=None,
        help="a folder or s3://bucket/prefix; default: $LIQ_DATA_DIR",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the one port, the kernel spreading connections over them (2 on a 2-core box)",
    )
    serve.add_argument(
        "--log-level", dest="log_level", default="info", help="uvicorn's; warning drops the per-request lines"
    )
    serve.set_defaults(func=cmd_serve)

    shot = sub.add_parser("screenshot-levels", help="read the levels off a Coinglass heatmap screenshot")
    shot.add_argument("file", type=Path)
    shot.add_argument("--json", action="store_true", help="print one JSON object")
    shot.add_argument(
        "--symbol",
        default=None,
        help="cross-check the price axis against this symbol's klines in the lake (capture time from the file "
        "name); exit 3 when they disagree",
    )
    shot.add_argument(
        "--data-dir",
        dest="data_dir",
        default=None,
        help="folder holding the lake (default: $LIQ_DATA_DIR or ./data)",
    )
    shot.set_defaults(func=cmd_screenshot_levels)

    calibrate = sub.add_parser(
        "calibrate",
        help="fit the model's leverage mix, position size and lookback to the Coinglass screenshots of a window",
    )
    calibrate.add_argument("symbol")
    calibrate.add_argument("--start", type=date.fromisoformat, required=True, help="YYYY-MM-DD")
    calibrate.add_argument("--end", type=date.fromisoformat, required=True, help="YYYY-MM-DD, inclusive")
    calibrate.add_argument("--json", action="store_true", help="print one JSON object")
    calibrate.add_argument(
        "--data-dir", dest="data_dir", default=None, help="default: $LIQ_DATA_DIR or ./data"
    )
    calibrate.add_argument(
        "--screenshots",
        type=Path,
        default=None,
        help="default: $LIQ_SCREENSHOT_DIR or <data dir>/screenshots",
    )
    calibrate.add_argument(
        "--save",
        action="store_true",
        help="store the result where the model uses it (if it beats the defaults)",
    )
    calibrate.add_argument(
        "--lookbacks", nargs="+", type=int, default=None, help="lookback days tried (default: 3 7 14)"
    )
    calibrate.set_defaults(func=cmd_calibrate)

    sql = sub.add_parser(
        "sql", help="query the warehouse views (aggtrades_history, klines_15m_history, ...) and print a table"
    )
    sql.add_argument("query", help="e.g. SELECT COUNT(*) FROM aggtrades_history WHERE symbol = 'ETHUSDT'")
    sql.add_argument("--max-rows", dest="max_rows", type=int, default=100, help="rows printed at most")
    sql.set_defaults(func=cmd_sql)

    report = sub.add_parser(
        "validate-report",
        help="BTC vs ETH: predicted vs forced liquidations by hour, reached-price recall, hit rate, precision@k",
    )
    report.set_defaults(func=cmd_validate_report)

    bench = sub.add_parser("bench", help="print speed figures")
    bench.add_argument("what", choices=["ingest", "model", "api", "backfill", "live"])
    bench.add_argument(
        "--commit-seconds", dest="commit_seconds", type=int, default=15, help="commit interval (live)"
    )
    bench.add_argument(
        "--days",
        type=int,
        default=None,
        help="sample days x 2 symbols (backfill: default 3; api: default 30)",
    )
    bench.add_argument(
        "--trades", type=int, default=2_500_000, help="aggTrades per generated day (ingest, model, live)"
    )
    bench.add_argument("--repeat", type=int, default=3)
    bench.add_argument(
        "--celery",
        action="store_true",
        help="backfill: also on the distributed deployment started on this machine (2 Celery workers, S3 lake)",
    )
    bench.add_argument("--requests", type=int, default=50, help="single requests per window and symbol (api)")
    bench.add_argument("--clients", type=int, default=50, help="concurrent clients (api)")
    bench.add_argument(
        "--seconds", type=float, default=60.0, help="concurrent load per window, seconds (api)"
    )
    bench.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="`liq serve --workers` of the server under load; several values: one run each (api)",
    )
    bench.add_argument(
        "--data-dir",
        dest="data_dir",
        default=None,
        type=Path,
        help="lake to read (api; default: --days sample days the pipeline writes)",
    )
    bench.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    started = time.perf_counter()
    code = args.func(args)
    if args.command not in ("bench", "screenshot-levels", "sql", "calibrate"):
        print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
