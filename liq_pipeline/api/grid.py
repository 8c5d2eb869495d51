"""The heatmap answer's price x time matrices, from pieces of cells.

A heatmap answer sums the model's cells into [column, price bucket]: each cell's registry bin (`fine_bins`, at the
grid offset of the answer's first cell), grouped k bins per bucket (`auto_multiple` when the caller gave none),
summed per (column, bucket) in cell order and rounded to whole USD.

The cells come in pieces: a day's tile states (`Piece.key` set), the 5-minute states off the tile's grid, or the
whole 5-minute read. A bucket's cells all belong to one state, so one piece: the piece's own [state, bucket] sums,
placed at its columns and buckets, are the same numbers as sums over all cells at once. That lets a day's block be
kept (`Grids`, in a byte-bounded LRU, under the tile's version, the states and k) and reused by every answer that
shows those states: answers ending at different times share all their days but the first and the last.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from liq_pipeline.api.cache import ByteLRU
from liq_pipeline.api.queries import ApiError

TARGET_PRICE_BUCKETS = 400  # default re-binning aims at no more than this many price rows
MAX_BUCKETS = 5000  # hard limit on price buckets in one answer
_NICE_MULTIPLES = (1, 2, 4, 5)  # automatic re-binning uses k * 10^n of the registry bin, k in these


@dataclass(frozen=True)
class Piece:
    """Some of an answer's columns and their cells. Without a key, `cells()` gives exactly the cells of the states
    `as_of_us`; with one, it gives every cell of its source (a day's tile), of which the piece shows these states,
    and what is worked out from the source is kept under the key for the next answer."""

    as_of_us: np.ndarray  # the states (columns) it answers for, increasing; a state without cells is zeros
    cells: Callable[[], dict[str, np.ndarray]]  # t (as_of µs), price, long_usd, short_usd, by state
    key: tuple | None = None  # the source's version, None: nothing is kept


@dataclass(frozen=True)
class Summary:
    """A source's states, the grid offset of its cells (`uniform`: all at that offset) and each state's bin range."""

    states: np.ndarray
    frac: float
    uniform: bool
    g_min: np.ndarray
    g_max: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.states.nbytes + self.g_min.nbytes + self.g_max.nbytes + 100


@dataclass(frozen=True)
class Block:
    """[state, bucket] sums in whole USD of `states`, for buckets lo .. lo + width - 1 (absolute bucket numbers)."""

    states: np.ndarray
    lo: int
    long: np.ndarray
    short: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.states.nbytes + self.long.nbytes + self.short.nbytes + 100


@dataclass(frozen=True)
class Matrices:
    prices: np.ndarray  # bucket centres, increasing
    size: float  # bucket width = k registry bins
    long: np.ndarray  # [column, bucket], int64 whole USD
    short: np.ndarray


def grid_offset(price: np.ndarray | float, price_bin: float) -> np.ndarray | float:
    """Where the registry grid sits: the fraction of a bin by which a price is off a multiple of it (0 when the
    model writes bin edges, 0.5 for centres)."""
    frac = (np.asarray(price, dtype=np.float64) / price_bin) % 1.0
    frac = np.where(np.minimum(frac, 1 - frac) < 1e-6, 0.0, frac)
    return frac if frac.ndim else float(frac)


def fine_bins(price: np.ndarray, price_bin: float, frac: float) -> np.ndarray:
    return np.rint(np.asarray(price, dtype=np.float64) / price_bin - frac).astype(np.int64)


def _by_state(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The states of cells grouped by state (as files hold them) and where each group starts."""
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]]) if t.size else np.zeros(0, np.int64)
    return t[starts], starts


def summarize(cells: dict[str, np.ndarray], price_bin: float) -> Summary:
    """A keyed source's Summary (its cells grouped by state, as tiles hold them)."""
    t, price = np.asarray(cells["t"], dtype=np.int64), cells["price"]
    if not t.size:
        empty = np.zeros(0, np.int64)
        return Summary(empty, 0.0, True, empty, empty)
    frac = grid_offset(float(price[0]), price_bin)
    states, starts = _by_state(t)
    g = fine_bins(price, price_bin, frac)
    uniform = bool(np.all(grid_offset(price, price_bin) == frac)) and np.unique(states).size == states.size
    return Summary(states, frac, uniform, np.minimum.reduceat(g, starts), np.maximum.reduceat(g, starts))


def block(states: np.ndarray, cells: dict[str, np.ndarray], price_bin: float, frac: float, k: int) -> Block:
    """[state, bucket] sums of cells whose states are among `states`: NaN counts as 0, rounded to whole USD after
    summing, per bucket in cell order (so the same numbers as one sum over all the answer's cells)."""
    coarse = np.floor_divide(fine_bins(cells["price"], price_bin, frac), k)
    lo = int(coarse.min())
    width = int(coarse.max()) - lo + 1
    flat = np.searchsorted(states, cells["t"]) * width + (coarse - lo)

    def sums(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        weights = np.where(np.isnan(values), 0.0, values)
        summed = np.bincount(flat, weights=weights, minlength=states.size * width)
        return np.rint(summed.reshape(states.size, width)).astype(np.int64)

    return Block(states, lo, sums(cells["long_usd"]), sums(cells["short_usd"]))


def _only(cells: dict[str, np.ndarray], states: np.ndarray) -> dict[str, np.ndarray]:
    keep = np.isin(cells["t"], states)
    return {c: np.asarray(v)[keep] for c, v in cells.items()}


@dataclass
class _Part:
    """One piece within an answer: its cells (when needed), or its kept summary and the rows it shows."""

    piece: Piece
    summary: Summary | None = None  # keyed, uniform pieces
    rows: np.ndarray | None = None  # which of summary.states it shows
    cells: dict[str, np.ndarray] | None = None  # the others: exactly its states' cells

    @property
    def first_state(self) -> int:
        """The state of its first cell."""
        return int(self.summary.states[self.rows[0]] if self.summary is not None else self.cells["t"][0])

    def bin_range(self, price_bin: float, frac: float) -> tuple[int, int]:
        """The lowest and highest registry bin of the cells it shows."""
        if self.summary is not None:
            return int(self.summary.g_min[self.rows].min()), int(self.summary.g_max[self.rows].max())
        g = fine_bins(self.cells["price"], price_bin, frac)
        return int(g.min()), int(g.max())

    def frac(self, price_bin: float) -> float:
        """The grid offset of its first cell."""
        return (
            self.summary.frac
            if self.summary is not None
            else grid_offset(float(self.cells["price"][0]), price_bin)
        )


def auto_multiple(span: int) -> int:
    """The smallest 'nice' multiple (1, 2, 4, 5 x 10^n) of the registry bin giving <= TARGET_PRICE_BUCKETS rows."""
    scale = 1
    while True:
        for m in _NICE_MULTIPLES:
            k = m * scale
            if math.ceil(span / k) + 1 <= TARGET_PRICE_BUCKETS:
                return k
        scale *= 10


def price_decimals(size: float) -> int:
    return max(0, min(12, 2 - math.floor(math.log10(size)))) if size > 0 else 8


def candle_decimals(price_bin: float) -> int:
    """Decimals of a symbol's candle prices: two more than its registry bin's (BTCUSDT bin 100: 2, the exchange's
    tick 0.1 fits; ETHUSDT bin 5: 4, tick 0.01). Enough for every tick, none of the float noise."""
    return min(12, price_decimals(price_bin) + 2)


class Grids:
    """Pieces -> Matrices, keeping keyed pieces' summaries and blocks in `memory` (None: keep nothing)."""

    def __init__(self, memory: ByteLRU | None = None):
        self.memory = memory

    def _kept(self, piece: Piece, what: tuple, make: Callable[[], object]):
        if self.memory is None:
            return make()
        return self.memory.get((*piece.key, *what), make)

    def _part(self, piece: Piece, price_bin: float) -> _Part | None:
        """The piece with what the answer needs of it, None when none of its states has cells."""
        if piece.key is not None:
            loaded: list[dict] = []

            def source() -> dict[str, np.ndarray]:
                if not loaded:
                    loaded.append(piece.cells())
                return loaded[0]

            summary = self._kept(piece, ("summary", price_bin), lambda: summarize(source(), price_bin))
            if summary.uniform:
                at = np.searchsorted(summary.states, piece.as_of_us)
                found = at < summary.states.size
                found[found] = summary.states[at[found]] == piece.as_of_us[found]
                rows = at[found]
                return _Part(piece, summary, rows) if rows.size else None
            cells = _only(source(), piece.as_of_us)
        else:
            cells = piece.cells()
        return _Part(piece, cells=cells) if cells["t"].size else None

    def matrices(
        self, columns_us: np.ndarray, pieces: list[Piece], price_bin: float, k: int | None
    ) -> Matrices:
        """The answer's matrices for the columns `columns_us` (the axis' states) from these pieces: the grid offset
        of the earliest cell, the bin range of all cells, then each piece's block placed at its columns."""
        parts = [p for p in (self._part(piece, price_bin) for piece in pieces) if p is not None]
        frac = 0.0
        if parts:
            frac = min(parts, key=lambda p: p.first_state).frac(price_bin)
        for p in parts:  # a keyed piece at another offset (never in practice) is binned from its cells
            if p.summary is not None and p.summary.frac != frac:
                p.cells, p.summary = _only(p.piece.cells(), p.piece.as_of_us), None
        ranges = [p.bin_range(price_bin, frac) for p in parts]
        g_min = min((r[0] for r in ranges), default=0)
        g_max = max((r[1] for r in ranges), default=0)
        span = g_max - g_min + 1
        k = k or auto_multiple(span)
        lo, n_prices = g_min // k, (g_max // k - g_min // k + 1 if parts else 0)
        if n_prices > MAX_BUCKETS:
            raise ApiError(
                400,
                f"price_bin_size {k * price_bin:g} would give {n_prices} price buckets (more than {MAX_BUCKETS}); "
                f"use at least {price_bin * math.ceil(span / MAX_BUCKETS):g}",
            )
        shape = (columns_us.size, n_prices)
        long, short = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
        for p in parts:
            if p.summary is not None:
                b = self._kept(
                    p.piece,
                    ("block", price_bin, frac, k),
                    lambda p=p: block(p.summary.states, p.piece.cells(), price_bin, frac, k),
                )
                rows = p.rows
            else:
                b = block(p.piece.as_of_us, p.cells, price_bin, frac, k)
                rows = slice(None)
            at = np.searchsorted(columns_us, b.states[rows])
            # A kept block spans its whole day's bins; the rows shown have cells only within the answer's.
            a, z = max(b.lo, lo), min(b.lo + b.long.shape[1], lo + n_prices)
            long[at, a - lo : z - lo] = b.long[rows, a - b.lo : z - b.lo]
            short[at, a - lo : z - lo] = b.short[rows, a - b.lo : z - b.lo]
        prices = (np.arange(lo, lo + n_prices) * k + (k - 1) / 2 + frac) * price_bin
        return Matrices(prices, k * price_bin, long, short)
