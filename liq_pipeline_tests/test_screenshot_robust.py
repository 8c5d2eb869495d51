"""The screenshot reader on damaged captures: it reads the levels right or refuses with a one-line reason, never
returns levels a factor off. Images are drawn by `coinglass_render`, then cropped, scaled or JPEG-compressed; the
klines come from the project's sample market. OCR is the slow part: every image is read once per module."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from liq_pipeline import cli
from liq_pipeline.lake import Lake
from liq_pipeline.sources import sample
from liq_pipeline.symbols import load_registry
from liq_pipeline.validation import daily
from liq_pipeline.validation import screenshot as reader
from liq_pipeline.validation.coinglass_render import RenderInfo, synthetic_levels_image
from liq_pipeline.validation.screenshot import (
    NotAHeatmapError,
    PriceLabel,
    ScreenshotReading,
    UnreliableReadingError,
    check_against_klines,
    check_labels,
    cross_check,
    klines_range,
    parse_screenshot_name,
    read_screenshot,
    refuse_cut_labels,
    window_hours,
)

PRICE_TOL = 0.003  # 0.3 % of price, as test_screenshot.py
INTENSITY_TOL = 0.1
CAPTURED = datetime(2024, 12, 28, 12, 0, tzinfo=UTC)
DAYS = (date(2024, 12, 27), date(2024, 12, 28))


BTC_LEVEL = 113_000.0  # the price: six-digit labels, "113000" read as "11300" when cut


def _klines(symbol: str, level: float | None = None) -> pd.DataFrame:
    """The sample market's 1m klines of `symbol` on the two days before the capture, in the lake's columns; with
    `level`, scaled so that their range in the 24 h before the capture is centred there."""
    spec = load_registry().get(symbol)
    frames = [sample.market_day(spec, d, trades_per_day=3_000).klines_1m for d in DAYS]
    k = pd.concat(frames, ignore_index=True)
    out = pd.DataFrame(
        {
            "open_time": pd.to_datetime(k["open_time"], unit="ms"),
            "low": k["low"].astype(float),
            "high": k["high"].astype(float),
        }
    )
    if level is not None:
        low, high = klines_range(out, CAPTURED)
        out[["low", "high"]] *= level / ((low + high) / 2)
    return out


@pytest.fixture(scope="module")
def klines() -> dict[str, pd.DataFrame]:
    """BTC: the sample's BTC market moved to the issue's price level; ETH: the sample's ETH market as it is."""
    return {"BTCUSDT": _klines("BTCUSDT", BTC_LEVEL), "ETHUSDT": _klines("ETHUSDT")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("robust")


@pytest.fixture(scope="module")
def clean(folder, klines) -> dict[str, RenderInfo]:
    """Undamaged screenshots, BTC at the issue's price (its klines agree with it), ETH on a larger screen."""
    low, high = klines_range(klines["BTCUSDT"], CAPTURED)
    btc = synthetic_levels_image(
        folder / "coinglass_btc_m1_24hour_20241228_120000.png",
        center_price=BTC_LEVEL,
        levels=[(116_500.0, 1.0), (109_200.0, 0.75), (118_800.0, 0.5), (106_000.0, 0.3)],
        tooltip=True,
        max_usd=88.28e6,
        seed=1,
    )
    assert btc.price_bottom < low and high < btc.price_top  # the precondition of "klines agree"
    eth = synthetic_levels_image(
        folder / "coinglass_eth_m1_24hour_20241228_120000.png",
        center_price=3_400.0,
        levels=[(3_520.0, 1.0), (3_290.0, 0.6), (3_610.0, 0.35)],
        size=(1600, 900),
        max_usd=1.2e9,
        seed=2,
    )
    return {"btc": btc, "eth": eth}


def _damage(img: np.ndarray, kind: str) -> np.ndarray:
    h, w = img.shape[:2]
    if kind.startswith("crop"):  # crop{N}: N % cut off at the right edge
        return img[:, : round(w * (1 - float(kind[4:]) / 100))]
    if kind == "down60":
        return cv2.resize(img, (round(w * 0.6), round(h * 0.6)), interpolation=cv2.INTER_AREA)
    if kind == "up150":
        return cv2.resize(img, (round(w * 1.5), round(h * 1.5)), interpolation=cv2.INTER_CUBIC)
    return img


def _write(folder: Path, info: RenderInfo, kind: str) -> Path:
    """The damaged copy, named like a capture, in a folder per damage."""
    img = cv2.imread(str(info.path))
    sym = info.path.name.split("_")[1]
    if kind == "jpeg50":
        path = folder / f"{sym}_{kind}.jpg"  # a JPEG: not a capture name, read directly
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 50])
        return path
    path = folder / kind / f"coinglass_{sym}_m1_24hour_20241228_120000.png"
    path.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(path), _damage(img, kind))
    return path


def _read(path: Path) -> ScreenshotReading | UnreliableReadingError:
    try:
        return read_screenshot(path)
    except UnreliableReadingError as exc:
        return exc


# Crops of 3-6 % at the right edge cut the price labels' last characters (measured: the corner labels' decimals
# from 3 %, whole digits from 4 % on BTC at 1280 px and 6 % on ETH at 1600 px).
CROPS = [
    ("btc", "crop3"),
    ("btc", "crop4"),
    ("btc", "crop4.5"),
    ("btc", "crop5"),
    ("eth", "crop4"),
    ("eth", "crop6"),
]
# Scaled and compressed captures, and crops that stop short of the labels: what the reader does with each, as
# measured, asserted exactly below (a reading, when returned, must be right).
DEGRADED = {
    ("btc", "crop1"): "read",
    ("eth", "crop3"): "read",
    ("btc", "down60"): "read",
    ("btc", "up150"): "read",
    ("btc", "jpeg50"): "read",
    ("eth", "down60"): "read",
    ("eth", "up150"): "read",
    ("eth", "jpeg50"): "read",
}


@pytest.fixture(scope="module")
def damaged(folder, clean) -> dict[tuple[str, str], tuple[Path, ScreenshotReading | UnreliableReadingError]]:
    out = {}
    for case, kind in [*CROPS, *DEGRADED]:
        path = _write(folder, clean[case], kind)
        out[case, kind] = (path, _read(path))
    return out


@pytest.fixture(scope="module")
def readings(clean) -> dict[str, ScreenshotReading]:
    return {case: read_screenshot(info.path) for case, info in clean.items()}


def _assert_right(info: RenderInfo, reading: ScreenshotReading):
    truth = sorted(info.levels, key=lambda lv: -lv[1])
    assert len(reading.levels) >= len(truth)
    for (price, rel), level in zip(truth, reading.levels):
        assert abs(level.price - price) / price < PRICE_TOL, (price, level)
        assert abs(level.intensity - rel) < INTENSITY_TOL, (rel, level)
    low, high = reading.price_range
    assert low == pytest.approx(info.price_bottom, rel=PRICE_TOL)
    assert high == pytest.approx(info.price_top, rel=PRICE_TOL)


# --- damaged images --------------------------------------------------------------------------------------------


def test_undamaged_screenshots_read_right(clean, readings):
    for case, info in clean.items():
        _assert_right(info, readings[case])


@pytest.mark.parametrize("case, kind", CROPS)
def test_a_crop_through_the_price_labels_is_refused(damaged, case, kind):
    path, result = damaged[case, kind]
    assert isinstance(result, UnreliableReadingError), (
        f"{kind} of {case} was read: labels {[lb.text for lb in result.labels]}, "
        f"levels {[round(lv.price) for lv in result.levels[:3]]}"
    )
    message = str(result)
    assert message.startswith(path.name) and "\n" not in message
    assert "right edge" in message and "re-capture" in message
    assert isinstance(result, NotAHeatmapError)  # every caller that skips unreadable screenshots skips it


@pytest.mark.parametrize("case, kind", list(DEGRADED))
def test_scaled_and_compressed_captures_read_right_or_refuse(damaged, clean, case, kind):
    _path, result = damaged[case, kind]
    outcome = "refused" if isinstance(result, UnreliableReadingError) else "read"
    assert outcome == DEGRADED[case, kind], result
    if outcome == "read":
        _assert_right(clean[case], result)
        assert result.price_axis.n_inliers >= 3


@pytest.fixture(scope="module")
def unguarded(damaged) -> dict[str, ScreenshotReading | UnreliableReadingError]:
    """The BTC crops read with the edge check switched off: what the reader returned before it existed."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "_edge_of", lambda *a, **k: None)
        for kind in ("crop4", "crop4.5", "crop5"):
            out[kind] = _read(damaged["btc", kind][0])
    return out


def test_without_the_edge_check_the_crops_read_ten_and_a_hundred_times_too_low_and_the_klines_refuse_them(
    unguarded, clean, klines
):
    """The crops above are the issue's failure, not a harmless one: with the edge check off, the 4.5 % crop reads
    every label a digit short ("113000" -> "11300") and every level ten times too low, the 5 % crop two digits
    short and a hundred times too low. The labels agree with each other; the klines cross-check refuses both."""
    truth = max(clean["btc"].levels, key=lambda lv: lv[1])[0]
    for kind, factor in (("crop4.5", 10), ("crop5", 100)):
        reading = unguarded[kind]
        assert isinstance(reading, ScreenshotReading), reading
        assert reading.levels[0].price == pytest.approx(truth / factor, rel=PRICE_TOL)
        digits = 6 - round(np.log10(factor))
        assert {len(lb.text.split(".")[0]) for lb in reading.labels if lb.inlier} == {digits}
        with pytest.raises(UnreliableReadingError, match="traded") as exc:
            cross_check(reading, parse_screenshot_name(reading.path), klines["BTCUSDT"])
        assert "BTCUSDT in the 24 h before" in str(exc.value) and "tolerance 3%" in str(exc.value)


def test_without_the_edge_check_a_label_a_digit_longer_than_the_others_is_refused(unguarded):
    """At 4 % the crop cuts the interior labels to five digits but leaves the top corner's "124300.0" six: the
    digit-count check refuses the reading on its own (the edge check is off here)."""
    result = unguarded["crop4"]
    assert isinstance(result, UnreliableReadingError), [lb.text for lb in result.labels]
    assert "'124300' is 10x above the line through the other labels" in str(result)
    assert "digit counts disagree" in str(result)


# --- the label checks on their own, on labels whose truth is known ---------------------------------------------

PLOT = (100, 50, 1100, 650)


def _labels(
    values_rows: list[tuple[float | None, float]], edge: dict[int, str] | None = None
) -> list[PriceLabel]:
    edge = edge or {}
    return [
        PriceLabel(row, f"{v:g}" if v is not None else "Price", v, edge=edge.get(i))
        for i, (v, row) in enumerate(values_rows)
    ]


def _axis_labels(prices: list[float]) -> list[tuple[float, float]]:
    """Labels on the line price = 120000 - 40 * (row - 50): 120000 at the plot's top, 96000 at its bottom."""
    return [(p, 50 + (120_000 - p) / 40) for p in prices]


GOOD = [118_000, 114_000, 110_000, 106_000, 102_000, 98_000]


def test_check_labels_passes_a_consistent_axis_and_refuses_a_power_of_ten_outlier():
    axis, marked = reader._fit_axis(_labels(_axis_labels(GOOD)))
    check_labels("shot.png", marked, axis, PLOT)  # a right axis passes ...
    assert axis.price_at(50) == pytest.approx(120_000) and axis.n_inliers == 6
    bad = _axis_labels(GOOD)
    bad[2] = (11_000.0, bad[2][1])  # ... one label a digit short ("110000" -> "11000") does not
    axis, marked = reader._fit_axis(_labels(bad))
    assert axis.price_at(50) == pytest.approx(120_000)  # the robust fit alone would hide it
    with pytest.raises(UnreliableReadingError, match=r"'11000' is 10x below the line") as exc:
        check_labels("shot.png", marked, axis, PLOT)
    assert str(exc.value).startswith("shot.png: unreliable reading:")


def test_check_labels_refuses_a_line_of_a_minority_and_bunched_labels():
    rows = _axis_labels(GOOD[:3])
    garbage = [
        (37_123.0, 400.0),
        (5_555.0, 450.0),
        (71_717.0, 500.0),
        (2_468.0, 550.0),
    ]  # no power of ten off
    axis, marked = reader._fit_axis(_labels(rows + garbage))
    with pytest.raises(UnreliableReadingError, match="only 3 of 7 price labels agree"):
        check_labels("shot.png", marked, axis, PLOT)
    bunched = _axis_labels([110_000, 109_000, 108_000, 107_000])  # 75 px of a 600 px plot
    axis, marked = reader._fit_axis(_labels(bunched))
    with pytest.raises(UnreliableReadingError, match=r"span only 1[23]% of the plot's height"):
        check_labels("shot.png", marked, axis, PLOT)


def test_labels_at_the_edge_are_refused_on_the_right_and_left_out_at_the_top():
    labels = _labels(_axis_labels(GOOD), edge={0: "right"})
    with pytest.raises(
        UnreliableReadingError, match=r"1 price label\(s\) touch the image's right edge \('118000'\)"
    ):
        refuse_cut_labels(Path("/x/shot.png"), labels)
    top = _labels(_axis_labels(GOOD) + [(1.0, 2.0)], edge={6: "top"})  # a half label at the top: not fitted
    refuse_cut_labels("shot.png", top)
    axis, marked = reader._fit_axis(top)
    assert axis.n_labels == 6 and not marked[6].inlier
    check_labels("shot.png", marked, axis, PLOT)


@pytest.mark.parametrize(
    "box, expected",
    [
        ((1200, 100, 1278, 112), "right"),  # the glyphs reach the edge: cut inside a digit
        ((1200, 100, 1275, 112), "right"),  # 5 px short of it: cut in the gap between two digits
        ((1200, 100, 1240, 112), None),  # a complete label with room after it
        ((1200, 1, 1240, 12), "top"),
        ((1200, 710, 1240, 719), "bottom"),
    ],
)
def test_edge_of(box, expected):
    assert reader._edge_of(box, right_end=1280, height=720, margin=7) == expected


# --- the klines cross-check --------------------------------------------------------------------------------------


def test_cross_check_passes_when_the_klines_agree_and_refuses_another_price_scale(readings, klines):
    reading = readings["btc"]
    name = parse_screenshot_name(reading.path)
    assert cross_check(reading, name, klines["BTCUSDT"]) is None  # checked and agreed
    with pytest.raises(UnreliableReadingError) as exc:
        cross_check(reading, name, klines["ETHUSDT"])  # a lake whose prices are another scale
    message = str(exc.value)
    assert message.startswith(reading.path.name) and "\n" not in message
    assert "BTCUSDT in the 24 h before 2024-12-28 12:00 UTC traded 3," in message
    assert "check the symbol and capture time" in message


def test_check_against_klines_tolerance(readings):
    reading = readings["btc"]
    low, high = reading.price_range
    mid = (low + high) / 2
    check_against_klines(reading, low * 0.99, high * 1.01)  # 1 % outside the plot: within tolerance
    for lo, hi in [(low - 0.05 * mid, high), (low, high + 0.05 * mid), (low / 10, high / 10)]:
        with pytest.raises(UnreliableReadingError, match="outside it"):
            check_against_klines(reading, lo, hi)
    with pytest.raises(ValueError, match="0 < low <= high"):
        check_against_klines(reading, high, low)


def test_klines_range_takes_the_chart_window_only(klines):
    k = klines["BTCUSDT"].copy()
    base = klines_range(k, CAPTURED)
    window = k[(k["open_time"] >= "2024-12-27 12:00") & (k["open_time"] < "2024-12-28 12:00")]
    assert base == (window["low"].min(), window["high"].max())
    spikes = pd.DataFrame(
        {
            "open_time": pd.to_datetime(["2024-12-27 11:59", "2024-12-28 12:00"]),
            "low": [1.0, 1.0],
            "high": [1e9, 1e9],
        }
    )
    assert (
        klines_range(pd.concat([k, spikes]), CAPTURED) == base
    )  # a minute before and the capture's own minute
    half = klines_range(k, CAPTURED, window_hours("12hour"))
    assert base[0] <= half[0] and half[1] <= base[1]
    assert klines_range(k, CAPTURED + timedelta(days=3)) is None
    assert (window_hours("24hour"), window_hours("12hour"), window_hours("3day"), window_hours("m1")) == (
        24,
        12,
        24,
        24,
    )


def test_cross_check_without_klines_says_so(readings):
    reading = readings["btc"]
    note = cross_check(reading, parse_screenshot_name(reading.path), None)
    assert "no BTCUSDT klines" in note and "not cross-checked" in note


# --- where it is applied: read_day (the validation job), coinglass_levels and the CLI ---------------------------


@pytest.fixture(scope="module")
def day_folder(tmp_path_factory, clean, damaged) -> Path:
    """A screenshot folder of BTCUSDT on 2024-12-28: one good capture and one cropped at 4 %."""
    out = tmp_path_factory.mktemp("day")
    (out / clean["btc"].path.name).write_bytes(clean["btc"].path.read_bytes())
    cropped = out / "coinglass_btc_m1_24hour_20241228_130000.png"
    cropped.write_bytes(damaged["btc", "crop4"][0].read_bytes())
    return out


def test_read_day_skips_refused_screenshots_with_their_reason(day_folder, klines):
    shots, skipped = daily.read_day(day_folder, "BTCUSDT", DAYS[1], klines["BTCUSDT"])
    assert [s.path.name for s in shots] == ["coinglass_btc_m1_24hour_20241228_120000.png"]
    assert len(skipped) == 1 and skipped[0].startswith(
        "coinglass_btc_m1_24hour_20241228_130000.png: unreliable"
    )
    assert "right edge" in skipped[0]
    # klines of another price scale: the good capture is refused too, never turned into levels
    shots, skipped = daily.read_day(day_folder, "BTCUSDT", DAYS[1], klines["ETHUSDT"])
    assert shots == [] and len(skipped) == 2
    assert any("traded" in s and s.startswith("coinglass_btc_m1_24hour_20241228_120000.png") for s in skipped)


def _lake_with_klines(data_dir: Path, symbol: str, frame: pd.DataFrame) -> Lake:
    """A lake holding `frame` as `symbol`'s klines of the two days (only the columns the cross-check reads)."""
    lake = Lake.at(data_dir)
    for d in DAYS:
        part = frame[frame["open_time"].dt.date == d]
        lake.write("klines", symbol, d, pa.Table.from_pandas(part, preserve_index=False))
    return lake


def test_coinglass_levels_skips_refused_screenshots_in_its_metadata(
    day_folder, klines, tmp_path, monkeypatch
):
    from dagster import materialize

    from liq_pipeline.assets.validation import coinglass_levels
    from liq_pipeline.partitions import partition_key
    from liq_pipeline.resources import LakeIOManager, LakeResource

    # BTCUSDT's lake holds ETH-scale prices: both screenshots are refused, neither becomes levels.
    lake = _lake_with_klines(tmp_path, "BTCUSDT", klines["ETHUSDT"])
    monkeypatch.setenv("LIQ_SCREENSHOT_DIR", str(day_folder))
    result = materialize(
        [coinglass_levels],
        partition_key=partition_key("BTCUSDT", DAYS[1]),
        resources={
            "lake_io_manager": LakeIOManager(data_dir=str(tmp_path)),
            "lake": LakeResource(data_dir=str(tmp_path)),
        },
    )
    assert result.success
    meta = result.asset_materializations_for_node("coinglass_levels")[0].metadata
    assert meta["dagster/row_count"].value == 0 and meta["screenshots"].value == []
    skipped = meta["skipped"].value
    assert len(skipped) == 2 and all("unreliable reading" in s for s in skipped)
    assert lake.read("coinglass_levels", "BTCUSDT", [DAYS[1]]).num_rows == 0


def test_cli_cross_checks_with_symbol_and_data_dir(clean, klines, tmp_path, capsys):
    path = str(clean["btc"].path)
    _lake_with_klines(tmp_path / "btc", "BTCUSDT", klines["BTCUSDT"])
    _lake_with_klines(tmp_path / "eth", "BTCUSDT", klines["ETHUSDT"])

    assert (
        cli.main(
            ["screenshot-levels", path, "--json", "--symbol", "BTCUSDT", "--data-dir", str(tmp_path / "btc")]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["cross_check"] == "klines agree"

    assert (
        cli.main(["screenshot-levels", path, "--symbol", "BTCUSDT", "--data-dir", str(tmp_path / "eth")]) == 3
    )
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert (
        f"{path}: refused, unreliable reading: its price axis reads" in captured.err
        and "traded" in captured.err
    )

    # no klines in the lake for that time: read, with a warning that the axis was not cross-checked
    assert (
        cli.main(["screenshot-levels", path, "--symbol", "BTCUSDT", "--data-dir", str(tmp_path / "none")])
        == 0
    )
    captured = capsys.readouterr()
    assert "not cross-checked" in captured.err and "cross-check no klines" in captured.out

    assert cli.main(["screenshot-levels", path, "--symbol", "NOPE", "--data-dir", str(tmp_path / "btc")]) == 1
    assert "NOPE" in capsys.readouterr().err


def test_cli_refuses_a_cropped_capture_with_exit_3(damaged, capsys):
    path, _ = damaged["btc", "crop4"]
    assert cli.main(["screenshot-levels", str(path)]) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "right edge" in captured.err
