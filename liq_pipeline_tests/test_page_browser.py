"""The heatmap page in a real headless Chromium (Selenium): it draws BTCUSDT, switches to ETHUSDT on the symbol
selector, and Plotly really drew a heatmap with candles. If the browser cannot start, the test fails."""

from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support.ui import Select, WebDriverWait

from liq_pipeline.api.app import create_app
from liq_pipeline.api.server import BackgroundServer
from liq_pipeline.symbols import PACKAGED_FILE
from liq_pipeline_tests.test_api import build_lake

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


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "data"
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
