"""The symbol registry: one TOML file is the single source of truth for which symbols exist and how they trade.

The Dagster symbol dimension, the API whitelist and every symbol check read it through `load_registry()`.
`LIQ_SYMBOLS_FILE` points at another file; otherwise the packaged `symbols.toml` is used.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

PACKAGED_FILE = Path(__file__).with_name("symbols.toml")
SYMBOL_RE = re.compile(r"^[A-Z0-9]{5,20}$")

_SYMBOL_KEYS = {
    "price_bin",
    "first_date",
    "last_date",
    "sample_price",
    "leverage",
    "leverage_weights",
    "tiers",
}
_REQUIRED_SYMBOL_KEYS = _SYMBOL_KEYS - {"last_date"}
_TIER_KEYS = {"floor", "cap", "max_leverage", "mmr", "cum"}


class RegistryError(ValueError):
    """The symbol registry file is invalid. The message names the file and the entry."""


@dataclass(frozen=True)
class MarginTier:
    floor: float
    cap: float
    max_leverage: int
    mmr: float
    cum: float


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str
    price_bin: float
    first_date: date
    last_date: date | None
    sample_price: float
    leverage: tuple[int, ...]
    leverage_weights: tuple[float, ...]
    tiers: tuple[MarginTier, ...]

    def tier_for(self, notional: float) -> MarginTier:
        """The maintenance-margin bracket a position of this notional (USDT) falls in."""
        for tier in self.tiers:
            if notional < tier.cap:
                return tier
        return self.tiers[-1]

    def covers(self, day: date) -> bool:
        return self.first_date <= day and (self.last_date is None or day <= self.last_date)


@dataclass(frozen=True)
class Registry:
    path: Path
    specs: dict[str, SymbolSpec]

    @property
    def symbols(self) -> list[str]:
        return list(self.specs)

    def get(self, symbol: str) -> SymbolSpec:
        """The spec of a symbol, or a ValueError that lists the supported ones."""
        spec = self.specs.get(symbol)
        if spec is None:
            raise ValueError(
                f"Unknown symbol {symbol!r}: the registry {self.path} lists {', '.join(self.specs)}. "
                "Add it there to support it."
            )
        return spec


def registry_path() -> Path:
    return Path(os.environ.get("LIQ_SYMBOLS_FILE") or PACKAGED_FILE)


def load_registry(path: Path | str | None = None) -> Registry:
    """Load and validate a registry file (default: `LIQ_SYMBOLS_FILE` or the packaged one)."""
    return _load(Path(path) if path else registry_path())


@lru_cache(maxsize=8)
def _load(path: Path) -> Registry:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RegistryError(
            f"{path}: symbol registry file not found; set LIQ_SYMBOLS_FILE to an existing file"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML: {exc}") from exc

    unknown_top = set(raw) - {"tiers", "symbols"}
    if unknown_top:
        raise RegistryError(
            f"{path}: unknown top-level keys {sorted(unknown_top)}; expected [tiers] and [symbols.*]"
        )
    named_tiers = {
        name: _parse_tiers(path, f"tiers.{name}", rows) for name, rows in raw.get("tiers", {}).items()
    }
    entries = raw.get("symbols", {})
    if not entries:
        raise RegistryError(f"{path}: no [symbols.*] entries")
    specs = {symbol: _parse_symbol(path, symbol, entry, named_tiers) for symbol, entry in entries.items()}
    return Registry(path=path, specs=specs)


def _parse_symbol(path: Path, symbol: str, entry: dict, named_tiers: dict) -> SymbolSpec:
    where = f"{path}: [symbols.{symbol}]"
    if not SYMBOL_RE.match(symbol):
        raise RegistryError(f"{where}: bad symbol name; use 5-20 upper-case letters or digits, like ETHUSDT")
    unknown = set(entry) - _SYMBOL_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_SYMBOL_KEYS)}")
    missing = _REQUIRED_SYMBOL_KEYS - set(entry)
    if missing:
        raise RegistryError(f"{where}: missing keys {sorted(missing)}")

    for key in ("price_bin", "sample_price"):
        if not isinstance(entry[key], int | float) or entry[key] <= 0:
            raise RegistryError(f"{where}: {key} must be a positive number, got {entry[key]!r}")
    for key in ("first_date", "last_date"):
        if key in entry and not isinstance(entry[key], date):
            raise RegistryError(f"{where}: {key} must be a TOML date like 2021-12-01, got {entry[key]!r}")
    if "last_date" in entry and entry["last_date"] < entry["first_date"]:
        raise RegistryError(f"{where}: last_date is before first_date")

    leverage, weights = entry["leverage"], entry["leverage_weights"]
    if not leverage or len(leverage) != len(weights):
        raise RegistryError(f"{where}: leverage and leverage_weights must be non-empty lists of equal length")
    if any(not isinstance(lev, int) or lev < 1 for lev in leverage) or list(leverage) != sorted(
        set(leverage)
    ):
        raise RegistryError(f"{where}: leverage must be increasing whole numbers >= 1, got {leverage}")
    if any(w < 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
        raise RegistryError(f"{where}: leverage_weights must be >= 0 and sum to 1, got {weights}")

    tiers_ref = entry["tiers"]
    if isinstance(tiers_ref, str):
        if tiers_ref not in named_tiers:
            raise RegistryError(f"{where}: tiers = {tiers_ref!r} is not defined under [tiers]")
        tiers = named_tiers[tiers_ref]
    else:
        tiers = _parse_tiers(path, f"symbols.{symbol}.tiers", tiers_ref)
    if max(leverage) > tiers[0].max_leverage:
        raise RegistryError(
            f"{where}: leverage {max(leverage)}x exceeds the first tier's max {tiers[0].max_leverage}x"
        )

    return SymbolSpec(
        symbol=symbol,
        price_bin=float(entry["price_bin"]),
        first_date=entry["first_date"],
        last_date=entry.get("last_date"),
        sample_price=float(entry["sample_price"]),
        leverage=tuple(leverage),
        leverage_weights=tuple(float(w) for w in weights),
        tiers=tiers,
    )


def _parse_tiers(path: Path, where: str, rows: list) -> tuple[MarginTier, ...]:
    if not isinstance(rows, list) or not rows:
        raise RegistryError(f"{path}: [{where}]: tiers must be a non-empty list of tables")
    tiers: list[MarginTier] = []
    for i, row in enumerate(rows, start=1):
        at = f"{path}: [{where}] tier {i}"
        if not isinstance(row, dict) or set(row) != _TIER_KEYS:
            got = sorted(row) if isinstance(row, dict) else row
            raise RegistryError(f"{at}: needs exactly the keys {sorted(_TIER_KEYS)}, got {got}")
        tier = MarginTier(
            floor=float(row["floor"]),
            cap=float(row["cap"]),
            max_leverage=int(row["max_leverage"]),
            mmr=float(row["mmr"]),
            cum=float(row["cum"]),
        )
        if not (tier.cap > tier.floor >= 0 and 0 < tier.mmr < 1):
            raise RegistryError(f"{at}: needs 0 <= floor < cap and 0 < mmr < 1")
        if tiers:
            prev = tiers[-1]
            if tier.floor != prev.cap:
                raise RegistryError(
                    f"{at}: floor {tier.floor:g} must equal the previous cap {prev.cap:g} (tiers overlap or have a gap)"
                )
            if tier.mmr <= prev.mmr or tier.max_leverage > prev.max_leverage:
                raise RegistryError(
                    f"{at}: tiers are unordered; mmr must rise and max_leverage must not rise"
                )
            expected_cum = prev.cum + tier.floor * (tier.mmr - prev.mmr)
        else:
            if tier.floor != 0:
                raise RegistryError(f"{at}: the first tier must start at floor 0")
            expected_cum = 0.0
        if not math.isclose(tier.cum, expected_cum, abs_tol=0.5):
            raise RegistryError(
                f"{at}: cum {tier.cum:g} breaks cum_n = cum_(n-1) + floor_n * (mmr_n - mmr_(n-1)); expected {expected_cum:g}"
            )
        tiers.append(tier)
    return tuple(tiers)


def validate_symbol(symbol: str, registry: Registry | None = None) -> SymbolSpec:
    """Check a user-supplied symbol against the registry. Raises ValueError with the supported list."""
    registry = registry or load_registry()
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
        raise ValueError(
            f"Malformed symbol {symbol!r}: expected 5-20 upper-case letters or digits. "
            f"Supported: {', '.join(registry.symbols)}"
        )
    return registry.get(symbol)
