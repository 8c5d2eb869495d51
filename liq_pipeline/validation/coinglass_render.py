"""Draw Coinglass-style liquidation heatmap screenshots with matplotlib (Agg), for tests and the demo.

The layout follows what N8N captures from coinglass.com: a dark page, a dark-purple plot rectangle with the heatmap,
price labels in a column right of the plot (the plot's top and bottom prices at its corners), time labels under it,
a vertical colour bar on the left running dark purple (0) -> teal -> green -> yellow (max) with the max printed above
it, red/green candlesticks over the heatmap, and optionally a tooltip box and a watermark.

`render_screenshot` draws a given intensity matrix; `synthetic_levels_image` builds one with known bright horizontal
bands (liquidation levels) and draws it. Both return a `RenderInfo` with the ground truth (plot rectangle in pixels,
price range, levels), so tests can check what a reader recovers.

The colour scale lives in `COINGLASS_COLORS` / `COINGLASS_CMAP` only. The screenshot reader must not use it: it
takes its colours from the screenshot's own colour bar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

# The one place the Coinglass colour scale is defined: dark purple (0) -> blue -> teal -> green -> yellow (max).
COINGLASS_COLORS: tuple[tuple[float, str], ...] = (
    (0.00, "#3b0a4f"),
    (0.25, "#3b528b"),
    (0.50, "#21918c"),
    (0.75, "#5ec962"),
    (1.00, "#fde725"),
)
COINGLASS_CMAP = LinearSegmentedColormap.from_list("coinglass", list(COINGLASS_COLORS), N=256)

PAGE_BG = "#101017"
TEXT_COLOR = "#b9bac6"
CANDLE_UP = "#0ecb81"
CANDLE_DOWN = "#f6465d"
DPI = 100

Candle = tuple[float | datetime, float, float, float, float]


@dataclass(frozen=True)
class RenderInfo:
    """What was drawn, in image pixels (x right, y down; x1/y1 exclusive) and prices."""

    path: Path
    size: tuple[int, int]
    plot: tuple[int, int, int, int]
    colorbar: tuple[int, int, int, int]
    price_top: float
    price_bottom: float
    max_usd: float | None
    max_label: str | None
    price_labels: list[tuple[float, str]] = field(
        default_factory=list
    )  # (pixel row of the label centre, text)
    levels: list[tuple[float, float]] = field(
        default_factory=list
    )  # synthetic only: (price, relative intensity)
    last_close: float | None = None

    def row_of(self, price: float) -> float:
        """The pixel row (centre-indexed: row r spans r-0.5..r+0.5) at which `price` sits."""
        x0, y0, x1, y1 = self.plot
        frac = (self.price_top - price) / (self.price_top - self.price_bottom)
        return y0 - 0.5 + frac * (y1 - y0)


def format_usd(value: float) -> str:
    """88.28e6 -> '88.28M', 1.2e9 -> '1.20B', 950e3 -> '950.00K' (Coinglass's colour-bar style)."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.2f}"


def _nice_step(span: float, target: int = 8) -> float:
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * mag:
            return mult * mag
    return 10 * mag


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0


def _to_seconds(values: Sequence) -> np.ndarray:
    out = []
    for v in values:
        if isinstance(v, datetime):
            out.append((v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp())
        elif isinstance(v, np.datetime64):
            out.append(v.astype("datetime64[ms]").astype(np.int64) / 1000.0)
        else:
            out.append(float(v))
    return np.asarray(out, dtype=float)


def render_screenshot(
    path: str | Path,
    *,
    prices: Sequence[float] | np.ndarray,
    times: Sequence | np.ndarray,
    intensity: np.ndarray,
    candles: Sequence[Candle] | None = None,
    max_usd: float | None = 88.28e6,
    tooltip: bool | tuple[float, float] = False,
    watermark: bool = True,
    size: tuple[int, int] = (1280, 720),
    misread_label: tuple[int, str] | None = None,
    vmax: float | None = None,
) -> RenderInfo:
    """Draw a Coinglass-style heatmap screenshot to `path` (PNG).

    prices: ascending price-bin centres (equally spaced). times: time-column centres (datetimes or epoch seconds).
    intensity: matrix [time, price]; drawn with 0 as dark purple and `vmax` (default: its max) as yellow.
    candles: (ts, open, high, low, close) drawn over the heatmap, or None.
    max_usd: the value printed above the colour bar ("88.28M"), or None for no label.
    tooltip: False, True (default spot, over the right part of the plot) or (x, y) fractions of the plot for the
    tooltip's right edge and vertical centre. watermark: a faint "CoinGlass" over the middle of the plot.
    misread_label: (i, text) prints `text` instead of the i-th interior price label (top first), to mimic OCR traps.
    """
    path = Path(path)
    prices = np.asarray(prices, dtype=float)
    tsec = _to_seconds(times)
    intensity = np.asarray(intensity, dtype=float)
    if intensity.shape != (len(tsec), len(prices)):
        raise ValueError(
            f"intensity must be [time, price] = ({len(tsec)}, {len(prices)}), got {intensity.shape}"
        )
    if len(prices) < 2 or len(tsec) < 2:
        raise ValueError("need at least two price bins and two time columns")
    width, height = size
    bin_size = float(prices[1] - prices[0])
    dt = float(tsec[1] - tsec[0])
    price_bottom, price_top = float(prices[0] - bin_size / 2), float(prices[-1] + bin_size / 2)
    t_left, t_right = float(tsec[0] - dt / 2), float(tsec[-1] + dt / 2)
    vmax = float(vmax if vmax is not None else max(float(np.nanmax(intensity)), 1e-12))

    # Layout in whole pixels, scaled with the image size.
    x0, x1 = round(0.085 * width), round(0.915 * width)
    y0, y1 = round(0.06 * height), round(0.90 * height)
    plot_h = y1 - y0
    bw = max(8, round(0.0125 * width))
    bx0 = round(0.03 * width)
    by0, by1 = y0 + round(0.10 * plot_h), y0 + round(0.80 * plot_h)
    font = max(7.0, 10.0 * height / 720)

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor=PAGE_BG)
    FigureCanvasAgg(fig)

    def axes_at(px0: int, py0: int, px1: int, py1: int):
        ax = fig.add_axes((px0 / width, 1 - py1 / height, (px1 - px0) / width, (py1 - py0) / height))
        ax.set_axis_off()
        return ax

    ax = axes_at(x0, y0, x1, y1)
    ax.imshow(
        intensity.T,
        origin="lower",
        aspect="auto",
        cmap=COINGLASS_CMAP,
        vmin=0.0,
        vmax=vmax,
        extent=(t_left, t_right, price_bottom, price_top),
        interpolation="nearest",
        resample=False,
    )
    ax.set_xlim(t_left, t_right)
    ax.set_ylim(price_bottom, price_top)

    last_close = None
    if candles:
        cs = list(candles)
        cts = _to_seconds([c[0] for c in cs])
        body_w = 0.6 * (float(np.median(np.diff(cts))) if len(cts) > 1 else dt)
        for t, (_, o, h, low, c) in zip(cts, cs):
            color = CANDLE_UP if c >= o else CANDLE_DOWN
            ax.vlines(t, low, h, colors=color, linewidth=0.8)
            ax.add_patch(
                Rectangle((t - body_w / 2, min(o, c)), body_w, max(abs(c - o), 1e-9), color=color, lw=0)
            )
        last_close = float(cs[-1][4])

    def fig_text(px: float, py: float, text: str, **kw):
        fig.text(
            px / width,
            1 - py / height,
            text,
            color=kw.pop("color", TEXT_COLOR),
            fontsize=kw.pop("fontsize", font),
            **kw,
        )

    # Price labels: interior ticks at round numbers, plus the exact top and bottom prices at the plot's corners.
    def row_of(p: float) -> float:
        return y0 + (price_top - p) / (price_top - price_bottom) * plot_h

    step = _nice_step(price_top - price_bottom)
    dec = _decimals(step)
    labels: list[tuple[float, str]] = []
    corner_gap = 2.2 * font
    first = math.ceil(price_bottom / step) * step
    ticks = [first + i * step for i in range(int((price_top - first) / step) + 1)]
    interior = [p for p in reversed(ticks) if corner_gap < row_of(p) - y0 and corner_gap < y1 - row_of(p)]
    for i, p in enumerate(interior):
        text = f"{p:.{dec}f}"
        if misread_label is not None and misread_label[0] == i:
            text = misread_label[1]
        labels.append((row_of(p), text))
    labels.append((float(y0), f"{price_top:.{dec + 1}f}"))
    labels.append((float(y1), f"{price_bottom:.{dec + 1}f}"))
    for row, text in labels:
        fig_text(x1 + 0.008 * width, row, text, ha="left", va="center_baseline")
        fig.add_artist(_hline(fig, width, height, x1, x1 + 4, row))

    # Time labels under the plot.
    fmt = "%m-%d %H:%M"
    for frac in (0.05, 0.25, 0.45, 0.65, 0.85):
        t = t_left + frac * (t_right - t_left)
        label = datetime.fromtimestamp(t, tz=UTC).strftime(fmt)
        fig_text(x0 + frac * (x1 - x0), y1 + 0.03 * height, label, ha="center", va="center")

    # Colour bar on the left: max (yellow) at the top, 0 (dark purple) at the bottom.
    cax = axes_at(bx0, by0, bx0 + bw, by1)
    cax.imshow(
        np.linspace(1, 0, 256)[:, None],
        aspect="auto",
        cmap=COINGLASS_CMAP,
        vmin=0,
        vmax=1,
        interpolation="nearest",
        resample=False,
        extent=(0, 1, 0, 1),
    )
    max_label = format_usd(max_usd) if max_usd is not None else None
    if max_label:
        fig_text(bx0 + bw / 2, by0 - 0.025 * height, max_label, ha="center", va="center_baseline")
    fig_text(bx0 + bw / 2, by1 + 0.025 * height, "0", ha="center", va="center_baseline")

    if watermark:
        fig_text(
            (x0 + x1) / 2,
            (y0 + y1) / 2,
            "CoinGlass",
            ha="center",
            va="center",
            fontsize=4.5 * font,
            color="white",
            alpha=0.13,
            fontweight="bold",
        )

    if tooltip:
        fx, fy = (0.99, 0.3) if tooltip is True else tooltip
        tw, th = 0.15 * width, 0.12 * height
        right, cy = x0 + fx * (x1 - x0), y0 + fy * plot_h
        box = FancyBboxPatch(
            ((right - tw) / width, 1 - (cy + th / 2) / height),
            tw / width,
            th / height,
            boxstyle="round,pad=0.002",
            transform=fig.transFigure,
            facecolor="#23232e",
            edgecolor="#4a4a5a",
            alpha=0.94,
            zorder=10,
        )
        fig.add_artist(box)
        tip_price = price_bottom + (1 - fy) * (price_top - price_bottom)
        lines = [
            datetime.fromtimestamp(t_right - dt, tz=UTC).strftime("%Y-%m-%d %H:%M"),
            f"Price: {tip_price:,.{dec}f}",
            f"Liq. Leverage: {format_usd(0.42 * (max_usd or 1e6))}",
        ]
        for k, line in enumerate(lines):
            fig_text(
                right - tw + 10,
                cy - th / 2 + (k + 0.8) * th / 3.4,
                line,
                ha="left",
                va="center",
                color="#e8e8f0",
                zorder=11,
            )

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor=PAGE_BG)
    return RenderInfo(
        path=path,
        size=(width, height),
        plot=(x0, y0, x1, y1),
        colorbar=(bx0, by0, bx0 + bw, by1),
        price_top=price_top,
        price_bottom=price_bottom,
        max_usd=max_usd,
        max_label=max_label,
        price_labels=labels,
        last_close=last_close,
    )


def _hline(fig: Figure, width: int, height: int, xa: float, xb: float, row: float):
    from matplotlib.lines import Line2D

    y = 1 - row / height
    return Line2D([xa / width, xb / width], [y, y], transform=fig.transFigure, color="#55566a", linewidth=1)


def synthetic_levels_image(
    path: str | Path,
    center_price: float,
    levels: Sequence[tuple[float, float]],
    *,
    stale_levels: Sequence[tuple[float, float]] = (),
    n_times: int = 288,
    n_prices: int = 240,
    span: float = 0.10,
    noise: float = 0.10,
    seed: int = 0,
    end: datetime = datetime(2024, 12, 28, 12, 0, tzinfo=UTC),
    step: timedelta = timedelta(minutes=5),
    candles: bool = True,
    max_usd: float | None = 88.28e6,
    tooltip: bool | tuple[float, float] = False,
    watermark: bool = True,
    size: tuple[int, int] = (1280, 720),
    misread_label: tuple[int, str] | None = None,
) -> RenderInfo:
    """Draw a screenshot whose heatmap has known liquidation levels.

    levels: (price, relative intensity 0..1) bands that start somewhere in the first half of the window and extend
    to the newest time columns, where their intensity is exactly `relative intensity` (the colour bar's max is 1).
    stale_levels: bands that end halfway through the window (price ran through them); a reader must not report them.
    The background is low noise (up to `noise`) with a few faint blobs. Candles random-walk to `center_price` within
    about +-1.5 %. Returns the `RenderInfo` with `levels` set to the given ones.
    """
    rng = np.random.default_rng(seed)
    bin_size = 2 * span * center_price / n_prices
    prices = center_price + (np.arange(n_prices) - (n_prices - 1) / 2) * bin_size
    times = [end - (n_times - 1 - i) * step for i in range(n_times)]

    mat = rng.uniform(0, noise, size=(n_times, n_prices))
    for _ in range(6):  # faint blobs
        tc, pc = rng.uniform(0, n_times), rng.uniform(0, n_prices)
        st, sp = rng.uniform(10, 50), rng.uniform(3, 12)
        tt, pp = np.meshgrid(np.arange(n_times), np.arange(n_prices), indexing="ij")
        mat += 0.12 * np.exp(-0.5 * (((tt - tc) / st) ** 2 + ((pp - pc) / sp) ** 2))

    def band(price: float) -> np.ndarray:
        prof = np.exp(-0.5 * ((prices - price) / bin_size) ** 2)
        return prof / prof.max()

    for price, rel in levels:
        start = int(rng.integers(0, n_times // 2))
        ramp = np.clip((np.arange(n_times) - start) / max(1, (n_times - start) * 0.4), 0, 1)
        mat = np.maximum(mat, rel * ramp[:, None] * band(price)[None, :])
    for price, rel in stale_levels:
        alive = np.zeros(n_times)
        alive[n_times // 8 : n_times // 2] = 1
        mat = np.maximum(mat, rel * alive[:, None] * band(price)[None, :])
    mat = np.clip(mat, 0, 1)
    # Make each level exactly its relative intensity at the newest columns.
    for price, rel in levels:
        j = int(np.argmin(np.abs(prices - price)))
        mat[-max(8, n_times // 20) :, j] = rel

    candle_rows = None
    if candles:
        steps = rng.normal(0, 0.0009, n_times)
        walk = np.cumsum(steps)
        walk -= np.linspace(0, 1, n_times) * walk[-1]  # a random walk pinned to end at the centre price
        closes = center_price * np.exp(np.clip(walk, -0.015, 0.015))
        opens = np.concatenate([[closes[0] * (1 - steps[0])], closes[:-1]])
        wick = center_price * np.abs(rng.normal(0, 0.0008, (n_times, 2)))
        highs = np.maximum(opens, closes) + wick[:, 0]
        lows = np.minimum(opens, closes) - wick[:, 1]
        candle_rows = [(t, o, h, lo, c) for t, o, h, lo, c in zip(times, opens, highs, lows, closes)]

    info = render_screenshot(
        path,
        prices=prices,
        times=times,
        intensity=mat,
        candles=candle_rows,
        max_usd=max_usd,
        tooltip=tooltip,
        watermark=watermark,
        size=size,
        misread_label=misread_label,
        vmax=1.0,
    )
    return RenderInfo(**{**info.__dict__, "levels": [(float(p), float(r)) for p, r in levels]})
