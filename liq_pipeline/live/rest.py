"""Binance USDT-M futures REST, the few public endpoints the collector needs, within the request weights.

Binance limits each IP to a weight per minute (2400 on USDT-M futures) and reports the minute's use in the
`X-MBX-USED-WEIGHT-1M` header. The client waits for the next minute when a request would take the use above
`budget` (80 % of the limit by default), and on 429/418 it waits as long as `Retry-After` says: a client that keeps
asking after a 429 gets banned (418).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import httpx

DEFAULT_API_URL = "https://fapi.binance.com"
WEIGHT_LIMIT = 2400  # per minute per IP, USDT-M futures
AGG_TRADES_LIMIT = 1000  # the most aggTrades one request returns
KLINES_LIMIT = 1500

log = logging.getLogger("liq.collect")


def api_url() -> str:
    return (os.environ.get("LIQ_BINANCE_API_URL") or DEFAULT_API_URL).rstrip("/")


def klines_weight(limit: int) -> int:
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


class BinanceRest:
    """An async client of the public endpoints. `weight` is what Binance charges per request, to stay under the
    budget before the server has to say so."""

    def __init__(self, base_url: str | None = None, budget: float = 0.8, timeout: float = 10.0):
        self.base_url = (base_url or api_url()).rstrip("/")
        self.budget = int(WEIGHT_LIMIT * budget)
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self.used_weight = 0
        self.minute = 0  # the minute `used_weight` counts

    async def close(self) -> None:
        await self.client.aclose()

    async def get(self, path: str, params: dict, weight: int) -> object:
        """GET a JSON answer. Waits for the next minute when the weight would pass the budget; retries 429/418
        after Retry-After, and 5xx or connection errors with backoff, up to 6 times."""
        for attempt in range(6):
            await self._wait_for_budget(weight)
            try:
                resp = await self.client.get(path, params=params)
            except httpx.TransportError as exc:
                log.warning("%s%s: %s; retrying", self.base_url, path, exc)
                await asyncio.sleep(min(2**attempt, 30))
                continue
            self._record_weight(resp, weight)
            if resp.status_code in (418, 429):
                wait = float(resp.headers.get("Retry-After") or 60)
                log.warning(
                    "%s%s: %s, waiting %.0f s as Retry-After asks",
                    self.base_url,
                    path,
                    resp.status_code,
                    wait,
                )
                await asyncio.sleep(wait)
                continue
            if resp.status_code >= 500:
                await asyncio.sleep(min(2**attempt, 30))
                continue
            if resp.status_code != 200:
                raise RuntimeError(f"{resp.request.url}: HTTP {resp.status_code} {resp.text[:200]}")
            return resp.json()
        raise RuntimeError(f"{self.base_url}{path} {params}: no answer after 6 attempts")

    async def _wait_for_budget(self, weight: int) -> None:
        minute = int(time.time() // 60)
        if minute != self.minute:
            self.minute, self.used_weight = minute, 0
        if self.used_weight + weight > self.budget:
            wait = 60 - time.time() % 60 + 0.5
            log.info(
                "request weight %d of %d used this minute: waiting %.0f s",
                self.used_weight,
                self.budget,
                wait,
            )
            await asyncio.sleep(wait)
            self.minute, self.used_weight = int(time.time() // 60), 0

    def _record_weight(self, resp: httpx.Response, weight: int) -> None:
        header = resp.headers.get("X-MBX-USED-WEIGHT-1M")
        self.used_weight = int(header) if header and header.isdigit() else self.used_weight + weight

    # --- endpoints ---------------------------------------------------------------------------------------------

    async def server_time(self) -> int:
        return int((await self.get("/fapi/v1/time", {}, 1))["serverTime"])

    async def agg_trades(self, symbol: str, **params) -> list[dict]:
        """`fromId=` or `startTime=`/`endTime=` (less than an hour apart); at most 1000 trades, ascending."""
        return await self.get(
            "/fapi/v1/aggTrades", {"symbol": symbol, "limit": AGG_TRADES_LIMIT, **params}, 20
        )

    async def klines(self, symbol: str, start_ms: int, limit: int = KLINES_LIMIT) -> list[list]:
        params = {"symbol": symbol, "interval": "1m", "startTime": start_ms, "limit": limit}
        return await self.get("/fapi/v1/klines", params, klines_weight(limit))

    async def open_interest(self, symbol: str) -> dict:
        return await self.get("/fapi/v1/openInterest", {"symbol": symbol}, 1)

    async def open_interest_hist(self, symbol: str, start_ms: int, end_ms: int) -> list[dict]:
        params = {"symbol": symbol, "period": "5m", "startTime": start_ms, "endTime": end_ms, "limit": 500}
        return await self.get("/futures/data/openInterestHist", params, 1)
