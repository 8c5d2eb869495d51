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

        started = time.perf_counter()
        loaded = load()  # computes and caches each day's volume profile
        t_cold = time.perf_counter() - started
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
        "  (target < 0.5 s with its inputs)"
    )
    print(
        f"inputs (DuckDB: bars, OI, the {len(days)} days' cached volume profiles): median {t_load:.3f} s; "
        f"{t_cold:.2f} s the first time, when every day's profile is computed (once per day, then shared by the "
        f"{cfg.lookback_days} partitions that read it)"
    )
    print(f"output tables (heatmap, levels, events):   median {t_tables:.3f} s")
    print(f"total per symbol-day: {t_model + t_load + t_tables:.2f} s (median of {args.repeat})")
    print_same_step_bound(spec, loaded, result)
    return 0


def print_same_step_bound(spec, loaded, result) -> None:
    """How much counting every new position whose level its own step's range crossed would add to the liquidations
    (the engine counts only those its close is through), at the default mix and at 100x alone."""
    from liq_pipeline import model_io
    from liq_pipeline.model import ModelConfig

    at_100x = ModelConfig.for_symbol(spec, leverage=(100,), leverage_weights=(1.0,))
    for label, res in (("default mix", result), ("100x only", model_io.run_day(spec, at_100x, loaded))):
        deferred = sum(res.info["same_step_deferred_coins"])
        liquidated = sum(led["liquidated"] for led in res.ledger.values())
        share = deferred / liquidated if liquidated else float("nan")
        print(
            f"same-step rule, {label}: {deferred:,.1f} coins crossed only by their own step's range were left "
            f"open, {share:.1%} of the {liquidated:,.1f} coins liquidated (the over-count of counting them)"
        )


# ---- liq bench backfill: the daemon's runs against the same partitions in process ----------------------------

REPO = Path(__file__).resolve().parent.parent
INSTANCE_FILES = ("dagster.yaml", "workspace.yaml")  # what `export DAGSTER_HOME=$PWD` in the repository reads


def project_folder(root: Path) -> Path:
    """A folder laid out like the repository for the dagster commands: its dagster.yaml and workspace.yaml. Used as
    both DAGSTER_HOME and working folder, so the instance's relative storage paths stay inside it."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    for name in INSTANCE_FILES:
        shutil.copy(REPO / name, root / name)
    with _instance_at(root) as instance:  # creates the sqlite schema once: two processes doing it race
        instance.get_runs(limit=1)
    return root


def dagster_bin(name: str) -> str:
    """The `dagster`/`dagster-daemon` command of this environment (what `uv run dagster` finds)."""
    import sys

    return str(Path(sys.executable).parent / name)


def start_daemon(folder: Path, env: dict[str, str], log: Path):
    """`dagster-daemon run -w workspace.yaml` in `folder` (the daemon `dagster dev` runs), in its own process group
    so that stop_group ends it and its code server. Returns once its run queue has reported a heartbeat."""
    import subprocess

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [dagster_bin("dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 180
    try:
        with _instance_at(folder) as instance:
            while "QUEUED_RUN_COORDINATOR" not in instance.get_daemon_heartbeats():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dagster-daemon did not start; its log: {log.read_text()[-2000:]}")
                time.sleep(0.5)
    except BaseException:
        stop_group(proc)
        raise
    return proc


def stop_group(proc) -> None:
    """SIGTERM to the process group we started (a daemon and its code server, a Celery worker), SIGKILL after 30 s."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _instance_at(folder: Path):
    """The instance of `folder`'s dagster.yaml, opened as the dagster commands run from `folder` open it."""
    import os

    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    here = os.getcwd()
    os.chdir(folder)  # the storage paths are relative to the working folder
    try:
        return DagsterInstance.from_ref(InstanceRef.from_dir(str(folder)))
    finally:
        os.chdir(here)


def wait_for_backfill_runs(folder: Path, expected: int, timeout: float) -> list:
    """The run records of the instance's backfill runs once `expected` of them have ended; raises on timeout."""
    from dagster import DagsterRunStatus

    ended = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    deadline = time.monotonic() + timeout
    with _instance_at(folder) as instance:
        while True:
            records = [r for r in instance.get_run_records() if "dagster/backfill" in r.dagster_run.tags]
            if len(records) >= expected and all(r.dagster_run.status in ended for r in records):
                return records
            if time.monotonic() > deadline:
                states = sorted(
                    f"{r.dagster_run.tags.get('dagster/partition')}: {r.dagster_run.status.value}"
                    for r in records
                )
                raise TimeoutError(f"{expected} backfill runs not ended after {timeout:.0f} s: {states}")
            time.sleep(0.5)


def _in_process_seconds(keys: list[tuple[str, date]], data_dir: Path) -> float:
    """Wall time of daily_job over `keys` in this process, one partition after the other (what `liq backfill`
    does), on an ephemeral instance and its own lake."""
    import os

    from dagster import DagsterInstance

    from liq_pipeline.definitions import defs
    from liq_pipeline.demo import QUIET
    from liq_pipeline.partitions import partition_key

    job = defs.resolve_job_def("daily_job")
    os.environ["LIQ_DATA_DIR"] = str(data_dir)  # the lake resource reads it at run time
    started = time.perf_counter()
    with DagsterInstance.ephemeral() as instance:
        for symbol, day in keys:
            result = job.execute_in_process(
                partition_key=partition_key(symbol, day),
                instance=instance,
                run_config=QUIET,
                raise_on_error=False,
            )
            if not result.success:
                raise RuntimeError(f"in process: {day}|{symbol} failed")
    return time.perf_counter() - started


def _liq_backfill_seconds(symbols: list[str], days: list[date], root: Path, env: dict[str, str]) -> float:
    """Wall time of `liq backfill SYMBOL --start --end` for each symbol, one after the other: the same days in
    process as a user runs them, process start and the warehouse refresh included."""
    import subprocess

    env = {**env, "DAGSTER_HOME": str(root / "home"), "LIQ_DATA_DIR": str(root / "data")}
    (root / "home").mkdir(parents=True)
    started = time.perf_counter()
    for symbol in symbols:
        subprocess.run(
            [dagster_bin("liq"), "backfill", symbol, "--start", str(days[0]), "--end", str(days[-1])],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - started


def deploy_folder(root: Path) -> Path:
    """A DAGSTER_HOME for the distributed deployment, set up as the README says: deploy/dagster.yaml (PostgreSQL
    storage, from the DAGSTER_PG_* variables of the environment) with the repository's workspace.yaml beside it."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", root / "dagster.yaml")
    shutil.copy(REPO / "workspace.yaml", root / "workspace.yaml")
    return root


# A Celery worker as the README starts one, from the repository folder. The solo pool runs one step at a time in the
# worker's own process, which imports the project once.
CELERY_WORKER = ["dagster-celery", "worker", "start", "-A", "dagster_celery.app", "-y", "deploy/celery.yaml"]


def start_celery_worker(env: dict[str, str], name: str, log: Path):
    """`dagster-celery worker start … -n NAME -- --pool solo` in its own process group; returns when it is ready."""
    import subprocess

    command = [dagster_bin(CELERY_WORKER[0]), *CELERY_WORKER[1:], "-n", name, "--", "--pool", "solo"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 120
    while b" ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(proc)
            raise RuntimeError(f"Celery worker {name} did not start; its log: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    return proc


def launch_backfill(
    folder: Path, env: dict[str, str], keys: list[tuple[str, date]]
) -> tuple[list, float, float]:
    """`dagster job backfill` of daily_job over `keys` (symbol, day) in `folder`, whose daemon must be running; waits
    for its runs. Returns the run records, the seconds the command took to queue them and to the last run's end."""
    import subprocess

    launch = [dagster_bin("dagster"), "job", "backfill", "-w", "workspace.yaml", "-j", "daily_job"]
    started = time.perf_counter()
    subprocess.run(
        [*launch, "--partitions", ",".join(f"{d}|{s}" for s, d in keys), "--noprompt"],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
    )
    launched = time.perf_counter() - started
    records = wait_for_backfill_runs(folder, len(keys), timeout=60 * len(keys) + 120)
    return records, launched, time.perf_counter() - started


def start_deployment(folder: Path, env: dict[str, str], logs: Path, workers: int = 2) -> list:
    """The daemon and `workers` Celery workers (w1, w2, …) started side by side, each ready; their processes."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers + 1) as pool:
        daemon = pool.submit(start_daemon, folder, env, logs / "daemon.log")
        started = [
            pool.submit(start_celery_worker, env, f"w{i}", logs / f"worker{i}.log")
            for i in range(1, workers + 1)
        ]
        procs = []
        for future in [daemon, *started]:
            try:
                procs.append(future.result())
            except BaseException:
                for proc in procs:
                    stop_group(proc)
                raise
    return procs


def celery_workers_of(folder: Path, run_ids: list[str]) -> dict[str, set[str]]:
    """Step key -> the Celery workers that ran it, over these runs: from the engine event each worker writes to the
    instance ("Executing steps ... in celery worker", with the worker's name in its metadata)."""
    from dagster import DagsterEventType

    out: dict[str, set[str]] = {}
    with _instance_at(folder) as instance:
        for run_id in run_ids:
            for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
                event = entry.dagster_event
                worker = event.engine_event_data.metadata.get("Celery worker") if event else None
                if worker is not None:
                    out.setdefault(event.step_key, set()).add(worker.value)
    return out


def run_errors(folder: Path, records: list) -> list[str]:
    """The error of each failed step of these runs ("partition step: message"), from the instance's event log."""
    from dagster import DagsterEventType

    out = []
    with _instance_at(folder) as instance:
        for record in records:
            if record.dagster_run.is_success:
                continue
            partition = record.dagster_run.tags.get("dagster/partition")
            for entry in instance.all_logs(record.dagster_run.run_id):
                event = entry.dagster_event
                if event and event.event_type in (
                    DagsterEventType.STEP_FAILURE,
                    DagsterEventType.RUN_FAILURE,
                ):
                    error = getattr(event.event_specific_data, "error", None)
                    out.append(
                        f"{partition} {event.step_key}: {error.to_string() if error else event.message}"
                    )
    return out


def bench_backfill(args: argparse.Namespace) -> int:
    """N sample days x 2 symbols: in process, then as `dagster job backfill` runs picked up by a daemon; with
    `--celery`, also the distributed deployment on this machine (liq_pipeline.stack: PostgreSQL, Redis, an S3 server,
    two Celery workers), the lake on S3."""
    import os

    days, symbols = list(sample.SAMPLE_DAYS[: args.days]), list(sample.SAMPLE_SYMBOLS)
    keys = [(s, d) for d in days for s in symbols]  # days in order, as a backfill should take them
    n = len(keys)
    os.environ["LIQ_SOURCE"] = "sample"
    with tempfile.TemporaryDirectory(prefix="liq-bench-backfill-") as tmp:
        root = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
        warm = _in_process_seconds(keys, root / "data-in-process")
        cli = _liq_backfill_seconds(symbols, days, root / "liq-backfill", env)
        folder = project_folder(root / "project")
        daemon_env = env | {"DAGSTER_HOME": str(folder), "LIQ_DATA_DIR": str(root / "data-daemon")}
        daemon = start_daemon(folder, daemon_env, root / "daemon.log")
        try:
            records, launched, total = launch_backfill(folder, daemon_env, keys)
        finally:
            stop_group(daemon)
        celery = _celery_backfill(root / "celery", env, keys) if args.celery else None
    queued = _queued_to_done(records)
    busy = sum(r.end_time - (r.start_time or r.end_time) for r in records) / n
    print(
        f"{len(days)} days x {len(symbols)} symbols = {n} partitions of daily_job, sample source; seconds per partition:"
    )
    print(f"  in process, `liq backfill` per symbol:    {cli / n:6.1f}")
    print(f"  in process, warm (no process start):     {warm / n:6.1f}")
    print(
        f"  daemon, `dagster job backfill` to done:  {total / n:6.1f}  (the command took {launched:.1f} s to queue)"
    )
    print(
        f"  daemon, first queued to last done:       {queued / n:6.1f}  (a run: {busy:.1f} s from its start event)"
    )
    if celery is not None:
        busy = sum(r.end_time - (r.start_time or r.end_time) for r in celery) / n
        print(
            f"  2 Celery workers, lake on S3, first queued to last done: {_queued_to_done(celery) / n:6.1f}"
            f"  (a run: {busy:.1f} s from its start event)"
        )
        records = records + celery
    print(
        f"ratio daemon / `liq backfill`: {queued / cli:.2f} queued to done, {total / cli:.2f} with the command"
    )
    failed = [r.dagster_run.tags.get("dagster/partition") for r in records if not r.dagster_run.is_success]
    if failed:
        print(f"FAILED runs: {failed}")
    return 1 if failed else 0


def _queued_to_done(records: list) -> float:
    return max(r.end_time for r in records) - min(r.create_timestamp.timestamp() for r in records)


def _celery_backfill(root: Path, env: dict[str, str], keys: list[tuple[str, date]]) -> list:
    """The same backfill on the distributed deployment started on this machine; the run records."""
    import os

    from liq_pipeline import stack

    root.mkdir(parents=True)
    with stack.start(root / "stack") as services:
        os.environ.update(services.env)  # this process reads the runs from the Postgres instance too
        folder = deploy_folder(root / "home")
        env = env | services.env | {"DAGSTER_HOME": str(folder), "LIQ_EXECUTOR": "celery"}
        processes = start_deployment(folder, env, root)
        try:
            records, _, _ = launch_backfill(folder, env, keys)
        finally:
            for proc in processes:
                stop_group(proc)
    return records
