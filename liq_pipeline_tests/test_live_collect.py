"""`liq collect` against the loopback exchange (liq_pipeline/live/exchange.py), which replays the sample market in
Binance's stream and REST formats on 127.0.0.1: the rows in the lake equal what the exchange holds, a forced
disconnect leaves no gap in the trade ids, a kill -9 and restart leave no duplicates, and today's heatmap is served
fresh. Nothing here reaches the internet."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from liq_pipeline.formats import stream
from liq_pipeline.lake import Lake
from liq_pipeline.live.collector import Collector
from liq_pipeline.live.exchange import LoopbackExchange
from liq_pipeline.live.partition import LivePartition, live_info
from liq_pipeline.live.rest import BinanceRest
from liq_pipeline.sources import sample
from liq_pipeline.symbols import load_registry

DAY = date(
    2024, 6, 10
)  # after 2024-03-31: the archive has no forced liquidations for it, only the stream does
TRADES = 20_000


def virtual_clock(start: datetime, speed: float):
    """Exchange time running `speed` times faster than the wall clock, from `start` (UTC)."""
    t0, start_ms = time.time(), int(start.replace(tzinfo=UTC).timestamp() * 1000)
    return lambda: start_ms + int((time.time() - t0) * speed * 1000)


class Running:
    """A Collector in a thread with its own event loop, stopped like SIGTERM stops `liq collect`."""

    def __init__(self, collector: Collector):
        self.collector = collector
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        async def main():
            self.stop_event = asyncio.Event()
            await self.collector.run(self.stop_event)

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self, timeout: float = 10.0) -> None:
        deadline = time.time() + 5
        while self.stop_event is None and time.time() < deadline:
            time.sleep(0.01)
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the collector did not stop"
        if self.error:
            raise self.error


def collector(lake: Lake, ex: LoopbackExchange, symbols=("BTCUSDT",)) -> Collector:
    return Collector(
        lake,
        list(symbols),
        ws_base=ex.ws_url,
        rest=BinanceRest(ex.api_url),
        commit_seconds=0.3,
        oi_poll_seconds=0.2,
    )


def wait_for(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def market(day: date = DAY, symbol: str = "BTCUSDT"):
    return sample.market_day(load_registry().get(symbol), day, trades_per_day=TRADES)


def assert_trades_are_the_markets(lake: Lake, day: date = DAY, symbol: str = "BTCUSDT") -> np.ndarray:
    """The lake's trades of the day: from the day's first trade, no gap, no repeat, each equal to the market's."""
    got = lake.read("agg_trades", symbol, [day]).to_pandas()
    ids = got["agg_trade_id"].to_numpy()
    truth = market(day, symbol).agg_trades.set_index("agg_trade_id")
    assert ids[0] == truth.index[0], "the day's head was not filled from REST"
    assert (np.diff(ids) == 1).all(), (
        f"gap or repeat in agg_trade_id: {ids[np.flatnonzero(np.diff(ids) != 1)][:5]}"
    )
    expect = truth.loc[ids]
    assert np.array_equal(got["price"].to_numpy(), expect["price"].to_numpy())
    assert np.array_equal(got["quantity"].to_numpy(), expect["quantity"].to_numpy())
    ts_ms = got["ts"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    assert np.array_equal(ts_ms, expect["transact_time"].to_numpy())
    return ids


def test_rows_in_the_lake_equal_what_the_exchange_sent(tmp_path):
    lake = Lake.at(tmp_path)
    clock = virtual_clock(datetime.combine(DAY, datetime.min.time()) + timedelta(hours=9), speed=300)
    with LoopbackExchange(["BTCUSDT", "ETHUSDT"], trades_per_day=TRADES, clock=clock) as ex:
        run = Running(collector(lake, ex))
        wait_for(lambda: len(ex.sent.get("btcusdt@aggTrade", [])) > 100, what="streamed trades")
        wait_for(
            lambda: any(d["o"]["s"] == "BTCUSDT" for d in ex.sent.get("!forceOrder@arr", [])), what="a liq"
        )
        time.sleep(1.0)
        # What the exchange sent before the stop was received; what it sends while the collector stops may not be.
        sent_before = {k: list(v) for k, v in ex.sent.items()}
        run.stop()
        sent = {k: list(v) for k, v in ex.sent.items()}

    ids = assert_trades_are_the_markets(lake)
    streamed = {d["a"] for d in sent_before["btcusdt@aggTrade"]}
    assert len(streamed) > 50 and streamed <= set(ids.tolist()), "a streamed trade is missing from the lake"
    assert len(ids) > len(streamed), "the day's head (before the collector started) came from REST"

    bars = lake.read("klines", "BTCUSDT", [DAY]).to_pandas()
    truth = market().klines_1m.set_index("open_time")
    opens = bars["open_time"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    assert opens[0] == truth.index[0] and (np.diff(opens) == 60_000).all()  # from midnight, every minute once
    assert np.array_equal(bars["close"].to_numpy(), truth.loc[opens, "close"].to_numpy())
    assert np.array_equal(bars["volume"].to_numpy(), truth.loc[opens, "volume"].to_numpy())

    liq = lake.read("forced_liquidations", "BTCUSDT", [DAY])
    cols = ["ts", "side", "price", "quantity"]
    got = set(liq.select(cols).to_pandas().itertuples(index=False))

    def sent_rows(messages) -> set:
        orders = [d["o"] for d in messages["!forceOrder@arr"] if d["o"]["s"] == "BTCUSDT"]
        table = stream.forced_liquidations(orders, "BTCUSDT", DAY).select(cols)
        return set(table.to_pandas().itertuples(index=False))

    assert sent_rows(sent_before) <= got <= sent_rows(sent) and len(got) > 0
    assert liq.num_rows == len(got)  # no repeats
    assert not lake.exists("forced_liquidations", "ETHUSDT", DAY)  # only the collected symbols are stored
    info = live_info(lake.partition_file("forced_liquidations", "BTCUSDT", DAY))
    assert info.live and info.coverage and info.coverage[0][0] >= clock() - 3_600_000 * 24

    oi = lake.read("open_interest", "BTCUSDT", [DAY]).to_pandas()
    metrics = market().metrics
    slots = (
        pd_ms(oi["ts"])
        - int(datetime.combine(DAY, datetime.min.time()).replace(tzinfo=UTC).timestamp() * 1000)
    ) // 300_000
    assert (np.diff(pd_ms(oi["ts"])) == 300_000).all() and slots[0] == 0  # every 5 minutes from midnight
    assert np.allclose(oi["open_interest"].to_numpy(), metrics["sum_open_interest"].to_numpy()[slots])


def pd_ms(series) -> np.ndarray:
    return series.to_numpy().astype("datetime64[ms]").astype(np.int64)


def test_a_forced_disconnect_leaves_no_gap_in_trade_ids(tmp_path):
    lake = Lake.at(tmp_path)
    clock = virtual_clock(datetime.combine(DAY, datetime.min.time()) + timedelta(hours=14), speed=300)
    with LoopbackExchange(["BTCUSDT"], trades_per_day=TRADES, clock=clock) as ex:
        run = Running(collector(lake, ex))
        wait_for(lambda: len(ex.sent.get("btcusdt@aggTrade", [])) > 100, what="streamed trades")
        ex.pause_streams(True)  # two virtual minutes of trades never reach the stream...
        time.sleep(1.0)
        assert ex.drop_connections() == 1  # ...and the connection is cut without a close frame
        ex.pause_streams(False)
        wait_for(lambda: ex.connections_total >= 2, what="a reconnect")
        before = len(ex.sent["btcusdt@aggTrade"])
        wait_for(lambda: len(ex.sent["btcusdt@aggTrade"]) > before + 100, what="trades after the reconnect")
        time.sleep(1.0)
        run.stop()
        streamed = sorted(d["a"] for d in ex.sent["btcusdt@aggTrade"])

    ids = assert_trades_are_the_markets(lake)
    holes = np.setdiff1d(np.arange(streamed[0], streamed[-1] + 1), streamed)
    assert len(holes) > 50, "the pause should have kept trades off the stream"
    assert np.isin(holes, ids).all(), "the trades the stream missed were not fetched from REST"


def _collect_process(env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liq_pipeline.cli",
            "collect",
            "--symbols",
            "BTCUSDT",
            "--commit-seconds",
            "0.3",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_kill_9_and_restart_leave_no_duplicates_and_sigterm_stops_within_seconds(tmp_path):
    lake = Lake.at(tmp_path)
    clock = virtual_clock(datetime.combine(DAY, datetime.min.time()) + timedelta(hours=8), speed=300)
    with LoopbackExchange(["BTCUSDT", "ETHUSDT"], trades_per_day=TRADES, clock=clock) as ex:
        env = {
            **os.environ,
            "LIQ_DATA_DIR": str(tmp_path),
            "LIQ_BINANCE_WS_URL": ex.ws_url,
            "LIQ_BINANCE_API_URL": ex.api_url,
        }
        first = _collect_process(env)
        trades = lake.partition_file("agg_trades", "BTCUSDT", DAY)
        wait_for(lambda: trades.exists() and len(ex.sent.get("btcusdt@aggTrade", [])) > 100, what="a commit")
        time.sleep(0.5)
        first.kill()  # kill -9: no final commit
        first.wait(10)
        rows_at_kill = lake.partition_rows("agg_trades", "BTCUSDT", DAY)
        second = _collect_process(env)
        wait_for(
            lambda: (lake.partition_rows("agg_trades", "BTCUSDT", DAY) or 0) > rows_at_kill + 100, what="more"
        )
        started = time.time()
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=15)
        stopped_in = time.time() - started
        assert second.returncode == 0, out
        assert stopped_in < 5, f"SIGTERM took {stopped_in:.1f} s"
        assert "resuming from aggTrade ids" in out  # the restart read the lake back

    assert_trades_are_the_markets(lake)
    opens = pd_ms(lake.read("klines", "BTCUSDT", [DAY]).to_pandas()["open_time"])
    assert (np.diff(opens) == 60_000).all()
    liq = lake.read("forced_liquidations", "BTCUSDT", [DAY]).to_pandas()
    assert not liq.duplicated().any()
    oi_ts = pd_ms(lake.read("open_interest", "BTCUSDT", [DAY]).to_pandas()["ts"])
    assert (np.diff(oi_ts) == 300_000).all()
    assert not list(trades.parent.glob(".*.tmp")), "a temporary file of the killed write is left"


def test_todays_heatmap_is_served_fresh_from_live_rows(tmp_path, monkeypatch):
    """Wall-clock exchange for today: the collector fills the day so far and follows the stream; the live sensor
    asks for today's model; the API serves a 12h window whose newest column is minutes old."""
    from fastapi.testclient import TestClient

    from liq_pipeline.api.app import create_app
    from liq_pipeline.definitions import defs
    from liq_pipeline.sensors import live_scan

    monkeypatch.setenv("LIQ_DATA_DIR", str(tmp_path))
    lake = Lake.at(tmp_path)
    now = datetime.now(UTC)
    if now.hour == 0 and now.minute < 20:
        pytest.skip("the first minutes of a UTC day hold less than one model step")  # pragma: no cover
    today = now.date()
    with LoopbackExchange(["BTCUSDT"], trades_per_day=5_000) as ex:
        run = Running(collector(lake, ex))
        wait_for(lambda: (lake.partition_rows("klines", "BTCUSDT", today) or 0) > 60, what="today's klines")
        wait_for(lambda: lake.exists("open_interest", "BTCUSDT", today), what="today's open interest")
        time.sleep(1.0)
        run.stop()
        stopped_at = time.time()

    requests, cursor = live_scan(lake, ["BTCUSDT"], {}, today)
    assert [r.partition_key for r in requests] == [f"{today}|BTCUSDT"]
    assert live_scan(lake, ["BTCUSDT"], cursor, today)[0] == []  # asked once per new step
    # What the sensor's request runs: model_job of the code location, for that partition.
    result = defs.resolve_job_def("model_job").execute_in_process(partition_key=requests[0].partition_key)
    assert result.success

    # The collector goes on while the model's output stands: its inputs moved, which on a live day is no failure.
    from liq_pipeline import checks, staleness

    more = LivePartition(lake, "klines", "BTCUSDT", today)
    last = more.committed.slice(more.committed.num_rows - 1).to_pylist()[0]
    bar = {**last, "open_time": last["open_time"] + timedelta(minutes=1)}
    bar["close_time"] = bar["open_time"] + timedelta(seconds=59.999)
    more.add(pa.Table.from_pylist([bar], schema=more.schema))  # the next minute's bar, from the stream
    more.commit()
    stale = staleness.check_partition(lake, "BTCUSDT", today)
    assert stale is not None and stale.live
    verdict = checks.freshness_verdict(stale, built=True)
    assert verdict.passed and "live day" in verdict.detail
    archive_day = dataclasses.replace(stale, live=False)
    assert not checks.freshness_verdict(archive_day, built=True).passed  # the same on an archive day fails

    client = TestClient(create_app(tmp_path))
    body = client.get(
        "/liquidations/heatmap-timeseries", params={"symbol": "BTCUSDT", "time_window": "12h"}
    ).json()
    newest = max(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in body["as_of"] if t)
    age = datetime.now(UTC) - newest
    assert age <= timedelta(minutes=10), f"the newest column is {age} old"
    newest_bar = pc.max(lake.read("klines", "BTCUSDT", [today])["open_time"]).as_py().replace(tzinfo=UTC)
    assert newest <= newest_bar + timedelta(minutes=1), "a column claims minutes the collector has not seen"
    grid = np.array(body["long"], dtype=float) + np.array(body["short"], dtype=float)
    assert grid[-1].sum() > 0 if len(grid) else False
    health = client.get("/health").json()["symbols"]["BTCUSDT"]
    newest_row = max(
        pc.max(lake.read(t, "BTCUSDT", [today])[c]).as_py()
        for t, c in [("agg_trades", "ts"), ("klines", "open_time"), ("open_interest", "ts")]
    )
    assert health["live_newest_row"] == newest_row.isoformat() + "Z"
    assert health["live_age_seconds"] == pytest.approx(
        (datetime.now(UTC).replace(tzinfo=None) - newest_row).total_seconds(), abs=5
    )
    assert newest_row > datetime.fromtimestamp(stopped_at, UTC).replace(tzinfo=None) - timedelta(minutes=3)
    assert pc.max(lake.read("klines", "BTCUSDT", [today])["open_time"]).as_py() > now.replace(
        tzinfo=None
    ) - timedelta(minutes=3)


def test_the_collector_answers_pings_and_reconnects_after_the_connection_limit(tmp_path):
    """Binance pings and drops a connection that does not answer; it also closes every connection after 24 hours.
    Here: pings every 0.3 s and a 1.5 s lifetime."""
    lake = Lake.at(tmp_path)
    clock = virtual_clock(datetime.combine(DAY, datetime.min.time()) + timedelta(hours=14), speed=300)
    with LoopbackExchange(
        ["BTCUSDT"],
        trades_per_day=TRADES,
        clock=clock,
        ping_interval=0.3,
        pong_timeout=1.0,
        max_connection_seconds=1.5,
    ) as ex:
        run = Running(collector(lake, ex))
        wait_for(lambda: ex.connections_total >= 3, what="reconnects after the connection limit")
        time.sleep(0.5)
        run.stop()
        assert ex.pongs_received >= 3 and ex.connections_closed_for_no_pong == 0
    assert_trades_are_the_markets(lake)  # no gap across the reconnects
