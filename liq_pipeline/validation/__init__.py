"""Validation: reading Coinglass heatmap screenshots (and, later, scoring the model against them).

- `screenshot.read_screenshot(path)` reads a Coinglass liquidation heatmap screenshot into price levels.
- `coinglass_render.render_screenshot(...)` draws Coinglass-style screenshots with known content, for tests and the demo.
"""

from __future__ import annotations

from liq_pipeline.validation.screenshot import (
    Level,
    NotAHeatmapError,
    ScreenshotName,
    ScreenshotReading,
    parse_screenshot_name,
    read_screenshot,
    symbol_for,
)

__all__ = [
    "Level",
    "NotAHeatmapError",
    "ScreenshotName",
    "ScreenshotReading",
    "parse_screenshot_name",
    "read_screenshot",
    "symbol_for",
]
