"""Sources: the Binance archive over HTTP (a real server on 127.0.0.1), a local mirror, and their agreement."""

import csv
import io
import time
import zipfile
from datetime import date

import pyarrow.compute as pc
import pytest

from liq_pipeline.formats import AGG_TRADES, FORMATS, KLINES, METRICS
from liq_pipeline.sources.archive import ArchiveError, BinanceArchive, LocalMirror, NotPublished, ingest

from .conftest import FIXTURE_DAYS

DAY = FIXTURE_DAYS[-1]


def _csv_rows(zip_path):
    with zipfile.ZipFile(zip_path) as zf:
        text = zf.read(zf.namelist()[0]).decode()
    rows = list(csv.reader(io.StringIO(text)))
    return rows[1:] if not rows[0][0][:1].isdigit() else rows


@pytest.mark.parametrize(
    "table", ["agg_trades", "open_interest", "klines", "funding_rate", "forced_liquidations"]
)
def test_binance_and_local_give_the_same_table_as_the_file(archive_server, mirror, tmp_path, table):
    fmt = FORMATS[table]
    over_http = ingest(BinanceArchive(archive_server.url, tmp_path / "cache", backoff=0), fmt, "ETHUSDT", DAY)
    from_mirror = ingest(LocalMirror(mirror), fmt, "ETHUSDT", DAY)
    assert over_http.table.equals(from_mirror.table)
    assert over_http.fetched.verified and from_mirror.fetched.verified
    assert over_http.fetched.sha256 == from_mirror.fetched.sha256
    assert over_http.fetched.origin.startswith(archive_server.url)

    rows = _csv_rows(mirror / fmt.relpath("ETHUSDT", DAY))
    if fmt.period == "daily":
        # the metrics file ends with the next day's 00:00 row, dropped and counted
        assert over_http.dropped_other_day == (1 if table == "open_interest" else 0)
        assert over_http.table.num_rows == len({tuple(r) for r in rows}) - over_http.dropped_other_day > 0
    if table == "agg_trades":
        assert over_http.table["agg_trade_id"].to_pylist() == sorted(int(r[0]) for r in rows)
        assert pc.sum(over_http.table["quantity"]).as_py() == pytest.approx(sum(float(r[2]) for r in rows))
        assert set(over_http.table["symbol"].to_pylist()) == {"ETHUSDT"}
        assert set(over_http.table["date"].to_pylist()) == {DAY}


def test_404_says_the_day_is_not_published(archive_server, tmp_path):
    with pytest.raises(
        NotPublished, match=r"ETHUSDT aggTrades for 2030-01-01 is not published at .*\(HTTP 404\)"
    ):
        ingest(
            BinanceArchive(archive_server.url, tmp_path / "cache"), AGG_TRADES, "ETHUSDT", date(2030, 1, 1)
        )


def test_429_is_retried_after_the_servers_retry_after(archive_server, tmp_path):
    path = "/" + KLINES.relpath("BTCUSDT", DAY)
    archive_server.failures[path] = [(429, {"Retry-After": "1"}), (503, {})]
    started = time.perf_counter()
    got = ingest(BinanceArchive(archive_server.url, tmp_path / "cache", backoff=0.01), KLINES, "BTCUSDT", DAY)
    assert time.perf_counter() - started >= 1.0  # the Retry-After was honoured
    assert archive_server.requests.count(path) == 3
    assert got.table.num_rows == 1440


def test_retries_give_up_with_a_clear_error(archive_server, tmp_path):
    path = "/" + METRICS.relpath("BTCUSDT", DAY)
    archive_server.failures[path] = [(418, {})] * 3
    with pytest.raises(ArchiveError, match="HTTP 418 after 3 tries"):
        ingest(
            BinanceArchive(archive_server.url, tmp_path / "cache", retries=2, backoff=0),
            METRICS,
            "BTCUSDT",
            DAY,
        )


def test_checksum_mismatch_names_the_url_and_keeps_no_file(archive_server, mirror, tmp_path):
    checksum = mirror / (AGG_TRADES.relpath("BTCUSDT", DAY) + ".CHECKSUM")
    checksum.write_text("0" * 64 + "  x.zip\n")
    cache = tmp_path / "cache"
    with pytest.raises(
        ArchiveError, match=r"http://127\.0\.0\.1:\d+/.*BTCUSDT-aggTrades-2024-12-28\.zip: checksum mismatch"
    ):
        ingest(BinanceArchive(archive_server.url, cache, backoff=0), AGG_TRADES, "BTCUSDT", DAY)
    assert not (cache / AGG_TRADES.relpath("BTCUSDT", DAY)).exists()
