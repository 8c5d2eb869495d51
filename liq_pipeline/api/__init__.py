"""The read-only HTTP API and the Coinglass-style heatmap page over the lake (`liq serve`)."""

from liq_pipeline.api.app import create_app
from liq_pipeline.api.server import BackgroundServer

__all__ = ["BackgroundServer", "create_app"]
