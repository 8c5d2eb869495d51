"""The heatmap page in a real headless Chromium (Selenium): it draws BTCUSDT, switches to ETHUSDT on the symbol
selector, and Plotly really drew a heatmap with candles; on the 1y and 90d windows it says which days of the window
hold data and marks the days the model replayed with less than its full lookback, exactly as the API's answer says.
The lake is the pipeline's own output (`test_api.build_lake`). If the browser cannot start, the test fails."""

from __future__ import annotations

import json
import shutil
import urllib.request
from datetime import date, datetime, timedelta

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support.ui import Select, WebDriverWait

from liq_pipeline.api.app import create_app
from liq_pipeline.api.server import BackgroundServer
from liq_pipeline.symbols import PACKAGED_FILE
from liq_pipeline_tests.test_api import DAYS, HEATMAP, build_lake

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1400,860",
]

STATE = """
const d = document.getElementById('heatmap');
return {state: d.dataset.state, symbol: d.dataset.symbol, min: d.dataset.priceMin, max: d.dataset.priceMax,
        error: d.dataset.error || null, draws: d.dataset.draws};
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("page") / "data"
    build_lake(data)
    with BackgroundServer(create_app(data, registry_file=PACKAGED_FILE)) as url:
        yield url


@pytest.fixture
def driver(tmp_path):
    options = Options()
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary:
        options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # No skip: a missing or broken browser is a failure (CI installs chromium and chromium-driver with apt).
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def wait_for(driver, symbol: str, timeout: float = 60.0) -> dict:
    def drawn(drv):
        state = drv.execute_script(STATE)
        if state["state"] == "error":
            raise AssertionError(f"the page reported an error: {state['error']}")
        return state if state["state"] == "ready" and state["symbol"] == symbol else False

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(drawn)


def test_page_draws_and_switches_symbol(server, driver, tmp_path):
    driver.get(server + "/")
    btc = wait_for(driver, "BTCUSDT")
    # the price axis spans the liquidation prices: up to ~20 % either side of the price (5x leverage)
    assert 60_000 < float(btc["min"]) < float(btc["max"]) < 130_000

    options = [o.get_attribute("value") for o in Select(driver.find_element("id", "symbol")).options]
    assert options[:2] == ["BTCUSDT", "ETHUSDT"] and "BNBUSDT" in options  # the registry, via /symbols

    Select(driver.find_element("id", "symbol")).select_by_value("ETHUSDT")
    eth = wait_for(driver, "ETHUSDT")
    assert 2_000 < float(eth["min"]) < float(eth["max"]) < 5_000  # thousands, not ~95,000

    drawn = driver.execute_script(
        """
        const d = document.getElementById('heatmap');
        const heat = d.data.find(t => t.type === 'heatmap');
        return {
          svg: document.querySelectorAll('#heatmap .main-svg').length,
          types: d.data.map(t => t.type),
          zRows: heat.z.length, zCols: heat.z[0].length, yMax: Math.max(...heat.y),
          heatX: heat.x.slice(0, 2), candleX: d.data.find(t => t.type === 'candlestick').x.slice(0, 2),
          candles: d.data.find(t => t.type === 'candlestick').close.filter(v => v !== null).length,
          side: d._fullLayout.yaxis.side,
          paper: d._fullLayout.paper_bgcolor,
          heatLayers: document.querySelectorAll('#heatmap .hm image, #heatmap .heatmaplayer image').length,
          candlePaths: document.querySelectorAll('#heatmap .boxlayer path, #heatmap .trace.boxes path').length,
          legend: document.getElementById('legend').textContent,
          badge: getComputedStyle(document.getElementById('badge')).display,
          foreign: performance.getEntriesByType('resource').map(e => e.name)
                     .filter(u => !u.startsWith(location.origin)),
        };
        """
    )
    assert drawn["svg"] >= 1
    assert drawn["types"] == ["heatmap", "candlestick"]
    assert drawn["zRows"] > 10 and drawn["zCols"] == 192  # 48 h of 15-minute buckets
    assert drawn["yMax"] < 5_000
    assert drawn["candles"] == 192
    # a column and its candle sit on the middle of their bucket [00:00, 00:15): the cell spans the bucket exactly
    assert drawn["heatX"] == drawn["candleX"] == ["2024-12-27T00:07:30.000", "2024-12-27T00:22:30.000"]
    assert drawn["side"] == "right"
    assert drawn["heatLayers"] >= 1 and drawn["candlePaths"] >= 1
    assert "model estimate" in drawn["legend"].lower() and "not exchange data" in drawn["legend"].lower()
    assert "state at the end of its time bucket" in drawn["legend"]
    assert drawn["badge"] == "inline"  # the sample is generated, and the page says so
    assert drawn["foreign"] == []  # everything came from the local server: no CDN

    # the hover tooltip shows time, price and the long and short USD separately
    drag = driver.find_element("css selector", "#heatmap .nsewdrag")
    size = drag.size
    ActionChains(driver).move_to_element_with_offset(drag, size["width"] // 4, -size["height"] // 3).perform()
    hover = WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.querySelector('#heatmap .hoverlayer').textContent")
    )
    assert "UTC" in hover and "Price" in hover and "Long liq. $" in hover and "Short liq. $" in hover, hover
    assert "Bucket from" in hover and "State at" in hover and "(end of bucket)" in hover, hover

    # the window selector redraws too
    Select(driver.find_element("id", "window")).select_by_value("12h")
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.getElementById('heatmap').dataset.window") == "12h"
    )
    assert driver.execute_script("return document.getElementById('heatmap').data[0].z[0].length") == 144
    Select(driver.find_element("id", "window")).select_by_value("48h")
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.getElementById('heatmap').dataset.window") == "48h"
    )

    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []

    shot = tmp_path / "heatmap.png"
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


PAGE = """
const d = document.getElementById('heatmap');
const heat = d.data.find(t => t.type === 'heatmap');
const line = document.getElementById('coverage');
return {
  window: d.dataset.window, times: Number(d.dataset.times), drawMs: Number(d.dataset.drawMs),
  coverage: line.hidden ? null : line.textContent,
  bands: d.layout.shapes.filter(s => s.legendgroup === 'partial lookback').map(s => [s.x0, s.x1]),
  drawnShapes: document.querySelectorAll('#heatmap .layer-above .shapelayer path').length,
  legend: [...document.querySelectorAll('#heatmap .legend .traces')].map(e => e.textContent),
  states: heat.customdata[0].map(c => c[3]),
  traces: d.data.map(t => t.type),
  marked: document.querySelector('#heatmap .main-svg').dataset.mark || null,
  wire: performance.getEntriesByType('resource').filter(e => e.name.includes('/liquidations/heatmap-timeseries'))
          .map(e => [e.encodedBodySize, e.decodedBodySize]).pop(),
};
"""


def api_answer(server: str, window: str) -> dict:
    """What the API really answers the page for BTCUSDT over `window`."""
    with urllib.request.urlopen(f"{server}{HEATMAP}?symbol=BTCUSDT&time_window={window}") as response:
        return json.load(response)


READY_WINDOW = (
    "const h = document.getElementById('heatmap'); return h.dataset.state === 'ready' && h.dataset.window"
)


def wait_window(driver, window: str) -> dict:
    """Wait until the page has drawn `window`, then read what it drew (`PAGE`)."""
    WebDriverWait(driver, 60, poll_frequency=0.1).until(lambda d: d.execute_script(READY_WINDOW) == window)
    return driver.execute_script(PAGE)


def test_page_long_windows_show_coverage_and_partial_lookback(server, driver):
    """1y and 90d over a two-day lake: the page draws the answer's columns with one plot updated in place, says
    which days of the window hold data (so a near-empty 1y view explains itself), bands and annotates the days the
    model replayed with less than its full lookback, exactly those the API's `coverage` lists, and draws in time."""
    driver.get(server + "/?symbol=BTCUSDT&window=1y")
    wait_window(driver, "1y")
    # mark the plot's SVG: a window switch must update this plot (Plotly.react), not build a new one
    driver.execute_script("document.querySelector('#heatmap .main-svg').dataset.mark = 'kept'")
    for window, days_in_window in (("1y", 365), ("90d", 90)):
        if window != "1y":
            Select(driver.find_element("id", "window")).select_by_value(window)
        page = wait_window(driver, window)
        answer = api_answer(server, window)
        cov = answer["coverage"]
        partial = cov["partial_lookback"]
        encoded, decoded = page["wire"]
        print(
            f"{window}: {page['times']} columns drawn in {page['drawMs']:.0f} ms (fetch + draw); {decoded} B of JSON"
        )
        print(f"  came as {encoded} B on the wire")
        assert page["marked"] == "kept"
        assert page["traces"] == ["heatmap", "candlestick"]
        assert page["times"] == len(answer["times"])
        # the browser asked for gzip and the answer came compressed: fewer bytes on the wire than it has
        assert 0 < encoded < decoded / 2, page["wire"]
        assert page["drawMs"] < 3000  # generous: this is a 2-core machine that may be running other tests

        # the lake holds two days, and the page says so above a window of 365 or 90 days
        assert (cov["first_day"], cov["last_day"]) == (DAYS[0].isoformat(), DAYS[-1].isoformat())
        assert (cov["days_with_data"], cov["days_in_window"]) == (len(DAYS), days_in_window)
        assert page["coverage"] == (
            f"data: {cov['first_day']} – {cov['last_day']} ({cov['days_with_data']} of {days_in_window} days in "
            f"this window) · {len(partial)} days with partial lookback"
        )

        # no lookback day before the first is in the lake: both days were replayed with less than the full lookback
        assert [p["date"] for p in partial] == [d.isoformat() for d in DAYS]
        assert all(p["lookback_days_used"] < p["lookback_days"] for p in partial)
        # one shaded band per such day, over that day's columns, drawn above the heatmap, with one legend entry
        assert [(b[0][:10], b[1][:10]) for b in page["bands"]] == [
            (p["date"], (date.fromisoformat(p["date"]) + timedelta(days=1)).isoformat()) for p in partial
        ]
        assert page["drawnShapes"] == len(partial) + 1  # the bands and the last price's dotted line
        assert len(page["legend"]) == 1 and "less than its full lookback" in page["legend"][0]
        # each column's hover says how many lookback days its state had: its state's day (as_of - 1 µs) decides
        used = {p["date"]: p for p in partial}
        for state, as_of in zip(page["states"], answer["as_of"]):
            day = (
                (datetime.fromisoformat(as_of.replace("Z", "")) - timedelta(microseconds=1))
                .date()
                .isoformat()
            )
            p = used[day]
            assert f"model had {p['lookback_days_used']} of {p['lookback_days']} lookback days" in state

    # the hover tooltip of a cell carries the note
    drag = driver.find_element("css selector", "#heatmap .nsewdrag")
    ActionChains(driver).move_to_element_with_offset(drag, 0, -drag.size["height"] // 3).perform()
    hover = WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.querySelector('#heatmap .hoverlayer').textContent")
    )
    assert "lookback days" in hover and "Long liq. $" in hover, hover
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
