"""`liq bench api`: real HTTP requests against `liq serve` on loopback, per window (7d, 30d, 1y).

The server runs in a process of its own (`api.server.ServerProcess`: `liq serve --workers W`), so the load generator
here does not share its GIL, and its peak memory (VmHWM of the server and its workers) is read from /proc. Every
request asks `Accept-Encoding: gzip` and a different `end_time` (random whole 5-minute times over the lake's data),
so the server's answer cache cannot serve it: that is what many users looking at "now" cost. Two parts:

- single requests, one at a time: the first (cold) request, then p50/p95/p99 over `n` uncached answers, and the
  p50 of one URL repeated (answered from the cache);
- concurrent load: `clients` tasks on one asyncio loop (aiohttp, whose client costs about a tenth of httpx's CPU
  per request: the load generator shares the machine with the server it measures), each sending its next request
  when the last one is answered, for `seconds` per window: requests/s, p50/p95/p99, errors, server peak memory, mean bytes.

Without a lake of its own, it writes 30 days of BTCUSDT and ETHUSDT through the pipeline's own code
(`api.sample_lake`: the sample market's archive files -> ingest -> model -> the model tables' writers).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import aiohttp
import httpx

from liq_pipeline.api.sample_lake import write_sample_lake
from liq_pipeline.api.server import ServerProcess

SYMBOLS = ("BTCUSDT", "ETHUSDT")
WINDOWS = ("7d", "30d", "1y")
LENGTH = {"7d": timedelta(days=7), "30d": timedelta(days=30), "1y": timedelta(days=365)}
PATH = "/liquidations/heatmap-timeseries"
STEP = timedelta(minutes=5)
HEADERS = {"Accept-Encoding": "gzip"}
LAST_DAY = date(2024, 12, 30)
# The targets on this 2-core machine.
TARGET_SINGLE_P50_MS = {"7d": 15.0, "30d": 30.0}
TARGET_RPS = {"7d": 200.0}
TARGET_P95_MS = {"7d": 500.0}
TARGET_MEMORY_MB = 400.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def data_range(url: str) -> tuple[datetime, datetime]:
    """(start of the first heatmap day, end of the last) over the bench's symbols, from the API's /symbols."""
    answer = httpx.get(url + "/symbols", timeout=30).json()
    spans = [s["heatmap_dates"] for s in answer["symbols"] if s["symbol"] in SYMBOLS and s["heatmap_dates"]]
    if not spans:
        raise RuntimeError(f"no heatmap data for {', '.join(SYMBOLS)} in the served lake")
    first = min(date.fromisoformat(s["start"]) for s in spans)
    last = max(date.fromisoformat(s["end"]) for s in spans)
    return datetime(first.year, first.month, first.day), datetime(
        last.year, last.month, last.day
    ) + timedelta(days=1)


def end_times(first: datetime, end: datetime, window: str, seed: int = 0) -> list[datetime]:
    """Every whole 5-minute time from which a `window` answer holds data, shuffled: from the first day + the
    window's length (at most half the data's span, so a window longer than the data still has many ends) to the
    data's end."""
    lo = first + min(LENGTH[window], (end - first) / 2)  # whole days or half days: whole 5-minute times
    times = [lo + i * STEP for i in range((end - lo) // STEP + 1)]
    random.Random(seed).shuffle(times)
    return times


def requests_of(times: list[datetime], window: str) -> Iterator[dict]:
    """Query parameters, each with another end_time; symbols alternate. Once every time was asked, the times come
    again with the other symbol (a new answer still), and so on: a (symbol, end_time) repeats only after
    len(times) x len(SYMBOLS) requests, far beyond the answer cache's few dozen entries."""
    for lap in itertools.count():
        for i, t in enumerate(times):
            symbol = SYMBOLS[(i + lap) % len(SYMBOLS)]
            yield {"symbol": symbol, "time_window": window, "end_time": t.isoformat() + "Z"}


def _record(started: float, status: int, size: int, encoding: str | None, params: dict) -> dict:
    return {
        "ms": (time.perf_counter() - started) * 1000,
        "status": status,
        "bytes": size,
        "gzip": encoding == "gzip",
        "params": params,
    }


def fetch(client: httpx.Client, url: str, params: dict) -> dict:
    """One request, timed until its last byte; the body is not decompressed (bytes = what crossed the wire)."""
    started = time.perf_counter()
    with client.stream("GET", url + PATH, params=params) as response:
        size = sum(len(chunk) for chunk in response.iter_raw())
    return _record(started, response.status_code, size, response.headers.get("content-encoding"), params)


async def afetch(session: aiohttp.ClientSession, url: str, params: dict) -> dict:
    """`fetch` on the event loop (the session does not decompress); a transport error or timeout is status 0."""
    started = time.perf_counter()
    try:
        async with session.get(url + PATH, params=params) as response:
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError):
        return _record(started, 0, 0, None, params)
    return _record(started, response.status, len(body), response.headers.get("Content-Encoding"), params)


async def _load(url: str, asks: Iterator[dict], clients: int, seconds: float) -> tuple[list[dict], float]:
    """`clients` concurrent tasks, each sending its next request when the last is answered, until `seconds` pass."""
    records: list[dict] = []
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=connector, headers=HEADERS, timeout=timeout, auto_decompress=False
    ) as session:
        started = time.perf_counter()
        deadline = started + seconds

        async def one_client() -> None:
            while time.perf_counter() < deadline:
                records.append(await afetch(session, url, next(asks)))

        await asyncio.gather(*(one_client() for _ in range(clients)))
        return records, time.perf_counter() - started


def summarize(records: list[dict], elapsed: float | None = None) -> dict:
    """Latency percentiles (ms) of the answered requests, errors, mean wire bytes; requests/s if `elapsed`."""
    ok = [r for r in records if r["status"] == 200]
    ms = [r["ms"] for r in ok] or [float("nan")]
    out = {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "p50_ms": statistics.median(ms),
        "p95_ms": _percentile(ms, 0.95),
        "p99_ms": _percentile(ms, 0.99),
        "mean_bytes": statistics.fmean(r["bytes"] for r in ok) if ok else 0.0,
        "gzip_share": sum(r["gzip"] for r in ok) / len(ok) if ok else 0.0,
        "distinct": len({(r["params"]["symbol"], r["params"]["end_time"]) for r in records}),
    }
    if elapsed:
        out["rps"] = len(ok) / elapsed
    return out


def concurrent_run(url: str, window: str, clients: int, seconds: float, seed: int = 0) -> dict:
    """The concurrent figures of one window against a running server; `asked` holds every request's parameters.
    Four sequential requests first (other times, not timed) let the server open the lake's files; `client_cpu` is
    the load generator's CPU time over the run's wall time (near 100%: the client, not the server, is the limit)."""
    first, end = data_range(url)
    asks = requests_of(end_times(first, end, window, seed), window)
    with httpx.Client(headers=HEADERS, timeout=120) as client:
        warm = [fetch(client, url, next(asks)) for _ in range(4)]
    cpu = time.process_time()
    records, elapsed = asyncio.run(_load(url, asks, clients, seconds))
    figures = summarize(records, elapsed)
    figures["client_cpu"] = (time.process_time() - cpu) / elapsed
    figures["asked"] = [r["params"] for r in warm + records]
    figures["statuses"] = sorted({r["status"] for r in warm + records})
    return figures


def single_run(url: str, symbol: str, window: str, n: int, seed: int = 0) -> dict:
    """One request at a time: the first (cold), `n` with other end_times (uncached), `n` of one URL (cached)."""
    first, end = data_range(url)
    asks = (p for p in requests_of(end_times(first, end, window, seed), window) if p["symbol"] == symbol)
    with httpx.Client(headers=HEADERS, timeout=120) as client:
        cold = fetch(client, url, next(asks))
        uncached = summarize([fetch(client, url, next(asks)) for _ in range(n)])
        same = next(asks)
        cached = summarize([fetch(client, url, same) for _ in range(n + 1)][1:])
        body = client.get(url + PATH, params=same).json()
    if uncached["errors"] or cached["errors"] or cold["status"] != 200:
        raise RuntimeError(f"GET {PATH} {same} failed: {body}")
    return {
        "symbol": symbol,
        "window": window,
        "cells": len(body["times"]) * len(body["prices"]),
        "columns": len(body["times"]),
        "cold_ms": cold["ms"],
        **{f"uncached_{k}": v for k, v in uncached.items()},
        "cached_p50_ms": cached["p50_ms"],
    }


def bench_api(
    data_dir: Path | str,
    n: int = 50,
    clients: int = 50,
    seconds: float = 60.0,
    workers: tuple[int, ...] = (1,),
    windows=WINDOWS,
    env: dict[str, str] | None = None,
) -> dict:
    """Single-request figures per window and symbol (one server, one worker), then the concurrent figures per
    window for each worker count, each window against a fresh server so its peak memory is that window's."""
    results: dict = {
        "n": n,
        "clients": clients,
        "seconds": seconds,
        "data_dir": str(Path(data_dir).resolve()),
    }
    with ServerProcess(data_dir, workers=1, env=env) as url:
        first, end = data_range(url)
        results["data"] = (first, end)
        results["single"] = [single_run(url, s, w, n) for w in windows for s in SYMBOLS]
    _print_single(results)
    results["concurrent"] = []
    for count in workers:
        for window in windows:
            with (server := ServerProcess(data_dir, workers=count, env=env)) as url:
                run = concurrent_run(url, window, clients, seconds)
                peaks = server.peak_rss_mb()
            run.update(window=window, workers=count, memory_mb=sum(peaks.values()), processes=len(peaks))
            results["concurrent"].append(run)
            _print_concurrent_row(run)
    return results


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _print_single(results: dict) -> None:
    first, end = results["data"]
    days = (end - first).days
    print(
        f"lake: {results['data_dir']}: {', '.join(SYMBOLS)}, {first:%Y-%m-%d} to {end - timedelta(days=1):%Y-%m-%d}"
    )
    longer = [w for w in WINDOWS if LENGTH[w] > end - first]
    if longer:
        print(f"  ({', '.join(longer)} on {days} days of data: the answer holds the {days} days there are)")
    print(f"\nGET {PATH}, one request at a time, Accept-Encoding: gzip, `liq serve` in its own process;")
    print(f"uncached = {results['n']} requests each with another end_time; cached = one URL repeated")
    print(
        f"{'symbol':8} {'window':6} {'cols':>5} {'cells':>7} {'KB':>6} {'cold':>7} {'p50':>7} {'p95':>7} "
        f"{'p99':>7} {'cached p50':>10}   (ms)"
    )
    for run in results["single"]:
        target = TARGET_SINGLE_P50_MS.get(run["window"])
        verdict = (
            f"   target p50 < {target:.0f} ms: {_verdict(run['uncached_p50_ms'] < target)}" if target else ""
        )
        print(
            f"{run['symbol']:8} {run['window']:6} {run['columns']:>5} {run['cells']:>7} "
            f"{run['uncached_mean_bytes'] / 1024:>6.0f} {run['cold_ms']:>7.1f} {run['uncached_p50_ms']:>7.1f} "
            f"{run['uncached_p95_ms']:>7.1f} {run['uncached_p99_ms']:>7.1f} {run['cached_p50_ms']:>10.2f}{verdict}"
        )
    print(
        f"\n{results['clients']} concurrent clients x {results['seconds']:.0f} s per window, each request another "
        "end_time (random whole 5-minute times over the data,\nboth symbols: the answer cache cannot serve them), "
        "Accept-Encoding: gzip, a fresh server per window. MB = peak RSS (VmHWM) summed over\nthe server's "
        "processes; KB = mean answer on the wire; gzip = share of answers compressed; distinct = different "
        "(symbol, end_time)\nasked; client = the load generator's CPU, share of one core (near 100%: the client "
        "is the limit)"
    )
    print(
        f"{'workers':>7} {'window':6} {'req/s':>7} {'p50':>6} {'p95':>6} {'p99':>6} {'errors':>6} {'MB':>5} "
        f"{'KB':>5} {'gzip':>5} {'requests':>8} {'distinct':>8} {'client':>6}   (ms)"
    )


def _print_concurrent_row(run: dict) -> None:
    window = run["window"]
    checks = [f"memory < {TARGET_MEMORY_MB:.0f} MB: {_verdict(run['memory_mb'] < TARGET_MEMORY_MB)}"]
    if window in TARGET_RPS:
        checks.insert(0, f">= {TARGET_RPS[window]:.0f} req/s: {_verdict(run['rps'] >= TARGET_RPS[window])}")
        checks.insert(
            1, f"p95 < {TARGET_P95_MS[window]:.0f} ms: {_verdict(run['p95_ms'] < TARGET_P95_MS[window])}"
        )
    print(
        f"{run['workers']:>7} {window:6} {run['rps']:>7.1f} {run['p50_ms']:>6.0f} {run['p95_ms']:>6.0f} "
        f"{run['p99_ms']:>6.0f} {run['errors']:>6} {run['memory_mb']:>5.0f} {run['mean_bytes'] / 1024:>5.0f} "
        f"{run['gzip_share']:>5.0%} {run['requests']:>8} {run['distinct']:>8} {run['client_cpu']:>6.0%}   "
        f"targets: {', '.join(checks)}"
    )


def bench_lake(data_dir: Path | str, days: int = 30) -> dict[str, float]:
    """`days` days ending 2024-12-30 of BTCUSDT and ETHUSDT written by the pipeline's code; seconds per phase."""
    days_written = [LAST_DAY - timedelta(days=i) for i in range(days)]
    return write_sample_lake(data_dir, SYMBOLS, days_written)


def run(data_dir: Path | str | None = None, days: int = 30, **options) -> dict:
    """Bench a given lake, or one written by the pipeline's code into a temporary folder when `data_dir` is None.
    `options` go to `bench_api` (n, clients, seconds, workers, windows)."""
    if data_dir is not None:
        return bench_api(data_dir, **options)
    with tempfile.TemporaryDirectory(prefix="liq-bench-api-") as tmp:
        started = time.perf_counter()
        phases = bench_lake(Path(tmp) / "data", days=days)
        split = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
        print(
            f"wrote {days} days x {len(SYMBOLS)} symbols in {time.perf_counter() - started:.1f} s ({split})"
        )
        return bench_api(Path(tmp) / "data", **options)


def bench_api_command(args: argparse.Namespace) -> int:
    """For `liq bench api`: `args.data_dir` (None: a lake written for the bench), `days`, `requests`, `clients`,
    `seconds`, `workers` (a list: the concurrent part runs once per worker count)."""
    results = run(
        args.data_dir,
        days=args.days,
        n=args.requests,
        clients=args.clients,
        seconds=args.seconds,
        workers=tuple(args.workers),
    )
    return 1 if any(r["errors"] for r in results["concurrent"]) else 0
