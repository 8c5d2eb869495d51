"""Where archive bytes come from: the Binance archive over HTTP, a local mirror, or the embedded sample.

All three end in the same place, a zip (or plain CSV) on local disk laid out like the archive, so one code path
verifies, extracts and parses every file. `LIQ_SOURCE` picks the source: `sample` (default), `binance`, `local`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.exceptions import InvalidHeader
from urllib3.util import Retry

from liq_pipeline.formats import ArchiveFormat, FormatError, parse_file
from liq_pipeline.formats.binance import lake_schema, with_partition_columns
from liq_pipeline.lake import exclusive_folder, local_dir
from liq_pipeline.symbols import load_registry

DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
LIQUIDATION_SNAPSHOT_LAST_DAY = date(2024, 3, 31)
SOURCE_KEY = (
    b"liq_source"  # raw partition's Parquet metadata: the source it came from (sample, local, binance, live)
)
LIVE_SOURCE = (
    "live"  # rows `liq collect` wrote from Binance's streams (liq_pipeline/live), until the archive's file
)


class ArchiveError(RuntimeError):
    """A file could not be had. The message names the file and says what to do."""


class NotPublished(ArchiveError):
    """The archive has no file for that day (404): not published yet, or never."""


@dataclass(frozen=True)
class Fetched:
    path: Path  # a local .zip or .csv
    origin: str  # URL or path it came from
    sha256: str | None  # of the zip, when one was verified
    verified: bool


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_checksum_file(path: Path) -> str:
    text = path.read_text().strip()
    digest = text.split()[0].lower() if text else ""
    if len(digest) != 64:
        raise ArchiveError(f"{path}: not a Binance CHECKSUM file (expected '<sha256>  <name>.zip')")
    return digest


def verify_zip(zip_path: Path, expected: str, origin: str) -> str:
    actual = sha256_of(zip_path)
    if actual != expected:
        raise ArchiveError(
            f"{origin}: checksum mismatch: the file's SHA-256 is {actual}, its .CHECKSUM says {expected}. "
            "The download is damaged or the mirror is stale; delete the file and fetch it again."
        )
    return actual


class LocalMirror:
    """A folder with the archive's layout (`data/futures/um/daily/aggTrades/<S>/<S>-aggTrades-<D>.zip`).

    Plain `.csv` files beside or instead of the zips are accepted. A `.CHECKSUM` beside a zip is verified.
    """

    name = "local"

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def fetch(self, fmt: ArchiveFormat, symbol: str, day: date) -> Fetched:
        zip_path = self.root / fmt.relpath(symbol, day)
        csv_path = zip_path.with_suffix(".csv")
        if zip_path.exists():
            checksum = zip_path.with_name(zip_path.name + ".CHECKSUM")
            if checksum.exists():
                digest = verify_zip(zip_path, read_checksum_file(checksum), str(zip_path))
                return Fetched(zip_path, str(zip_path), digest, True)
            return Fetched(zip_path, str(zip_path), sha256_of(zip_path), False)
        if csv_path.exists():
            return Fetched(csv_path, str(csv_path), None, False)
        raise NotPublished(
            f"{symbol} {fmt.kind} for {day}: no file at {zip_path} (nor {csv_path.name}). "
            f"Download it into the mirror at LIQ_ARCHIVE_ROOT={self.root}, or pick another date."
        )


class _WaitTooLong(Exception):
    """Raised inside urllib3 when the server asks for a wait beyond the cap; turned into an ArchiveError."""

    def __init__(self, status: int, header: str, asked: float):
        super().__init__(f"HTTP {status}, Retry-After: {header}")
        self.status, self.header, self.asked = status, header, asked


class _CappedRetry(Retry):
    """urllib3's Retry, except that a Retry-After longer than `max_wait` seconds fails at once instead of sleeping:
    a run asleep for a day holds its symbol's slot and tells nobody why."""

    max_wait: float = 300.0

    def new(self, **kw) -> _CappedRetry:
        retry = super().new(**kw)
        retry.max_wait = self.max_wait
        return retry

    def sleep_for_retry(self, response) -> bool:
        try:
            asked = self.get_retry_after(response)
        except InvalidHeader:
            return False  # an unreadable Retry-After: back off as if there were none
        if not asked:
            return False
        if asked > self.max_wait:
            raise _WaitTooLong(response.status, response.headers.get("Retry-After", ""), asked)
        time.sleep(asked)
        return True


class _BodyBroke(Exception):
    """The response body broke off mid-download (truncated, reset, stalled): the whole GET is worth another try."""


# 418 is Binance's "IP banned for a while" (after ignored 429s); both come with Retry-After.
RETRY_STATUSES = frozenset({418, 429, *range(500, 600)})


class BinanceArchive:
    """The public archive over HTTP (`LIQ_BINANCE_ARCHIVE_URL`), cached into a local mirror folder.

    Every zip is checked against its `.CHECKSUM`. 418/429/5xx and connection errors are retried by urllib3's
    `Retry` with exponential backoff, honouring `Retry-After` up to `max_wait` seconds (a longer wait fails at once,
    saying when to come back). A body that breaks off mid-download is fetched again, `retries` times. A 404 means
    the file is not in the archive.
    """

    name = "binance"

    def __init__(
        self,
        base_url: str,
        cache_root: Path,
        *,
        retries: int = 5,
        backoff: float = 1.0,
        max_wait: float = 300.0,
        timeout: float = 60.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.cache = LocalMirror(cache_root)
        self.retries, self.backoff, self.max_wait, self.timeout = retries, backoff, max_wait, timeout
        retry = _CappedRetry(
            total=retries,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff,
            backoff_max=min(60.0, max_wait),
            raise_on_status=False,  # the last response comes back, so the message can name its status
            retry_after_max=2**31,  # no silent clamp: _CappedRetry decides
        )
        retry.max_wait = max_wait
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def fetch(self, fmt: ArchiveFormat, symbol: str, day: date) -> Fetched:
        rel = fmt.relpath(symbol, day)
        target = self.cache.root / rel
        url = f"{self.base_url}/{rel}"
        checksum_path = target.with_name(target.name + ".CHECKSUM")
        # One writer per cache folder at a time; `.part` files found under the lock are from a killed download.
        with exclusive_folder(target.parent, "*.part"):
            self._download(url + ".CHECKSUM", checksum_path, symbol, fmt, day)
            expected = read_checksum_file(checksum_path)
            if not (target.exists() and sha256_of(target) == expected):
                self._download(url, target, symbol, fmt, day)
            try:
                digest = verify_zip(target, expected, url)
            except ArchiveError:
                target.unlink(missing_ok=True)
                raise
        return Fetched(target, url, digest, True)

    def _download(self, url: str, target: Path, symbol: str, fmt: ArchiveFormat, day: date) -> None:
        """GET url into target via a `.part` file. Status and connection retries happen inside `_get`; here only
        a body that breaks off is tried again."""
        part = target.with_name(target.name + ".part")
        for attempt in range(self.retries + 1):
            try:
                with self._get(url) as resp:
                    self._check_status(resp, url, symbol, fmt, day)
                    self._stream(resp, part, target.name)
                os.replace(part, target)
                return
            except _BodyBroke as exc:
                if attempt == self.retries:
                    raise ArchiveError(
                        f"{url}: the download broke off {attempt + 1} times ({exc.__cause__}). The connection or the "
                        "server is unreliable right now: run again later."
                    ) from exc.__cause__
                time.sleep(min(60.0, self.backoff * 2**attempt))
            finally:
                part.unlink(missing_ok=True)

    def _get(self, url: str) -> requests.Response:
        try:
            return self.session.get(url, stream=True, timeout=self.timeout)
        except _WaitTooLong as exc:
            back = datetime.now(UTC) + timedelta(seconds=exc.asked)
            raise ArchiveError(
                f"{url}: the server answered {exc} and asks to wait {exc.asked:,.0f} s ({exc.asked / 3600:.1f} h), "
                f"longer than this source waits (max_wait={self.max_wait:g} s). It is limiting requests from this IP "
                f"address: run again after {back:%Y-%m-%d %H:%M} UTC, with fewer runs at once."
            ) from None
        except requests.RequestException as exc:
            raise ArchiveError(
                f"{url}: {exc.__class__.__name__} after {self.retries + 1} tries: {exc}. Check the network and "
                "LIQ_BINANCE_ARCHIVE_URL, then run again."
            ) from exc

    def _check_status(
        self, resp: requests.Response, url: str, symbol: str, fmt: ArchiveFormat, day: date
    ) -> None:
        if resp.status_code == 404:
            raise NotPublished(_not_published(symbol, fmt, day, url))
        if resp.status_code in RETRY_STATUSES:
            history = getattr(getattr(resp.raw, "retries", None), "history", ())
            raise ArchiveError(
                f"{url}: HTTP {resp.status_code} after {len(history) + 1} tries; the server is overloaded or "
                "limiting requests: run again later."
            )
        if resp.status_code >= 400:
            raise ArchiveError(
                f"{url}: HTTP {resp.status_code} {resp.reason}. Check LIQ_BINANCE_ARCHIVE_URL (the archive's root, "
                f"default {DEFAULT_ARCHIVE_URL}) and that {symbol} {fmt.kind} exists there."
            )

    @staticmethod
    def _stream(resp: requests.Response, part: Path, name: str) -> None:
        total = int(resp.headers.get("Content-Length") or 0) or None
        try:
            with (
                open(part, "wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None, leave=False) as bar,
            ):
                for chunk in resp.iter_content(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError, requests.Timeout) as exc:
            raise _BodyBroke() from exc


def _not_published(symbol: str, fmt: ArchiveFormat, day: date, url: str) -> str:
    if day >= datetime.now(UTC).date() - timedelta(days=1):
        return (
            f"{symbol} {fmt.kind} for {day} is not published at {url} (HTTP 404). The archive publishes a day's "
            "files the next day (monthly files after the month ends); try again later or pick an earlier date."
        )
    return (
        f"{symbol} {fmt.kind} for {day} is not published at {url} (HTTP 404). The archive has no such file: "
        f"check that {symbol} was listed then (its first_date in the symbol registry) or pick another date."
    )


class SampleArchive:
    """The embedded synthetic market, written on demand into a local mirror in the exact archive formats."""

    name = "sample"

    def __init__(self, root: Path):
        self.mirror = LocalMirror(root)

    def fetch(self, fmt: ArchiveFormat, symbol: str, day: date) -> Fetched:
        from liq_pipeline.sources import sample  # the generator is only needed for this source

        if not (self.mirror.root / fmt.relpath(symbol, day)).exists():
            sample.write_day(self.mirror.root, load_registry().get(symbol), day)
        return self.mirror.fetch(fmt, symbol, day)


Source = LocalMirror | BinanceArchive | SampleArchive


def get_source(name: str | None = None) -> Source:
    """The source named by `name` or `LIQ_SOURCE` (default `sample`)."""
    name = (name or os.environ.get("LIQ_SOURCE") or "sample").lower()
    if name == "sample":
        return SampleArchive(local_dir() / "sample_archive")
    if name == "local":
        root = os.environ.get("LIQ_ARCHIVE_ROOT")
        if not root:
            raise ArchiveError("LIQ_SOURCE=local needs LIQ_ARCHIVE_ROOT, the folder of your archive mirror")
        return LocalMirror(root)
    if name == "binance":
        url = os.environ.get("LIQ_BINANCE_ARCHIVE_URL") or DEFAULT_ARCHIVE_URL
        return BinanceArchive(url, local_dir() / "archive_cache")
    raise ArchiveError(f"LIQ_SOURCE={name!r} is not a source; use sample, binance or local")


def extract_csv(fetched: Fetched, fmt: ArchiveFormat, symbol: str, day: date, workdir: Path) -> Path:
    """The CSV inside a fetched zip, extracted into workdir (a plain CSV is used where it is)."""
    if fetched.path.suffix != ".zip":
        return fetched.path
    expected = f"{fmt.file_stem(symbol, day)}.csv"
    try:
        with zipfile.ZipFile(fetched.path) as zf:
            members = [m for m in zf.namelist() if m.lower().endswith(".csv")]
            if len(members) != 1:
                raise FormatError(
                    f"{fetched.origin}: expected one CSV inside the zip, found {members or 'none'}"
                )
            if Path(members[0]).name != expected:
                raise FormatError(
                    f"{fetched.origin}: the zip holds {members[0]}, not {expected}; it belongs to another "
                    f"symbol or day. Replace it with {symbol}'s {fmt.kind} file for {day}."
                )
            out = workdir / expected
            with zf.open(members[0]) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        raise FormatError(f"{fetched.origin}: corrupt zip ({exc}); delete it and fetch it again") from exc


@dataclass(frozen=True)
class Ingested:
    table: pa.Table
    fetched: Fetched | None
    note: str | None = None  # why a partition is empty, when it legitimately is
    dropped_other_day: int = 0  # rows of the daily file that belong to another day (the next day's 00:00 row)


def ingest(source: Source, fmt: ArchiveFormat, symbol: str, day: date) -> Ingested:
    """Fetch, verify, extract and parse one (format, symbol, day) into a lake-ready Arrow table."""
    load_registry().get(symbol)  # unknown symbols fail here, with the supported list
    try:
        fetched = source.fetch(fmt, symbol, day)
    except NotPublished as exc:
        note = _legitimately_missing(fmt, day)
        if note is None:
            raise
        return Ingested(_with_source(empty_table(fmt, symbol, day), source), None, f"{note} ({exc})")
    with tempfile.TemporaryDirectory(prefix="liq-ingest-") as tmp:
        csv_path = extract_csv(fetched, fmt, symbol, day, Path(tmp))
        parsed = parse_file(csv_path, fmt, symbol, day, origin=str(fetched.origin))
        return Ingested(
            _with_source(parsed.table, source), fetched, dropped_other_day=parsed.dropped_other_day
        )


def _with_source(table: pa.Table, source: Source) -> pa.Table:
    """The source's name in the table's metadata, so the lake (and the page's "synthetic" badge) knows it."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SOURCE_KEY: source.name.encode()})


def _legitimately_missing(fmt: ArchiveFormat, day: date) -> str | None:
    # Only days after the archive's end: a missing file of a day it covers is an error like any other 404.
    if fmt.kind == "liquidationSnapshot" and day > LIQUIDATION_SNAPSHOT_LAST_DAY:
        return (
            f"No liquidationSnapshot file: the archive publishes USDT-M forced liquidations up to "
            f"{LIQUIDATION_SNAPSHOT_LAST_DAY} only"
        )
    today = datetime.now(UTC).date()
    if fmt.period == "monthly" and (day.year, day.month) >= (today.year, today.month):
        return f"The monthly {fmt.kind} file for {day:%Y-%m} is published after the month ends"
    return None


def empty_table(fmt: ArchiveFormat, symbol: str, day: date) -> pa.Table:
    """A zero-row table with the lake schema of this format."""
    return with_partition_columns(lake_schema(fmt).empty_table(), symbol, day)
