"""Raw assets through Dagster: bad input gets a clear error and leaves the lake as it was; awkward but valid
files are handled; re-runs are idempotent; partitions land in parallel; the warehouse answers the seed's query."""

import csv
import hashlib
import io
import random
import re
import zipfile
from datetime import timedelta

import duckdb
import pytest
from dagster import materialize

from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.formats import AGG_TRADES, FORMATS, METRICS
from liq_pipeline.partitions import partition_key
from liq_pipeline.sources import sample
from liq_pipeline.symbols import load_registry

from .conftest import FIXTURE_DAYS, failure_message, local_resources

DAY = FIXTURE_DAYS[-1]
ASSETS = {a.key.path[-1]: a for a in RAW_ASSETS}


def run_raw(tables, symbol, day, **kw):
    return materialize(
        [ASSETS[t] for t in tables],
        partition_key=partition_key(symbol, day),
        resources=local_resources(),
        raise_on_error=False,
        **kw,
    )


@pytest.fixture
def local(mirror, lake, monkeypatch):
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    return mirror


def _zip_path(mirror, fmt, symbol, day=DAY):
    return mirror / fmt.relpath(symbol, day)


def _read_member(path):
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()[0], zf.read(zf.namelist()[0])


def _rewrite(path, member, data: bytes):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, data)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {path.name}\n")


def corrupt_zip(mirror):
    path = _zip_path(mirror, AGG_TRADES, "BTCUSDT")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))
    path.with_name(path.name + ".CHECKSUM").write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    return "agg_trades", "BTCUSDT", r"BTCUSDT-aggTrades-2024-12-28\.zip: corrupt zip"


def checksum_mismatch(mirror):
    path = _zip_path(mirror, AGG_TRADES, "BTCUSDT")
    path.with_name(path.name + ".CHECKSUM").write_text("f" * 64 + f"  {path.name}\n")
    return "agg_trades", "BTCUSDT", r"BTCUSDT-aggTrades-2024-12-28\.zip: checksum mismatch"


def missing_file(mirror):
    _zip_path(mirror, AGG_TRADES, "BTCUSDT").unlink()
    return (
        "agg_trades",
        "BTCUSDT",
        r"BTCUSDT aggTrades for 2024-12-28: no file at .*BTCUSDT-aggTrades-2024-12-28\.zip",
    )


def wrong_columns(mirror):
    # A klines file saved where the aggTrades file belongs.
    _, klines_csv = _read_member(_zip_path(mirror, FORMATS["klines"], "BTCUSDT"))
    _rewrite(_zip_path(mirror, AGG_TRADES, "BTCUSDT"), "BTCUSDT-aggTrades-2024-12-28.csv", klines_csv)
    return (
        "agg_trades",
        "BTCUSDT",
        r"BTCUSDT-aggTrades-2024-12-28\.zip.*wrong columns for a Binance aggTrades file",
    )


def another_day(mirror):
    # The previous day's rows under this day's name.
    _, previous = _read_member(_zip_path(mirror, AGG_TRADES, "BTCUSDT", DAY - timedelta(days=1)))
    _rewrite(_zip_path(mirror, AGG_TRADES, "BTCUSDT"), "BTCUSDT-aggTrades-2024-12-28.csv", previous)
    return "agg_trades", "BTCUSDT", r"rows fall outside 2024-12-28 .* belongs to another day"


def another_symbol(mirror):
    # ETHUSDT's open interest saved as BTCUSDT's.
    _, eth = _read_member(_zip_path(mirror, METRICS, "ETHUSDT"))
    _rewrite(_zip_path(mirror, METRICS, "BTCUSDT"), "BTCUSDT-metrics-2024-12-28.csv", eth)
    return (
        "open_interest",
        "BTCUSDT",
        r"BTCUSDT-metrics-2024-12-28\.zip: rows belong to \['ETHUSDT'\], not BTCUSDT",
    )


@pytest.mark.parametrize(
    "damage", [corrupt_zip, checksum_mismatch, missing_file, wrong_columns, another_day, another_symbol]
)
def test_bad_input_fails_clearly_and_keeps_the_previous_partition(local, lake, damage):
    for table in ("agg_trades", "open_interest"):
        assert run_raw([table], "BTCUSDT", DAY).success
    table, symbol, message = damage(local)
    target = lake.partition_file(table, symbol, DAY)
    before = target.read_bytes()

    result = run_raw([table], symbol, DAY)
    assert not result.success
    assert re.search(message, failure_message(result)), failure_message(result)
    assert target.read_bytes() == before  # the previous data is intact ...
    assert sorted(p.name for p in target.parent.iterdir()) == [
        target.name
    ]  # ... and nothing half-written beside it


def test_bad_input_for_a_new_partition_writes_nothing(local, lake):
    _, symbol, message = corrupt_zip(local)
    result = run_raw(["agg_trades"], symbol, DAY)
    assert "corrupt zip" in failure_message(result)
    assert not lake.partition_file("agg_trades", symbol, DAY).parent.exists()


def _rewrite_csv(mirror, fmt, symbol, transform):
    path = _zip_path(mirror, fmt, symbol)
    member, data = _read_member(path)
    rows = list(csv.reader(io.StringIO(data.decode())))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(transform(rows))
    _rewrite(path, member, out.getvalue().encode())


def test_headerless_shuffled_duplicated_and_microsecond_files_give_the_clean_table(local, lake, tmp_path):
    assert run_raw(["agg_trades", "klines", "open_interest"], "ETHUSDT", DAY).success
    clean = {t: lake.read(t, "ETHUSDT", [DAY]) for t in ("agg_trades", "klines", "open_interest")}

    spec = load_registry().get("ETHUSDT")
    sample.write_day(
        local, spec, DAY, trades_per_day=3_000, header=False, ts_unit="us"
    )  # old header, new unit
    rng = random.Random(7)

    def shuffle_and_repeat(rows):
        header, body = (rows[:1], rows[1:]) if not rows[0][0][:1].isdigit() else ([], rows)
        body = body + rng.sample(body, 25)
        rng.shuffle(body)
        return header + body

    for fmt in (AGG_TRADES, FORMATS["klines"], METRICS):
        _rewrite_csv(local, fmt, "ETHUSDT", shuffle_and_repeat)
    with zipfile.ZipFile(_zip_path(local, AGG_TRADES, "ETHUSDT")) as zf:
        first = zf.read(zf.namelist()[0]).decode().splitlines()[0]
    assert first[0].isdigit() and len(first.split(",")[5]) == 16  # no header, µs timestamps

    assert run_raw(["agg_trades", "klines", "open_interest"], "ETHUSDT", DAY).success
    for table, expected in clean.items():
        assert lake.read(table, "ETHUSDT", [DAY]).equals(expected), table


def test_rematerializing_is_identical_and_the_seed_query_counts_each_row_once(local, lake):
    tables = list(ASSETS)
    for _ in range(2):
        for day in FIXTURE_DAYS:
            assert run_raw(tables, "ETHUSDT", day).success
    first = lake.read("agg_trades", "ETHUSDT", FIXTURE_DAYS)
    assert run_raw(tables, "ETHUSDT", DAY).success
    assert lake.read("agg_trades", "ETHUSDT", FIXTURE_DAYS).equals(first)

    assert set(lake.refresh_warehouse()) >= {
        "aggtrades_history",
        "open_interest_history",
        "klines_1m_history",
        "klines_15m_history",
    }
    with duckdb.connect(str(lake.warehouse_path), read_only=True) as con:
        n = con.execute("SELECT COUNT(*) FROM aggtrades_history WHERE symbol = 'ETHUSDT'").fetchone()[0]
        assert n == first.num_rows == len(set(first["agg_trade_id"].to_pylist()))
        types = dict(
            con.execute("SELECT column_name, column_type FROM (DESCRIBE aggtrades_history)").fetchall()
        )
        assert types["date"] == "DATE" and types["ts"].startswith("TIMESTAMP") and types["price"] == "DOUBLE"
        bars = con.execute(
            "SELECT count(*), sum(volume) FROM klines_15m_history WHERE symbol = 'ETHUSDT' AND date = ?",
            [DAY],
        ).fetchone()
        minute_volume = con.execute(
            "SELECT sum(volume) FROM klines_1m_history WHERE symbol = 'ETHUSDT' AND date = ?", [DAY]
        ).fetchone()[0]
    assert bars[0] == 96 and bars[1] == pytest.approx(minute_volume)


def test_checks_pass_on_good_data_and_report_per_partition(local, lake):
    from liq_pipeline.checks import RAW_CHECKS  # each check is shown failing in test_checks.py

    for symbol in ("BTCUSDT", "ETHUSDT"):
        result = materialize(
            [*ASSETS.values(), *RAW_CHECKS],
            partition_key=partition_key(symbol, DAY),
            resources=local_resources(),
        )
        evaluations = result.get_asset_check_evaluations()
        assert sorted(e.check_name for e in evaluations) == ["coverage", "inside_klines", "oi_continuity"]
        assert all(e.passed for e in evaluations), [
            (e.check_name, e.description) for e in evaluations if not e.passed
        ]
        assert {e.partition for e in evaluations} == {f"{DAY}|{symbol}"}
