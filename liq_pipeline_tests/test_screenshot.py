"""The Coinglass screenshot reader, on screenshots drawn with known content by `coinglass_render`."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import cv2
import numpy as np
import pytest

from liq_pipeline.symbols import load_registry
from liq_pipeline.validation.coinglass_render import PAGE_BG, RenderInfo, synthetic_levels_image
from liq_pipeline.validation.screenshot import (
    NotAHeatmapError,
    ScreenshotReading,
    ocr_engine,
    parse_price_label,
    parse_screenshot_name,
    parse_usd_label,
    read_screenshot,
    screenshot_levels_cli,
    symbol_for,
)

PRICE_TOL = 0.003  # 0.3 % of price
INTENSITY_TOL = 0.08

CASES = {
    # BTC at 95k: tooltip over the strongest level near the right edge, watermark, "90000" printed as "00006",
    # and a bright stale band that ended mid-window (price ran through it) which must not be reported.
    "btc": dict(
        center_price=95_000.0,
        levels=[(98_500.0, 1.0), (91_200.0, 0.75), (100_800.0, 0.5), (88_000.0, 0.3)],
        stale_levels=[(93_000.0, 1.0)],
        tooltip=True,
        watermark=True,
        misread_label=(5, "00006"),
        max_usd=88.28e6,
        seed=1,
    ),
    # ETH at 3.4k on a larger screen: the tooltip hides the newest columns of the 3290 level completely.
    "eth": dict(
        center_price=3_400.0,
        levels=[(3_520.0, 1.0), (3_290.0, 0.6), (3_610.0, 0.35)],
        tooltip=(0.997, (3_740.0 - 3_290.0) / 680.0),
        watermark=True,
        size=(1600, 900),
        max_usd=1.2e9,
        seed=2,
    ),
    # Few, wide candles: the last candle bodies cover most of the newest columns around the price.
    "wide_candles": dict(
        center_price=95_000.0,
        levels=[(97_400.0, 0.8), (92_000.0, 0.5)],
        n_times=40,
        noise=0.05,
        size=(1024, 576),
        max_usd=950e3,
        seed=5,
    ),
}
EXPECTED_MAX_TEXT = {"btc": 88.28e6, "eth": 1.2e9, "wide_candles": 950e3}


@pytest.fixture(scope="module")
def engine():
    """One OCR engine for the whole module (the reader caches it process-wide; this loads it up front)."""
    return ocr_engine()


@pytest.fixture(scope="module")
def shots(tmp_path_factory, engine) -> dict[str, tuple[RenderInfo, ScreenshotReading]]:
    folder = tmp_path_factory.mktemp("coinglass")
    out = {}
    for name, kw in CASES.items():
        info = synthetic_levels_image(folder / f"coinglass_{name}_m1_24hour_20241228_120000.png", **kw)
        out[name] = (info, read_screenshot(info.path))
    return out


def _matched(info: RenderInfo, reading: ScreenshotReading):
    """Truth levels (strongest first) paired with the reader's levels in the same rank."""
    truth = sorted(info.levels, key=lambda lv: -lv[1])
    return list(zip(truth, reading.levels[: len(truth)]))


@pytest.mark.parametrize("case", list(CASES))
def test_levels_recovered_within_tolerance_in_rank_order(shots, case):
    info, reading = shots[case]
    assert len(reading.levels) >= len(info.levels)
    for (price, rel), level in _matched(info, reading):
        assert abs(level.price - price) / price < PRICE_TOL, (case, price, level)
        assert abs(level.intensity - rel) < INTENSITY_TOL, (case, rel, level)
    intensities = [lv.intensity for lv in reading.levels]
    assert intensities == sorted(intensities, reverse=True)


@pytest.mark.parametrize("case", list(CASES))
def test_extra_levels_are_weaker_than_every_known_level(shots, case):
    info, reading = shots[case]
    weakest = min(rel for _, rel in info.levels)
    assert all(lv.intensity < weakest - 0.05 for lv in reading.levels[len(info.levels) :])


def test_stale_band_and_candles_are_not_levels(shots):
    info, reading = shots["btc"]
    for level in reading.levels:
        assert abs(level.price - 93_000.0) / 93_000.0 > PRICE_TOL, level  # the band that ended mid-window
    for case in ("btc", "wide_candles"):
        info, reading = shots[case]
        near_price = [lv for lv in reading.levels if abs(lv.price - info.last_close) / info.last_close < 0.01]
        assert all(lv.intensity < 0.25 for lv in near_price), near_price


@pytest.mark.parametrize("case", list(CASES))
def test_plot_rectangle_colour_bar_and_price_axis(shots, case):
    info, reading = shots[case]
    assert np.abs(np.array(reading.plot) - np.array(info.plot)).max() <= 2
    assert np.abs(np.array(reading.colorbar) - np.array(info.colorbar)).max() <= 3
    assert reading.colorbar_max_usd == pytest.approx(EXPECTED_MAX_TEXT[case])
    assert reading.price_axis.residual < 1.5
    assert reading.price_axis.slope < 0
    low, high = reading.price_range
    assert low == pytest.approx(info.price_bottom, rel=5e-4)
    assert high == pytest.approx(info.price_top, rel=5e-4)
    for row, _text in info.price_labels:
        assert reading.price_axis.price_at(row - 0.5) == pytest.approx(
            info.price_top
            - (row - info.plot[1]) / (info.plot[3] - info.plot[1]) * (info.price_top - info.price_bottom),
            rel=5e-4,
        )


def test_misread_label_is_rejected_by_the_robust_fit(shots):
    _, reading = shots["btc"]
    misread = [lb for lb in reading.labels if lb.value is not None and lb.value < 1000]
    assert misread, [lb.text for lb in reading.labels]
    assert not any(lb.inlier for lb in misread)
    assert reading.price_axis.n_inliers >= 5
    assert reading.price_axis.n_inliers == reading.price_axis.n_labels - len(misread)


def test_usd_and_profile(shots):
    info, reading = shots["btc"]
    top = reading.levels[0]
    assert top.usd == pytest.approx(top.intensity * 88.28e6)
    prof = reading.profile
    x0, y0, x1, y1 = reading.plot
    assert len(prof.prices) == len(prof.intensity) == y1 - y0
    assert np.all(np.diff(prof.prices) > 0)
    assert prof.intensity.min() >= 0 and prof.intensity.max() <= 1
    assert prof.intensity[np.argmin(np.abs(prof.prices - 98_500.0))] > 0.9


def test_to_json_is_serialisable_with_the_documented_keys(shots):
    _, reading = shots["eth"]
    data = json.loads(json.dumps(reading.to_json()))
    assert len(data["plot"]) == 4
    assert set(data["price_axis"]) >= {"slope", "intercept", "residual"}
    assert data["colorbar_max"] == pytest.approx(1.2e9)
    assert data["levels"][0].keys() >= {"price", "intensity", "usd"}
    assert data["levels"][0]["price"] == pytest.approx(3_520.0, rel=PRICE_TOL)


# --- not heatmaps ------------------------------------------------------------------------------------------------


def _write(path, rgb: np.ndarray):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def not_heatmaps(tmp_path_factory, shots):
    folder = tmp_path_factory.mktemp("not_heatmaps")
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)
    photo = cv2.resize(small, (1280, 720), interpolation=cv2.INTER_CUBIC)
    photo = np.clip(photo.astype(int) + rng.integers(-12, 13, photo.shape), 0, 255).astype(np.uint8)
    bg = np.array([int(PAGE_BG[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)

    info, _ = shots["btc"]
    shot = cv2.cvtColor(cv2.imread(str(info.path)), cv2.COLOR_BGR2RGB)
    no_bar = shot.copy()
    bx0, by0, bx1, by1 = info.colorbar
    no_bar[by0 - 2 : by1 + 2, bx0 - 2 : bx1 + 2] = bg
    no_labels = shot.copy()
    no_labels[:, info.plot[2] + 1 :] = bg

    text = folder / "notes.png"
    text.write_text("this is a text file, not an image\n")
    return {
        "photo": (_write(folder / "photo.png", photo), "plot"),
        "blank": (_write(folder / "blank.png", np.full((720, 1280, 3), 16, np.uint8)), "plot rectangle"),
        "text": (text, "not a readable image"),
        "missing": (folder / "nope.png", "not found"),
        "no_colour_bar": (_write(folder / "no_bar.png", no_bar), "colour bar"),
        "no_price_labels": (_write(folder / "no_labels.png", no_labels), "price labels"),
    }


@pytest.mark.parametrize("kind", ["photo", "blank", "text", "missing", "no_colour_bar", "no_price_labels"])
def test_not_a_heatmap_raises_with_a_one_line_reason(not_heatmaps, kind):
    path, words = not_heatmaps[kind]
    with pytest.raises(NotAHeatmapError) as exc:
        read_screenshot(path)
    message = str(exc.value)
    assert words in message, message
    assert "\n" not in message
    assert isinstance(exc.value, ValueError)


# --- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_json_prints_one_object(shots, capsys):
    info, _ = shots["btc"]
    assert screenshot_levels_cli(info.path, as_json=True) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    data = json.loads(out)
    assert data["levels"][0]["price"] == pytest.approx(98_500.0, rel=PRICE_TOL)
    assert data["colorbar_max"] == pytest.approx(88.28e6)
    assert data["name"]["symbol"] == "BTCUSDT"  # coinglass_btc_... file name


def test_cli_human_summary(shots, capsys):
    info, _ = shots["eth"]
    assert screenshot_levels_cli(info.path, as_json=False) == 0
    out = capsys.readouterr().out
    assert "levels" in out and "1.20B" in out and "3,520" in out


@pytest.mark.parametrize("kind", ["blank", "text"])
def test_cli_not_a_heatmap_returns_2_with_one_line_reason(not_heatmaps, capsys, kind):
    path, _ = not_heatmaps[kind]
    assert screenshot_levels_cli(path, as_json=True) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err.count("\n") == 1
        and str(path) in captured.err
        and "not a Coinglass heatmap" in captured.err
    )


# --- names and labels --------------------------------------------------------------------------------------------


def test_parse_screenshot_name():
    name = parse_screenshot_name("/drop/coinglass_eth_m1_24hour_20241228_120000.png")
    assert name.symbol == "ETHUSDT"
    assert (name.model, name.timeframe) == ("m1", "24hour")
    assert name.captured_at == datetime(2024, 12, 28, 12, 0, 0, tzinfo=UTC)
    assert parse_screenshot_name("coinglass_btc_m2_12hour_20250101_235959.png").symbol == "BTCUSDT"


@pytest.mark.parametrize(
    "bad, words",
    [
        ("heatmap_eth_m1_24hour_20241228_120000.png", "not a Coinglass screenshot name"),
        ("coinglass_eth_m1_20241228_120000.png", "not a Coinglass screenshot name"),
        ("coinglass_eth_m1_24hour_20241228_120000.jpg", "not a Coinglass screenshot name"),
        ("coinglass_eth_m1_24hour_2024122_120000.png", "not a Coinglass screenshot name"),
        ("coinglass_eth_m1_24hour_20241328_120000.png", "bad capture time"),
        ("coinglass_eth_m1_24hour_20241228_250000.png", "bad capture time"),
    ],
)
def test_parse_screenshot_name_rejects_bad_names(bad, words):
    with pytest.raises(ValueError, match=words):
        parse_screenshot_name(bad)


def test_symbol_for_checks_the_registry():
    registry = load_registry()
    assert symbol_for("coinglass_btc_m1_24hour_20241228_120000.png", registry) == "BTCUSDT"
    with pytest.raises(ValueError, match="ZZZUSDT"):
        symbol_for("coinglass_zzz_m1_24hour_20241228_120000.png", registry)


@pytest.mark.parametrize(
    "text, value",
    [
        ("88.28M", 88.28e6),
        ("1.2B", 1.2e9),
        ("950K", 950e3),
        ("950.00K", 950e3),
        ("1234", 1234.0),
        ("M", None),
    ],
)
def test_parse_usd_label(text, value):
    assert parse_usd_label(text) == (pytest.approx(value) if value is not None else None)


@pytest.mark.parametrize(
    "text, value",
    [
        ("95000", 95000.0),
        ("3,400.50", 3400.5),
        ("0.2345", 0.2345),
        (" 104500.0", 104500.0),
        ("9500O", 95000.0),
        ("Price", None),
        ("", None),
    ],
)
def test_parse_price_label(text, value):
    assert parse_price_label(text) == value
