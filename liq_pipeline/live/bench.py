"""`liq bench live`: what running `liq collect` for days costs, per symbol: the CPU of each message, the CPU of
each commit as the day's partition grows (a commit rewrites the partition whole), the disk a day takes, and the
bandwidth of the streams. Prints figures; it is not a test."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from liq_pipeline.bench import BENCH_DAY, _median_time
from liq_pipeline.formats import stream
from liq_pipeline.lake import Lake
from liq_pipeline.live.collector import Collector
from liq_pipeline.live.partition import LivePartition
from liq_pipeline.live.rest import BinanceRest
from liq_pipeline.sources import sample
from liq_pipeline.symbols import load_registry

KLINE_PUSHES_PER_DAY = 86_400 * 4  # Binance pushes <symbol>@kline_1m every 250 ms


def _trade_messages(market: sample.SampleDay) -> list[str]:
    """The day's trades as the combined stream sends them."""
    t = market.agg_trades
    return [
        json.dumps(
            {
                "stream": "btcusdt@aggTrade",
                "data": {
                    "e": "aggTrade",
                    "E": int(ms) + 5,
                    "s": "BTCUSDT",
                    "a": int(a),
                    "p": repr(float(p)),
                    "q": repr(float(q)),
                    "f": int(f),
                    "l": int(last),
                    "T": int(ms),
                    "m": bool(m),
                },
            }
        )  # fmt: skip
        for a, p, q, f, last, ms, m in zip(
            t.agg_trade_id,
            t.price,
            t.quantity,
            t.first_trade_id,
            t.last_trade_id,
            t.transact_time,
            t.is_buyer_maker,
        )
    ]


def bench_live(args: argparse.Namespace) -> int:
    spec = load_registry().get("BTCUSDT")
    market = sample.market_day(spec, BENCH_DAY, trades_per_day=args.trades)
    messages = _trade_messages(market)
    with tempfile.TemporaryDirectory(prefix="liq-bench-live-") as tmp:
        lake = Lake.at(tmp)
        collector = Collector(
            lake, ["BTCUSDT"], ws_base="ws://127.0.0.1:9", rest=BinanceRest("http://127.0.0.1:9")
        )
        sample_n = min(len(messages), 200_000)
        started = time.process_time()
        for raw in messages[:sample_n]:
            collector.on_message(json.loads(raw))
        per_message = (time.process_time() - started) / sample_n
        print(f"aggTrade message (JSON decode + buffer): {per_message * 1e6:.1f} µs of CPU each")

        chunk = len(messages) * args.commit_seconds // 86_400 + 1  # the trades of one commit interval
        print(
            f"commit every {args.commit_seconds} s: {chunk:,} trades per commit at {args.trades:,} trades/day"
        )
        table = stream.agg_trades(
            [json.loads(m)["data"] for m in messages], "BTCUSDT", BENCH_DAY
        )  # the whole day, decoded once
        for share in (0.25, 0.5, 1.0):
            held = int(len(messages) * share) - chunk
            seconds = _median_time(lambda held=held: _commit(lake, table, held, chunk), args.repeat)
            print(
                f"  commit with {held + chunk:>10,} rows in the partition: {seconds * 1000:7.0f} ms "
                f"({seconds / args.commit_seconds:.1%} of one core)"
            )
        _disk_and_bandwidth(lake, market, messages)
    return 0


def _commit(lake: Lake, day: pa.Table, held: int, chunk: int) -> None:
    """One commit of `chunk` new rows over a partition holding `held` (as a running collector holds it)."""
    p = LivePartition(lake, "agg_trades", "BTCUSDT", BENCH_DAY)
    p.committed = day.slice(0, held).cast(p.schema)
    p.add(day.slice(held, chunk))
    p.commit()
    lake.partition_file("agg_trades", "BTCUSDT", BENCH_DAY).unlink()


def _disk_and_bandwidth(lake: Lake, market: sample.SampleDay, messages: list[str]) -> None:
    p = LivePartition(lake, "agg_trades", "BTCUSDT", BENCH_DAY)
    p.add(stream.agg_trades([json.loads(m)["data"] for m in messages], "BTCUSDT", BENCH_DAY))
    p.commit()
    bars = LivePartition(lake, "klines", "BTCUSDT", BENCH_DAY)
    bars.add(stream.klines([_kline(r) for r in market.klines_1m.itertuples()], "BTCUSDT", BENCH_DAY))
    bars.commit()
    sizes = {
        t: Path(lake.partition_file(t, "BTCUSDT", BENCH_DAY)).stat().st_size for t in ("agg_trades", "klines")
    }
    print(
        f"disk per symbol-day: agg_trades {sizes['agg_trades'] / 1e6:.1f} MB ({len(messages):,} trades), "
        f"klines {sizes['klines'] / 1e3:.0f} kB; open interest and liquidations are a few kB"
    )
    trade_bytes = statistics.mean(len(m) for m in messages[:10_000])
    kline_bytes = 420  # a kline_1m message with its stream wrapper
    per_day = len(messages) * trade_bytes + KLINE_PUSHES_PER_DAY * kline_bytes
    print(
        f"stream bandwidth per symbol-day: aggTrade {len(messages):,} x {trade_bytes:.0f} B + kline_1m "
        f"{KLINE_PUSHES_PER_DAY:,} x ~{kline_bytes} B = {per_day / 1e6:.0f} MB ({per_day * 8 / 86_400 / 1e3:.0f} kbit/s)"
    )


def _kline(r) -> dict:
    return {
        "t": r.open_time, "T": r.close_time, "o": r.open, "h": r.high, "l": r.low, "c": r.close, "v": r.volume,
        "n": r.count, "q": r.quote_volume, "V": r.taker_buy_volume, "Q": r.taker_buy_quote_volume,
    }  # fmt: skip
