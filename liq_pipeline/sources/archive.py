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
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import requests
from tqdm import tqdm

from liq_pipeline.formats import ArchiveFormat, FormatError, parse_csv
from liq_pipeline.lake import data_dir
from liq_pipeline.symbols import load_registry

DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
LIQUIDATION_SNAPSHOT_LAST_DAY = date(2024, 3, 31)


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


class BinanceArchive:
    """The public archive over HTTP (`LIQ_BINANCE_ARCHIVE_URL`), cached into a local mirror folder.

    Every zip is checked against its `.CHECKSUM`. 429/418/5xx and connection errors are retried with exponential
    backoff, honouring `Retry-After`. A 404 means the day is not published (yet).
    """

    name = "binance"

    def __init__(self, base_url: str, cache_root: Path, *, retries: int = 5, backoff: float = 1.0, timeout=60):
        self.base_url = base_url.rstrip("/")
        self.cache = LocalMirror(cache_root)
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.session = requests.Session()

    def fetch(self, fmt: ArchiveFormat, symbol: str, day: date) -> Fetched:
        rel = fmt.relpath(symbol, day)
        target = self.cache.root / rel
        url = f"{self.base_url}/{rel}"
        checksum_path = target.with_name(target.name + ".CHECKSUM")
        target.parent.mkdir(parents=True, exist_ok=True)
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
        part = target.with_name(target.name + ".part")
        for attempt in range(self.retries + 1):
            try:
                with self.session.get(url, stream=True, timeout=self.timeout) as resp:
                    if resp.status_code == 404:
                        raise NotPublished(
                            f"{symbol} {fmt.kind} for {day} is not published at {url} (HTTP 404). The archive "
                            "publishes a day's files the next day (monthly files after the month ends); "
                            "try again later or pick an earlier date."
                        )
                    if resp.status_code in (418, 429) or resp.status_code >= 500:
                        if attempt == self.retries:
                            raise ArchiveError(f"{url}: HTTP {resp.status_code} after {attempt + 1} tries; try later")
                        time.sleep(self._delay(attempt, resp.headers.get("Retry-After")))
                        continue
                    resp.raise_for_status()
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with (
                        open(part, "wb") as out,
                        tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=None, leave=False) as bar,
                    ):
                        for chunk in resp.iter_content(1 << 20):
                            out.write(chunk)
                            bar.update(len(chunk))
                os.replace(part, target)
                return
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self.retries:
                    raise ArchiveError(f"{url}: {exc.__class__.__name__} after {attempt + 1} tries: {exc}") from exc
                time.sleep(self._delay(attempt, None))
            finally:
                part.unlink(missing_ok=True)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return max(0.0, float(retry_after))
            except ValueError:
                pass
        return min(60.0, self.backoff * 2**attempt)


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
        return SampleArchive(data_dir() / "sample_archive")
    if name == "local":
        root = os.environ.get("LIQ_ARCHIVE_ROOT")
        if not root:
            raise ArchiveError("LIQ_SOURCE=local needs LIQ_ARCHIVE_ROOT, the folder of your archive mirror")
        return LocalMirror(root)
    if name == "binance":
        url = os.environ.get("LIQ_BINANCE_ARCHIVE_URL") or DEFAULT_ARCHIVE_URL
        return BinanceArchive(url, data_dir() / "archive_cache")
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
                raise FormatError(f"{fetched.origin}: expected one CSV inside the zip, found {members or 'none'}")
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


def ingest(source: Source, fmt: ArchiveFormat, symbol: str, day: date) -> Ingested:
    """Fetch, verify, extract and parse one (format, symbol, day) into a lake-ready Arrow table."""
    load_registry().get(symbol)  # unknown symbols fail here, with the supported list
    try:
        fetched = source.fetch(fmt, symbol, day)
    except NotPublished as exc:
        note = _legitimately_missing(fmt, day)
        if note is None:
            raise
        return Ingested(empty_table(fmt, symbol, day), None, f"{note} ({exc})")
    with tempfile.TemporaryDirectory(prefix="liq-ingest-") as tmp:
        csv_path = extract_csv(fetched, fmt, symbol, day, Path(tmp))
        return Ingested(parse_csv(csv_path, fmt, symbol, day, origin=str(fetched.origin)), fetched)


def _legitimately_missing(fmt: ArchiveFormat, day: date) -> str | None:
    if fmt.kind == "liquidationSnapshot":
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
    with tempfile.TemporaryDirectory(prefix="liq-empty-") as tmp:
        path = Path(tmp) / "empty.csv"
        path.write_text(",".join(fmt.column_names) + "\n")
        return parse_csv(path, fmt, symbol, day)
