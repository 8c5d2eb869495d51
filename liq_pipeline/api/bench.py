"""`liq bench api`: real HTTP requests against the API on loopback, timed per window and symbol.

The server runs in a background thread (uvicorn) over a given lake; requests go through `httpx` with keep-alive,
one at a time. The timed server has its answer cache turned off (`create_app(cache=False)`), so each request reads
the Parquet partitions, pivots and serializes; a second, cached server shows what repeated requests cost.
Without a lake of its own, it writes 30 days of BTCUSDT and ETHUSDT through the pipeline's own code
(`api.sample_lake`: the sample market's archive files -> ingest -> model -> the model tables' writers).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import httpx

from liq_pipeline.api.app import create_app
from liq_pipeline.api.sample_lake import write_sample_lake
from liq_pipeline.api.server import BackgroundServer

SYMBOLS = ("BTCUSDT", "ETHUSDT")
WINDOWS = ("7d", "30d")
TARGET_P95_MS = {"7d": 100.0}
LAST_DAY = date(2024, 12, 30)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _time_requests(client: httpx.Client, url: str, params: dict, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        r = client.get(url, params=params)
        r.read()
        times.append((time.perf_counter() - started) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET {url} {params} answered {r.status_code}: {r.text[:300]}")
    return times


def bench_api(data_dir: Path | str, n: int = 200, symbols=SYMBOLS, windows=WINDOWS) -> dict:
    """Latency (ms) of /liquidations/heatmap-timeseries per window and symbol: cold (first request), uncached
    p50/p95 over `n` requests, cached p50/p95; and the ETH/BTC ratio of the uncached p50 and p95 per window."""
    results: dict = {"n": n, "data_dir": str(Path(data_dir).resolve()), "runs": {}, "eth_btc_ratio": {}}
    uncached_app = create_app(data_dir, cache=False)
    cached_app = create_app(data_dir, cache=True)
    with BackgroundServer(uncached_app) as uncached_url, BackgroundServer(cached_app) as cached_url:
        with httpx.Client(timeout=60.0) as client:
            for window in windows:
                for symbol in symbols:
                    params = {"symbol": symbol, "time_window": window}
                    path = "/liquidations/heatmap-timeseries"
                    cold = _time_requests(client, uncached_url + path, params, 1)[0]
                    uncached = _time_requests(client, uncached_url + path, params, n)
                    _time_requests(client, cached_url + path, params, 1)  # fill the cache
                    cached = _time_requests(client, cached_url + path, params, n)
                    body = client.get(uncached_url + path, params=params).json()
                    results["runs"][f"{symbol} {window}"] = {
                        "symbol": symbol,
                        "window": window,
                        "cells": len(body["times"]) * len(body["prices"]),
                        "bytes": len(client.get(uncached_url + path, params=params).content),
                        "cold_ms": cold,
                        "uncached_p50_ms": statistics.median(uncached),
                        "uncached_p95_ms": _percentile(uncached, 0.95),
                        "cached_p50_ms": statistics.median(cached),
                        "cached_p95_ms": _percentile(cached, 0.95),
                    }
                if "BTCUSDT" in symbols and "ETHUSDT" in symbols:
                    btc = results["runs"][f"BTCUSDT {window}"]
                    eth = results["runs"][f"ETHUSDT {window}"]
                    results["eth_btc_ratio"][window] = {
                        "p50": eth["uncached_p50_ms"] / btc["uncached_p50_ms"],
                        "p95": eth["uncached_p95_ms"] / btc["uncached_p95_ms"],
                    }
    _print(results)
    return results


def _print(results: dict) -> None:
    print(f"GET /liquidations/heatmap-timeseries, {results['n']} sequential requests each, loopback HTTP")
    print(f"lake: {results['data_dir']}")
    header = f"{'symbol':8} {'window':6} {'cells':>7} {'KB':>6} {'cold':>8} {'p50':>8} {'p95':>8} {'cached p50':>11}"
    print(header + "   (ms; p50/p95 with the answer cache off)")
    for run in results["runs"].values():
        target = TARGET_P95_MS.get(run["window"])
        verdict = ""
        if target:
            verdict = (
                f"   target p95 < {target:.0f} ms: {'met' if run['uncached_p95_ms'] < target else 'MISSED'}"
            )
        print(
            f"{run['symbol']:8} {run['window']:6} {run['cells']:>7} {run['bytes'] / 1024:>6.0f} "
            f"{run['cold_ms']:>8.1f} {run['uncached_p50_ms']:>8.1f} {run['uncached_p95_ms']:>8.1f} "
            f"{run['cached_p50_ms']:>11.2f}{verdict}"
        )
    for window, ratio in results["eth_btc_ratio"].items():
        print(f"ETH/BTC latency ratio {window}: p50 {ratio['p50']:.2f}, p95 {ratio['p95']:.2f}")


def bench_lake(data_dir: Path | str, days: int = 30) -> dict[str, float]:
    """`days` days ending 2024-12-30 of BTCUSDT and ETHUSDT written by the pipeline's code; seconds per phase."""
    days_written = [LAST_DAY - timedelta(days=i) for i in range(days)]
    return write_sample_lake(data_dir, SYMBOLS, days_written)


def run(data_dir: Path | str | None = None, n: int = 200, days: int = 30) -> dict:
    """Bench a given lake, or one written by the pipeline's code into a temporary folder when `data_dir` is None."""
    if data_dir is not None:
        return bench_api(data_dir, n=n)
    with tempfile.TemporaryDirectory(prefix="liq-bench-api-") as tmp:
        started = time.perf_counter()
        phases = bench_lake(Path(tmp) / "data", days=days)
        split = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
        print(
            f"wrote {days} days x {len(SYMBOLS)} symbols in {time.perf_counter() - started:.1f} s ({split})"
        )
        return bench_api(Path(tmp) / "data", n=n)


def bench_api_command(args: argparse.Namespace) -> int:
    """For `liq bench api`: uses `args.data_dir` (None: a lake written for the bench), `args.requests` and `args.days` if present."""
    run(getattr(args, "data_dir", None), n=getattr(args, "requests", 200), days=getattr(args, "days", 30))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liq bench api", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="a lake to read (default: one written for the bench)"
    )
    parser.add_argument("-n", type=int, default=200, help="requests per window and symbol")
    parser.add_argument("--days", type=int, default=30, help="days to write when no --data-dir")
    args = parser.parse_args(argv)
    run(args.data_dir, n=args.n, days=args.days)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
