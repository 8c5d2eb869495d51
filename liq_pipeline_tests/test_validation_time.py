"""Screenshots are scored against our state at their capture time, on the model's step grid: a state with no rows
(the model writes only non-empty cells) is empty, not the last state that had rows."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from liq_pipeline.validation.daily import Screenshot, screenshot_scores
from liq_pipeline.validation.screenshot import Level, PriceAxis, Profile, ScreenshotName, ScreenshotReading

STEP = timedelta(minutes=5)


def _shot(captured_at: datetime) -> Screenshot:
    prices = np.linspace(90.0, 110.0, 201)
    intensity = np.exp(-(((prices - 95.0) / 0.3) ** 2))  # one bright band at 95, below the price: longs
    reading = ScreenshotReading(
        path=Path("shot.png"),
        size=(800, 600),
        plot=(0, 0, 700, 500),
        colorbar=(0, 0, 10, 500),
        price_axis=PriceAxis(-0.04, 110.0, 0.0, 5, 5),
        colorbar_max_usd=None,
        colorbar_max_text=None,
        profile=Profile(prices, intensity),
        levels=[Level(95.0, 1.0, None)],
    )
    name = ScreenshotName("BTCUSDT", "m1", "24hour", captured_at.replace(tzinfo=UTC))
    return Screenshot(Path(f"coinglass_btc_m1_24hour_{captured_at:%Y%m%d_%H%M%S}.png"), name, reading)


def test_an_empty_state_is_scored_as_empty_not_as_the_last_state_with_rows():
    t0 = datetime(2024, 12, 28, 10, 0)
    # The state at 10:00 holds longs at 95; the 10:00-10:05 candle's wick took them: no rows at 10:05.
    heat = pd.DataFrame(
        {"ts": [t0 - STEP], "as_of": [t0], "price": [95.0], "long_usd": [1e6], "short_usd": [0.0]}
    )
    klines = pd.DataFrame(
        {"open_time": pd.date_range(t0 - timedelta(hours=1), periods=70, freq="1min"), "close": 100.0}
    )
    before, after = screenshot_scores(
        [_shot(t0 + timedelta(minutes=2)), _shot(t0 + timedelta(minutes=7))], heat, klines, 0.1, STEP
    )
    assert before["hit_rate"] == 1.0  # 10:02 sees the 10:00 state: the band matches
    assert after["hit_rate"] == 0.0  # 10:07 sees the 10:05 state, which is empty
