"""`liq collect`: today's rows from Binance USDT-M futures public streams, written into the lake as they come.

What it holds and how it moves, per collected symbol:

- One combined WebSocket stream (`/stream?streams=<s>@aggTrade/<s>@kline_1m/.../!forceOrder@arr`). The `websockets`
  client reconnects by itself, with exponential backoff, after a drop, a refused connection or Binance's 24-hour
  close; it answers the server's pings and pings too, so a dead connection is noticed within a minute.
- aggTrades: the ids held, as contiguous ranges (`IdRanges`). A hole between two ranges (a reconnect), the
  day's head (from the first trade of the UTC day, on the first start) and, while the stream is down, the tail are
  fetched from REST (`aggTrades?fromId=`, 1000 per request, weight 20) until the day has no gap in agg_trade_id.
- klines: closed bars only (`"x": true`); on every (re)connect the bars since the newest one held come from REST.
- open interest: on every (re)connect `openInterestHist` (5m) fills the day's missing 5-minute readings; between,
  `openInterest` is polled every `oi_poll_seconds` and the first poll in the first half of a 5-minute interval is
  that interval's reading, valued at the last trade price (the archive's metrics hold the same 5-minute snapshots).
- forced liquidations: `!forceOrder@arr` carries every market's; only the collected symbols are kept. They cannot be
  fetched again, so each live forced_liquidations partition records when the stream was connected (coverage).

Every `commit_seconds` the rows received are committed partition by partition (`LivePartition.commit`: one atomic
replace each, sorted and without repeats), in a worker thread so the stream keeps being read. A crash loses what was
received since the last commit; a restart reads the partitions back, and the trade ids, bars and readings it lacks
come again from REST, so nothing is duplicated and only forced liquidations of the missed seconds are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from liq_pipeline.formats import stream
from liq_pipeline.lake import Lake
from liq_pipeline.live.partition import ArchiveOwnedError, LivePartition, day_bounds_ms, day_of
from liq_pipeline.live.rest import KLINES_LIMIT, BinanceRest

DEFAULT_WS_URL = "wss://fstream.binance.com"
FIVE_MIN_MS = 300_000
TABLES = ("agg_trades", "klines", "open_interest", "forced_liquidations")
_DECODE: dict[str, Callable] = {
    "agg_trades": stream.agg_trades,
    "klines": stream.klines,
    "open_interest": stream.open_interest,
    "forced_liquidations": stream.forced_liquidations,
}

log = logging.getLogger("liq.collect")
Key = tuple[str, str, date]  # table, symbol, day


def _retry_always(exc: Exception) -> None:
    """The collector runs for days: every failure to connect (refused, 5xx, 429, a timeout) is retried with the
    client's exponential backoff, and logged."""
    log.warning("cannot connect to the stream (%s); retrying with backoff", exc)
    return None


def ws_url() -> str:
    return (os.environ.get("LIQ_BINANCE_WS_URL") or DEFAULT_WS_URL).rstrip("/")


def stream_names(symbols: list[str]) -> list[str]:
    per_symbol = [f"{s.lower()}@{kind}" for s in symbols for kind in ("aggTrade", "kline_1m")]
    return [*per_symbol, "!forceOrder@arr"]


class IdRanges:
    """The aggTrade ids held, as sorted contiguous [lo, hi] ranges, and the day's first id (`floor`)."""

    def __init__(self, ids: np.ndarray | None = None, floor: int | None = None):
        self.ranges: list[list[int]] = []
        self.floor = floor
        if ids is not None and len(ids):
            ids = np.unique(ids)
            breaks = np.flatnonzero(np.diff(ids) != 1)
            starts, ends = np.r_[0, breaks + 1], np.r_[breaks, len(ids) - 1]
            self.ranges = [[int(ids[a]), int(ids[b])] for a, b in zip(starts, ends)]

    def add(self, lo: int, hi: int) -> None:
        if self.ranges and self.ranges[-1][0] <= lo <= self.ranges[-1][1] + 1:  # the stream's usual case
            self.ranges[-1][1] = max(self.ranges[-1][1], hi)
            return
        self.ranges.append([lo, hi])
        self.ranges.sort()
        merged = [self.ranges[0]]
        for r in self.ranges[1:]:
            if r[0] <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], r[1])
            else:
                merged.append(r)
        self.ranges = merged

    @property
    def newest(self) -> int | None:
        return self.ranges[-1][1] if self.ranges else None

    def first_gap(self) -> tuple[int, int] | None:
        """The first missing ids [lo, hi]: before the first range (from the floor) or between two ranges."""
        if self.ranges and self.floor is not None and self.floor < self.ranges[0][0]:
            return self.floor, self.ranges[0][0] - 1
        for a, b in zip(self.ranges, self.ranges[1:]):
            return a[1] + 1, b[0] - 1
        return None

    def missing(self, upto: int | None) -> tuple[int, int | None] | None:
        """The first gap, else what follows the newest id held (from the floor when nothing is held) up to `upto`
        (None: up to whatever exists). None when nothing is missing."""
        gap = self.first_gap()
        if gap is not None:
            return gap
        start = self.newest + 1 if self.ranges else self.floor
        if start is None or (upto is not None and start > upto):
            return None
        return start, upto


class Collector:
    def __init__(
        self,
        lake: Lake,
        symbols: list[str],
        *,
        ws_base: str | None = None,
        rest: BinanceRest | None = None,
        commit_seconds: float = 15.0,
        oi_poll_seconds: float = 30.0,
    ):
        self.lake, self.symbols = lake, list(symbols)
        self.url = f"{ws_base or ws_url()}/stream?streams={'/'.join(stream_names(self.symbols))}"
        self.rest = rest or BinanceRest()
        self.commit_seconds, self.oi_poll_seconds = commit_seconds, oi_poll_seconds
        self.buffers: dict[Key, list] = defaultdict(list)
        self.partitions: dict[Key, LivePartition] = {}
        self.closed: set[Key] = set()  # partitions the archive owns: rows for them are dropped
        self.trades = {s: IdRanges() for s in self.symbols}
        self.bars = {
            s: IdRanges() for s in self.symbols
        }  # closed 1-minute bars held, as minutes since the epoch
        self.oi_have: dict[str, set[int]] = defaultdict(set)
        self.last_price: dict[str, float] = {}
        self.stream_time = 0  # the newest event time (ms) the stream sent
        self.span: list[int] | None = None  # [first, last] event time of the current connection
        self.spans: list[tuple[int, int]] = []  # of connections that ended, not yet committed
        self.connected = asyncio.Event()
        self.counts: dict[str, int] = defaultdict(int)
        self._commit_lock = asyncio.Lock()

    # --- start: what the lake already holds -----------------------------------------------------------------------

    def _partition(self, key: Key) -> LivePartition | None:
        if key in self.closed:
            return None
        if key not in self.partitions:
            try:
                self.partitions[key] = LivePartition(self.lake, *key)
            except ArchiveOwnedError as exc:
                log.warning("%s; its rows from the stream are dropped", exc)
                self.closed.add(key)
                return None
        return self.partitions[key]

    async def resume(self) -> None:
        """Read today's (and, for the trade ids, yesterday's) live partitions back, and find where the day starts."""
        now = await self.rest.server_time()
        self.stream_time = max(self.stream_time, now)
        today = day_of(now)
        for symbol in self.symbols:
            await asyncio.to_thread(self._resume_symbol, symbol, today)
            if self.trades[symbol].floor is None:
                self.trades[symbol].floor = await self._first_trade_id(symbol, today, now)
            log.info("%s: resuming from %s", symbol, self._held(symbol))

    def _resume_symbol(self, symbol: str, today: date) -> None:
        ids = []
        for day in (today - timedelta(days=1), today):
            p = self._partition(("agg_trades", symbol, day))
            if p is not None and p.committed is not None and p.committed.num_rows:
                ids.append(p.committed["agg_trade_id"].to_numpy())
        if ids:
            held = np.concatenate(ids)
            self.trades[symbol] = IdRanges(held, floor=int(held.min()))
        start, _ = day_bounds_ms(today)
        bars = self._partition(("klines", symbol, today))
        held = None
        if bars is not None and bars.committed is not None:
            held = bars.committed["open_time"].cast(pa.int64()).to_numpy() // 60_000_000
        self.bars[symbol] = IdRanges(held, floor=start // 60_000)
        oi = self._partition(("open_interest", symbol, today))
        if oi is not None and oi.committed is not None:
            self.oi_have[symbol] = {
                int(t.timestamp() * 1000) for t in pc.unique(oi.committed["ts"]).to_pylist()
            }

    def _held(self, symbol: str) -> str:
        r = self.trades[symbol]
        return f"aggTrade ids {r.ranges[0][0]}..{r.newest}" if r.ranges else "no trades held"

    async def _first_trade_id(self, symbol: str, today: date, now: int) -> int | None:
        """The first aggTrade id of the UTC day, from REST (windows of an hour, as Binance requires)."""
        start, _ = day_bounds_ms(today)
        while start < now:
            page = await self.rest.agg_trades(symbol, startTime=start, endTime=start + 3_599_999, limit=1)
            if page:
                return int(page[0]["a"])
            start += 3_600_000
        return None

    # --- rows in ------------------------------------------------------------------------------------------------

    def _buffer(self, table: str, symbol: str, ms: int, item) -> None:
        self.buffers[(table, symbol, day_of(ms))].append(item)
        self.counts[table] += 1

    def on_message(self, message: dict) -> None:
        """One combined-stream message `{"stream": name, "data": payload}`."""
        data = message.get("data", message)
        event_time = data.get("E")
        if event_time:
            self.stream_time = max(self.stream_time, int(event_time))
            if self.span is not None:
                self.span[1] = max(self.span[1], int(event_time))
        kind = data.get("e")
        if kind == "aggTrade":
            symbol, trade_id = data["s"], int(data["a"])
            self.trades[symbol].add(trade_id, trade_id)
            self.last_price[symbol] = float(data["p"])
            self._buffer("agg_trades", symbol, int(data["T"]), data)
        elif kind == "kline" and data["k"]["x"]:
            self.add_bars(data["s"], [data["k"]])
        elif kind == "forceOrder" and data["o"]["s"] in self.trades:
            self._buffer("forced_liquidations", data["o"]["s"], int(data["o"]["T"]), data["o"])

    def add_trades(self, symbol: str, items: list[dict]) -> None:
        for x in items:
            self.trades[symbol].add(int(x["a"]), int(x["a"]))
            self._buffer("agg_trades", symbol, int(x["T"]), x)
        if items:
            self.last_price.setdefault(symbol, float(items[-1]["p"]))

    def add_bars(self, symbol: str, bars: list[dict]) -> None:
        for bar in bars:
            minute = int(bar["t"]) // 60_000
            self.bars[symbol].add(minute, minute)
            self._buffer("klines", symbol, int(bar["t"]), bar)

    def add_open_interest(self, symbol: str, readings: list[tuple[int, float, float]]) -> None:
        for r in readings:
            if r[0] not in self.oi_have[symbol]:
                self.oi_have[symbol].add(r[0])
                self._buffer("open_interest", symbol, r[0], r)

    # --- tasks --------------------------------------------------------------------------------------------------

    async def stream_loop(self) -> None:
        """Read the combined stream for ever; `connect` reconnects with backoff after any failure."""
        connections = connect(
            self.url,
            ping_interval=20,
            ping_timeout=20,
            open_timeout=10,
            max_size=2**22,
            process_exception=_retry_always,
        )
        # aclosing: a stop (cancellation) closes the connection instead of leaving it to the garbage collector
        async with contextlib.aclosing(aiter(connections)) as reconnecting:
            async for ws in reconnecting:
                await self._read(ws)

    async def _read(self, ws) -> None:
        """One connection, until it closes (a normal close, like Binance's after 24 hours, or a drop)."""
        self.span = None
        self.connected.set()
        refill = asyncio.create_task(self.refill_after_connect())
        try:
            async for raw in ws:
                message = json.loads(raw)
                if self.span is None:
                    first = int(message.get("data", message).get("E") or self.stream_time)
                    self.span = [first, first]
                self.on_message(message)
            log.warning("stream closed by the server (%s); reconnecting", ws.close_reason or ws.close_code)
        except ConnectionClosed as exc:
            log.warning("stream connection lost (%s); reconnecting", exc)
        finally:
            refill.cancel()  # the next connection refills again, from what is held by then
            self.connected.clear()
            if self.span is not None:
                self.spans.append((self.span[0], self.span[1]))
                self.span = None

    async def refill_after_connect(self) -> None:
        """The bars and open interest readings missed while disconnected (trade ids: `trade_fill_loop`)."""
        for symbol in self.symbols:
            await self._fill_klines(symbol)
            await self._fill_open_interest(symbol)

    async def _fill_klines(self, symbol: str) -> None:
        """Every closed bar of the day not held yet: the holes and the tail, 1500 bars per request."""
        now = await self.rest.server_time()
        bars = self.bars[symbol]
        while (gap := bars.missing(upto=now // 60_000 - 1)) is not None:
            lo, hi = gap[0], gap[1] if gap[1] is not None else now // 60_000 - 1
            rows = await self.rest.klines(symbol, lo * 60_000, min(KLINES_LIMIT, hi - lo + 1))
            closed = [stream.kline_object(r) for r in rows if int(r[6]) < now and int(r[0]) // 60_000 <= hi]
            self.add_bars(symbol, closed)
            if not closed:  # no bars there (an exchange outage): do not ask again
                bars.add(lo, hi)

    async def _fill_open_interest(self, symbol: str) -> None:
        now = await self.rest.server_time()
        start, _ = day_bounds_ms(day_of(now))
        have = self.oi_have[symbol]
        wanted = [t for t in range(start, now + 1, FIVE_MIN_MS) if t not in have]
        if wanted:
            items = await self.rest.open_interest_hist(symbol, wanted[0], now)
            self.add_open_interest(symbol, stream.open_interest_hist(items))

    async def trade_fill_loop(self, symbol: str) -> None:
        """Close the holes in the day's aggTrade ids from REST, and follow the tail while the stream is down."""
        ranges = self.trades[symbol]
        while True:
            # While the stream is connected it brings the tail; a hole, or the day's head, comes from here.
            gap = ranges.first_gap() if self.connected.is_set() and ranges.ranges else ranges.missing(None)
            if gap is None:
                await asyncio.sleep(1.0)
                continue
            page = await self.rest.agg_trades(symbol, fromId=gap[0])
            wanted = [x for x in page if gap[1] is None or int(x["a"]) <= gap[1]]
            self.add_trades(symbol, wanted)
            self.counts["rest_trades"] += len(wanted)
            if not page or (gap[1] is None and len(page) < 1000):
                await asyncio.sleep(1.0)  # caught up with the exchange: wait for the stream or more trades
            if page and int(page[0]["a"]) > gap[0] and gap[1] is not None:
                # The exchange has no trades with these ids (never happens on Binance): do not ask again.
                ranges.add(gap[0], min(int(page[0]["a"]) - 1, gap[1]))

    async def oi_poll_loop(self) -> None:
        """A reading per 5 minutes: the first poll in the first half of each interval."""
        last_history = time.monotonic()
        while True:
            for symbol in self.symbols:
                reading = await self.rest.open_interest(symbol)
                t = int(reading["time"])
                slot = t - t % FIVE_MIN_MS
                price = self.last_price.get(symbol)
                if t - slot <= FIVE_MIN_MS // 2 and price is not None:
                    coins = float(reading["openInterest"])
                    self.add_open_interest(symbol, [(slot, coins, coins * price)])
            if time.monotonic() - last_history > 600:  # every 10 minutes: readings missed, from the history
                last_history = time.monotonic()
                for symbol in self.symbols:
                    await self._fill_open_interest(symbol)
            await asyncio.sleep(self.oi_poll_seconds)

    async def commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.commit_seconds)
            await self.commit()

    # --- rows out -----------------------------------------------------------------------------------------------

    async def commit(self) -> dict[Key, int]:
        """Commit what was received: each partition with new rows or coverage, one atomic replace each."""
        async with self._commit_lock:
            batch, self.buffers = self.buffers, defaultdict(list)
            spans, self.spans = self.spans, []
            if self.span is not None:
                spans.append((self.span[0], self.span[1]))
            return await asyncio.to_thread(self._commit_batch, batch, spans)

    def _commit_batch(self, batch: dict[Key, list], spans: list[tuple[int, int]]) -> dict[Key, int]:
        keys = set(batch)
        for start, end in spans:  # every collected table of every day a connection touched gets its coverage
            for day in {day_of(start), day_of(end)}:
                keys |= {(t, s, day) for t in TABLES for s in self.symbols}
        added = {}
        for key in sorted(keys):
            p = self._partition(key)
            if p is None:
                continue
            if batch.get(key):
                p.add(_DECODE[key[0]](batch[key], key[1], key[2]))
            for start, end in spans:
                p.cover(start, end + 1)
            try:
                added[key] = p.commit()
            except ArchiveOwnedError as exc:
                log.warning("%s", exc)
                self.closed.add(key)
                del self.partitions[key]
        self._forget_old_days()
        if any(added.values()):
            log.info(
                "committed %s", ", ".join(f"{k[0]} {k[2]}|{k[1]} +{n}" for k, n in sorted(added.items()) if n)
            )
        return added

    def _forget_old_days(self) -> None:
        """Partitions of days before yesterday are finished: let their rows go."""
        keep_from = day_of(self.stream_time) - timedelta(days=1)
        for key in [k for k in self.partitions if k[2] < keep_from]:
            del self.partitions[key]

    # --- the whole ----------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Collect until `stop` is set, then commit what is held and return."""
        await self.resume()
        tasks = [
            asyncio.create_task(self.stream_loop()),
            asyncio.create_task(self.oi_poll_loop()),
            asyncio.create_task(self.commit_loop()),
            *(asyncio.create_task(self.trade_fill_loop(s)) for s in self.symbols),
        ]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.commit()
        await self.rest.close()
        failed = [t for t in done if t is not stopper and t.exception()]
        if failed:
            raise failed[0].exception()


def collect(symbols: list[str], lake: Lake | None = None, **options) -> None:
    """Run a collector in this process until SIGTERM or Ctrl-C (SIGINT), then commit what it holds and return."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        collector = Collector(lake or Lake(), symbols, **options)
        log.info("collecting %s from %s into %s", ", ".join(symbols), collector.url, collector.lake.root)
        await collector.run(stop)
        log.info("stopped; %s", ", ".join(f"{k}: {v}" for k, v in sorted(collector.counts.items())))

    asyncio.run(main())
