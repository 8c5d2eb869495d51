"""Read a Coinglass liquidation heatmap screenshot into price levels, with real image processing.

`read_screenshot(path)`:

1. Plot rectangle: the longest run of columns, then rows, in which most pixels are saturated colour (the heatmap's
   dark purple and its bands) rather than the page's grey background or grey text.
2. Price labels: text lines in the column right of the plot are found by a row projection of the non-background
   pixels, and each line is read by RapidOCR's recogniser (offline, models ship in the wheel). Each label's pixel
   row is the middle of its glyphs.
3. Pixel row -> price: RANSAC over pairs of labels (a label is an inlier within 2.5 px of the line), then least
   squares on the inliers. A misread such as "90000" -> "00006" is an outlier and is dropped.
4. Colour -> intensity: the colour bar left of the plot is sampled top to bottom; each pixel takes the position of
   its nearest bar colour (0 = the bar's dark end, 1 = its bright end).
5. Profile: at the newest (rightmost) time columns, the median intensity per pixel row over the pixels whose colour
   is on the bar's palette. Candles, tooltip, watermark and text are off the palette and do not count.
6. Levels: local maxima of the profile with enough prominence, merged when closer than a few pixels, located by the
   centroid of their upper half; USD = intensity x the colour bar's max label when that was read.

Anything that is not a heatmap screenshot raises `NotAHeatmapError` with a one-line reason.

Real captures are cropped, scaled and JPEG-compressed, and a crop through the price labels turns "113000" into
"11300": every label loses a digit, they still fit a perfect line, and every level comes out ten times too low.
So the reader refuses, with `UnreliableReadingError` (a NotAHeatmapError) naming the file, the reason and what to do,
whenever the evidence for its price axis is weak:

- a price label touches the image's right edge (`refuse_cut_labels`); labels touching the top or bottom edge are
  only left out of the fit;
- a label is a power of ten off the line through the others, or only a minority of the labels agree on the line, or
  the agreeing labels are bunched in a small part of the plot's height (`check_labels`);
- given klines, the prices traded over the chart's window lie outside the plot's price range by more than a few
  percent (`check_against_klines`, `cross_check`). `coinglass_levels` and the validation job apply it with the
  lake's klines; `liq screenshot-levels FILE --symbol S` applies it on request.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from liq_pipeline.symbols import Registry


RECAPTURE = "re-capture the page with the whole price axis visible (no crop at the right edge), as PNG"
RECAPTURE_SHARP = "re-capture the page at full size with the whole price axis visible, as PNG (not JPEG)"


class NotAHeatmapError(ValueError):
    """The image is not a readable Coinglass liquidation heatmap. The message is a one-line reason."""


class UnreliableReadingError(NotAHeatmapError):
    """The image is a heatmap, but the evidence says its price axis may be read wrong (labels cut at the edge,
    digits that disagree, too few labels that agree, or prices the klines never traded). The reading is refused
    rather than returned: its levels could all be off by a factor. The message is one line naming the file, the
    reason and what to do. A subclass of NotAHeatmapError, so every caller that skips unreadable screenshots skips
    these too."""

    def __init__(self, path: str | Path, reason: str, advice: str = RECAPTURE):
        self.path = Path(path)
        self.reason = reason
        self.advice = advice
        super().__init__(f"{self.path.name}: unreliable reading: {reason}; {advice}")


# ---------------------------------------------------------------------------------------------------------------------
# Screenshot file names


NAME_RE = re.compile(
    r"^coinglass_(?P<sym>[a-z0-9]+)_(?P<model>[a-z0-9]+)_(?P<timeframe>[a-z0-9]+)_(?P<date>\d{8})_(?P<time>\d{6})\.png$"
)


@dataclass(frozen=True)
class ScreenshotName:
    symbol: str  # BTCUSDT
    model: str  # m1
    timeframe: str  # 24hour
    captured_at: datetime  # UTC


def parse_screenshot_name(name: str | Path) -> ScreenshotName:
    """Parse an N8N screenshot name `coinglass_{sym}_{model}_{timeframe}_{YYYYMMDD}_{HHMMSS}.png` (UTC).

    `btc` maps to BTCUSDT. Raises ValueError saying what is wrong. Whether the symbol is in the registry is the
    caller's check (see `symbol_for`).
    """
    base = Path(name).name
    m = NAME_RE.match(base.lower())
    if not m:
        raise ValueError(
            f"{base!r}: not a Coinglass screenshot name; expected coinglass_{{sym}}_{{model}}_{{timeframe}}_"
            "{YYYYMMDD}_{HHMMSS}.png, e.g. coinglass_eth_m1_24hour_20241228_120000.png"
        )
    try:
        captured = datetime.strptime(m["date"] + m["time"], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{base!r}: bad capture time {m['date']}_{m['time']}: {exc}") from exc
    sym = m["sym"].upper()
    symbol = sym if sym.endswith("USDT") else sym + "USDT"
    return ScreenshotName(symbol=symbol, model=m["model"], timeframe=m["timeframe"], captured_at=captured)


def symbol_for(name: str | Path, registry: Registry | None = None) -> str:
    """The registry symbol a screenshot name is about; ValueError if the name is bad or the symbol unsupported."""
    from liq_pipeline.symbols import load_registry

    registry = registry or load_registry()
    parsed = parse_screenshot_name(name)
    try:
        registry.get(parsed.symbol)
    except ValueError as exc:
        raise ValueError(f"{Path(name).name!r}: {exc}") from exc
    return parsed.symbol


# ---------------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class PriceAxis:
    """price = slope * row + intercept, with row the image pixel row (centre-indexed, y down)."""

    slope: float
    intercept: float
    residual: float  # RMS distance of the inlier labels from the fitted line, in pixels
    n_labels: int
    n_inliers: int

    def price_at(self, row: float | np.ndarray) -> float | np.ndarray:
        return self.slope * row + self.intercept

    def row_of(self, price: float | np.ndarray) -> float | np.ndarray:
        return (price - self.intercept) / self.slope


@dataclass(frozen=True)
class PriceLabel:
    row: float  # pixel row of the glyphs' middle
    text: str  # as OCR read it
    value: float | None  # parsed number, None if not a number
    inlier: bool = False
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 (exclusive) of the glyphs in the image
    # "right", "top" or "bottom" when the glyphs (nearly) touch that side of the image
    edge: str | None = None


@dataclass(frozen=True)
class Profile:
    prices: np.ndarray  # ascending, one per plot pixel row
    intensity: np.ndarray  # 0..1, same length


@dataclass(frozen=True)
class Level:
    price: float
    intensity: float  # 0..1 of the colour bar
    usd: float | None  # intensity x colour-bar max, when the max label was read


@dataclass
class ScreenshotReading:
    path: Path
    size: tuple[int, int]  # (width, height)
    plot: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive)
    colorbar: tuple[int, int, int, int]
    price_axis: PriceAxis
    colorbar_max_usd: float | None
    colorbar_max_text: str | None
    profile: Profile
    levels: list[Level]
    labels: list[PriceLabel] = field(default_factory=list)
    profile_columns: tuple[int, int] = (0, 0)  # x range (exclusive end) the profile was taken over

    @property
    def price_range(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.plot
        return float(self.price_axis.price_at(y1 - 0.5)), float(self.price_axis.price_at(y0 - 0.5))

    def to_json(self) -> dict[str, Any]:
        low, high = self.price_range
        return {
            "path": str(self.path),
            "size": list(self.size),
            "plot": list(self.plot),
            "colorbar": list(self.colorbar),
            "price_axis": {
                "slope": self.price_axis.slope,
                "intercept": self.price_axis.intercept,
                "residual": self.price_axis.residual,
                "labels": self.price_axis.n_labels,
                "inliers": self.price_axis.n_inliers,
            },
            "price_range": [low, high],
            "colorbar_max": self.colorbar_max_usd,
            "colorbar_max_text": self.colorbar_max_text,
            "levels": [{"price": lv.price, "intensity": lv.intensity, "usd": lv.usd} for lv in self.levels],
            "labels": [
                {"row": lb.row, "text": lb.text, "value": lb.value, "inlier": lb.inlier} for lb in self.labels
            ],
        }


# ---------------------------------------------------------------------------------------------------------------------
# OCR engine: created once, lazily, shared by all reads in the process.

_ENGINE: Any = None
_ENGINE_LOCK = threading.Lock()


def ocr_engine() -> Any:
    """The process-wide RapidOCR engine (loaded on first use, ~0.5 s)."""
    global _ENGINE
    if _ENGINE is None:
        with _ENGINE_LOCK:
            if _ENGINE is None:
                from rapidocr_onnxruntime import RapidOCR

                _ENGINE = RapidOCR()
    return _ENGINE


def _recognise(crops: list[np.ndarray]) -> list[tuple[str, float]]:
    """Recognise single text lines (no detection step: we cut the lines ourselves)."""
    if not crops:
        return []
    engine = ocr_engine()
    rec = getattr(engine, "text_rec", None)
    if rec is not None:
        results, _ = rec(crops)
        return [(str(text).strip(), float(score)) for text, score, *_ in results]
    out = []
    for crop in crops:
        res, _ = engine(crop, use_det=False, use_cls=False, use_rec=True)
        out.append((str(res[0][0]).strip(), float(res[0][1])) if res else ("", 0.0))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Parsing numbers

_OCR_DIGIT_FIX = str.maketrans(
    {"O": "0", "o": "0", "D": "0", "l": "1", "I": "1", "|": "1", "S": "5", "B": "8"}
)
_USD_RE = re.compile(r"^\$?(\d+(?:\.\d+)?)([KMB]?)$")
_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9}


def parse_price_label(text: str) -> float | None:
    """'95000' -> 95000.0, '3,400.50' -> 3400.5, '0.2345' -> 0.2345; None if it is not a number."""
    t = text.strip().replace(" ", "").replace("$", "")
    if not t:
        return None
    t = t.translate(_OCR_DIGIT_FIX) if re.search(r"\d", t) else t
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", t):
        t = t.replace(",", "")
    elif re.fullmatch(r"\d+,\d+", t):  # a lone comma is a misread decimal point
        t = t.replace(",", ".")
    if not re.fullmatch(r"\d+(\.\d+)?", t):
        return None
    return float(t)


def parse_usd_label(text: str) -> float | None:
    """'88.28M' -> 88.28e6, '1.2B' -> 1.2e9, '950K' -> 950e3, '1234' -> 1234.0; None if unreadable."""
    t = text.strip().replace(" ", "").replace(",", ".").upper()
    m = _USD_RE.match(t)
    if not m:
        # OCR may turn the leading digits' O into letters; fix digits only before the suffix
        head, tail = (t[:-1], t[-1]) if t and t[-1] in "KMB" else (t, "")
        m = _USD_RE.match(head.translate(_OCR_DIGIT_FIX) + tail)
        if not m:
            return None
    return float(m[1]) * _SCALE[m[2]]


# ---------------------------------------------------------------------------------------------------------------------
# Image helpers


def _runs(mask: np.ndarray, max_gap: int = 0) -> list[tuple[int, int]]:
    """Runs of True as (start, end-exclusive), bridging gaps of up to `max_gap` False values."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > max_gap + 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    return list(zip(starts.tolist(), ends.tolist()))


def _longest_run(mask: np.ndarray, max_gap: int = 0) -> tuple[int, int] | None:
    runs = _runs(mask, max_gap)
    return max(runs, key=lambda r: r[1] - r[0]) if runs else None


def _load(path: Path) -> np.ndarray:
    if not path.exists():
        raise NotAHeatmapError(f"{path}: file not found")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise NotAHeatmapError(f"{path}: not a readable image file (PNG/JPEG expected)")
    h, w = img.shape[:2]
    if w < 200 or h < 150:
        raise NotAHeatmapError(f"{path}: image is {w}x{h} px, too small for a heatmap screenshot")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _find_plot(rgb: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The plot rectangle: the block of mostly saturated-colour pixels. Also returns the colour mask."""
    h, w = rgb.shape[:2]
    img = rgb.astype(np.int16)
    sat = img.max(axis=2) - img.min(axis=2)
    border = np.concatenate(
        [
            img[:2].reshape(-1, 3),
            img[-2:].reshape(-1, 3),
            img[:, :2].reshape(-1, 3),
            img[:, -2:].reshape(-1, 3),
        ]
    )
    bg = np.median(border, axis=0)
    colour = (sat >= 24) & (np.abs(img - bg).max(axis=2) > 20)

    xs: tuple[int, int] | None = (0, w)
    ys: tuple[int, int] | None = (0, h)
    for _ in range(3):
        frac = colour[ys[0] : ys[1]].mean(axis=0)
        xs = _longest_run(frac >= 0.5)
        if xs is None:
            break
        frac = colour[:, xs[0] : xs[1]].mean(axis=1)
        ys = _longest_run(frac >= 0.5)
        if ys is None:
            break
    if xs is None or ys is None:
        share = float(colour.mean())
        raise NotAHeatmapError(
            f"no plot rectangle: no block of heatmap colour (coloured pixels cover {share:.0%} of the image)"
        )
    x0, x1 = xs
    y0, y1 = ys
    if x1 - x0 < 0.25 * w or y1 - y0 < 0.25 * h:
        raise NotAHeatmapError(
            f"no plot rectangle: the largest coloured block is only {x1 - x0}x{y1 - y0} px"
        )
    if x0 < 0.02 * w or x1 > 0.98 * w or y1 > 0.98 * h:
        raise NotAHeatmapError(
            f"no plot rectangle: the coloured block {x0},{y0}-{x1},{y1} fills the image, leaving no room for axes"
        )
    return (x0, y0, x1, y1), colour


def _find_colorbar(rgb: np.ndarray, colour: np.ndarray, plot: tuple[int, int, int, int]):
    """The colour bar: a tall narrow block of colour left of the plot. Returns (box, palette dark->bright)."""
    x0, y0, x1, y1 = plot
    region = colour[:, : max(0, x0 - 2)].astype(np.uint8)
    if region.shape[1] < 3:
        raise NotAHeatmapError("no colour bar: nothing left of the plot")
    n, _, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    best = None
    for i in range(1, n):
        bx, by, bw, bh, _area = stats[i]
        if bh >= 0.2 * (y1 - y0) and 3 <= bw <= 80 and bh >= 4 * bw and (best is None or bh > best[3]):
            best = (int(bx), int(by), int(bw), int(bh))
    if best is None:
        raise NotAHeatmapError("no colour bar: no tall narrow colour gradient left of the plot")
    bx, by, bw, bh = best
    cx0, cx1 = bx + max(1, bw // 4), bx + bw - max(1, bw // 4)
    trim = max(1, bh // 100)
    palette = rgb[by + trim : by + bh - trim, cx0:cx1].astype(np.float32).mean(axis=1)
    lum = palette @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if lum[0] > lum[-1]:  # index 0 is the dark (zero) end
        palette = palette[::-1]
    if len(palette) > 256:  # a finer palette than 256 steps adds no information, only work
        at = np.linspace(0, len(palette) - 1, 256)
        palette = np.stack([np.interp(at, np.arange(len(palette)), palette[:, c]) for c in range(3)], axis=1)
    span = float(np.linalg.norm(palette[-1] - palette[0]))
    if span < 100:
        raise NotAHeatmapError(f"no colour bar: the candidate at x={bx} spans too few colours ({span:.0f})")
    steps = np.linalg.norm(np.diff(palette, axis=0), axis=1)
    if np.percentile(steps, 95) > 40:
        raise NotAHeatmapError(f"no colour bar: the candidate at x={bx} is not a smooth gradient")
    return (bx, by, bx + bw, by + bh), np.ascontiguousarray(palette, dtype=np.float32)


def _nearest_on_palette(pixels: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pixels [..., 3] (uint8 RGB): (position 0..1 along the palette, distance to it).

    Screenshots hold few distinct colours, so the nearest match is computed once per distinct colour.
    """
    px = pixels.reshape(-1, 3).astype(np.int32)
    packed = (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    flat = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1).astype(np.float32)
    pal_sq = (palette * palette).sum(1)[None, :]
    idx = np.empty(len(flat), dtype=np.int64)
    dist = np.empty(len(flat), dtype=np.float32)
    for a in range(0, len(flat), 8192):  # chunks keep the distance matrix small
        chunk = flat[a : a + 8192]
        d2 = (chunk * chunk).sum(1)[:, None] - 2 * chunk @ palette.T + pal_sq
        k = d2.argmin(axis=1)
        idx[a : a + 8192] = k
        dist[a : a + 8192] = np.sqrt(np.maximum(d2[np.arange(len(chunk)), k], 0))
    pos = idx / max(1, len(palette) - 1)
    shape = pixels.shape[:-1]
    return pos[inverse].reshape(shape), dist[inverse].reshape(shape)


@dataclass
class _TextLine:
    y0: int
    y1: int
    x0: int
    x1: int
    row: float  # middle of the glyph body


def _text_lines(gray: np.ndarray, min_h: int = 5, max_h: int = 60) -> list[_TextLine]:
    """Horizontal text lines in a crop of light text on a plain background (or dark on light)."""
    bg = float(np.median(gray))
    ink = np.abs(gray.astype(np.int16) - bg) > 45
    counts = ink.sum(axis=1)
    lines = []
    for ya, yb in _runs(counts > 0):
        if not (min_h <= yb - ya <= max_h):
            continue
        band = ink[ya:yb]
        col_runs = _runs(band.any(axis=0), max_gap=max(6, (yb - ya)))
        if not col_runs:
            continue
        xa, xb = col_runs[0]  # the text nearest the plot
        c = band[:, xa:xb].sum(axis=1)
        body = np.flatnonzero(c >= 0.3 * c.max())
        row = (body[0] + body[-1]) / 2 + ya
        lines.append(_TextLine(ya, yb, xa, xb, float(row)))
    return lines


# The recogniser scales every line to 48 px high with a plain bilinear resize; from small text that blurs
# neighbouring zeros together ("100000" read "10000" at 60 % scale). A cubic resize to this height first avoids it.
SMALL_TEXT_PX = 32


def _line_crops(rgb_crop: np.ndarray, lines: list[_TextLine]) -> list[np.ndarray]:
    gray = cv2.cvtColor(rgb_crop, cv2.COLOR_RGB2GRAY)
    if np.median(gray) < 128:  # the recogniser reads dark text on light paper best
        gray = 255 - gray
    crops = []
    for ln in lines:
        pad = max(3, (ln.y1 - ln.y0) // 2)
        ya, yb = max(0, ln.y0 - pad), min(gray.shape[0], ln.y1 + pad)
        xa, xb = max(0, ln.x0 - pad), min(gray.shape[1], ln.x1 + pad)
        crop = gray[ya:yb, xa:xb]
        if crop.shape[0] < SMALL_TEXT_PX:  # small text (a downscaled capture): enlarge it smoothly first
            f = SMALL_TEXT_PX / crop.shape[0]
            crop = cv2.resize(crop, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
        crop = cv2.copyMakeBorder(crop, 4, 4, 6, 6, cv2.BORDER_REPLICATE)
        crops.append(cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR))
    return crops


def _fit_axis(labels: list[PriceLabel], tol_px: float = 2.5) -> tuple[PriceAxis, list[PriceLabel]]:
    """The robust line through the labels that are numbers and do not touch the image's edge."""
    usable = [lb.value is not None and lb.edge is None for lb in labels]
    pts = [(lb.row, lb.value) for lb, ok in zip(labels, usable) if ok]
    if len(pts) < 3:
        raise NotAHeatmapError(f"only {len(pts)} price labels read right of the plot; need at least 3")
    rows = np.array([p[0] for p in pts])
    vals = np.array([p[1] for p in pts])
    best: tuple[int, float, np.ndarray] | None = None
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            if abs(rows[j] - rows[i]) < 8:
                continue
            slope = (vals[j] - vals[i]) / (rows[j] - rows[i])
            if slope >= 0:  # prices grow upwards, i.e. towards smaller rows
                continue
            res_px = np.abs(vals - (vals[i] + slope * (rows - rows[i]))) / abs(slope)
            inl = res_px <= tol_px
            score = (int(inl.sum()), -float(res_px[inl].sum()))
            if best is None or score > best[:2]:
                best = (score[0], score[1], inl)
    if best is None or best[0] < 3:
        got = 0 if best is None else best[0]
        raise NotAHeatmapError(
            f"price labels do not form a linear axis: at most {got} of {len(pts)} agree on a line; need 3"
        )
    inl = best[2]
    slope, intercept = np.polyfit(rows[inl], vals[inl], 1)
    res = (vals[inl] - (slope * rows[inl] + intercept)) / slope
    axis = PriceAxis(
        slope=float(slope),
        intercept=float(intercept),
        residual=float(np.sqrt(np.mean(res**2))),
        n_labels=len(pts),
        n_inliers=int(inl.sum()),
    )
    flags = iter(inl.tolist())
    marked = [replace(lb, inlier=bool(next(flags)) if ok else False) for lb, ok in zip(labels, usable)]
    return axis, marked


# Evidence thresholds. A refused reading costs one screenshot; a wrong one silently corrupts every score of the day,
# so each threshold leans towards refusing.
# A label cut in the gap between two digits ends a gap (1-2 px) before the edge; cut inside a digit it touches it.
# 0.6 x the glyphs' height (most of a digit's width) covers both, with room for JPEG ringing and blur.
EDGE_FRACTION = 0.6
# "113000" read as "11300" is exactly 10x off the line; dropping a non-zero last digit moves it < 1 %. A random
# misread lands within 4 % of a power of ten about 3 % of the time: rare, and then refused, never wrong.
POWER_OF_TEN_TOL = 0.04
# The axis is extrapolated from the labels to the plot's edges: labels bunched in a small part of the height
# (or a line that only a minority of the labels agree with) are no evidence of the axis's scale.
MIN_LABEL_SPAN = 0.4
MIN_INLIER_SHARE = 0.5


def _edge_of(box: tuple[int, int, int, int], right_end: int, height: int, margin: int) -> str | None:
    """Which side of the image (or of the label column, `right_end`) the glyph box (nearly) touches, if any."""
    x0, y0, x1, y1 = box
    if x1 >= right_end - margin:
        return "right"
    if y0 <= margin:
        return "top"
    if y1 >= height - margin:
        return "bottom"
    return None


def refuse_cut_labels(path: str | Path, labels: list[PriceLabel]) -> None:
    """Refuse (UnreliableReadingError) when a price label touches the right edge. Labels are left-aligned and about
    equally long, so the crop that cut one may have cut a digit off the others too, and "113000" -> "11300",
    "112000" -> "11200" ... fit a perfect line ten times too low."""
    cut = [lb for lb in labels if lb.edge == "right"]
    if cut:
        texts = ", ".join(repr(lb.text) for lb in cut[:3]) + (", ..." if len(cut) > 3 else "")
        raise UnreliableReadingError(
            path,
            f"{len(cut)} price label(s) touch the image's right edge ({texts}), so digits may be cut off",
        )


def check_labels(
    path: str | Path, labels: list[PriceLabel], axis: PriceAxis, plot: tuple[int, int, int, int]
) -> None:
    """Refuse (UnreliableReadingError) a price axis the labels do not support. Labels come marked by `_fit_axis`.

    - a label a power of ten off the line through the others: a digit was dropped or added somewhere, so the
      labels' digit counts disagree and the line may be the wrong one;
    - a line only a minority of the labels agree with, or labels bunched in a small part of the plot's height.
    """
    for lb in labels:
        if lb.inlier or lb.value is None or lb.value <= 0 or lb.edge is not None:
            continue
        on_line = float(axis.price_at(lb.row))
        if on_line <= 0:
            continue
        k = round(math.log10(lb.value / on_line))
        if k != 0 and abs(lb.value / on_line / 10.0**k - 1) <= POWER_OF_TEN_TOL:
            raise UnreliableReadingError(
                path,
                f"price label {lb.text!r} is {10.0 ** abs(k):g}x {'above' if k > 0 else 'below'} the line through "
                f"the other labels ({_fmt_price(on_line)} there): their digit counts disagree",
                RECAPTURE_SHARP,
            )
    inliers = [lb for lb in labels if lb.inlier]
    usable = [lb for lb in labels if lb.value is not None and lb.edge is None]
    if len(inliers) < MIN_INLIER_SHARE * len(usable):
        raise UnreliableReadingError(
            path,
            f"only {len(inliers)} of {len(usable)} price labels agree on one linear axis",
            RECAPTURE_SHARP,
        )
    rows = [lb.row for lb in inliers]
    span = (max(rows) - min(rows)) / max(1, plot[3] - plot[1])
    if span < MIN_LABEL_SPAN:
        raise UnreliableReadingError(
            path,
            f"the {len(inliers)} price labels that agree span only {span:.0%} of the plot's height "
            f"(need {MIN_LABEL_SPAN:.0%})",
            RECAPTURE_SHARP,
        )


def _find_peaks(
    profile: np.ndarray, min_prominence: float, min_height: float, merge_px: int
) -> list[tuple[int, float, float, int, int]]:
    """Peaks of a 1-D profile, strongest first, as (index, height, prominence, first, last index of the upper half).

    Prominence is the usual one: height above the higher of the two lowest points between the peak and the nearest
    higher point on each side. Maxima closer than `merge_px`, or sharing one upper half, are one peak.
    """
    n = len(profile)
    p = profile
    maxima = []
    i = 1
    while i < n - 1:  # local maxima, plateaus reduced to their middle
        if p[i] > p[i - 1]:
            j = i
            while j + 1 < n and p[j + 1] == p[i]:
                j += 1
            if j + 1 >= n or p[j + 1] < p[i]:
                maxima.append((i + j) // 2)
            i = j + 1
        else:
            i += 1
    if n >= 2 and p[0] > p[1]:
        maxima.insert(0, 0)
    if n >= 2 and p[-1] > p[-2]:
        maxima.append(n - 1)
    found = []
    for k in maxima:
        h = float(p[k])
        if h < min_height:
            continue
        left, right = k, k
        while left > 0 and p[left - 1] <= h:
            left -= 1
        while right < n - 1 and p[right + 1] <= h:
            right += 1
        left_min, right_min = float(p[left : k + 1].min()), float(p[k : right + 1].min())
        if k == 0:
            base = right_min
        elif k == n - 1:
            base = left_min
        else:
            base = max(left_min, right_min)
        prom = h - base
        if prom < min_prominence:
            continue
        cut = h - prom / 2
        a, b = k, k
        while a > 0 and p[a - 1] >= cut:
            a -= 1
        while b < n - 1 and p[b + 1] >= cut:
            b += 1
        found.append((k, h, prom, a, b))
    found.sort(key=lambda t: (-t[1], -t[2]))
    kept: list[tuple[int, float, float, int, int]] = []
    for pk in found:
        if all(abs(pk[0] - q[0]) > merge_px and not (pk[3] <= q[4] and q[3] <= pk[4]) for q in kept):
            kept.append(pk)
    return kept


# ---------------------------------------------------------------------------------------------------------------------
# The reader


def read_screenshot(
    path: str | Path,
    *,
    newest_columns: int | None = None,
    min_prominence: float = 0.08,
    min_intensity: float = 0.12,
    max_levels: int = 25,
) -> ScreenshotReading:
    """Read a Coinglass liquidation heatmap screenshot. Raises NotAHeatmapError with a one-line reason.

    newest_columns: how many of the plot's rightmost pixel columns make the profile (default 1.5 % of its width,
    at least 8). min_prominence / min_intensity: peak thresholds on the 0..1 colour scale.
    """
    path = Path(path)
    rgb = _load(path)
    h, w = rgb.shape[:2]

    # (1) plot rectangle
    plot, colour = _find_plot(rgb)
    x0, y0, x1, y1 = plot

    # (4a) the screenshot's own colour scale
    cbar, palette = _find_colorbar(rgb, colour, plot)
    tol = 24.0
    sample = rgb[y0:y1:5, x0:x1:5]
    _, dist = _nearest_on_palette(sample, palette)
    on_palette = float((dist <= tol).mean())
    if on_palette < 0.5:
        raise NotAHeatmapError(
            f"the plot's colours do not follow the colour bar (only {on_palette:.0%} of its pixels are on the scale)"
        )

    # (2) price labels right of the plot
    margin = max(12, round(0.04 * h))
    cx0, cx1 = min(w, x1 + 2), min(w, x1 + max(160, round(0.2 * w)))
    cy0, cy1 = max(0, y0 - margin), min(h, y1 + margin)
    if cx1 - cx0 < 10:
        raise NotAHeatmapError("no price labels: the plot reaches the right edge of the image")
    label_crop = rgb[cy0:cy1, cx0:cx1]
    gray = cv2.cvtColor(label_crop, cv2.COLOR_RGB2GRAY)
    lines = _text_lines(gray, min_h=max(5, round(0.006 * h)), max_h=max(30, round(0.06 * h)))

    # colour-bar max label: the text line just above the bar
    bx0, by0, bx1, by1 = cbar
    mx0, mx1 = max(0, bx0 - round(0.05 * w)), min(x0 - 1, bx1 + round(0.05 * w))
    my0, my1 = max(0, by0 - round(0.08 * h)), max(0, by0 - 1)
    max_lines: list[_TextLine] = []
    max_crop = rgb[my0:my1, mx0:mx1]
    if max_crop.size:
        found = _text_lines(
            cv2.cvtColor(max_crop, cv2.COLOR_RGB2GRAY), min_h=4, max_h=max(30, round(0.06 * h))
        )
        max_lines = found[-1:]  # the line nearest the bar

    # one recogniser batch for the price labels and the max label
    texts = _recognise(
        _line_crops(label_crop, lines) + (_line_crops(max_crop, max_lines) if max_lines else [])
    )
    labels = []
    for ln, (t, _s) in zip(lines, texts):
        box = (ln.x0 + cx0, ln.y0 + cy0, ln.x1 + cx0, ln.y1 + cy0)
        near = max(3, round(EDGE_FRACTION * (ln.y1 - ln.y0)))
        labels.append(
            PriceLabel(ln.row + cy0, t, parse_price_label(t), box=box, edge=_edge_of(box, cx1, h, near))
        )
    max_text = texts[len(lines)][0] if max_lines and len(texts) > len(lines) else None
    max_usd = parse_usd_label(max_text) if max_text else None

    # (3) pixel row -> price, and whether the labels are evidence enough for it
    refuse_cut_labels(path, labels)
    axis, labels = _fit_axis(labels)
    check_labels(path, labels, axis, plot)

    # (4b, 5) intensity profile at the newest columns
    # Per pixel row, the `n_cols` rightmost on-palette pixels; where a tooltip hides the newest columns of a row,
    # the scan goes further left (up to `scan` columns) to the newest visible ones.
    n_cols = newest_columns or max(8, round(0.015 * (x1 - x0)))
    px1 = x1 - 2
    scan = max(n_cols, round(0.3 * (x1 - x0)))
    sx0 = max(x0, px1 - scan)
    pos, dist = _nearest_on_palette(rgb[y0:y1, sx0:px1], palette)
    valid = dist <= tol
    newest_first = valid[:, ::-1].cumsum(axis=1)[:, ::-1]  # valid pixels at or right of each column
    take = valid & (newest_first <= n_cols)
    enough = take.sum(axis=1) >= max(2, 0.25 * n_cols)
    prof = np.full(y1 - y0, np.nan)
    if enough.any():
        prof[enough] = np.nanmedian(np.where(take[enough], pos[enough], np.nan), axis=1)
    if not enough.any() or enough.mean() < 0.3:
        raise NotAHeatmapError("the newest columns of the plot are hidden (no heatmap colours there)")
    used = np.flatnonzero(take.any(axis=0))
    px0 = sx0 + int(used[0]) if used.size else px1 - n_cols
    rows = np.arange(y0, y1, dtype=float)
    good = ~np.isnan(prof)
    prof = np.interp(rows, rows[good], prof[good])

    # (6) peaks -> levels
    smooth = np.convolve(np.pad(prof, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    merge_px = max(3, round(0.006 * (y1 - y0)))
    peaks = _find_peaks(smooth, min_prominence, min_intensity, merge_px)[:max_levels]
    levels = []
    for k, height, prom, a, b in peaks:
        # the level's row: centroid of the peak's upper half
        wts = smooth[a : b + 1] - (height - prom / 2) + 1e-6
        row = float((rows[a : b + 1] * wts).sum() / wts.sum())
        inten = float(np.clip(prof[max(0, k - 1) : k + 2].max(), 0, 1))
        levels.append(
            Level(
                price=float(axis.price_at(row)),
                intensity=round(inten, 4),
                usd=round(inten * max_usd, 2) if max_usd is not None else None,
            )
        )
    levels.sort(key=lambda lv: -lv.intensity)

    order = np.argsort(axis.price_at(rows))
    return ScreenshotReading(
        path=path,
        size=(w, h),
        plot=plot,
        colorbar=cbar,
        price_axis=axis,
        colorbar_max_usd=max_usd,
        colorbar_max_text=max_text,
        profile=Profile(prices=np.asarray(axis.price_at(rows))[order], intensity=prof[order]),
        levels=levels,
        labels=labels,
        profile_columns=(px0, px1),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Cross-check against the klines

# How far (a share of the price) the klines may trade outside the plot's price range. Coinglass scales the plot to
# hold the window's candles, so an axis read right contains them; a few percent absorbs a window that is not
# exactly ours (hourly candles, capture a few minutes late). An axis off by a digit is off by 90 % or 900 %.
KLINES_TOLERANCE = 0.03
_WINDOW_RE = re.compile(r"^(\d+)(hour|h|day|d)$")


def window_hours(timeframe: str, cap: float = 24.0) -> float:
    """The hours a screenshot's chart covers, from its name's timeframe ("24hour" -> 24, "12hour" -> 12), at
    most `cap`. Unknown timeframes give `cap`: a window shorter than the chart's only makes the check weaker,
    never wrong, since the candles of part of the chart lie inside the plot too."""
    m = _WINDOW_RE.match(timeframe.lower())
    if not m:
        return cap
    hours = float(m[1]) * (24 if m[2] in ("day", "d") else 1)
    return min(hours, cap) if hours > 0 else cap


def klines_range(
    klines: pd.DataFrame, captured_at: datetime, hours: float = 24.0
) -> tuple[float, float] | None:
    """(lowest low, highest high) of the klines that opened in the `hours` before `captured_at`; None if none.

    `klines` has the lake's columns `open_time` (UTC, naive), `low`, `high`."""
    import pandas as pd

    if klines is None or len(klines) == 0:
        return None
    end = pd.Timestamp(captured_at.astimezone(UTC).replace(tzinfo=None))
    times = pd.to_datetime(klines["open_time"])
    ok = (klines["low"] > 0) & (klines["high"] >= klines["low"])  # a bad row is no evidence either way
    inside = klines[(times >= end - pd.Timedelta(hours=hours)) & (times < end) & ok]
    if inside.empty:
        return None
    return float(inside["low"].min()), float(inside["high"].max())


def check_against_klines(
    reading: ScreenshotReading,
    low: float,
    high: float,
    *,
    what: str = "the klines",
    tolerance: float = KLINES_TOLERANCE,
) -> None:
    """Refuse (UnreliableReadingError) a reading whose price axis disagrees with what the market traded.

    `low`, `high`: the klines' range over the chart's window before the capture. It must lie inside the plot's
    price range widened by `tolerance` x the klines' mid price. A pure function: no I/O."""
    if not (0 < low <= high):
        raise ValueError(f"klines range must satisfy 0 < low <= high, got {low}, {high}")
    plot_low, plot_high = reading.price_range
    mid = (low + high) / 2
    pad = tolerance * mid
    if low >= plot_low - pad and high <= plot_high + pad:
        return
    outside = max(plot_low - low, high - plot_high) / mid
    raise UnreliableReadingError(
        reading.path,
        f"its price axis reads {_fmt_price(plot_low)} - {_fmt_price(plot_high)} but {what} traded "
        f"{_fmt_price(low)} - {_fmt_price(high)}, {outside:.0%} of the price outside it (tolerance {tolerance:.0%})",
        "check the symbol and capture time in the file name, or " + RECAPTURE,
    )


def cross_check(reading: ScreenshotReading, name: ScreenshotName, klines: pd.DataFrame | None) -> str | None:
    """Check `reading` against `klines` (the lake's 1m klines of `name.symbol` around the capture) when they cover
    the chart's window; raises UnreliableReadingError if they disagree. Returns None when checked, else a one-line
    note saying why not (no klines there), so a caller can say that the axis was not cross-checked."""
    hours = window_hours(name.timeframe)
    span = klines_range(klines, name.captured_at, hours) if klines is not None else None
    when = f"{name.captured_at:%Y-%m-%d %H:%M} UTC"
    if span is None:
        return (
            f"{reading.path.name}: no {name.symbol} klines in the {hours:g} h before {when}: "
            "price axis not cross-checked"
        )
    check_against_klines(reading, *span, what=f"{name.symbol} in the {hours:g} h before {when}")
    return None


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def _fmt_price(p: float) -> str:
    decimals = max(0, 2 - int(math.floor(math.log10(abs(p))))) if p else 2
    return f"{p:,.{min(decimals, 6)}f}"


def lake_klines(data_dir: str | Path | None, symbol: str, captured_at: datetime) -> pd.DataFrame | None:
    """The lake's 1m klines of `symbol` on the capture day and the day before (what a 24 h window needs), or None
    when the lake under `data_dir` (default: LIQ_DATA_DIR, else ./data) has neither day."""
    from datetime import timedelta

    from liq_pipeline.lake import Lake

    day = captured_at.astimezone(UTC).date()
    part = Lake.at(data_dir).slice("klines", symbol, [day - timedelta(days=1), day])
    return part.read(["open_time", "low", "high"]).to_pandas() if part.present else None


def _cli_symbol(symbol: str, path: Path) -> tuple[str, ScreenshotName]:
    """The registry symbol of `--symbol` ("btc" and "BTCUSDT" both work) and the file's name with that symbol."""
    from liq_pipeline.symbols import validate_symbol

    sym = symbol.strip().upper()
    sym = validate_symbol(sym if sym.endswith("USDT") else sym + "USDT").symbol
    try:
        name = parse_screenshot_name(path)
    except ValueError as exc:
        raise ValueError(f"--symbol needs the capture time from the file name: {exc}") from exc
    return sym, ScreenshotName(sym, name.model, name.timeframe, name.captured_at)


def screenshot_levels_cli(
    path: str | Path,
    as_json: bool = False,
    symbol: str | None = None,
    data_dir: str | Path | None = None,
) -> int:
    """`liq screenshot-levels FILE [--json] [--symbol S [--data-dir D]]`: print the levels read from a screenshot.

    With `symbol`, the price axis is cross-checked against the lake's klines of that symbol (lake under `data_dir`,
    default LIQ_DATA_DIR, else ./data) over the chart's window before the capture time in the file name. Exit 0 =
    ok, 1 = bad arguments, 2 = not a heatmap, 3 = refused (unreliable reading: the reason says what to do)."""
    path = Path(path)
    note = None
    try:
        checking = _cli_symbol(symbol, path) if symbol else None
        reading = read_screenshot(path)
        if checking:
            note = cross_check(
                reading, checking[1], lake_klines(data_dir, checking[0], checking[1].captured_at)
            )
    except UnreliableReadingError as exc:
        print(f"{path}: refused, unreliable reading: {exc.reason}; {exc.advice}", file=sys.stderr)
        return 3
    except NotAHeatmapError as exc:
        print(f"{path}: not a Coinglass heatmap: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a bad --symbol or a file name without the capture time
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    if note:
        print(f"warning: {note}", file=sys.stderr)
    checked = "off" if not symbol else "no klines" if note else "klines agree"
    try:
        name: ScreenshotName | None = parse_screenshot_name(path)
    except ValueError:
        name = None
    if as_json:
        out = reading.to_json()
        if name:
            out["name"] = {
                "symbol": name.symbol,
                "model": name.model,
                "timeframe": name.timeframe,
                "captured_at": name.captured_at.isoformat(),
            }
        out["cross_check"] = checked
        print(json.dumps(out))
        return 0
    low, high = reading.price_range
    ax = reading.price_axis
    head = f"{path.name}"
    if name:
        head += f"  ({name.symbol}, {name.model}, {name.timeframe}, captured {name.captured_at:%Y-%m-%d %H:%M} UTC)"
    print(head)
    print(f"  plot        x {reading.plot[0]}-{reading.plot[2]}, y {reading.plot[1]}-{reading.plot[3]} px")
    print(
        f"  price axis  {_fmt_price(low)} - {_fmt_price(high)}  ({ax.n_inliers}/{ax.n_labels} labels fit, "
        f"residual {ax.residual:.2f} px)"
    )
    print(
        f"  cross-check {checked}"
        + (" (give --symbol to check the price axis against the lake's klines)" if checked == "off" else "")
    )
    print(f"  colour max  {reading.colorbar_max_text or 'unread'}")
    print(f"  levels      {len(reading.levels)} (strongest first)")
    for i, lv in enumerate(reading.levels, 1):
        usd = f"  ~{lv.usd / 1e6:,.2f}M USD" if lv.usd is not None else ""
        print(f"  {i:>3}. {_fmt_price(lv.price):>14}  intensity {lv.intensity:.2f}{usd}")
    return 0
