"""Shared fixtures: a small archive mirror made by the project's own sample generator, a lake per test, and a
real HTTP server on 127.0.0.1 serving archive files."""

from __future__ import annotations

import shutil
import threading
from datetime import date
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from liq_pipeline.lake import Lake
from liq_pipeline.sources import sample
from liq_pipeline.symbols import PACKAGED_FILE, load_registry

FIXTURE_DAYS = (date(2024, 12, 27), date(2024, 12, 28))
FIXTURE_SYMBOLS = ("BTCUSDT", "ETHUSDT")
FIXTURE_TRADES = 3_000


@pytest.fixture(scope="session")
def sample_mirror(tmp_path_factory) -> Path:
    """A read-only archive mirror: BTCUSDT and ETHUSDT for two days, every format. Copy it before changing it."""
    root = tmp_path_factory.mktemp("mirror")
    registry = load_registry()
    for symbol in FIXTURE_SYMBOLS:
        for day in FIXTURE_DAYS:
            sample.write_day(root, registry.get(symbol), day, trades_per_day=FIXTURE_TRADES)
    return root


@pytest.fixture
def mirror(sample_mirror, tmp_path) -> Path:
    """A private copy of the mirror that a test may damage."""
    return Path(shutil.copytree(sample_mirror, tmp_path / "mirror"))


@pytest.fixture
def lake(tmp_path, monkeypatch) -> Lake:
    data = tmp_path / "data"
    monkeypatch.setenv("LIQ_DATA_DIR", str(data))
    return Lake.at(data)


class ArchiveServer:
    """A static file server over a folder, like data.binance.vision over a mirror. It can answer chosen paths
    with an error status a given number of times first, to exercise retries, or cut their body off: `truncated[path]
    = n` sends the full Content-Length but only half of the bytes, then closes the connection, n times."""

    def __init__(self, root: Path):
        self.root = root
        self.failures: dict[str, list[tuple[int, dict]]] = {}
        self.truncated: dict[str, int] = {}
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                queued = server.failures.get(self.path)
                if queued:
                    status, headers = queued.pop(0)
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if server.truncated.get(self.path, 0) > 0:
                    server.truncated[self.path] -= 1
                    data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive_server(mirror):
    server = ArchiveServer(mirror)
    yield server
    server.close()


@pytest.fixture
def avax_registry(tmp_path) -> Path:
    """The shipped registry plus AVAXUSDT, a symbol it lacks: the seed's litmus test for "no code per symbol"."""
    path = tmp_path / "symbols.toml"
    path.write_text(
        PACKAGED_FILE.read_text()
        + """
[symbols.AVAXUSDT]
price_bin = 0.05
first_date = 2021-12-01
sample_price = 38.0
leverage = [5, 10, 20, 25, 50]
leverage_weights = [0.15, 0.30, 0.25, 0.20, 0.10]
tiers = "alt"
"""
    )
    return path


def failure_message(result) -> str:
    """The whole error chain of a failed in-process run's first failed step: the user-facing error is the cause of
    Dagster's step wrapper."""
    failures = result.get_step_failure_events()
    assert failures, "expected the run to fail"
    error, parts = failures[0].event_specific_data.error, []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


@pytest.fixture
def resources(mirror, tmp_path, monkeypatch) -> dict:
    """Resources for in-process runs: the test's copy of the mirror into a lake under tmp_path, screenshots from
    tmp_path/shots."""
    from liq_pipeline.resources import ArchiveSource, LakeIOManager, LakeResource

    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    monkeypatch.setenv("LIQ_SCREENSHOT_DIR", str(tmp_path / "shots"))
    return {
        "lake_io_manager": LakeIOManager(data_dir=str(tmp_path)),
        "lake": LakeResource(data_dir=str(tmp_path)),
        "archive": ArchiveSource(source="local"),
    }


def local_resources() -> dict:
    """Resources for in-process runs reading the `local` mirror at $LIQ_ARCHIVE_ROOT into the lake at $LIQ_DATA_DIR."""
    from liq_pipeline.resources import ArchiveSource, LakeIOManager, LakeResource

    return {
        "lake_io_manager": LakeIOManager(),
        "archive": ArchiveSource(source="local"),
        "lake": LakeResource(),
    }
