"""The loopback Binance exchange (liq_pipeline/live/exchange.py) that the live collector's tests run against.

It must speak Binance's payloads exactly (pinned below against the documented examples) and replay the sample
market faithfully: what it streams and serves is what `sample.market_day` says, only up to its clock, with
Binance's sampling, keepalive, limits and errors. Real sockets on 127.0.0.1, a fast virtual clock.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import struct
import time
from datetime import UTC, date, datetime

import pandas as pd
import pytest
import requests
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from liq_pipeline.live.exchange import LoopbackExchange
from liq_pipeline.sources import sample
from liq_pipeline.symbols import load_registry

DAY = date(2024, 12, 27)
DAY_MS = int(datetime(2024, 12, 27, tzinfo=UTC).timestamp()) * 1000
START = DAY_MS + 70 * 60_000  # 01:10 UTC: ETHUSDT has seconds with several liquidations here (sampling shows)
SPEED = 600.0  # ten minutes of market per second
TPD = 20_000

# Binance's documented examples (USDT-M futures market streams and REST market data), as JSON text.
DOC_AGG_TRADE = '{"e":"aggTrade","E":123456789,"s":"BTCUSDT","a":5933014,"p":"0.001","q":"100","f":100,"l":105,"T":123456785,"m":true}'
DOC_KLINE = (
    '{"e":"kline","E":1638747660000,"s":"BTCUSDT","k":{"t":1638747660000,"T":1638747719999,"s":"BTCUSDT",'
    '"i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,"x":false,'
    '"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}'
)
DOC_FORCE_ORDER = (
    '{"e":"forceOrder","E":1568014460893,"o":{"s":"BTCUSDT","S":"SELL","o":"LIMIT","f":"IOC","q":"0.014",'
    '"p":"9910","ap":"9910","X":"FILLED","l":"0.014","z":"0.014","T":1568014460893}}'
)
DOC_REST_AGG = '{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true}'
DOC_REST_KLINE = (
    '[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",1499644799999,'
    '"2434.19055334",308,"1756.87402397","28.46694368","17928899.62484339"]'
)
DOC_OPEN_INTEREST = '{"openInterest":"10659.509","symbol":"BTCUSDT","time":1589437530011}'
# The docs' example quotes the timestamp; the live API answers a number (as here and in stream.open_interest_hist).
DOC_OI_HIST = (
    '{"symbol":"BTCUSDT","sumOpenInterest":"20403.63700000","sumOpenInterestValue":"150570784.07809979",'
    '"CMCCirculatingSupply":"165880.538","timestamp":1583127900000}'
)


def shape(value):
    """JSON structure with leaves replaced by their JSON type: keys and types must match the documented example."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def contiguous(ids: list[int]) -> bool:
    return ids == list(range(ids[0], ids[0] + len(ids))) if ids else False


def market(symbol: str, day: date = DAY) -> sample.SampleDay:
    return sample.market_day(load_registry().get(symbol), day, TPD)


def trade_matches(item: dict, row) -> bool:
    """A REST/stream aggTrade item against the sample's archive row."""
    return (
        item["a"] == row.agg_trade_id
        and float(item["p"]) == row.price
        and float(item["q"]) == row.quantity
        and (item["f"], item["l"], item["T"], item["m"])
        == (row.first_trade_id, row.last_trade_id, row.transact_time, bool(row.is_buyer_maker))
    )


def bar_matches(k: dict, row) -> bool:
    """A kline `k` object against the sample's 1m row."""
    fields = ("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"), ("v", "volume")
    more = ("q", "quote_volume"), ("V", "taker_buy_volume"), ("Q", "taker_buy_quote_volume")
    return (k["t"], k["T"], k["n"]) == (row.open_time, row.close_time, row.count) and all(
        math.isclose(float(k[a]), getattr(row, b), rel_tol=1e-12) for a, b in fields + more
    )


def fast_clock(start: int = START, speed: float = SPEED):
    t0 = time.time()
    return lambda: start + int((time.time() - t0) * speed * 1000)


def record(url: str, seconds: float, clock) -> list[tuple[int, dict]]:
    """(exchange time at receipt, message) for every message a client gets over `seconds`."""
    out = []
    with connect(url) as ws:
        end = time.time() + seconds
        while (left := end - time.time()) > 0:
            try:
                message = ws.recv(timeout=left)
            except TimeoutError:
                break
            out.append((clock(), json.loads(message)))
    return out


@pytest.fixture(scope="module")
def streamed():
    """One connection on btcusdt's trades and klines plus every symbol's liquidations, over ~25 minutes of market."""
    clock = fast_clock()
    with LoopbackExchange(["BTCUSDT", "ETHUSDT"], trades_per_day=TPD, clock=clock) as ex:
        url = f"{ex.ws_url}/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m/!forceOrder@arr"
        got = record(url, 2.5, clock)
        return got, {k: list(v) for k, v in ex.sent.items()}


def by_stream(got, name):
    return [(t, m["data"]) for t, m in got if m["stream"] == name]


def test_checks_reject_bad_data():
    good = json.loads(DOC_AGG_TRADE)
    assert shape(good) == shape(json.loads(DOC_AGG_TRADE))
    assert shape({**good, "p": 0.001}) != shape(good)  # a number where Binance sends a string
    assert shape({**good, "m": 1}) != shape(good)  # an int where Binance sends a boolean
    assert not contiguous([5, 6, 8]) and not contiguous([]) and contiguous([5, 6, 7])
    row = next(market("BTCUSDT").agg_trades.itertuples(index=False))
    item = {"a": row.agg_trade_id, "p": str(row.price), "q": str(row.quantity), "f": row.first_trade_id}
    item |= {"l": row.last_trade_id, "T": row.transact_time, "m": bool(row.is_buyer_maker)}
    assert trade_matches(item, row) and not trade_matches({**item, "p": str(row.price + 0.1)}, row)
    bar = next(market("BTCUSDT").klines_1m.itertuples(index=False))
    k = {"t": bar.open_time, "T": bar.close_time, "n": bar.count, "o": str(bar.open), "h": str(bar.high)}
    k |= {"l": str(bar.low), "c": str(bar.close), "v": str(bar.volume), "q": str(bar.quote_volume)}
    k |= {"V": str(bar.taker_buy_volume), "Q": str(bar.taker_buy_quote_volume)}
    assert bar_matches(k, bar) and not bar_matches({**k, "n": bar.count + 1}, bar)


def test_stream_payloads_have_binance_shapes(streamed):
    got, _ = streamed
    assert got and all(set(m) == {"stream", "data"} for _, m in got)
    for name, doc in [
        ("btcusdt@aggTrade", DOC_AGG_TRADE),
        ("btcusdt@kline_1m", DOC_KLINE),
        ("!forceOrder@arr", DOC_FORCE_ORDER),
    ]:
        payloads = by_stream(got, name)
        assert payloads, name
        assert all(shape(p) == shape(json.loads(doc)) for _, p in payloads), name


def test_streamed_trades_are_the_sample_in_clock_order(streamed):
    got, sent = streamed
    trades = by_stream(got, "btcusdt@aggTrade")
    assert len(trades) > 100
    ids = [p["a"] for _, p in trades]
    assert contiguous(ids)
    rows = {r.agg_trade_id: r for r in market("BTCUSDT").agg_trades.itertuples(index=False)}
    assert all(trade_matches(p, rows[p["a"]]) and p["s"] == "BTCUSDT" for _, p in trades)
    assert all(p["T"] <= t for t, p in trades)  # never ahead of the exchange clock
    assert min(p["T"] for _, p in trades) >= START - 1000  # nothing replayed from before the connection
    received = [p for _, p in trades]
    assert sent["btcusdt@aggTrade"][: len(received)] == received  # `sent` records what went out, in order


def test_streamed_klines_closed_bars_are_the_samples(streamed):
    got, _ = streamed
    bars = [p["k"] for _, p in by_stream(got, "btcusdt@kline_1m")]
    closed = [k for k in bars if k["x"]]
    assert len(closed) >= 15
    assert [k["t"] for k in closed] == list(range(closed[0]["t"], closed[-1]["t"] + 1, 60_000))
    day = market("BTCUSDT")
    sample_bars = {r.open_time: r for r in day.klines_1m.itertuples(index=False)}
    trades = day.agg_trades
    for k in closed:
        assert bar_matches(k, sample_bars[k["t"]])
        in_minute = trades[trades.transact_time.between(k["t"], k["T"])]
        assert (k["f"], k["L"]) == (in_minute.first_trade_id.iloc[0], in_minute.last_trade_id.iloc[-1])
    # Open updates come during every minute (so a collector must filter on x) and carry values so far.
    open_t = {k["t"] for k in bars if not k["x"]}
    assert {k["t"] for k in closed[1:]} <= open_t
    finals = {k["t"]: k for k in closed}
    assert any(k["v"] != finals[k["t"]]["v"] for k in bars if not k["x"] and k["t"] in finals)


def test_force_orders_every_symbol_sampled_per_second(streamed):
    got, _ = streamed
    orders = by_stream(got, "!forceOrder@arr")
    symbols = {p["o"]["s"] for _, p in orders}
    assert symbols == {
        "BTCUSDT",
        "ETHUSDT",
    }  # ETHUSDT was not subscribed to otherwise: the collector must filter
    first_end, last_end = orders[0][1]["E"], orders[-1][1]["E"]
    for symbol in symbols:
        liq = market(symbol).liquidations.drop_duplicates().sort_values("time", kind="stable")
        liq = liq[(liq.time >= first_end - 1000) & (liq.time < last_end)]
        expected = liq.groupby(liq.time // 1000).tail(1)  # the latest order of each second
        mine = [p for _, p in orders if p["o"]["s"] == symbol]
        assert [p["o"]["T"] for p in mine] == expected.time.tolist()
        assert [float(p["o"]["ap"]) for p in mine] == expected.average_price.tolist()
        assert all(p["E"] == (p["o"]["T"] // 1000 + 1) * 1000 for p in mine)
        if symbol == "ETHUSDT":
            assert len(liq) > len(
                expected
            )  # the window had seconds with several orders: sampling dropped some


def test_subscribe_messages_and_raw_stream():
    clock = fast_clock()
    with LoopbackExchange(["BTCUSDT", "ETHUSDT"], trades_per_day=TPD, clock=clock) as ex:
        with connect(f"{ex.ws_url}/ws") as ws:
            ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@aggTrade"], "id": 7}))
            ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["nosuch@aggTrade"], "id": 8}))
            ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 9}))
            replies, trades = {}, []
            while len(trades) < 5:
                m = json.loads(ws.recv(timeout=5))
                if "id" in m:
                    replies[m["id"]] = m
                else:
                    trades.append(m)
        assert replies[7] == {"result": None, "id": 7}
        assert replies[8]["error"]["code"] == 2
        assert replies[9] == {"result": ["ethusdt@aggTrade"], "id": 9}
        assert all(t["e"] == "aggTrade" and t["s"] == "ETHUSDT" for t in trades)  # raw: no {"stream", "data"}
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{ex.ws_url}/stream?streams=btcusdt@aggTrade/btcusdt@depth")
        assert refused.value.response.status_code == 400
        assert json.loads(refused.value.response.body)["code"] == -1121


def test_drop_connections_cuts_clients_and_pause_makes_a_gap():
    clock = fast_clock()
    with LoopbackExchange(["BTCUSDT"], trades_per_day=TPD, clock=clock) as ex:
        url = f"{ex.ws_url}/stream?streams=btcusdt@aggTrade"
        with connect(url) as ws:
            first = [json.loads(ws.recv(timeout=5))["data"]["a"] for _ in range(10)]
            assert ex.drop_connections() == 1
            with pytest.raises(ConnectionClosedError) as cut:
                while True:
                    ws.recv(timeout=5)
            assert cut.value.rcvd is None  # no close frame: a network cut, not a goodbye
        assert contiguous(first)
        with connect(url) as ws:
            ids = [json.loads(ws.recv(timeout=5))["data"]["a"] for _ in range(5)]
            ex.pause_streams(True)
            paused_at = clock()
            time.sleep(1.0)  # ten minutes of market
            resumed_at = clock()
            ex.pause_streams(False)
            while True:
                ids.append(json.loads(ws.recv(timeout=5))["data"]["a"])
                if ids[-1] > ids[-2] + 1:
                    break
        assert ex.connections_total == 2
        rows = market("BTCUSDT").agg_trades.set_index("agg_trade_id")
        lost = rows.loc[ids[-2] + 1 : ids[-1] - 1, "transact_time"]
        slack = 200 * SPEED  # 200 ms of real time: ticks run every 50 ms
        assert len(lost) > 10 and paused_at - slack < lost.min() and lost.max() <= resumed_at + slack
        assert ex.sent["btcusdt@aggTrade"][-1]["a"] >= ids[-1]  # the gap is missing from `sent` too
        assert not set(rows.loc[ids[-2] + 1 : ids[-1] - 1].index) & {
            p["a"] for p in ex.sent["btcusdt@aggTrade"]
        }


def raw_client(ws_url: str, path: str) -> socket.socket:
    """A WebSocket client that does the handshake by hand and never answers pings (websockets' clients always do)."""
    host, port = ws_url.removeprefix("ws://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    b0, b1 = exact(2)
    n = b1 & 0x7F
    n = struct.unpack("!H", exact(2))[0] if n == 126 else struct.unpack("!Q", exact(8))[0] if n == 127 else n
    return b0 & 0x0F, exact(n)


def test_keepalive_closes_a_client_that_never_pongs():
    frozen = lambda: START  # noqa: E731  (no market events: only control frames on the wire)
    with LoopbackExchange(
        ["BTCUSDT"], clock=frozen, trades_per_day=TPD, ping_interval=0.2, pong_timeout=0.7
    ) as ex:
        silent = raw_client(ex.ws_url, "/stream?streams=btcusdt@aggTrade")
        with connect(f"{ex.ws_url}/stream?streams=btcusdt@aggTrade") as polite:  # answers pings by itself
            frames = []
            while not frames or frames[-1][0] != 0x8:
                frames.append(read_frame(silent))
            silent.close()
            assert {op for op, _ in frames[:-1]} == {0x9}  # pings, then the close frame
            assert struct.unpack("!H", frames[-1][1][:2])[0] == 1011
            assert ex.connections_closed_for_no_pong == 1
            with pytest.raises(
                TimeoutError
            ):  # the polite client is still connected after the silent one is gone
                polite.recv(timeout=0.5)
        assert ex.pongs_received >= 3 and ex.pings_sent >= ex.pongs_received + 2


def test_connections_end_after_max_connection_seconds():
    with LoopbackExchange(
        ["BTCUSDT"], clock=lambda: START, trades_per_day=TPD, max_connection_seconds=0.5
    ) as ex:
        with connect(f"{ex.ws_url}/stream?streams=btcusdt@aggTrade") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1000


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, ms: int):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def get(ex: LoopbackExchange, path: str, **params) -> requests.Response:
    r = requests.get(ex.api_url + path, params=params, timeout=10)
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["X-MBX-USED-WEIGHT-1M"] == str(ex.used_weight)
    return r


def test_rest_agg_trades_pages_by_id_across_midnight():
    now = DAY_MS + 86_400_000 + 10 * 60_000  # 00:10 of the next day
    with LoopbackExchange(["BTCUSDT"], clock=Clock(now), trades_per_day=TPD) as ex:
        rows = market("BTCUSDT").agg_trades
        start_id = int(rows[rows.transact_time >= now - 20 * 60_000].agg_trade_id.iloc[0])  # 23:50
        ids, from_id = [], start_id
        while True:
            page = get(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=from_id, limit=100).json()
            assert page and page[0]["a"] == from_id and contiguous([p["a"] for p in page])
            assert shape(page[0]) == shape(json.loads(DOC_REST_AGG))
            ids += [p["a"] for p in page]
            if len(page) < 100:
                break
            from_id = page[-1]["a"] + 1
        both = [market("BTCUSDT").agg_trades, market("BTCUSDT", date(2024, 12, 28)).agg_trades]
        expected = [
            int(a)
            for f in both
            for a in f[(f.agg_trade_id >= start_id) & (f.transact_time <= now)].agg_trade_id
        ]
        assert ids == expected and len(ids) > 200  # exactly the ids up to the clock, none after it
        assert get(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=expected[-1] + 1).json() == []
        latest = get(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT").json()
        upto_now = [int(a) for f in both for a in f[f.transact_time <= now].agg_trade_id]
        assert [p["a"] for p in latest] == upto_now[-500:]  # no parameters: the 500 most recent


def test_rest_agg_trades_time_window_and_errors():
    now = START + 30 * 60_000
    with LoopbackExchange(["BTCUSDT"], clock=Clock(now), trades_per_day=TPD) as ex:
        lo, hi = START, START + 20 * 60_000
        got = get(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=lo, endTime=hi, limit=1000).json()
        rows = market("BTCUSDT").agg_trades
        want = rows[rows.transact_time.between(lo, hi)]
        assert len(got) == len(want) > 50
        assert all(trade_matches(g, w) for g, w in zip(got, want.itertuples(index=False)))
        too_long = get(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=lo, endTime=lo + 3_600_000)
        assert too_long.status_code == 400 and too_long.json()["code"] == -1127
        unknown = get(ex, "/fapi/v1/aggTrades", symbol="DOGEUSDT")
        assert unknown.status_code == 400 and unknown.json() == {"code": -1121, "msg": "Invalid symbol."}
        assert get(ex, "/fapi/v1/time").json() == {"serverTime": now}
        assert ex.requests[0] == (
            "/fapi/v1/aggTrades",
            {"symbol": "BTCUSDT", "startTime": str(lo), "endTime": str(hi), "limit": "1000"},
        )


def test_rest_klines_window_with_the_open_bar():
    now = START + 30 * 60_000 + 25_000  # 25 s into a minute
    with LoopbackExchange(["BTCUSDT"], clock=Clock(now), trades_per_day=TPD) as ex:
        got = get(ex, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", startTime=START, limit=1000).json()
        assert all(shape(r) == shape(json.loads(DOC_REST_KLINE)) for r in got)
        day = market("BTCUSDT")
        bars = day.klines_1m[day.klines_1m.open_time.between(START, now)]
        assert [r[0] for r in got] == bars.open_time.tolist() and len(got) == 31
        keys = ("t", "o", "h", "l", "c", "v", "T", "q", "n", "V", "Q")
        for r, b in zip(got[:-1], bars.itertuples(index=False)):
            assert bar_matches(dict(zip(keys, r)), b)
        # The open bar: only its trades up to now.
        t = day.agg_trades
        so_far = t[t.transact_time.between(got[-1][0], now)]
        assert (
            float(got[-1][5]) == pytest.approx(so_far.quantity.sum()) and got[-1][8] < bars["count"].iloc[-1]
        )
        assert get(ex, "/fapi/v1/klines", symbol="BTCUSDT", interval="5m").status_code == 400
        before = ex.used_weight
        get(ex, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", limit=1500)
        assert ex.used_weight - before == 10  # weight by limit


def test_rest_open_interest_and_hist_window():
    now = DAY_MS + 12 * 3_600_000 + 7 * 60_000 + 30_000  # 12:07:30
    with LoopbackExchange(["ETHUSDT"], clock=Clock(now), trades_per_day=TPD) as ex:
        met = market("ETHUSDT").metrics
        ts = ms(met.create_time).tolist()
        latest = max(i for i, t in enumerate(ts) if t <= now)
        oi = get(ex, "/fapi/v1/openInterest", symbol="ETHUSDT").json()
        assert shape(oi) == shape(json.loads(DOC_OPEN_INTEREST))
        assert float(oi["openInterest"]) == met.sum_open_interest.iloc[latest] and oi["time"] == now
        lo = now - 3 * 3_600_000
        hist = get(
            ex, "/futures/data/openInterestHist", symbol="ETHUSDT", period="5m", startTime=lo, limit=500
        )
        items = hist.json()
        assert all(shape(i) == shape(json.loads(DOC_OI_HIST)) for i in items)
        want = [i for i, t in enumerate(ts) if lo <= t <= now]
        assert [i["timestamp"] for i in items] == [ts[i] for i in want] and len(items) == 36
        assert [float(i["sumOpenInterest"]) for i in items] == met.sum_open_interest.iloc[want].tolist()
        assert ex.used_weight == 1  # openInterestHist weighs 0, but it is recorded
        assert [p for p, _ in ex.requests] == ["/fapi/v1/openInterest", "/futures/data/openInterestHist"]
        old = get(
            ex,
            "/futures/data/openInterestHist",
            symbol="ETHUSDT",
            period="1h",
            startTime=now - 40 * 86_400_000,
        )
        stamps = [i["timestamp"] for i in old.json()]
        assert len(stamps) == 30 and min(stamps) >= now - 30 * 86_400_000  # only the last 30 days exist
        assert all(s % 3_600_000 == 0 for s in stamps) and stamps == sorted(stamps)


def ms(column: pd.Series) -> pd.Series:
    """Archive timestamps ('2024-12-27 00:05:00') -> ms since the epoch."""
    return (pd.to_datetime(column, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)


def test_weight_limit_answers_429_with_retry_after():
    clock = Clock(START + 30_000)  # 30 s into the minute
    with LoopbackExchange(["BTCUSDT"], clock=clock, trades_per_day=TPD, weight_limit_per_minute=50) as ex:
        for used in (20, 40):
            r = get(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=5)
            assert r.status_code == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == str(used)
        over = get(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=5)
        assert over.status_code == 429 and over.json()["code"] == -1003
        assert over.headers["Retry-After"] == "30" and over.headers["X-MBX-USED-WEIGHT-1M"] == "40"
        assert get(ex, "/fapi/v1/time").status_code == 200  # weight 1 still fits
        clock.ms += 30_000  # the next minute
        r = get(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=5)
        assert r.status_code == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "20"
        assert get(ex, "/fapi/v1/nosuch").status_code == 404
