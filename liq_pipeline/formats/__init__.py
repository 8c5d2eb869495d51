"""Binance archive formats: the one place that knows columns, units, headers and orderings."""

from liq_pipeline.formats.binance import (
    AGG_TRADES,
    FORMATS,
    FUNDING_RATE,
    KLINES,
    LIQUIDATION_SNAPSHOT,
    METRICS,
    ArchiveFormat,
    FormatError,
    parse_csv,
)

__all__ = [
    "AGG_TRADES",
    "FORMATS",
    "FUNDING_RATE",
    "KLINES",
    "LIQUIDATION_SNAPSHOT",
    "METRICS",
    "ArchiveFormat",
    "FormatError",
    "parse_csv",
]
