"""A small Coinglass-style heatmap PNG (dark purple -> teal -> yellow, price line on top) for asset previews.

matplotlib is imported lazily and driven through ``Figure`` + the Agg canvas directly (no pyplot, no global backend
state), so this is safe in threads and costs nothing for callers that never draw.
"""

from __future__ import annotations

import io

import numpy as np

HEAT_COLORS = ("#12041f", "#2d0b4e", "#3b2a7a", "#25608d", "#1f9a8a", "#4fc16b", "#c7e03a", "#fde725")
BACKGROUND = "#0b0614"


def heatmap_png(
    ts,
    prices,
    intensity_matrix,
    close_line,
    *,
    title: str | None = None,
    price_range: tuple[float, float] | None = None,
    width_px: int = 800,
    height_px: int = 400,
    clip_quantile: float = 0.99,
) -> bytes:
    """PNG bytes of a heatmap: ``intensity_matrix[i, k]`` is the value at time ``ts[i]`` and price ``prices[k]``
    (bin centres, increasing, evenly spaced); ``close_line[i]`` is drawn over it.

    Colours saturate at the ``clip_quantile`` of the non-zero cells so one huge bin does not wash out the rest.
    ``price_range`` defaults to the close line's range widened by 6 % each way, clipped to the grid.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure

    t = np.asarray(ts).astype("datetime64[ns]")
    p = np.asarray(prices, dtype=np.float64)
    z = np.asarray(intensity_matrix, dtype=np.float64)
    line = np.asarray(close_line, dtype=np.float64)
    if z.shape != (t.size, p.size) or line.shape != t.shape:
        raise ValueError(
            f"shapes do not match: ts {t.shape}, prices {p.shape}, intensity {z.shape} (want [ts, prices]), "
            f"close_line {line.shape}"
        )
    if t.size == 0 or p.size == 0:
        raise ValueError("nothing to draw: ts and prices must be non-empty")
    step = float(p[1] - p[0]) if p.size > 1 else 1.0
    x = date2num(t)
    dx = float(np.median(np.diff(x))) if x.size > 1 else 5 / 1440

    if price_range is None:
        lo, hi = float(np.nanmin(line)), float(np.nanmax(line))
        price_range = (lo * 0.94, hi * 1.06)
    y0 = max(price_range[0], p[0] - step / 2)
    y1 = min(price_range[1], p[-1] + step / 2)
    keep = (p >= y0 - step) & (p <= y1 + step)
    if not np.any(keep):
        keep[:] = True
    pk, zk = p[keep], z[:, keep]

    positive = zk[zk > 0]
    vmax = float(np.quantile(positive, clip_quantile)) if positive.size else 1.0
    cmap = LinearSegmentedColormap.from_list("liq", HEAT_COLORS)

    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor=BACKGROUND)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.035, 0.11, 0.865, 0.8 if title else 0.86))
    ax.set_facecolor(cmap(0.0))
    ax.imshow(
        zk.T,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        norm=Normalize(vmin=0.0, vmax=vmax if vmax > 0 else 1.0, clip=True),
        extent=(x[0], x[-1] + dx, pk[0] - step / 2, pk[-1] + step / 2),
    )
    ax.plot(x + dx / 2, line, color="#ff4d6d", linewidth=1.1)
    ax.set_xlim(x[0], x[-1] + dx)
    ax.set_ylim(y0, y1)
    ax.yaxis.tick_right()
    locator = AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    for spine in ax.spines.values():
        spine.set_color("#3a2d52")
    ax.tick_params(colors="#c9c2d8", labelsize=7)
    if title:
        fig.text(0.01, 0.95, title, color="#e8e2f4", fontsize=9, va="center")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=BACKGROUND)
    return buf.getvalue()
