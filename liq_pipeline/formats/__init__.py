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
    Parsed,
    check_values,
    parse_csv,
    parse_file,
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
    "Parsed",
    "check_values",
    "parse_csv",
    "parse_file",
]
