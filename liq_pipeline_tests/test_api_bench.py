"""`liq bench api` on a tiny lake the pipeline's own code wrote (`api.sample_lake`, 3 days of BTCUSDT and ETHUSDT),
against `liq serve --workers 2` in a process of its own: the figures it returns are sane, and its concurrent
requests really ask different times (else the answer cache would serve them and the figures would flatter)."""

from __future__ import annotations

import os
import signal
from datetime import date, datetime
from pathlib import Path

import httpx
import pytest

from liq_pipeline.api import bench
from liq_pipeline.api.sample_lake import write_sample_lake
from liq_pipeline.api.server import ServerProcess, descendants
from liq_pipeline.symbols import PACKAGED_FILE, load_registry

DAYS = (date(2024, 12, 26), date(2024, 12, 27), date(2024, 12, 28))
FIRST, END = datetime(2024, 12, 26), datetime(2024, 12, 29)


def parse(t: str) -> datetime:
    return datetime.fromisoformat(t.replace("Z", ""))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, server) of `liq serve --workers 2` over the tiny lake, with the packaged registry."""
    data = tmp_path_factory.mktemp("bench") / "data"
    write_sample_lake(data, bench.SYMBOLS, DAYS, registry=load_registry(PACKAGED_FILE))
    with (server := ServerProcess(data, workers=2, env={"LIQ_SYMBOLS_FILE": str(PACKAGED_FILE)})) as url:
        yield url, server


def test_end_times_are_whole_five_minutes_with_data_and_repeat_only_with_the_other_symbol():
    times = bench.end_times(FIRST, END, "7d")
    assert len(set(times)) == len(times) > 100
    assert all(FIRST < t <= END and t.minute % 5 == 0 and t.second == 0 for t in times)
    assert min(times) == FIRST + (END - FIRST) / 2  # a 7d window over 3 days: ends in the later half
    asks = bench.requests_of(times, "7d")
    first_lap = [next(asks) for _ in times]
    second_lap = [next(asks) for _ in times]
    assert [a["end_time"] for a in first_lap] == [a["end_time"] for a in second_lap]
    assert all(a["symbol"] != b["symbol"] for a, b in zip(first_lap, second_lap))


def test_concurrent_run_asks_a_different_time_each_request_and_reports_sane_figures(served, capsys):
    url, server = served
    assert bench.data_range(url) == (FIRST, END)
    run = bench.concurrent_run(url, "7d", clients=4, seconds=2)
    peaks = server.peak_rss_mb()
    assert run["statuses"] == [200] and run["errors"] == 0
    ends = [a["end_time"] for a in run["asked"]]
    pool = len(bench.end_times(FIRST, END, "7d"))
    assert len(ends) > 8 and len(set(ends)) == min(len(ends), pool)
    assert all(FIRST < parse(t) <= END for t in ends)
    assert {a["symbol"] for a in run["asked"]} == set(bench.SYMBOLS)
    assert run["rps"] > 0 and 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"]
    assert run["mean_bytes"] > 1000
    # the supervisor and two workers: memory is summed over all of them
    assert len(peaks) == 3 and all(mb > 5 for mb in peaks.values())
    run.update(window="7d", workers=2, memory_mb=sum(peaks.values()))
    bench._print_concurrent_row(run)
    out = capsys.readouterr().out
    assert out.split()[:3] == ["2", "7d", f"{run['rps']:.1f}"]
    assert "targets: >= 200 req/s: " in out and "memory < 400 MB: " in out


def test_single_run_asks_other_times_uncached_and_reports_sane_figures(served):
    url, _ = served
    run = bench.single_run(url, "ETHUSDT", "1y", n=5)
    assert run["uncached_requests"] == 5 and run["uncached_distinct"] == 5 and run["uncached_errors"] == 0
    assert 0 < run["uncached_p50_ms"] <= run["uncached_p95_ms"] <= run["uncached_p99_ms"]
    assert run["cold_ms"] > 0 and run["cached_p50_ms"] > 0 and run["uncached_mean_bytes"] > 100
    assert 0 < run["columns"] <= len(DAYS) + 1 and run["cells"] > run["columns"]  # 1-day step over 3 days


# --- liq serve --workers: processes of their own on one port ---------------------------------------------------


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def workers_of(server: ServerProcess) -> list[int]:
    return [pid for pid in descendants(server.proc.pid) if pid != server.proc.pid]


def test_two_workers_listen_on_one_port_and_both_answer(served):
    """Each worker binds its own SO_REUSEPORT socket: the kernel spreads new connections over both."""
    url, server = served
    workers = workers_of(server)
    assert len(workers) == 2
    before = {pid: cpu_ticks(pid) for pid in workers}
    ends = bench.end_times(FIRST, END, "7d")[:40]
    for end in ends:  # a new connection each
        params = {"symbol": "BTCUSDT", "time_window": "7d", "end_time": end.isoformat() + "Z"}
        assert httpx.get(url + bench.PATH, params=params, timeout=30).status_code == 200
    assert all(cpu_ticks(pid) > before[pid] for pid in workers), before


def test_sigterm_stops_every_worker_and_a_dead_worker_stops_the_server(served):
    _, running = served
    server = ServerProcess(running.data_dir, workers=2, env={"LIQ_SYMBOLS_FILE": str(PACKAGED_FILE)})
    server.start()
    workers = workers_of(server)
    os.kill(workers[0], signal.SIGKILL)
    assert server.proc.wait(timeout=10) == 1  # the supervisor stopped the other and says so
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)

    server = ServerProcess(running.data_dir, workers=2, env={"LIQ_SYMBOLS_FILE": str(PACKAGED_FILE)})
    server.start()
    workers = workers_of(server)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
