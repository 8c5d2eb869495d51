"""A loopback Binance USDT-M futures exchange: the synthetic sample market, replayed in Binance's own payloads.

It exists so that the live collector (`liq collect`) can be tested, and tried, without the internet. One port on
127.0.0.1 serves both halves of the public API, like fstream.binance.com and fapi.binance.com together:

- WebSocket market streams: combined (`/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m/!forceOrder@arr`,
  messages `{"stream": name, "data": payload}`) and raw (`/ws/btcusdt@aggTrade`, the payload alone), plus the
  `SUBSCRIBE` / `UNSUBSCRIBE` / `LIST_SUBSCRIPTIONS` messages. Streams: `<symbol>@aggTrade`, `<symbol>@kline_1m`,
  `<symbol>@forceOrder` and `!forceOrder@arr` (every symbol of the exchange; Binance's sampling: per symbol at most
  one order per 1000 ms window, the latest in it, pushed when the window ends).
- REST (`process_request` answers every GET that is not a WebSocket upgrade): `/fapi/v1/aggTrades`,
  `/fapi/v1/klines`, `/fapi/v1/openInterest`, `/futures/data/openInterestHist`, `/fapi/v1/time`, `/fapi/v1/ping`,
  with Binance's weights, `X-MBX-USED-WEIGHT-1M` on every answer and 429 + `Retry-After` + code -1003 over the
  minute's limit.

The market is `sample.market_day(spec, day, trades_per_day)` of every UTC day the exchange clock touches (cached per
symbol and day); nothing later than `clock()` is ever visible. The clock may run faster than real time (tests replay
minutes of market per second); connection timers (ping interval, pong timeout, 24 h lifetime) are in real seconds,
and the weight minute is the exchange clock's minute (`Retry-After` is converted to real seconds at the clock's
observed speed).

Choices where Binance is unspecified or the sample has no answer, so tests can rely on them:
- An unknown or malformed stream name in the URL refuses the handshake with HTTP 400 and
  `{"code": -1121, "msg": "Invalid stream name ..."}` (real Binance may accept and stay silent, so a collector must
  not rely on an error); in a SUBSCRIBE message it answers `{"error": {"code": 2, "msg": "Invalid request: invalid
  stream"}, "id": id}` as Binance does.
- Event times: aggTrade `E` = the trade time; a closed kline's `E` = its close time + 1 ms; an open kline update's
  `E` = the time its values run to; forceOrder `E` = the end of its 1000 ms window.
- Kline `f` / `L` are raw trade ids (-1 for a minute without trades). An open kline update is sent when a minute
  opens and whenever it has new trades in a tick, with the values of its trades so far (`x: false`).
- `drop_connections` closes the TCP connections without a close frame (a FIN after the bytes already written:
  every payload recorded in `sent` reached the client's socket); the client sees close code 1006.
- A connection whose pong does not arrive within `pong_timeout` gets a close frame 1011 and is dropped 2 s later.
- REST: a `limit` above the maximum is clamped; history is served back to 30 days before the clock; aggTrades with
  only `startTime` gives the first `limit` trades from it, with only `endTime` the last ones up to it.

CLI: `python -m liq_pipeline.live.exchange --symbols BTCUSDT,ETHUSDT --port 9100 [--speed 1] [--start ISO]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http import HTTPStatus
from urllib.parse import parse_qs, parse_qsl, urlsplit

import numpy as np
import pandas as pd
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from liq_pipeline.live.partition import day_bounds_ms, day_of
from liq_pipeline.sources import sample
from liq_pipeline.symbols import SymbolSpec, load_registry

HOST = "127.0.0.1"
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
HISTORY_DAYS = 30  # how far back REST answers (openInterestHist: Binance's own 30-day limit)
TICK_SECONDS = 0.05  # the replay loop's period
FORCE_WINDOW_MS = 1000  # forceOrder sampling window
FORCE_ALL = "!forceOrder@arr"
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
CLOSE_TIMEOUT = 2.0  # seconds a close frame waits for the client's before the TCP connection is dropped
OI_PERIODS = {
    "5m": 5,
    "15m": 15,
    "30m": 30,
    "1h": 60,
    "2h": 120,
    "4h": 240,
    "6h": 360,
    "12h": 720,
    "1d": 1440,
}
# The sample's kline columns in the order bar() unpacks them.
_KLINE_COLUMNS = ("open", "close", "high", "low", "volume", "count", "quote_volume", "taker_buy_volume")
_KLINE_COLUMNS += ("taker_buy_quote_volume",)
_LOG = logging.getLogger(__name__)


class ApiError(Exception):
    """A Binance-style REST error: HTTP status plus `{"code": ..., "msg": ...}`."""

    def __init__(self, status: int, code: int, msg: str, headers: tuple = ()):
        super().__init__(msg)
        self.status, self.code, self.msg, self.headers = status, code, msg, headers


def _days(lo_ms: int, hi_ms: int) -> list[date]:
    first, last = day_of(lo_ms), day_of(hi_ms)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _num(value: float, decimals: int) -> str:
    """A Binance decimal string with the symbol's fixed number of decimals."""
    return f"{value:.{decimals}f}"


# ----------------------------------------------------------------------------------------------------------------
# One symbol-day of the sample market, and its payloads


class _Day:
    """One symbol's sample day, indexed for time-window queries; builds the Binance payloads of its rows."""

    def __init__(self, spec: SymbolSpec, day: date, trades_per_day: int):
        symbol = spec.symbol
        market = sample._market(spec)  # the sample's own decimals, so strings look like the archive's cells
        self.symbol, self.start = symbol, day_bounds_ms(day)[0]
        self.price_dec, self.qty_dec = market.price_decimals, market.qty_decimals
        self.quote_dec = market.quote_decimals
        data = sample.market_day(spec, day, trades_per_day)
        self.trades = data.agg_trades.reset_index(drop=True)
        self.klines = data.klines_1m.reset_index(drop=True)
        self.t = self.trades["transact_time"].to_numpy()
        # Plain arrays for the per-bar sums: pandas indexing costs ~1 ms a bar, too slow for a fast clock.
        self.tr = {c: self.trades[c].to_numpy() for c in self.trades.columns}
        self.kl = {c: self.klines[c].to_numpy() for c in self.klines.columns}
        met = data.metrics
        stamps = pd.to_datetime(met["create_time"], utc=True)
        self.oi = pd.DataFrame(
            {
                "ts": ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).astype("int64"),
                "oi": met["sum_open_interest"].to_numpy(),
                "value": met["sum_open_interest_value"].to_numpy(),
            }
        )
        liq = data.liquidations.drop_duplicates()  # the archive file holds every order twice
        self.liq = liq.sort_values("time", kind="stable").reset_index(drop=True)
        window = self.liq["time"].to_numpy() // FORCE_WINDOW_MS
        last = np.flatnonzero(np.r_[window[1:] != window[:-1], True]) if len(window) else np.array([], int)
        self.sampled = self.liq.iloc[last].reset_index(drop=True)  # the latest order of each window
        self.sampled_end = (window[last] + 1) * FORCE_WINDOW_MS

    # -- payloads ----------------------------------------------------------------------------------------------

    def agg_item(self, r) -> dict:
        """A REST aggTrades item (the stream's fields minus e, E, s)."""
        return {
            "a": int(r.agg_trade_id),
            "p": _num(r.price, self.price_dec),
            "q": _num(r.quantity, self.qty_dec),
            "f": int(r.first_trade_id),
            "l": int(r.last_trade_id),
            "T": int(r.transact_time),
            "m": bool(r.is_buyer_maker),
        }

    def agg_event(self, r) -> dict:
        return {"e": "aggTrade", "E": int(r.transact_time), "s": self.symbol, **self.agg_item(r)}

    def force_event(self, r, end: int) -> dict:
        order = {
            "s": self.symbol,
            "S": str(r.side),
            "o": "LIMIT",
            "f": "IOC",
            "q": _num(r.original_quantity, self.qty_dec),
            "p": _num(r.price, self.price_dec),
            "ap": _num(r.average_price, self.price_dec),
            "X": "FILLED",
            "l": _num(r.last_fill_quantity, self.qty_dec),
            "z": _num(r.accumulated_fill_quantity, self.qty_dec),
            "T": int(r.time),
        }
        return {"e": "forceOrder", "E": int(end), "o": order}

    def bar(self, open_time: int, upto: int | None = None) -> dict:
        """The 1m bar opening at open_time as the stream's `k` fields: the sample's final row (upto None), or the
        values of its trades up to `upto` (an open bar; before its first trade, the previous close)."""
        minute, close_time = (open_time - self.start) // MINUTE_MS, open_time + MINUTE_MS - 1
        tr, kl = self.tr, self.kl
        i, j = np.searchsorted(self.t, [open_time - 1, close_time if upto is None else upto], "right")
        k = {"t": open_time, "T": close_time, "s": self.symbol, "i": "1m"}
        k["f"] = int(tr["first_trade_id"][i]) if j > i else -1
        k["L"] = int(tr["last_trade_id"][j - 1]) if j > i else -1
        if upto is None:
            o, c, h, lo, v, n, q, bv, bq = (kl[col][minute] for col in _KLINE_COLUMNS)
        elif j > i:
            p, qty, buy = tr["price"][i:j], tr["quantity"][i:j], ~tr["is_buyer_maker"][i:j]
            o, c, h, lo = p[0], p[-1], p.max(), p.min()
            n = (tr["last_trade_id"][i:j] - tr["first_trade_id"][i:j] + 1).sum()
            v, q, bv, bq = qty.sum(), (p * qty).sum(), qty[buy].sum(), (p * qty)[buy].sum()
        else:
            o = c = h = lo = kl["close"][minute - 1] if minute else kl["open"][minute]
            v = n = q = bv = bq = 0
        k.update((key, _num(x, self.price_dec)) for key, x in (("o", o), ("c", c), ("h", h), ("l", lo)))
        k.update(v=_num(v, self.qty_dec), n=int(n), x=upto is None, q=_num(q, self.quote_dec))
        k.update(V=_num(bv, self.qty_dec), Q=_num(bq, self.quote_dec), B="0")
        return k

    def kline_row(self, open_time: int, now: int) -> list:
        """A REST klines array; the bar still open at `now` has its values so far."""
        k = self.bar(open_time, None if open_time + MINUTE_MS <= now else now)
        return [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"], "0"]

    # -- stream events in (lo, hi] -----------------------------------------------------------------------------

    def trade_events(self, lo: int, hi: int) -> Iterator[tuple[int, dict]]:
        i, j = np.searchsorted(self.t, [lo, hi], "right")
        for r in self.trades.iloc[i:j].itertuples(index=False):
            yield int(r.transact_time), self.agg_event(r)

    def kline_events(self, lo: int, hi: int) -> Iterator[tuple[int, dict]]:
        """Every minute of this day touched by (lo, hi]: an open update when it opens or gets trades, and the
        closed bar once the clock is past its close time."""
        first = max(self.start, (lo + 1) // MINUTE_MS * MINUTE_MS - MINUTE_MS)
        last = min(self.start + DAY_MS - MINUTE_MS, hi // MINUTE_MS * MINUTE_MS)
        for t in range(first, last + 1, MINUTE_MS):
            upto = min(hi, t + MINUTE_MS - 1)
            i, j = np.searchsorted(self.t, [max(lo, t - 1), upto], "right")
            if upto > lo and (lo < t <= hi or j > i):
                yield upto, {"e": "kline", "E": upto, "s": self.symbol, "k": self.bar(t, upto)}
            if lo < t + MINUTE_MS <= hi:
                yield t + MINUTE_MS, {"e": "kline", "E": t + MINUTE_MS, "s": self.symbol, "k": self.bar(t)}

    def force_events(self, lo: int, hi: int) -> Iterator[tuple[int, dict]]:
        i, j = np.searchsorted(self.sampled_end, [lo, hi], "right")
        for r, end in zip(self.sampled.iloc[i:j].itertuples(index=False), self.sampled_end[i:j]):
            yield int(end), self.force_event(r, int(end))


# ----------------------------------------------------------------------------------------------------------------
# The exchange


@dataclass(eq=False)
class _Conn:
    ws: ServerConnection
    streams: set[str]
    wrapped: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    tasks: set = field(default_factory=set)
    no_pong: bool = False


class LoopbackExchange:
    """Binance USDT-M futures on 127.0.0.1, serving the sample market; a context manager (a server thread).

    For tests: `sent[stream]` lists every `data` payload written to a stream connection (one entry per connection
    that got it; every valid stream name is a key from the start), `requests` every REST (path, params), and the
    counters `pings_sent`, `pongs_received`, `connections_closed_for_no_pong`, `connections_total`, `used_weight`.
    `record=False` (the CLI) keeps no `sent` history.
    """

    def __init__(
        self,
        symbols: list[str],
        *,
        trades_per_day: int = sample.DEFAULT_TRADES_PER_DAY,
        clock: Callable[[], int] | None = None,
        ping_interval: float = 180.0,
        pong_timeout: float = 600.0,
        max_connection_seconds: float = 86_400.0,
        weight_limit_per_minute: int = 2400,
        port: int = 0,
        record: bool = True,
    ):
        registry = load_registry()
        self._specs = {spec.symbol: spec for spec in (registry.get(s.upper()) for s in symbols)}
        self.symbols = list(self._specs)
        self.trades_per_day = trades_per_day
        self.clock: Callable[[], int] = clock or (lambda: int(time.time() * 1000))
        self.ping_interval, self.pong_timeout = ping_interval, pong_timeout
        self.max_connection_seconds = max_connection_seconds
        self.weight_limit_per_minute = weight_limit_per_minute
        self.port, self.record = port, record
        self.ws_url = self.api_url = ""
        kinds = ("aggTrade", "kline_1m", "forceOrder")
        self._stream_names = {FORCE_ALL} | {f"{s.lower()}@{k}" for s in self.symbols for k in kinds}
        # Every key exists from the start: readers in other threads may iterate while the server appends.
        self.sent: dict[str, list[dict]] = {name: [] for name in sorted(self._stream_names)}
        self.pings_sent = self.pongs_received = 0
        self.connections_closed_for_no_pong = self.connections_total = 0
        self.requests: list[tuple[str, dict]] = []
        self._days: dict[tuple[str, date], _Day] = {}
        self._conns: set[_Conn] = set()
        self._paused = False
        self._weight_minute, self._weight = -1, 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._origin = (time.monotonic(), 0)

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def __enter__(self) -> LoopbackExchange:
        now = self.clock()
        for (
            symbol
        ) in self.symbols:  # a symbol's first day chains from the sample's origin: ~2 s once, done here
            self._day(symbol, day_of(now))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopback-exchange", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=60)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await serve(
            self._serve_stream,
            HOST,
            self.port,
            process_request=self._process_request,
            ping_interval=None,  # pings are sent and counted by _keepalive
            ping_timeout=None,
            close_timeout=CLOSE_TIMEOUT,
        )
        port = self._server.sockets[0].getsockname()[1]
        self.ws_url, self.api_url = f"ws://{HOST}:{port}", f"http://{HOST}:{port}"
        self._origin = (time.monotonic(), self.clock())
        self._replay_task = asyncio.create_task(self._replay())

    async def _stop(self) -> None:
        self._replay_task.cancel()
        self._server.close()
        await self._server.wait_closed()

    # -- controls for tests -------------------------------------------------------------------------------------

    def drop_connections(self) -> int:
        """Cut every stream connection now, like a network failure: TCP closed, no close frame. Returns how many."""

        async def drop() -> int:
            conns = list(self._conns)
            for conn in conns:  # FIN after the bytes already written; a client that does not read: RST later
                conn.ws.transport.close()
                self._loop.call_later(CLOSE_TIMEOUT, conn.ws.transport.abort)
            return len(conns)

        return asyncio.run_coroutine_threadsafe(drop(), self._loop).result(timeout=10)

    def pause_streams(self, paused: bool) -> None:
        """While paused, the streams send nothing (the events are lost for them; REST still has them): a gap."""
        self._paused = paused

    @property
    def used_weight(self) -> int:
        """Request weight used in the exchange clock's current minute."""
        return self._weight if self.clock() // MINUTE_MS == self._weight_minute else 0

    # -- market -------------------------------------------------------------------------------------------------

    def _day(self, symbol: str, day: date) -> _Day:
        key = (symbol, day)
        if key not in self._days:
            oldest = day_of(self.clock()) - timedelta(days=HISTORY_DAYS + 1)
            for old in [k for k in self._days if k[1] < oldest]:  # a long fast run must not keep every day
                del self._days[old]
            self._days[key] = _Day(self._specs[symbol], day, self.trades_per_day)
        return self._days[key]

    def _events(self, lo: int, hi: int, wanted: set[str]) -> list[tuple[str, dict]]:
        """Every stream event in the exchange-time window (lo, hi] for the wanted stream names, in time order."""
        out: list[tuple[int, str, dict]] = []
        for symbol in self.symbols:
            s = symbol.lower()
            names = (f"{s}@aggTrade", f"{s}@kline_1m", f"{s}@forceOrder")
            force = [n for n in (FORCE_ALL, names[2]) if n in wanted]
            if names[0] not in wanted and names[1] not in wanted and not force:
                continue
            for day in _days(lo + 1 - MINUTE_MS, hi):
                d = self._day(symbol, day)
                if names[0] in wanted:
                    out += [(t, names[0], e) for t, e in d.trade_events(lo, hi)]
                if names[1] in wanted:
                    out += [(t, names[1], e) for t, e in d.kline_events(lo, hi)]
                for t, e in d.force_events(lo, hi) if force else ():
                    out += [(t, n, e) for n in force]
        out.sort(key=lambda e: e[0])
        return [(name, data) for _, name, data in out]

    async def _replay(self) -> None:
        """Every tick, push the events whose time passed since the last tick to the connections that want them."""
        last = self.clock()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = self.clock()
            if now <= last:
                continue
            conns = list(self._conns)
            if conns and not self._paused:
                try:
                    events = self._events(last, now, set().union(*(c.streams for c in conns)))
                except Exception:  # a bug must not stop the clock silently
                    _LOG.exception("loopback exchange: building events for (%s, %s] failed", last, now)
                    events = []
                for name, data in events:
                    for conn in conns:
                        if name in conn.streams:
                            conn.queue.put_nowait((name, data))
            last = now

    # -- WebSocket ----------------------------------------------------------------------------------------------

    def _valid_stream(self, name: str) -> bool:
        return isinstance(name, str) and name in self._stream_names

    def _accept_stream(self, connection: ServerConnection, path: str, query: str) -> Response | None:
        """Check the stream names of a WebSocket URL; remember them on the connection, or refuse with 400."""
        if path == "/stream":
            names = [n for n in "/".join(parse_qs(query).get("streams", [])).split("/") if n]
        else:
            names = [n for n in path[len("/ws") :].split("/") if n]
        bad = [n for n in names if not self._valid_stream(n)]
        if bad:
            return self._json(400, {"code": -1121, "msg": f"Invalid stream name {bad[0]!r}."})
        connection.liq_streams, connection.liq_wrapped = set(names), path == "/stream"
        return None

    async def _serve_stream(self, ws: ServerConnection) -> None:
        conn = _Conn(ws, set(ws.liq_streams), ws.liq_wrapped)
        self._conns.add(conn)
        self.connections_total += 1
        for job in (self._sender(conn), self._keepalive(conn), self._expire(conn)):
            self._spawn(conn, job)
        try:
            async for message in ws:
                await self._on_message(conn, message)
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(conn)
            for task in list(conn.tasks):
                task.cancel()

    def _spawn(self, conn: _Conn, job) -> None:
        task = asyncio.create_task(job)
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)

    async def _sender(self, conn: _Conn) -> None:
        """Send the connection's queued events in order; record each payload once it was written."""
        try:
            while True:
                name, data = await conn.queue.get()
                await conn.ws.send(json.dumps({"stream": name, "data": data} if conn.wrapped else data))
                if self.record:
                    self.sent[name].append(data)
        except ConnectionClosed:
            pass

    async def _keepalive(self, conn: _Conn) -> None:
        """Binance pings every 3 minutes and drops a connection whose pong is 10 minutes late."""
        try:
            while True:
                await asyncio.sleep(self.ping_interval)
                try:
                    waiter = await asyncio.wait_for(conn.ws.ping(), self.pong_timeout)
                except TimeoutError:  # the client does not even read: the ping could not be written
                    await self._close_no_pong(conn)
                    return
                self.pings_sent += 1
                self._spawn(conn, self._await_pong(conn, waiter))
        except ConnectionClosed:
            pass

    async def _await_pong(self, conn: _Conn, waiter) -> None:
        try:
            await asyncio.wait_for(waiter, self.pong_timeout)
            self.pongs_received += 1
        except TimeoutError:
            await self._close_no_pong(conn)
        except ConnectionClosed:
            pass

    async def _close_no_pong(self, conn: _Conn) -> None:
        if not conn.no_pong:
            conn.no_pong = True
            self.connections_closed_for_no_pong += 1
            await conn.ws.close(1011, "pong timeout")

    async def _expire(self, conn: _Conn) -> None:
        """Binance closes every connection after 24 hours (a normal close)."""
        await asyncio.sleep(self.max_connection_seconds)
        await conn.ws.close(1000, "connection lifetime exceeded")

    async def _on_message(self, conn: _Conn, message: str | bytes) -> None:
        """The live subscription messages: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS."""
        try:
            request = json.loads(message)
            method, rid, params = request["method"], request.get("id"), request.get("params", [])
        except (ValueError, KeyError, TypeError):
            await conn.ws.send(json.dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}))
            return
        if method in ("SUBSCRIBE", "UNSUBSCRIBE") and all(self._valid_stream(p) for p in params):
            (conn.streams.update if method == "SUBSCRIBE" else conn.streams.difference_update)(params)
            reply = {"result": None, "id": rid}
        elif method == "LIST_SUBSCRIPTIONS":
            reply = {"result": sorted(conn.streams), "id": rid}
        else:
            reply = {"error": {"code": 2, "msg": "Invalid request: invalid stream or method"}, "id": rid}
        await conn.ws.send(json.dumps(reply))

    # -- REST ---------------------------------------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/stream" or url.path == "/ws" or url.path.startswith("/ws/"):
            return self._accept_stream(connection, url.path, url.query)
        params = dict(parse_qsl(url.query))
        self.requests.append((url.path, params))
        try:
            return self._json(200, self._rest(url.path, params))
        except ApiError as e:
            return self._json(e.status, {"code": e.code, "msg": e.msg}, e.headers)

    def _json(self, status: int, body, headers: tuple = ()) -> Response:
        data = json.dumps(body, separators=(",", ":")).encode()
        h = Headers(
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                ("Connection", "close"),
                (WEIGHT_HEADER, str(self.used_weight)),
                *headers,
            ]
        )
        return Response(status, HTTPStatus(status).phrase, h, data)

    def _rest(self, path: str, params: dict):
        routes = {
            "/fapi/v1/aggTrades": (self._agg_trades, lambda p: 20),
            "/fapi/v1/klines": (self._klines, _klines_weight),
            "/fapi/v1/openInterest": (self._open_interest, lambda p: 1),
            "/futures/data/openInterestHist": (self._open_interest_hist, lambda p: 0),
            "/fapi/v1/time": (lambda p, now: {"serverTime": now}, lambda p: 1),
            "/fapi/v1/ping": (lambda p, now: {}, lambda p: 1),
        }
        if path not in routes:
            raise ApiError(404, -1000, f"Unknown path {path}.")
        handler, weight = routes[path]
        now = self.clock()
        self._charge(weight(params), now)
        return handler(params, now)

    def _charge(self, weight: int, now: int) -> None:
        """Count the request's weight in the clock's minute, or answer 429 when it would go over the limit."""
        minute = now // MINUTE_MS
        if minute != self._weight_minute:
            self._weight_minute, self._weight = minute, 0
        if self._weight + weight > self.weight_limit_per_minute:
            wait = self._real_seconds((minute + 1) * MINUTE_MS - now)
            msg = (
                f"Too much request weight used; current limit is {self.weight_limit_per_minute} request weight "
                "per 1 MINUTE. Please use the websocket for live updates to avoid polling the API."
            )
            raise ApiError(429, -1003, msg, (("Retry-After", str(wait)),))
        self._weight += weight

    def _real_seconds(self, exchange_ms: int) -> int:
        """Whole real seconds (at least 1) that `exchange_ms` of exchange time take at the clock's observed speed."""
        mono0, clock0 = self._origin
        elapsed = time.monotonic() - mono0
        speed = (self.clock() - clock0) / (elapsed * 1000) if elapsed > 0.5 else 1.0
        speed = speed if speed > 0.01 else 1.0  # a stopped (test) clock: say the exchange seconds
        return max(1, math.ceil(exchange_ms / 1000 / speed))

    def _symbol(self, params: dict) -> str:
        symbol = params.get("symbol", "")
        if not symbol:
            raise ApiError(
                400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            )
        if symbol not in self.symbols:
            raise ApiError(400, -1121, "Invalid symbol.")
        return symbol

    def _collect(self, symbol, kind: str, days: list[date], keep, limit: int, forward: bool) -> pd.DataFrame:
        """The first (forward) or last `limit` rows of a table ("trades", "klines", "oi") kept by `keep(frame)`
        over `days`, ascending; stops reading days once it has enough."""
        days = [d for d in days if d >= day_of(self.clock()) - timedelta(days=HISTORY_DAYS)]
        parts, count = [], 0
        for day in days if forward else reversed(days):
            frame = getattr(self._day(symbol, day), kind)
            parts.append(frame[keep(frame)])
            count += len(parts[-1])
            if count >= limit:
                break
        rows = pd.concat(parts if forward else parts[::-1]) if parts else pd.DataFrame()
        return rows.head(limit) if forward else rows.tail(limit)

    def _agg_trades(self, p: dict, now: int) -> list[dict]:
        symbol, limit = self._symbol(p), _limit(p, 500, 1000)
        from_id, start, end = _int(p, "fromId"), _int(p, "startTime"), _int(p, "endTime")
        if from_id is not None:
            day = self._day_with_id(symbol, from_id, now)
            keep = lambda f: (f["agg_trade_id"] >= from_id) & (f["transact_time"] <= now)  # noqa: E731
            rows = self._collect(symbol, "trades", _days(day_bounds_ms(day)[0], now), keep, limit, True)
        else:
            if start is not None and end is not None and end - start >= HOUR_MS:
                raise ApiError(400, -1127, "More than 1 hours between startTime and endTime.")
            hi = now if end is None else min(end, now)
            lo = hi - 7 * DAY_MS if start is None else start
            keep = lambda f: f["transact_time"].between(lo, hi)  # noqa: E731
            rows = self._collect(symbol, "trades", _days(lo, max(lo, hi)), keep, limit, start is not None)
        d = self._day(symbol, day_of(now))
        return [d.agg_item(r) for r in rows.itertuples(index=False)]

    def _day_with_id(self, symbol: str, agg_id: int, now: int) -> date:
        """The day whose trades include aggregate id `agg_id` (ids run on across days), searching back from now."""
        day = day_of(now)
        for _ in range(HISTORY_DAYS):
            ids = self._day(symbol, day).trades["agg_trade_id"]
            if len(ids) and ids.iloc[0] <= agg_id:
                return day
            day -= timedelta(days=1)
        return day + timedelta(days=1)

    def _klines(self, p: dict, now: int) -> list[list]:
        symbol, limit = self._symbol(p), _limit(p, 500, 1500)
        if p.get("interval") != "1m":
            raise ApiError(400, -1120, "Invalid interval.")
        start, end = _int(p, "startTime"), _int(p, "endTime")
        hi = now if end is None else min(end, now)
        lo = hi - 2 * DAY_MS if start is None else start
        keep = lambda f: f["open_time"].between(lo, hi)  # noqa: E731
        rows = self._collect(symbol, "klines", _days(lo, max(lo, hi)), keep, limit, start is not None)
        return [self._day(symbol, day_of(t)).kline_row(int(t), now) for t in rows.get("open_time", [])]

    def _open_interest(self, p: dict, now: int) -> dict:
        d = self._day(self._symbol(p), day_of(now))
        latest = d.oi[d.oi["ts"] <= now].iloc[-1]
        return {"openInterest": _num(latest["oi"], d.qty_dec), "symbol": d.symbol, "time": now}

    def _open_interest_hist(self, p: dict, now: int) -> list[dict]:
        symbol, limit = self._symbol(p), _limit(p, 30, 500)
        period = OI_PERIODS.get(p.get("period", ""))
        if period is None:
            raise ApiError(400, -1130, "Invalid period.")
        start, end = _int(p, "startTime"), _int(p, "endTime")
        hi = now if end is None else min(end, now)
        lo = max(now - HISTORY_DAYS * DAY_MS, -1 if start is None else start)
        keep = lambda f: f["ts"].between(lo, hi) & (f["ts"] % (period * MINUTE_MS) == 0)  # noqa: E731
        rows = self._collect(symbol, "oi", _days(lo, max(lo, hi)), keep, limit, start is not None)
        return [
            {
                "symbol": symbol,
                "sumOpenInterest": f"{r.oi:.8f}",
                "sumOpenInterestValue": f"{r.value:.8f}",
                "CMCCirculatingSupply": "0",
                "timestamp": int(r.ts),
            }
            for r in rows.itertuples(index=False)
        ]


def _int(params: dict, name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        msg = f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        raise ApiError(400, -1100, msg) from None


def _limit(params: dict, default: int, maximum: int) -> int:
    value = _int(params, "limit")
    return default if value is None or value <= 0 else min(value, maximum)


def _klines_weight(params: dict) -> int:
    """Binance's klines weight by limit: [1, 100) 1, [100, 500) 2, [500, 1000] 5, above 10."""
    limit = _limit(params, 500, 1500)
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def main(argv: list[str] | None = None) -> None:
    """Serve the loopback exchange until Ctrl-C, so `liq collect` can be tried offline."""
    parser = argparse.ArgumentParser(
        description="A loopback Binance USDT-M futures exchange (synthetic market)."
    )
    parser.add_argument("--symbols", default="BTCUSDT,ETHUSDT", help="comma-separated symbols")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--speed", type=float, default=1.0, help="exchange seconds per real second")
    parser.add_argument("--start", help="exchange time to start at (ISO, UTC); default now")
    parser.add_argument("--trades-per-day", type=int, default=sample.DEFAULT_TRADES_PER_DAY)
    args = parser.parse_args(argv)
    t0 = time.time()
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC).timestamp() if args.start else t0
    clock = lambda: int((start + (time.time() - t0) * args.speed) * 1000)  # noqa: E731
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    print(f"Preparing the sample market of {', '.join(symbols)} (a few seconds)...", flush=True)
    kw = dict(trades_per_day=args.trades_per_day, clock=clock, port=args.port, record=False)
    with LoopbackExchange(symbols, **kw) as ex:
        print(f"streams: {ex.ws_url}/stream?streams=...   REST: {ex.api_url}   (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
