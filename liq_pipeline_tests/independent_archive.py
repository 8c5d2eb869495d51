"""A second, independent writer of Binance USDT-M archive files, for tests.

It imports nothing from liq_pipeline: its knowledge of the files (layout, columns, headers, quirks) is written here
again from the archive's own documentation and from real rows quoted by other projects, so a misunderstanding in the
project's format code is not silently shared by the files it is tested on. Only the standard library is used.

`write_days` writes, for one symbol and consecutive days, what data.binance.vision serves: a zip per file holding one
CSV, and beside it `<name>.zip.CHECKSUM` = "<sha256>  <name>.zip". The files have the real archive's quirks:

- aggTrades and klines have no header row on the first day (files older than mid-2022 have none), one later;
- a metrics file holds 289 rows, 00:00:00 of its day through 00:00:00 of the next day (the next file's first row),
  in shuffled order, with a few rows repeated verbatim; optionally some ratio cells are empty;
- every liquidationSnapshot row appears twice;
- the monthly fundingRate file covers the whole calendar month, its times a few ms after the hour.

Real rows handed in (`Market.metrics_rows`, `Market.first_hour`, `Market.funding_rows`) are written verbatim, and the
generated values continue from them. `write_days` returns the `Truth` a correct reader must recover.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

AGG_HEADER = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
KLINE_HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"
METRICS_HEADER = (
    "create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
    "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio"
)
LIQ_HEADER = (
    "time,side,order_type,time_in_force,original_quantity,price,average_price,order_status,last_fill_quantity,"
    "accumulated_fill_quantity"
)
FUNDING_HEADER = "calc_time,funding_interval_hours,last_funding_rate"
MINUTE_MS = 60_000


@dataclass(frozen=True)
class Market:
    symbol: str
    open_price: float  # the first minute's open
    price_decimals: int  # as printed: 2 for BTC ("104544.60")
    qty_decimals: int  # 3 for BTC (step 0.001)
    tick: float  # the price grid: 0.1 for BTC
    open_interest: float  # coins, at the first day's 00:00
    seed: int = 7
    trades_per_day: int = 3_000
    metrics_rows: dict[str, str] = field(default_factory=dict)  # create_time -> a real metrics line, verbatim
    first_hour: str | None = (
        None  # a real 1h kline line for the first day's 00:00 hour; the 1m bars sum to it
    )
    funding_rows: tuple[
        str, ...
    ] = ()  # real fundingRate lines, verbatim, replacing the generated ones at their hour
    blank_ratios: int = 0  # on the last day, this many metrics rows get empty top-trader ratio cells


@dataclass
class Truth:
    """What the files hold, per (kind, day), in the terms a reader must recover."""

    rows: dict[tuple[str, date], int] = field(default_factory=dict)  # distinct rows of the day
    dropped: dict[tuple[str, date], int] = field(default_factory=dict)  # file rows of another day
    first: dict[tuple[str, date], list[str]] = field(
        default_factory=dict
    )  # the day's first row (in time), as cells
    last: dict[tuple[str, date], list[str]] = field(default_factory=dict)
    blank_ratio_rows: dict[date, int] = field(default_factory=dict)
    prices: list[float] = field(default_factory=list)  # every minute close, all days
    zero_quantity_trades: int = 0


def write_days(root: Path, market: Market, days: list[date]) -> Truth:
    rng = random.Random(market.seed)
    truth = Truth()
    bars = _minute_bars(market, days, rng)
    truth.prices = [b[4] for b in bars]
    next_agg_id, next_trade_id = 2_765_000_001, 6_368_000_001
    for i, day in enumerate(days):
        day_bars = bars[i * 1440 : (i + 1) * 1440]
        header = i > 0
        klines = [_kline_cells(market, b) for b in day_bars]
        _write(
            root,
            _daily(market.symbol, "klines", day, "1m"),
            [KLINE_HEADER] * header + [",".join(c) for c in klines],
        )
        _record(truth, "klines", day, klines, klines, 0)
        trades, next_agg_id, next_trade_id = _trades(market, day_bars, rng, next_agg_id, next_trade_id)
        truth.zero_quantity_trades += sum(float(t[2]) == 0 for t in trades)
        _write(
            root,
            _daily(market.symbol, "aggTrades", day),
            [AGG_HEADER] * header + [",".join(t) for t in trades],
        )
        _record(truth, "aggTrades", day, trades, trades, 0)
        _write_metrics(
            root, market, day, bars, days[0], truth, blank=market.blank_ratios if day == days[-1] else 0
        )
        _write_liquidations(root, market, day, day_bars, rng, truth)
    for month in sorted({(d.year, d.month) for d in days}):
        _write_funding(root, market, month, days, truth)
    return truth


# -- the price path ---------------------------------------------------------------------------------------------


def _minute_bars(market: Market, days: list[date], rng: random.Random) -> list[tuple]:
    """(open_time_ms, open, high, low, close, volume, quote, count, taker_volume, taker_quote) per minute; volumes
    in qty units, quotes in units of 1e-5 USDT (the archive's 5 decimals)."""
    anchors = {0: market.open_price}
    hour = market.first_hour.split(",") if market.first_hour else None
    if hour:
        anchors[60] = float(hour[4])
    for (
        t,
        line,
    ) in market.metrics_rows.items():  # the metrics rows say where the price was (value / open interest)
        cells = line.split(",")
        minute = int((_parse_time(t) - _ms(days[0])) // MINUTE_MS)
        if 60 < minute <= len(days) * 1440:
            anchors[minute] = float(cells[3]) / float(cells[2])
    n = len(days) * 1440
    closes = _bridge(anchors, n, market.open_price * 0.0006, rng)
    tick = market.tick
    bars, prev = [], market.open_price
    for k in range(n):
        o, c = prev, round(closes[k] / tick) * tick
        spread = abs(rng.gauss(0, market.open_price * 0.0003))
        bars.append([_ms(days[0]) + k * MINUTE_MS, o, max(o, c) + spread, min(o, c) - spread, c])
        prev = c
    if hour:
        _fit_first_hour(bars[:60], hour, rng)
    for k, bar in enumerate(bars):
        bar[2] = round(bar[2] / tick) * tick
        bar[3] = round(bar[3] / tick) * tick
        if k >= 60 or not hour:
            volume = max(1, int(rng.lognormvariate(math.log(57.0), 0.6) * 10**market.qty_decimals))
            taker = int(volume * rng.uniform(0.3, 0.7))
            vwap = (bar[2] + bar[3] + bar[4]) / 3
            scale = 10 ** (5 - market.qty_decimals)
            bar += [
                volume,
                round(volume * vwap * scale),
                rng.randint(300, 2500),
                taker,
                round(taker * vwap * scale),
            ]
    return [tuple(b) for b in bars]


def _bridge(anchors: dict[int, float], n: int, sigma: float, rng: random.Random) -> list[float]:
    """Minute closes: a random walk pinned to pass through each anchor (minute index -> close before that minute)."""
    walk = [0.0]
    for _ in range(n):
        walk.append(walk[-1] + rng.gauss(0, sigma))
    points = sorted(anchors.items())
    out = [0.0] * (n + 1)
    for (a, pa), (b, pb) in zip(points, points[1:] + [(n, None)]):
        end = pb if pb is not None else pa + walk[b] - walk[a]
        for k in range(a, b + 1):
            frac = (k - a) / (b - a) if b > a else 0.0
            out[k] = pa + (walk[k] - walk[a]) - frac * (walk[b] - walk[a]) + frac * (end - pa)
    return out[1:]


def _fit_first_hour(bars: list[list], hour: list[str], rng: random.Random) -> None:
    """Make the first 60 one-minute bars add up exactly to a real one-hour bar."""
    hi, lo = float(hour[2]), float(hour[3])
    for bar in bars:
        bar[1], bar[4] = min(max(bar[1], lo), hi), min(max(bar[4], lo), hi)
        bar[2], bar[3] = min(bar[2], hi), max(bar[3], lo)
        bar[2], bar[3] = max(bar[2], bar[1], bar[4]), min(bar[3], bar[1], bar[4])
    max(bars, key=lambda b: b[2])[2] = hi
    min(bars, key=lambda b: b[3])[3] = lo
    weights = [rng.lognormvariate(0, 0.5) for _ in range(60)]
    volume = _split(_units(hour[5]), weights)
    taker = _split(_units(hour[9]), volume)
    for bar, v, t, q, tq, c in zip(
        bars,
        volume,
        taker,
        _split(_units(hour[7]), volume),
        _split(_units(hour[10]), taker),
        _split(int(hour[8]), weights),
    ):
        bar += [v, q, c, t, tq]


def _units(text: str) -> int:
    """'3438.526' -> 3438526: a decimal as an integer of its last digit's unit."""
    return int(text.replace(".", ""))


def _split(total: int, weights: list[float]) -> list[int]:
    parts = [int(total * w / sum(weights)) for w in weights]
    for k in range(total - sum(parts)):
        parts[k % len(parts)] += 1
    return parts


# -- the files ----------------------------------------------------------------------------------------------------


def _kline_cells(market: Market, bar: tuple) -> list[str]:
    t, o, h, lo, c, v, q, n, tv, tq = bar
    p = market.price_decimals
    return [
        str(t),
        f"{o:.{p}f}",
        f"{h:.{p}f}",
        f"{lo:.{p}f}",
        f"{c:.{p}f}",
        _dec(v, market.qty_decimals),
        str(t + MINUTE_MS - 1),
        _dec(q, 5),
        str(n),
        _dec(tv, market.qty_decimals),
        _dec(tq, 5),
        "0",
    ]


def _trades(market: Market, bars: list[tuple], rng: random.Random, agg_id: int, trade_id: int):
    per_minute = [0] * len(bars)
    for k in rng.choices(range(len(bars)), k=market.trades_per_day):
        per_minute[k] += 1
    rows, p, tick = [], market.price_decimals, market.tick
    for bar, count in zip(bars, per_minute):
        for ms in sorted(rng.randrange(MINUTE_MS) for _ in range(count)):
            price = round(rng.uniform(bar[3], bar[2]) / tick) * tick
            qty = (
                max(1, int(rng.lognormvariate(math.log(20), 1.4))) if rng.random() > 0.002 else 0
            )  # zeros: real
            raw = rng.randint(1, 5)
            rows.append(
                [
                    str(agg_id),
                    f"{price:.{p}f}",
                    _dec(qty, market.qty_decimals),
                    str(trade_id),
                    str(trade_id + raw - 1),
                    str(bar[0] + ms),
                    rng.choice(["true", "false"]),
                ]
            )
            agg_id, trade_id = agg_id + 1, trade_id + raw
    return rows, agg_id, trade_id


def _write_metrics(
    root: Path, market: Market, day: date, bars, first_day: date, truth: Truth, blank: int
) -> None:
    times = [datetime.combine(day, datetime.min.time()) + timedelta(minutes=5 * k) for k in range(289)]
    rows = [_metrics_row(market, t, bars, first_day).split(",") for t in times]
    rng = random.Random(f"{market.seed}-{day}")
    for row in rng.sample(rows[1:288], blank):
        row[4] = row[5] = ""
    truth.blank_ratio_rows[day] = blank
    lines = [",".join(r) for r in rows]
    shuffled = lines[:]
    rng.shuffle(shuffled)
    for line in rng.sample(
        lines, 3
    ):  # a few rows repeated verbatim, the boundary row among them on some days
        shuffled.insert(rng.randrange(len(shuffled) + 1), line)
    _write(root, _daily(market.symbol, "metrics", day), [METRICS_HEADER, *shuffled])
    next_day = (day + timedelta(days=1)).isoformat()
    _record(
        truth,
        "metrics",
        day,
        rows[:288],
        [r for r in (s.split(",") for s in shuffled)],
        sum(s.startswith(next_day) for s in shuffled),
    )


def _metrics_row(market: Market, t: datetime, bars, first_day: date) -> str:
    stamp = t.strftime("%Y-%m-%d %H:%M:%S")
    if stamp in market.metrics_rows:
        return market.metrics_rows[stamp]
    rng = random.Random(f"{market.seed}-{stamp}")  # a function of the time: the next file repeats this row
    real = sorted((_parse_time(s), float(line.split(",")[2])) for s, line in market.metrics_rows.items())
    minute = int((t.replace(tzinfo=UTC).timestamp() * 1000 - _ms(first_day)) // MINUTE_MS)
    oi = _interpolate(real, _ms(first_day) + minute * MINUTE_MS, market.open_interest) * (
        1 + rng.gauss(0, 4e-4)
    )
    price = bars[min(minute, len(bars) - 1)][1]
    q = market.qty_decimals
    return ",".join(
        [
            stamp,
            market.symbol,
            _sixteen(f"{oi:.{q}f}"),
            _sixteen(f"{oi * price:.6f}"),
            *(f"{rng.uniform(0.9, 1.9):.8f}" for _ in range(4)),
        ]
    )


def _sixteen(text: str) -> str:
    """The metrics files print 16 decimals: '83624.198' -> '83624.1980000000000000'."""
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac:0<16}"


def _interpolate(points: list[tuple[int, float]], at: int, default: float) -> float:
    if not points:
        return default
    for (a, va), (b, vb) in zip(points, points[1:]):
        if a <= at <= b:
            return va + (vb - va) * (at - a) / (b - a)
    return points[0][1] if at < points[0][0] else points[-1][1]


def _write_liquidations(
    root: Path, market: Market, day: date, bars, rng: random.Random, truth: Truth
) -> None:
    orders, p, tick = [], market.price_decimals, market.tick
    for bar in sorted(rng.sample(bars, 30)):
        sell = rng.random() < 0.5  # SELL: a long liquidated, filled below the market
        avg = round(rng.uniform(bar[3], bar[2]) / tick) * tick
        limit = round(avg * (0.995 if sell else 1.005) / tick) * tick
        qty = _dec(max(1, int(rng.lognormvariate(math.log(30), 1.0))), market.qty_decimals)
        orders.append(
            [
                str(bar[0] + rng.randrange(MINUTE_MS)),
                "SELL" if sell else "BUY",
                "LIMIT",
                "IOC",
                qty,
                f"{limit:.{p}f}",
                f"{avg:.{p}f}",
                "FILLED",
                qty,
                qty,
            ]
        )
    doubled = [o for order in orders for o in (order, order)]  # the archive writes every row twice
    _write(
        root, _daily(market.symbol, "liquidationSnapshot", day), [LIQ_HEADER] + [",".join(o) for o in doubled]
    )
    _record(truth, "liquidationSnapshot", day, orders, doubled, 0)


def _write_funding(
    root: Path, market: Market, month: tuple[int, int], days: list[date], truth: Truth
) -> None:
    first = date(*month, 1)
    following = (first + timedelta(days=32)).replace(day=1)
    real = {int(line.split(",")[0]) // 3_600_000: line for line in market.funding_rows}
    rng = random.Random(f"{market.seed}-{month}")
    rows = []
    for k in range((following - first).days * 3):
        t = _ms(first) + k * 8 * 3_600_000
        rows.append(
            real.get(t // 3_600_000)
            or f"{t + rng.randint(0, 9)},8,{rng.choice([0.0001, 0.0001, 0.00007521]):.8f}"
        )
    name = f"data/futures/um/monthly/fundingRate/{market.symbol}/{market.symbol}-fundingRate-{first:%Y-%m}"
    _write(root, name, [FUNDING_HEADER, *rows])
    for day in days:
        if (day.year, day.month) == month:
            own = [r.split(",") for r in rows if _ms(day) <= int(r.split(",")[0]) < _ms(day) + 86_400_000]
            _record(truth, "fundingRate", day, own, own, 0)


# -- plumbing -----------------------------------------------------------------------------------------------------


def _record(
    truth: Truth, kind: str, day: date, rows: list[list[str]], written: list[list[str]], dropped: int
):
    key = (kind, day)
    distinct = {tuple(r) for r in rows}
    truth.rows[key] = len(distinct)
    truth.dropped[key] = dropped
    by_time = sorted(distinct, key=lambda r: (_cell_time(r[5] if kind == "aggTrades" else r[0]), r))
    truth.first[key], truth.last[key] = list(by_time[0]), list(by_time[-1])
    assert {tuple(r) for r in written} >= distinct  # what was written holds every row of the day


def _cell_time(text: str) -> int:
    return _parse_time(text) if "-" in text else int(text)


def _parse_time(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp() * 1000)


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def _dec(units: int, decimals: int) -> str:
    q, r = divmod(units, 10**decimals)
    return f"{q}.{r:0{decimals}d}" if decimals else str(q)


def _daily(symbol: str, kind: str, day: date, interval: str | None = None) -> str:
    folder = f"{symbol}/{interval}" if interval else symbol
    return f"data/futures/um/daily/{kind}/{folder}/{symbol}-{interval or kind}-{day.isoformat()}"


def _write(root: Path, name: str, lines: list[str]) -> None:
    """`<name>.zip` holding `<basename>.csv`, and `<name>.zip.CHECKSUM` beside it."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for line in lines:
        writer.writerow(line.split(","))
    zip_path = root / f"{name}.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{zip_path.stem}.csv", text.getvalue())
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    zip_path.with_name(zip_path.name + ".CHECKSUM").write_text(f"{digest}  {zip_path.name}\n")
